//! The processes exported one by one: per resource, the top-K live processes by recent use.
//! Everything else an instance's processes used is in its `other` rows, so that listed rows
//! plus `other` add up (as rates).

use std::{
    collections::{HashMap, HashSet},
    hash::Hash,
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use super::ProcState;
use crate::model::{
    cumulative::Tracked,
    io::{IoCounters, IoDim},
    process::ProcessKey,
    tcp::{TcpCounters, TcpDim},
};

/// What is exported for one of the top processes by CPU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub comm: Arc<str>,
    pub instance: Arc<str>,
    pub cpu_ns: u64,
    pub run_delay_ns: u64,
    /// Recent CPU seconds, exponentially decayed (the ranking key).
    pub score: f64,
}

/// What is exported for one of the top processes by a resource counted per dimension (block IO
/// per device and op, TCP per port and role).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopRow<D, C> {
    pub pid: u32,
    pub comm: Arc<str>,
    pub instance: Arc<str>,
    /// Cumulative counters of the process, by dimension, sorted.
    pub counters: Vec<(D, C)>,
    /// Recent bytes, exponentially decayed (the ranking key).
    pub score: f64,
}

/// Top processes by recent block bytes (read, write, discard; no latency histograms).
pub type IoProcessRow = TopRow<IoDim, IoCounters>;
/// Top processes by recent TCP payload bytes (both directions).
pub type TcpProcessRow = TopRow<TcpDim, TcpCounters>;

/// The top-K lists fixed at the end of a round, and which processes they hold.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tops {
    pub cpu: Vec<ProcessRow>,
    pub io: Vec<IoProcessRow>,
    pub tcp: Vec<TcpProcessRow>,
    pub(super) cpu_keys: HashSet<ProcessKey>,
    pub(super) io_keys: HashSet<ProcessKey>,
    pub(super) tcp_keys: HashSet<ProcessKey>,
}

impl Tops {
    pub(super) fn rank(procs: &HashMap<ProcessKey, ProcState>, k: usize) -> Self {
        let (cpu_keys, cpu) = by_cpu(procs, k).into_iter().unzip();
        let (io_keys, io) = by_use(procs, k, |st| &st.io, |c| c.bytes)
            .into_iter()
            .unzip();
        let (tcp_keys, tcp) = by_use(procs, k, |st| &st.tcp, TcpCounters::bytes)
            .into_iter()
            .unzip();
        Self {
            cpu,
            io,
            tcp,
            cpu_keys,
            io_keys,
            tcp_keys,
        }
    }
}

/// The `k` live processes with the most recent CPU use (ties: most total CPU, then pid).
pub(super) fn by_cpu(
    procs: &HashMap<ProcessKey, ProcState>,
    k: usize,
) -> Vec<(ProcessKey, ProcessRow)> {
    let mut rows: Vec<(ProcessKey, ProcessRow)> = procs
        .iter()
        .filter(|(_, st)| st.live)
        .map(|(key, st)| {
            let row = ProcessRow {
                pid: key.tgid,
                comm: st.comm.clone(),
                instance: st.instance.clone(),
                cpu_ns: st.cpu_ns,
                run_delay_ns: st.run_delay_ns,
                score: st.score,
            };
            (*key, row)
        })
        .collect();
    rows.sort_by(|(_, a), (_, b)| {
        b.score
            .total_cmp(&a.score)
            .then(b.cpu_ns.cmp(&a.cpu_ns))
            .then(a.pid.cmp(&b.pid))
    });
    rows.truncate(k);
    rows
}

/// The `k` live processes with the most recent use of the `select`ed resource; processes whose
/// counters are all zero by `bytes` are not listed (ties: most bytes in total, then pid).
pub(super) fn by_use<D: Clone + Ord + Hash, C: Clone>(
    procs: &HashMap<ProcessKey, ProcState>,
    k: usize,
    select: impl Fn(&ProcState) -> &Tracked<D, C>,
    bytes: impl Fn(&C) -> u64,
) -> Vec<(ProcessKey, TopRow<D, C>)> {
    let mut rows: Vec<(u64, ProcessKey, TopRow<D, C>)> = procs
        .iter()
        .filter(|(_, st)| st.live)
        .filter_map(|(key, st)| {
            let tracked = select(st);
            let total: u64 = tracked.total.values().map(&bytes).sum();
            if total == 0 {
                return None;
            }
            let mut counters: Vec<(D, C)> = tracked
                .total
                .iter()
                .map(|(d, c)| (d.clone(), c.clone()))
                .collect();
            counters.sort_by(|a, b| a.0.cmp(&b.0));
            let row = TopRow {
                pid: key.tgid,
                comm: st.comm.clone(),
                instance: st.instance.clone(),
                counters,
                score: tracked.score,
            };
            Some((total, *key, row))
        })
        .collect();
    rows.sort_by(|(ta, _, a), (tb, _, b)| {
        b.score
            .total_cmp(&a.score)
            .then(tb.cmp(ta))
            .then(a.pid.cmp(&b.pid))
    });
    rows.into_iter()
        .take(k)
        .map(|(_, key, row)| (key, row))
        .collect()
}
