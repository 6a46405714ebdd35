//! What the exporter, the JSON API and `probe top` read: one [`Snapshot`] of the accounts and
//! of the daemon's own counters.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use super::{Daemon, InstanceMeta};
use crate::{
    collect::{block::BlockStats, bpfstats::ProgramStats},
    loader::CollectorStatus,
    model::{
        accounts::{InstanceTotals, IoProcessRow, ProcessRow, TcpProcessRow},
        io::{IoCounters, IoDim},
        latency::Latency,
        tcp::{TcpCounters, TcpDim},
    },
};

/// Counters about the daemon itself.
#[derive(Clone, Debug, Default)]
pub struct SelfStats {
    pub collections: u64,
    pub last_collect: Duration,
    /// Failed reads per collector since start.
    pub errors: BTreeMap<&'static str, u64>,
    /// Collectors whose last read failed.
    pub failing: HashSet<&'static str>,
    /// Exit hook: thread deaths recorded / lost because the map was full (kernel counters).
    pub exits_recorded: u64,
    pub exits_lost: u64,
    /// Dead-thread map entries that could not be deleted.
    pub dead_delete_failures: u64,
    /// Block programs' self-counters (kernel).
    pub block: BlockStats,
    /// Requests whose end was missed, found by the daemon (device idle, entry left; see
    /// collect::block::missed_ends); the kernel counts the ones found at slot reuse.
    pub block_ends_found: u64,
    /// Block IO map entries that could not be deleted.
    pub io_delete_failures: u64,
    /// TCP events not counted because a TCP map was full (kernel).
    pub tcp_lost: u64,
    /// TCP map entries that could not be deleted, listening-port updates that failed.
    pub tcp_map_failures: u64,
    /// Switch-outs whose run-queue wait was not counted (map full; kernel), and dead-thread
    /// entries that could not be deleted.
    pub runq_lost: u64,
    pub runq_delete_failures: u64,
    /// Rule reloads (SIGHUP) that took effect / were rejected (the previous rules stay).
    pub rule_reloads: Reloads,
    pub web_reloads: Reloads,
    /// Saves of the accounts (`--state.file`) that failed; whether this daemon carries on from a
    /// previous one's accounts.
    pub state_save_failures: u64,
    pub restored: bool,
    pub programs: Vec<ProgramStats>,
    /// The history recorder's counters (None: --history.disable).
    pub history: Option<crate::history::writer::Usage>,
}

/// Reloads of one file on SIGHUP.
#[derive(Clone, Copy, Debug, Default)]
pub struct Reloads {
    pub ok: u64,
    pub failed: u64,
    /// The last reload succeeded, or none failed yet.
    pub last_ok: bool,
}

impl Reloads {
    pub fn record(&mut self, ok: bool) {
        if ok {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        self.last_ok = ok;
    }

    pub fn last_successful(&self) -> bool {
        self.last_ok || self.failed == 0
    }
}

/// Everything the exporter needs for one scrape. Serialised (history frames) without the
/// daemon's own part (`collectors`, `stats`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Snapshot {
    pub instances: Vec<(Arc<str>, InstanceTotals)>,
    pub top: Vec<ProcessRow>,
    /// Block IO per (instance, (device, op)).
    pub io: Vec<((Arc<str>, IoDim), IoCounters)>,
    pub top_io: Vec<IoProcessRow>,
    /// TCP per (instance, port and role).
    pub tcp: Vec<((Arc<str>, TcpDim), TcpCounters)>,
    /// RTT histograms per (instance, listening port).
    pub rtt: Vec<((Arc<str>, u16), Latency)>,
    /// Established connections per (instance, listening port).
    pub established: Vec<((Arc<str>, u16), u64)>,
    pub top_tcp: Vec<TcpProcessRow>,
    /// Run-queue latency histogram per instance.
    pub runq: Vec<(Arc<str>, Latency)>,
    /// What processes outside the top-K used, per instance (the `other` rows).
    pub other_cpu: Vec<(Arc<str>, (u64, u64))>,
    pub other_io: Vec<((Arc<str>, IoDim), IoCounters)>,
    pub other_tcp: Vec<((Arc<str>, TcpDim), TcpCounters)>,
    /// Rule, container and pod of each exported instance.
    pub meta: Vec<(Arc<str>, InstanceMeta)>,
    /// Instance names folded into `other` by the cap.
    pub folded_instances: usize,
    #[serde(skip)]
    pub collectors: Vec<(CollectorStatus, bool)>,
    #[serde(skip)]
    pub stats: SelfStats,
    pub processes: usize,
}

impl Daemon {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            collectors: self
                .kernel()
                .statuses
                .iter()
                .filter(|s| s.off.is_none())
                .map(|s| (s.clone(), s.up() && !self.stats.failing.contains(s.name)))
                .collect(),
            stats: SelfStats {
                history: self.history_stats().map(|h| h.usage()),
                ..self.stats.clone()
            },
            ..self.ledger.snapshot()
        }
    }
}
