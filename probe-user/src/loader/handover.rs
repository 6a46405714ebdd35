//! The handover between daemons on the same pins: which generation of programs counts
//! (`ACTIVE_MAP`), and the pinned maps no collector of this daemon reads.

use std::path::Path;

use aya::{
    maps::{HashMap as BpfHashMap, MapData},
    Ebpf,
};
use probe_common::{
    block::{IoKey, IoStart, IoTotals, IO_MAP, STARTS_MAP},
    config::ACTIVE_MAP,
    cpu::{DeadKey, DeadTotals, DEAD_MAP},
    runq::{ThreadRunq, THREADS_MAP as RUNQ_THREADS_MAP},
    tcp::{RttTotals, SockBase, TcpKey, TcpTotals, RTT_MAP, SOCKETS_MAP, TRAFFIC_MAP},
};
use tracing::info;

use super::chain;

/// Empties the pinned maps this daemon does not read (their collector is down now): what a
/// previous daemon's programs left there was partly credited by it, and a later daemon that
/// reads the map again would credit it a second time.
pub(super) fn clear_unread(ebpf: &mut Ebpf) {
    fn clear<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &str) {
        let Some(map) = ebpf.map_mut(name) else {
            return; // taken: a collector reads it
        };
        let Ok(mut m) = BpfHashMap::<&mut MapData, K, V>::try_from(map) else {
            return;
        };
        let keys: Vec<K> = m.keys().filter_map(Result::ok).collect();
        if !keys.is_empty() {
            info!(
                map = name,
                entries = keys.len(),
                "emptying a pinned map no collector reads now"
            );
        }
        for k in keys {
            let _ = m.remove(&k);
        }
    }
    clear::<DeadKey, DeadTotals>(ebpf, DEAD_MAP);
    clear::<u32, ThreadRunq>(ebpf, RUNQ_THREADS_MAP);
    clear::<IoKey, IoTotals>(ebpf, IO_MAP);
    clear::<u64, IoStart>(ebpf, STARTS_MAP);
    clear::<TcpKey, TcpTotals>(ebpf, TRAFFIC_MAP);
    clear::<u16, RttTotals>(ebpf, RTT_MAP);
}

/// Empties the pinned map of TCP sockets when no program kept it up to date before this daemon
/// (the previous one stopped, or crashed without pins) or none will (the walk is not attached):
/// sockets destroyed meanwhile left their entries, and a new socket at the same address would
/// count from the old one's counts. Open connections then count from their first collection.
pub(super) fn forget_sockets(ebpf: &mut Ebpf) {
    let Some(map) = ebpf.map_mut(SOCKETS_MAP) else {
        return;
    };
    let Ok(mut m) = BpfHashMap::<&mut MapData, u64, SockBase>::try_from(map) else {
        return;
    };
    let keys: Vec<u64> = m.keys().filter_map(Result::ok).collect();
    if !keys.is_empty() {
        info!(
            entries = keys.len(),
            "forgetting the TCP sockets a previous daemon's programs counted (no program followed them since)"
        );
    }
    for k in keys {
        let _ = m.remove(&k);
    }
}

/// The generation whose programs count now, from the pinned map (None if there is none).
pub(super) fn read_active(path: &Path) -> Option<u32> {
    aya::maps::MapData::from_pin(path)
        .ok()
        .and_then(|m| aya::maps::Array::<MapData, u32>::try_from(aya::maps::Map::Array(m)).ok())
        .and_then(|a| a.get(&0, 0).ok())
}

/// Makes the programs of `generation` the ones that count (see `ACTIVE_MAP`).
pub(super) fn set_active(ebpf: &mut Ebpf, generation: u32) -> Result<(), String> {
    let map = ebpf
        .map_mut(ACTIVE_MAP)
        .ok_or_else(|| format!("map {ACTIVE_MAP} missing from the object"))?;
    let mut a: aya::maps::Array<&mut MapData, u32> =
        aya::maps::Array::try_from(map).map_err(|e| chain(&e))?;
    a.set(0, generation, 0).map_err(|e| chain(&e))
}
