//! CPU totals: the task iterator (live threads) and the dead-thread map (threads that exited).

use std::{collections::HashMap, io};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use probe_common::cpu::{DeadKey, DeadTotals, TaskRecord, EXIT_STAT_LOST, EXIT_STAT_RECORDED};
use serde::{Deserialize, Serialize};

use super::decode;
use crate::{
    model::process::{DeadSample, ProcessKey},
    sys::IterLink,
};

#[derive(Debug, thiserror::Error)]
pub enum CpuError {
    #[error("reading the task iterator: {0}")]
    Iter(#[from] io::Error),
    #[error(transparent)]
    Decode(#[from] super::DecodeError),
    #[error("reading the dead-thread map: {0}")]
    Map(#[from] MapError),
    #[error("reading threads from /proc: {0}")]
    Proc(io::Error),
}

/// Runs the task iterator once: one record per live thread.
pub fn read_tasks(link: &IterLink, buf: &mut Vec<u8>) -> Result<Vec<TaskRecord>, CpuError> {
    link.read_all(buf)?;
    Ok(decode(buf)?)
}

/// The dead-thread map as read in one collection.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DeadRead {
    pub samples: HashMap<ProcessKey, DeadSample>,
    /// The kernel map's own keys (start times not rounded) behind each sample, to delete them
    /// later.
    pub kernel_keys: HashMap<ProcessKey, Vec<ProcessKey>>,
}

/// Reads every entry of the dead-thread map. Start times are rounded down to
/// `start_granularity_ns` (1 when live threads come from the task iterator; a clock tick when
/// they come from /proc), so that both sources name a process the same way.
///
/// A key deleted while the map is walked is skipped rather than failing the whole read.
pub fn read_dead(
    map: &BpfHashMap<MapData, DeadKey, DeadTotals>,
    start_granularity_ns: u64,
) -> Result<DeadRead, CpuError> {
    let mut out = DeadRead::default();
    for item in map.iter() {
        match item {
            Ok((k, v)) => {
                let g = start_granularity_ns.max(1);
                let key = ProcessKey {
                    tgid: k.tgid,
                    start_ns: k.start_ns / g * g,
                };
                let sample = DeadSample::from(&v);
                out.samples
                    .entry(key)
                    .and_modify(|s| {
                        s.cpu_ns += sample.cpu_ns;
                        s.run_delay_ns += sample.run_delay_ns;
                        s.threads += sample.threads;
                    })
                    .or_insert(sample);
                out.kernel_keys.entry(key).or_default().push(k.into());
            }
            Err(MapError::KeyNotFound) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

/// Deletes entries the accounting no longer needs. Returns how many could not be deleted.
pub fn forget_dead(
    map: &mut BpfHashMap<MapData, DeadKey, DeadTotals>,
    keys: impl IntoIterator<Item = ProcessKey>,
) -> usize {
    keys.into_iter()
        .filter(|&k| {
            !matches!(
                map.remove(&DeadKey::from(k)),
                Ok(()) | Err(MapError::KeyNotFound)
            )
        })
        .count()
}

/// Exit-hook self-counters summed over CPUs: (thread deaths recorded, lost to a full map).
pub fn exit_stats(map: &PerCpuArray<MapData, u64>) -> Result<(u64, u64), MapError> {
    let sum = |slot: u32| -> Result<u64, MapError> { Ok(map.get(&slot, 0)?.iter().sum()) };
    Ok((sum(EXIT_STAT_RECORDED)?, sum(EXIT_STAT_LOST)?))
}
