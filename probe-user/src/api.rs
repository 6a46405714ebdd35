//! The JSON API: what `probe top` reads, cumulative per-instance and per-process counters at one
//! moment, as the daemon serves them on [`API_PATH`] and as `probe top` builds them itself when
//! it runs standalone. Rates come from two samples ([`crate::top::view`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{daemon::Snapshot, model::io::Op};

/// The daemon's JSON endpoint.
pub const API_PATH: &str = "/api/v1/top";
/// The daemon's history: `?begin=MS&end=MS` (unix ms) answers the view of that window,
/// `?at=MS[&step=N][&span=MS]` the view at a moment (`probe top --at`), both in the schema of
/// `probe top --once --format json`.
pub const HISTORY_PATH: &str = "/api/v1/history";

/// Version of the sample and view formats; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub version: u32,
    /// When the sample was taken, in seconds on the daemon's monotonic clock (so rates do not
    /// depend on network delays).
    pub taken_at_seconds: f64,
    pub instances: Vec<InstanceSample>,
    /// The daemon's top processes by CPU, block IO and TCP (each at most --process.top-k).
    pub processes: Vec<ProcessSample>,
}

/// Cumulative counters of one instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceSample {
    pub name: String,
    pub rule: String,
    pub container: Option<String>,
    pub pod_uid: Option<String>,
    pub processes: u64,
    pub cpu_ns: u64,
    pub runqueue_wait_ns: u64,
    /// Run-queue latency histogram: waits, their sum, and counts per bucket (bucket `i`: at
    /// most 2^i µs).
    pub runqueue: Histogram,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    /// Latency of the instance's read and write requests on all disks.
    pub disk_latency: Histogram,
    pub tcp: Vec<PortSample>,
}

/// A latency histogram: count, sum (`sum_ns`) and `buckets` (bucket `i`: at most 2^i µs).
pub use crate::model::latency::Latency as Histogram;

/// TCP payload bytes on one port (`ephemeral`: outgoing connections).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortSample {
    pub port: String,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Cumulative counters of one process; a resource the process is not in the top-K of is None.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessSample {
    pub pid: u32,
    pub comm: String,
    pub instance: String,
    pub cpu_ns: Option<u64>,
    pub runqueue_wait_ns: Option<u64>,
    pub disk_read_bytes: Option<u64>,
    pub disk_write_bytes: Option<u64>,
    pub tcp_rx_bytes: Option<u64>,
    pub tcp_tx_bytes: Option<u64>,
}

impl Sample {
    pub fn from_snapshot(s: &Snapshot, taken_at_seconds: f64) -> Self {
        let mut inst: BTreeMap<&str, InstanceSample> = BTreeMap::new();
        for (name, t) in &s.instances {
            let i = inst.entry(name).or_default();
            i.processes = t.processes;
            i.cpu_ns = t.cpu_ns;
            i.runqueue_wait_ns = t.run_delay_ns;
        }
        for (name, c) in &s.runq {
            inst.entry(name).or_default().runqueue.add(c);
        }
        for ((name, (_, op)), c) in &s.io {
            let i = inst.entry(name).or_default();
            match op {
                Op::Read => i.disk_read_bytes += c.bytes,
                Op::Write => i.disk_write_bytes += c.bytes,
                _ => continue,
            }
            i.disk_latency.add(&c.latency);
        }
        for ((name, dim), c) in &s.tcp {
            let i = inst.entry(name).or_default();
            let port = dim.port_label();
            match i.tcp.iter_mut().find(|p| p.port == port) {
                Some(p) => {
                    p.rx_bytes += c.rx_bytes;
                    p.tx_bytes += c.tx_bytes;
                }
                None => i.tcp.push(PortSample {
                    port,
                    rx_bytes: c.rx_bytes,
                    tx_bytes: c.tx_bytes,
                }),
            }
        }
        for (name, m) in &s.meta {
            if let Some(i) = inst.get_mut(&**name) {
                i.rule = m.rule.to_string();
                i.container.clone_from(&m.container);
                i.pod_uid.clone_from(&m.pod_uid);
            }
        }
        let instances = inst
            .into_iter()
            .map(|(name, mut i)| {
                i.name = name.to_string();
                i
            })
            .collect();

        let mut procs: BTreeMap<u32, ProcessSample> = BTreeMap::new();
        fn entry<'a>(
            procs: &'a mut BTreeMap<u32, ProcessSample>,
            pid: u32,
            comm: &str,
            instance: &str,
        ) -> &'a mut ProcessSample {
            procs.entry(pid).or_insert_with(|| ProcessSample {
                pid,
                comm: comm.to_string(),
                instance: instance.to_string(),
                ..ProcessSample::default()
            })
        }
        for p in &s.top {
            let e = entry(&mut procs, p.pid, &p.comm, &p.instance);
            e.cpu_ns = Some(p.cpu_ns);
            e.runqueue_wait_ns = Some(p.run_delay_ns);
        }
        for p in &s.top_io {
            let e = entry(&mut procs, p.pid, &p.comm, &p.instance);
            let sum = |want: Op| {
                p.counters
                    .iter()
                    .filter(|((_, op), _)| *op == want)
                    .map(|(_, c)| c.bytes)
                    .sum()
            };
            e.disk_read_bytes = Some(sum(Op::Read));
            e.disk_write_bytes = Some(sum(Op::Write));
        }
        for p in &s.top_tcp {
            let e = entry(&mut procs, p.pid, &p.comm, &p.instance);
            e.tcp_rx_bytes = Some(p.counters.iter().map(|(_, c)| c.rx_bytes).sum());
            e.tcp_tx_bytes = Some(p.counters.iter().map(|(_, c)| c.tx_bytes).sum());
        }
        Self {
            version: FORMAT_VERSION,
            taken_at_seconds,
            instances,
            processes: procs.into_values().collect(),
        }
    }
}
