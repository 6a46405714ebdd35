//! Run-queue latency histograms per process from the kernel map, and the programs' counters.

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use probe_common::{
    cpu::DeadKey,
    runq::{RunqTotals, STAT_LATENCY_LOST, STAT_QUEUED_LOST},
};

use super::idle::IdleTracker;
use crate::model::{io::IoCounters, process::ProcessKey};

/// Waits the programs could not record because a map was full (kernel counters).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RunqStats {
    pub queued_lost: u64,
    pub latency_lost: u64,
}

pub fn stats(map: &PerCpuArray<MapData, u64>) -> Result<RunqStats, MapError> {
    let sum = |slot: u32| -> Result<u64, MapError> { Ok(map.get(&slot, 0)?.iter().sum()) };
    Ok(RunqStats {
        queued_lost: sum(STAT_QUEUED_LOST)?,
        latency_lost: sum(STAT_LATENCY_LOST)?,
    })
}

/// Cumulative run-queue waits of one process: count in `ops`, sum in `latency_ns`, histogram in
/// `buckets` (keyed by `()`: one dimension, so the crediting rules of per-dimension counters
/// apply as they are).
pub type ProcessRunq = HashMap<(), IoCounters>;

/// Reads the per-process latency map; deletes entries of processes that are gone once idle.
#[derive(Debug, Default)]
pub struct RunqReader {
    tracker: IdleTracker<DeadKey, RunqTotals>,
}

impl RunqReader {
    pub fn read(
        &mut self,
        map: &BpfHashMap<MapData, DeadKey, RunqTotals>,
        start_granularity_ns: u64,
    ) -> Result<HashMap<ProcessKey, ProcessRunq>, MapError> {
        let g = start_granularity_ns.max(1);
        let mut out: HashMap<ProcessKey, ProcessRunq> = HashMap::new();
        self.tracker.read(map, |k, v| {
            let key = ProcessKey {
                tgid: k.tgid,
                start_ns: k.start_ns / g * g,
            };
            let c = IoCounters {
                bytes: 0,
                ops: v.waits,
                latency_ns: v.wait_ns,
                buckets: v.buckets,
            };
            out.entry(key).or_default().entry(()).or_default().add(&c);
        })?;
        Ok(out)
    }

    /// Deletes the entries of processes not live that have not changed for a while; returns
    /// how many deletions failed.
    pub fn forget_idle(
        &mut self,
        map: &mut BpfHashMap<MapData, DeadKey, RunqTotals>,
        is_live: impl Fn(u32, u64) -> bool,
        start_granularity_ns: u64,
    ) -> usize {
        let g = start_granularity_ns.max(1);
        self.tracker
            .forget_idle(map, |k| !is_live(k.tgid, k.start_ns / g * g))
    }
}
