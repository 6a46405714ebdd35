//! CPU totals: the task iterator (live threads) and the dead-thread map (threads that exited).

use std::{collections::HashMap, io};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use probe_common::cpu::{DeadKey, DeadTotals, TaskRecord, EXIT_STAT_LOST, EXIT_STAT_RECORDED};

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
}

/// Runs the task iterator once: one record per live thread.
pub fn read_tasks(link: &IterLink, buf: &mut Vec<u8>) -> Result<Vec<TaskRecord>, CpuError> {
    link.read_all(buf)?;
    Ok(decode(buf)?)
}

/// Reads every entry of the dead-thread map.
///
/// Keys that vanish while we walk the map (deleted by a concurrent daemon? there is none, but
/// the kernel map is shared state) are skipped rather than failing the whole read.
pub fn read_dead(
    map: &BpfHashMap<MapData, DeadKey, DeadTotals>,
) -> Result<HashMap<ProcessKey, DeadSample>, CpuError> {
    let mut out = HashMap::new();
    for item in map.iter() {
        match item {
            Ok((k, v)) => {
                out.insert(ProcessKey::from(k), DeadSample::from(&v));
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
    keys: &[ProcessKey],
) -> usize {
    keys.iter()
        .filter(|k| {
            !matches!(
                map.remove(&DeadKey::from(**k)),
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
