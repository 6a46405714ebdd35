//! probe's daemon: loads the kernel programs, collects, attributes and serves.
//!
//! Data flow: [`loader`] attaches the kernel programs; [`collect`] reads them and /proc;
//! [`model`] turns per-thread kernel totals into per-process and per-instance counters (pure,
//! unit-tested); [`daemon`] runs one collection; [`exporter`] serves the result. See
//! ARCHITECTURE.md.

pub mod btf;
pub mod check;
pub mod cli;
pub mod collect;
pub mod config;
pub mod daemon;
pub mod exporter;
pub mod loader;
pub mod model;
pub mod sys;
pub mod top;
pub mod verifier;
