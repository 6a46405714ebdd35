//! TCP totals from the kernel's maps, the listening ports the kernel programs key by, and the
//! TCP programs' self-counters.

use std::collections::{HashMap, HashSet};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use probe_common::tcp::{RttTotals, TcpKey, TcpTotals, ROLE_SERVER, STAT_LOST};
use serde::{Deserialize, Serialize};

use super::idle::IdleTracker;
use crate::model::{
    latency::Latency,
    process::ProcessKey,
    tcp::{ProcessTcp, TcpCounters, TcpDim},
};

/// One read of the TCP map.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TcpRead {
    /// Per process (bytes, and retransmits of sockets whose owner is known).
    pub processes: HashMap<ProcessKey, ProcessTcp>,
    /// Per port, no process (connections; bytes on the fallback; other retransmits).
    pub ports: HashMap<TcpDim, TcpCounters>,
}

/// Reads the TCP map and deletes the idle entries of processes that are gone.
#[derive(Debug, Default)]
pub struct TcpReader {
    tracker: IdleTracker<TcpKey, TcpTotals>,
    rtt: IdleTracker<u16, RttTotals>,
    /// Per-port entries deleted since the last read. One back already is a new entry, maybe
    /// with the very totals the model saw last (one close, say): it is left out of one reading
    /// so the model forgets the old one, and counts in full at the next.
    deleted_ports: HashSet<TcpKey>,
    deleted_rtt: HashSet<u16>,
    /// The entries the last read left out (see [`TcpReader::unread`]).
    left_out: HashSet<TcpKey>,
}

impl TcpReader {
    /// Start times are rounded down to `start_granularity_ns` as for the dead-thread map.
    pub fn read(
        &mut self,
        map: &BpfHashMap<MapData, TcpKey, TcpTotals>,
        start_granularity_ns: u64,
    ) -> Result<TcpRead, MapError> {
        let g = start_granularity_ns.max(1);
        let mut out = TcpRead::default();
        let deleted = std::mem::take(&mut self.deleted_ports);
        self.left_out.clear();
        self.tracker
            .read(map, |k, v| {
                if deleted.contains(k) {
                    return;
                }
                let dim = TcpDim::from_kernel(k.port, k.role);
                let counters = TcpCounters::from(v);
                let slot = if k.tgid == 0 {
                    out.ports.entry(dim).or_default()
                } else {
                    let key = ProcessKey {
                        tgid: k.tgid,
                        start_ns: k.start_ns / g * g,
                    };
                    out.processes
                        .entry(key)
                        .or_default()
                        .entry(dim)
                        .or_default()
                };
                crate::model::cumulative::Cumulative::add(slot, &counters);
            })
            .inspect_err(|_| self.deleted_ports = deleted.clone())?;
        self.left_out = deleted;
        Ok(out)
    }

    /// The last read will not reach the model (the collection failed after it): the entries it
    /// left out are left out of the next read instead, so the model still forgets them.
    pub fn unread(&mut self) {
        self.deleted_ports.extend(self.left_out.drain());
    }

    /// Deletes entries of processes that are gone once idle for
    /// [`super::idle::TCP_IDLE_FORGET`]. With `listening` (every port listened on, known from
    /// a walk that succeeded), also the per-port and RTT entries of other ports: otherwise a
    /// host whose services move ports would fill the maps with the ports of the past. A map
    /// whose read failed this round is left alone (`rtt`: None). Returns how many deletions
    /// failed.
    pub fn forget_idle(
        &mut self,
        traffic: &mut BpfHashMap<MapData, TcpKey, TcpTotals>,
        rtt: Option<&mut BpfHashMap<MapData, u16, RttTotals>>,
        is_live: impl Fn(u32, u64) -> bool,
        listening: Option<&HashSet<u16>>,
        start_granularity_ns: u64,
    ) -> usize {
        let g = start_granularity_ns.max(1);
        let after = super::idle::TCP_IDLE_FORGET;
        let unheard = |port: &u16| listening.is_some_and(|l| !l.contains(port));
        let deleted_ports = &mut self.deleted_ports;
        let mut failed = self.tracker.forget_idle_noting(
            traffic,
            after,
            |k| {
                if k.tgid == 0 {
                    k.role == ROLE_SERVER && unheard(&k.port)
                } else {
                    !is_live(k.tgid, k.start_ns / g * g)
                }
            },
            // Per-process entries are not left out: the model would forget the process, and
            // charge a late entry to `other`. One re-created with totals at least the old ones
            // is undercounted (rare: the old one has bytes; block IO has the same gap).
            |k| {
                if k.tgid == 0 {
                    deleted_ports.insert(*k);
                }
            },
        );
        if let Some(rtt) = rtt {
            let deleted_rtt = &mut self.deleted_rtt;
            failed += self.rtt.forget_idle_noting(rtt, after, unheard, |p| {
                deleted_rtt.insert(*p);
            });
        }
        failed
    }

    /// RTT histograms per port (those of ports nobody listens on go once idle: see
    /// [`TcpReader::forget_idle`]).
    pub fn read_rtt(
        &mut self,
        map: &BpfHashMap<MapData, u16, RttTotals>,
    ) -> Result<HashMap<u16, Latency>, MapError> {
        let mut out = HashMap::new();
        let deleted = std::mem::take(&mut self.deleted_rtt);
        self.rtt
            .read(map, |&port, t| {
                if deleted.contains(&port) {
                    return;
                }
                out.insert(
                    port,
                    Latency {
                        count: t.count,
                        sum_ns: t.sum_us.saturating_mul(1000),
                        buckets: t.buckets,
                    },
                );
            })
            .inspect_err(|_| self.deleted_rtt = deleted.clone())?;
        Ok(out)
    }
}

/// Events the TCP programs could not count (map full), summed over CPUs.
pub fn lost(map: &PerCpuArray<MapData, u64>) -> Result<u64, MapError> {
    Ok(map.get(&STAT_LOST, 0)?.iter().sum())
}

/// Brings the kernel's listening-port set in line with `listening` (every port a process listens
/// on, in any network namespace). The kernel adds ports itself when a socket starts listening,
/// stamped with CLOCK_MONOTONIC; an entry is removed only if it is older than `seen_at` (when
/// `listening` was observed), so a listener that appeared since is kept. Returns the number of
/// updates that failed.
pub fn sync_listen_ports(
    map: &mut BpfHashMap<MapData, u16, u64>,
    listening: &HashSet<u16>,
    seen_at_ns: u64,
) -> usize {
    let current: Vec<(u16, u64)> = map.iter().filter_map(Result::ok).collect();
    let have: HashSet<u16> = current.iter().map(|(p, _)| *p).collect();
    let mut failed = 0;
    for &(port, added) in &current {
        if !listening.contains(&port) && added < seen_at_ns && map.remove(&port).is_err() {
            failed += 1;
        }
    }
    for &port in listening.difference(&have) {
        if map.insert(port, seen_at_ns, 0).is_err() {
            failed += 1;
        }
    }
    failed
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}
