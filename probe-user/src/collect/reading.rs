//! What one collection read, whole: the only input of the accounting
//! ([`crate::daemon::Daemon::collect`] reads, accounts, then cleans up). Serialisable, so that a
//! run can be recorded (`probe serve --record-readings`) and replayed (`probe replay`).

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::{cpu::DeadRead, ports::Listeners, runq::RunqRead, tcp::TcpRead};
use crate::model::{
    instance::Facts,
    io::ProcessIo,
    latency::Latency,
    process::{ProcessKey, ProcessSample},
};

/// Everything read from the kernel and /proc for one collection. A source that could not be
/// read is None (nothing is concluded from its absence); the live threads and the dead-thread
/// map are required (without them the collection is skipped).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reading {
    /// Final totals of threads that exited (read first: see [`crate::model::accounts`]).
    pub dead: DeadRead,
    /// Live processes, aggregated from their threads.
    pub live: HashMap<ProcessKey, ProcessSample>,
    pub io: Option<HashMap<ProcessKey, ProcessIo>>,
    pub tcp: Option<TcpRead>,
    pub runq: Option<RunqRead>,
    /// RTT histograms per listening port.
    pub rtt: Option<HashMap<u16, Latency>>,
    /// Established connections per local port (the daemon's network namespace).
    pub established: Option<HashMap<u16, u64>>,
    /// Whether the TCP collector is loaded (per-port rows are kept only then).
    pub tcp_loaded: bool,
    /// Listening ports per process, and every port listened on (any namespace).
    pub listeners: Listeners,
    pub listening: HashSet<u16>,
    /// CLOCK_MONOTONIC ns when `listeners` was observed.
    pub listeners_seen_at: u64,
    /// What rules read of each live process (by tgid), and the cgroup path of each cgroup id
    /// seen.
    pub facts: HashMap<u32, Facts>,
    pub cgroup_paths: HashMap<u64, String>,
    /// Seconds since the previous collection, and the daemon's clock (s).
    pub elapsed_secs: f64,
    pub now_secs: f64,
    /// Bytes per page (resident memory is read in pages).
    pub page_size: u64,
}

/// What the kernel maps no longer need once a reading is accounted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleanup {
    /// Dead-thread map entries (the kernel's keys) of processes the accounts forgot.
    pub dead: Vec<ProcessKey>,
    /// Run-queue entries of threads that did their final switch.
    pub runq_dead: Vec<u32>,
}
