//! probe's daemon: loads the kernel programs, collects, attributes and serves.
//!
//! Data flow: [`loader`] attaches the kernel programs; [`collect`] reads them and /proc;
//! [`model`] turns per-thread kernel totals into per-process and per-instance counters (pure,
//! unit-tested); [`daemon`] runs one collection; [`service`] holds the daemon for the HTTP side
//! and the timers; [`exporter`] serves the result, [`api`] is the JSON `probe top` reads. See
//! ARCHITECTURE.md.

pub mod api;
pub mod args;
pub mod btf;
pub mod check;
pub mod cli;
pub mod collect;
pub mod config;
pub mod daemon;
pub mod exporter;
pub mod history;
pub mod loader;
pub mod model;
pub mod pins;
pub mod record;
pub mod service;
pub mod state;
pub mod sys;
pub mod top;
pub mod verifier;
pub mod webconfig;
