//! Pure logic: no kernel, no /proc, no I/O. Everything here is unit-tested without root.

pub mod accounts;
pub mod cumulative;
pub mod instance;
pub mod io;
pub mod latency;
pub mod names;
pub mod process;
pub mod rules;
pub mod tcp;
