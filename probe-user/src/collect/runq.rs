//! Run-queue latency histograms per thread from the kernel map, and the program's counters.

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use probe_common::runq::{ThreadRunq, STAT_LOST};
use serde::{Deserialize, Serialize};

use crate::model::{accounts::ProcessRunq, latency::Latency, process::ProcessKey};

/// Threads whose waits were not counted because the map was full (kernel counter).
pub fn lost(map: &PerCpuArray<MapData, u64>) -> Result<u64, MapError> {
    Ok(map.get(&STAT_LOST, 0)?.iter().sum())
}

/// One read of the thread map.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RunqRead {
    /// Cumulative waits per process, by thread id.
    pub processes: HashMap<ProcessKey, ProcessRunq>,
    /// Threads that did their final switch: delete them once the waits are credited.
    pub dead: Vec<u32>,
}

pub fn read(
    map: &BpfHashMap<MapData, u32, ThreadRunq>,
    start_granularity_ns: u64,
) -> Result<RunqRead, MapError> {
    let g = start_granularity_ns.max(1);
    let mut out = RunqRead::default();
    for item in map.iter() {
        let (tid, v) = match item {
            Ok(kv) => kv,
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(e),
        };
        let key = ProcessKey {
            tgid: v.tgid,
            start_ns: v.start_ns / g * g,
        };
        let c = Latency {
            count: v.buckets.iter().sum(),
            sum_ns: v.wait_ns,
            buckets: v.buckets,
        };
        out.processes.entry(key).or_default().insert(tid, c);
        if v.dead != 0 {
            out.dead.push(tid);
        }
    }
    Ok(out)
}

/// Deletes the entries of `tids` that are still marked dead (a previous daemon credited them
/// but died before deleting them; a thread id reused since is left alone).
pub fn forget_if_dead(map: &mut BpfHashMap<MapData, u32, ThreadRunq>, tids: &[u32]) {
    for tid in tids {
        if map.get(tid, 0).is_ok_and(|v| v.dead != 0) {
            let _ = map.remove(tid);
        }
    }
}

/// Deletes the entries of dead threads (after their final waits were credited). Returns how
/// many deletions failed.
pub fn forget_dead(map: &mut BpfHashMap<MapData, u32, ThreadRunq>, dead: &[u32]) -> usize {
    dead.iter()
        .filter(|tid| !matches!(map.remove(tid), Ok(()) | Err(MapError::KeyNotFound)))
        .count()
}
