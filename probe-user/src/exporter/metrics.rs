//! The metrics, encoded with prometheus-client from a [`Snapshot`] taken at scrape time.

use std::borrow::Cow;

use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder,
        NoLabelSet,
    },
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType, TypedMetric},
    registry::{Registry, Unit},
};

use crate::{
    collect::bpfstats::ProgramStats,
    daemon::Snapshot,
    model::{
        accounts::{InstanceTotals, IoProcessRow, ProcessRow, TcpProcessRow},
        io::Op,
        latency::Latency,
        tcp::{Role, TcpCounters, TcpDim},
    },
};

/// A label value, escaped as the exposition formats require.
///
/// prometheus-client 0.23 writes label values verbatim; a process named `a"b` would otherwise
/// break the whole scrape. Values are already printable (see `model::names`), but escaping here
/// keeps the output valid whatever a caller passes.
#[derive(Clone, Debug)]
pub struct Escaped<'a>(pub Cow<'a, str>);

impl EncodeLabelValue for Escaped<'_> {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write as _;
        let s = self.0.as_ref();
        let mut rest = s;
        while let Some(i) = rest.find(['\\', '"', '\n']) {
            encoder.write_str(&rest[..i])?;
            encoder.write_str(match rest.as_bytes()[i] {
                b'\\' => "\\\\",
                b'"' => "\\\"",
                _ => "\\n",
            })?;
            rest = &rest[i + 1..];
        }
        encoder.write_str(rest)
    }
}

fn esc(s: &str) -> Escaped<'_> {
    Escaped(Cow::Borrowed(s))
}

fn owned<'a>(s: String) -> Escaped<'a> {
    Escaped(Cow::Owned(s))
}

type Labels<'a> = Vec<(&'static str, Escaped<'a>)>;

/// Nanoseconds to seconds (a division, so that e.g. 1_064_000 ns is exactly 0.001064).
fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// Encodes the snapshot as OpenMetrics text.
pub fn encode_openmetrics(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct SnapshotCollector(Snapshot);

/// Writes one metric family: `rows` are (labels, value) pairs.
fn family<'a, M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder,
    (name, unit, help): Desc,
    rows: impl IntoIterator<Item = (Labels<'a>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = enc.encode_descriptor(name, help, unit.as_ref(), M::TYPE)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family with a single, unlabelled sample.
fn single<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    (name, unit, help): Desc,
    value: M,
) -> Result<(), std::fmt::Error> {
    value.encode(enc.encode_descriptor(name, help, unit.as_ref(), value.metric_type())?)
}

fn inst(name: &str) -> Labels<'_> {
    vec![("service_instance", esc(name))]
}

/// Labels of the `other` row of an instance in probe_process_* families: what its processes
/// outside the top-K used.
fn other_labels(instance: &str) -> Labels<'_> {
    vec![
        ("service_instance", esc(instance)),
        ("pid", esc("other")),
        ("comm", esc("other")),
    ]
}

/// Adds `device` and (except for dirtied bytes) `op` to a process row's labels.
fn io_row<'a>(mut labels: Labels<'a>, device: &'a str, op: Op, dirtied: bool) -> Labels<'a> {
    labels.push(("device", esc(device)));
    if !dirtied {
        labels.push(("op", esc(op.label())));
    }
    labels
}

fn proc_labels(p: &ProcessRow) -> Labels<'_> {
    vec![
        ("service_instance", esc(&p.instance)),
        ("pid", owned(p.pid.to_string())),
        ("comm", esc(&p.comm)),
    ]
}

/// A histogram whose buckets are already counted (by the kernel).
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    /// (upper bound, count in this bucket alone); the last bound is f64::MAX (+Inf).
    buckets: Vec<(f64, u64)>,
}

impl ConstHistogram {
    fn latency(l: &Latency) -> Self {
        let buckets = l
            .bounded_buckets()
            .map(|(le, n)| (if le.is_infinite() { f64::MAX } else { le }, n))
            .collect();
        Self {
            sum: secs(l.sum_ns),
            count: l.count,
            buckets,
        }
    }
}

impl TypedMetric for ConstHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn io_labels<'a>(instance: &'a str, device: &'a str, op: Op) -> Labels<'a> {
    vec![
        ("service_instance", esc(instance)),
        ("device", esc(device)),
        ("op", esc(op.label())),
    ]
}

/// `service_instance`, `port` and, on outgoing connections to a port the user named,
/// `remote_port`.
fn tcp_labels<'a>(instance: &'a str, dim: &TcpDim) -> Labels<'a> {
    let mut labels = vec![
        ("service_instance", esc(instance)),
        ("port", owned(dim.port_label())),
    ];
    if let Some(r) = dim.remote_port_label() {
        labels.push(("remote_port", owned(r)));
    }
    labels
}

fn port_labels(instance: &str, port: u16) -> Labels<'_> {
    vec![
        ("service_instance", esc(instance)),
        ("port", owned(port.to_string())),
    ]
}

fn with_direction<'a>(mut labels: Labels<'a>, dir: &'static str) -> Labels<'a> {
    labels.push(("direction", esc(dir)));
    labels
}

/// (labels, counter) rows for both directions of TCP payload bytes.
fn tcp_byte_rows<'a>(
    labels: Labels<'a>,
    c: &TcpCounters,
) -> impl Iterator<Item = (Labels<'a>, ConstCounter<u64>)> {
    let rows = [("rx", c.rx_bytes), ("tx", c.tx_bytes)];
    rows.into_iter()
        .map(move |(dir, n)| (with_direction(labels.clone(), dir), ConstCounter::new(n)))
}

fn counter(v: f64) -> ConstCounter<f64> {
    ConstCounter::new(v)
}

fn gauge(v: i64) -> ConstGauge<i64> {
    ConstGauge::new(v)
}

/// Name (without the unit suffix), unit and help of a family.
type Desc = (&'static str, Option<Unit>, &'static str);

const CPU: Desc = (
    "probe_cpu",
    Some(Unit::Seconds),
    "On-CPU time of the instance's processes (the kernel's se.sum_exec_runtime).",
);
const RUNQ: Desc = (
    "probe_cpu_runqueue_wait",
    Some(Unit::Seconds),
    "Time the instance's threads were runnable but waited for a CPU (sched_info.run_delay).",
);
const RSS: Desc = (
    "probe_memory_rss",
    Some(Unit::Bytes),
    "Resident memory of the instance's live processes (file, anon and shmem pages).",
);
const INSTANCE_PROCS: Desc = (
    "probe_instance_processes",
    None,
    "Live processes in the instance.",
);
const PROC_CPU: Desc = ("probe_process_cpu", Some(Unit::Seconds), "On-CPU time of the top processes by recent CPU use (--process.top-k); pid=\"other\": the instance's other processes, while they were not listed.");
const RUNQ_LATENCY: Desc = ("probe_runqueue_latency", Some(Unit::Seconds), "How long the instance's threads waited for a CPU each time they became runnable (woken or preempted), to when they ran.");
const INSTANCE_INFO: Desc = ("probe_instance_info", None, "Each exported instance, the rule that named it, and the container and Kubernetes pod its cgroup path names (empty if none); the value is always 1.");
const FOLDED: Desc = ("probe_instances_folded", None, "Instance names counted in service_instance=\"other\" because the number of instances reached its cap (max in [instances]).");
const RELOADS: Desc = (
    "probe_config_reloads",
    None,
    "Reloads on SIGHUP of the rule file (file=rules) and the web config (file=web): result=success, or failure (the previous one stays).",
);
const RELOAD_OK: Desc = (
    "probe_config_last_reload_successful",
    None,
    "1 if the last reload of the file (file=rules or web) succeeded, or none failed yet.",
);
const RESTORED: Desc = ("probe_state_restored", None, "1 if this daemon carries on from the accounts a previous one saved (--state.file) with the maps it pinned (--bpf.pin-path): its counters continue, no reset.");
const STATE_SAVE_FAILURES: Desc = ("probe_state_save_failures", None, "Saves of the accounts (--state.file, at every collection) that failed: a restart after one counts from the last good save.");
const RUNQ_EVENTS: Desc = (
    "probe_runqueue_events",
    None,
    "Switch-outs whose run-queue wait was not counted: result=lost: the thread had no entry and the run-queue thread map was full (--runq.map-size).",
);
const PROC_RUNQ: Desc = (
    "probe_process_cpu_runqueue_wait",
    Some(Unit::Seconds),
    "Run-queue wait of the top processes by recent CPU use.",
);
const BLOCK_BYTES: Desc = ("probe_block", Some(Unit::Bytes), "Bytes the instance's processes read, wrote or discarded on each disk, counted at completion; writeback is charged to the process that dirtied the file.");
const BLOCK_OPS: Desc = (
    "probe_block_ops",
    None,
    "Block requests of the instance's processes completed on each disk.",
);
const BLOCK_LATENCY: Desc = ("probe_block_latency", Some(Unit::Seconds), "Time from the start of each block request to its completion (what /sys/block/<dev>/stat counts).");
const BLOCK_DIRTIED: Desc = ("probe_block_dirtied", Some(Unit::Bytes), "Page-cache bytes the instance's processes dirtied on files of each disk (buffered writes, counted when written, before writeback).");
const PROC_BLOCK_BYTES: Desc = (
    "probe_process_block",
    Some(Unit::Bytes),
    "Block bytes of the top processes by recent block IO (--process.top-k).",
);
const PROC_BLOCK_OPS: Desc = (
    "probe_process_block_ops",
    None,
    "Block requests of the top processes by recent block IO.",
);
const PROC_DIRTIED: Desc = (
    "probe_process_block_dirtied",
    Some(Unit::Bytes),
    "Page-cache bytes dirtied by the top processes by recent block IO.",
);
const BLOCK_EVENTS: Desc = ("probe_block_events", None, "Block requests not counted: result=unmatched: completed, its start was not seen (in flight when probe started); result=lost: the block IO map was full; result=end_missed: started, its completion was not seen (the kernel did not run probe's program; found when its device is idle or its slot is reused).");
const WRITEBACK: Desc = ("probe_block_writeback_requests", None, "Writes issued by kernel threads (writeback, journal): charged_to=writer: to the process that dirtied the file; charged_to=kernel: no writer known (metadata, journal).");
const TCP_BYTES: Desc = ("probe_tcp", Some(Unit::Bytes), "TCP payload bytes the instance's processes received (direction=rx) and sent (tx), per listening port (port=\"ephemeral\": outgoing connections, with remote_port when --tcp.remote-ports names it).");
const TCP_CONNECTIONS: Desc = (
    "probe_tcp_connections",
    None,
    "TCP connections accepted on the instance's listening port (handshake completed).",
);
const TCP_CLOSED: Desc = (
    "probe_tcp_connections_closed",
    None,
    "Accepted TCP connections on the instance's listening port that closed.",
);
const TCP_ESTABLISHED: Desc = ("probe_tcp_established", None, "TCP connections established on the instance's listening port now (the daemon's network namespace).");
const TCP_RETRANSMITS: Desc = ("probe_tcp_retransmits", None, "TCP segments retransmitted by the instance's sockets (what TcpRetransSegs counts), per port as for probe_tcp_bytes_total.");
const TCP_RTT: Desc = ("probe_tcp_rtt", Some(Unit::Seconds), "Smoothed RTT of connections accepted on the instance's listening port, sampled at every RTT measurement.");
const PROC_TCP_BYTES: Desc = (
    "probe_process_tcp",
    Some(Unit::Bytes),
    "TCP payload bytes of the top processes by recent TCP traffic (--process.top-k).",
);
const TCP_EVENTS: Desc = (
    "probe_tcp_events",
    None,
    "TCP events not counted: result=lost: a TCP map was full (raise --tcp.map-size).",
);
const UP: Desc = (
    "probe_collector_up",
    None,
    "1 if the collector's hook is attached and its last read succeeded.",
);
const HOOK: Desc = (
    "probe_collector_hook_info",
    None,
    "The hook each working collector uses on this kernel.",
);
const ERRORS: Desc = (
    "probe_collector_errors",
    None,
    "Failed reads per collector since the daemon started.",
);
const RUNS: Desc = (
    "probe_bpf_program_runs",
    None,
    "Times each kernel program ran while the kernel kept BPF statistics (--bpf.stats).",
);
const MISSED: Desc = (
    "probe_bpf_program_missed_runs",
    None,
    "Runs of each kernel program the kernel skipped because the program was already running on that CPU (an interrupt fired the same hook while it ran); the events of those runs are missing from every other counter. Linux 5.12+.",
);
const RUN_TIME: Desc = ("probe_bpf_program_run", Some(Unit::Seconds), "Time spent in each kernel program while the kernel kept BPF statistics (--bpf.stats); divided by runs, the cost per event.");
const EXITS: Desc = ("probe_exited_threads", None, "Exiting threads whose final CPU totals the exit hook recorded; result=lost: the dead-thread map was full.");
const PROCESSES: Desc = ("probe_processes", None, "Live processes tracked.");
const INSTANCES: Desc = ("probe_instances", None, "Service instances exported.");
const COLLECT: Desc = (
    "probe_collect_duration",
    Some(Unit::Seconds),
    "Time the collection behind this scrape took (kernel reads, /proc, aggregation).",
);
const COLLECTIONS: Desc = (
    "probe_collections",
    None,
    "Collections since the daemon started (scrapes and timer).",
);
const BUILD: Desc = (
    "probe_build_info",
    None,
    "Version of the probe daemon; the value is always 1.",
);

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let e = &mut enc;
        let inst_rows =
            |f: fn(&InstanceTotals) -> u64| s.instances.iter().map(move |(n, t)| (inst(n), f(t)));

        family(
            e,
            CPU,
            inst_rows(|t| t.cpu_ns).map(|(l, v)| (l, counter(secs(v)))),
        )?;
        family(
            e,
            RUNQ,
            inst_rows(|t| t.run_delay_ns).map(|(l, v)| (l, counter(secs(v)))),
        )?;
        family(
            e,
            RSS,
            inst_rows(|t| t.rss_bytes).map(|(l, v)| (l, gauge(clamp(v)))),
        )?;
        family(
            e,
            INSTANCE_PROCS,
            inst_rows(|t| t.processes).map(|(l, v)| (l, gauge(clamp(v)))),
        )?;

        family(
            e,
            RUNQ_LATENCY,
            s.runq
                .iter()
                .map(|(i, c)| (inst(i), ConstHistogram::latency(c))),
        )?;
        family(
            e,
            INSTANCE_INFO,
            s.meta.iter().map(|(i, m)| {
                let labels = vec![
                    ("service_instance", esc(i)),
                    ("rule", esc(&m.rule)),
                    ("container", esc(m.container.as_deref().unwrap_or(""))),
                    ("pod_uid", esc(m.pod_uid.as_deref().unwrap_or(""))),
                ];
                (labels, gauge(1))
            }),
        )?;

        family(
            e,
            PROC_CPU,
            s.top
                .iter()
                .map(|p| (proc_labels(p), counter(secs(p.cpu_ns))))
                .chain(
                    s.other_cpu
                        .iter()
                        .map(|(i, (cpu, _))| (other_labels(i), counter(secs(*cpu)))),
                ),
        )?;
        family(
            e,
            PROC_RUNQ,
            s.top
                .iter()
                .map(|p| (proc_labels(p), counter(secs(p.run_delay_ns))))
                .chain(
                    s.other_cpu
                        .iter()
                        .map(|(i, (_, delay))| (other_labels(i), counter(secs(*delay)))),
                ),
        )?;

        let block = s.io.iter().filter(|((_, (_, op)), _)| *op != Op::Dirtied);
        family(
            e,
            BLOCK_BYTES,
            block
                .clone()
                .map(|((i, (d, op)), c)| (io_labels(i, d, *op), ConstCounter::new(c.bytes))),
        )?;
        family(
            e,
            BLOCK_OPS,
            block
                .clone()
                .map(|((i, (d, op)), c)| (io_labels(i, d, *op), ConstCounter::new(c.ops()))),
        )?;
        family(
            e,
            BLOCK_LATENCY,
            block.map(|((i, (d, op)), c)| {
                (io_labels(i, d, *op), ConstHistogram::latency(&c.latency))
            }),
        )?;
        family(
            e,
            BLOCK_DIRTIED,
            s.io.iter()
                .filter(|((_, (_, op)), _)| *op == Op::Dirtied)
                .map(|((i, (d, _)), c)| {
                    let labels = vec![("service_instance", esc(i)), ("device", esc(d))];
                    (labels, ConstCounter::new(c.bytes))
                }),
        )?;
        let proc_io = |dirtied: bool| {
            let listed = s.top_io.iter().flat_map(move |p: &IoProcessRow| {
                p.counters
                    .iter()
                    .filter(move |((_, op), _)| (*op == Op::Dirtied) == dirtied)
                    .map(move |((d, op), c)| {
                        let labels = vec![
                            ("service_instance", esc(&p.instance)),
                            ("pid", owned(p.pid.to_string())),
                            ("comm", esc(&p.comm)),
                        ];
                        (io_row(labels, d, *op, dirtied), c)
                    })
            });
            let other = s
                .other_io
                .iter()
                .filter(move |((_, (_, op)), _)| (*op == Op::Dirtied) == dirtied)
                .map(move |((i, (d, op)), c)| (io_row(other_labels(i), d, *op, dirtied), c));
            listed.chain(other)
        };
        family(
            e,
            PROC_BLOCK_BYTES,
            proc_io(false).map(|(l, c)| (l, ConstCounter::new(c.bytes))),
        )?;
        family(
            e,
            PROC_BLOCK_OPS,
            proc_io(false).map(|(l, c)| (l, ConstCounter::new(c.ops()))),
        )?;
        family(
            e,
            PROC_DIRTIED,
            proc_io(true).map(|(l, c)| (l, ConstCounter::new(c.bytes))),
        )?;
        let b = &s.stats.block;
        family(
            e,
            BLOCK_EVENTS,
            [
                ("unmatched", b.unmatched),
                ("lost", b.lost),
                ("end_missed", b.end_missed + s.stats.block_ends_found),
            ]
            .map(|(r, n)| (vec![("result", esc(r))], ConstCounter::new(n))),
        )?;
        family(
            e,
            WRITEBACK,
            [
                ("writer", b.writeback_charged),
                ("kernel", b.writeback_kernel),
            ]
            .map(|(r, n)| (vec![("charged_to", esc(r))], ConstCounter::new(n))),
        )?;

        family(
            e,
            TCP_BYTES,
            s.tcp
                .iter()
                .flat_map(|((i, d), c)| tcp_byte_rows(tcp_labels(i, d), c)),
        )?;
        let server = || s.tcp.iter().filter(|((_, d), _)| d.role == Role::Server);
        family(
            e,
            TCP_CONNECTIONS,
            server().map(|((i, d), c)| (tcp_labels(i, d), ConstCounter::new(c.accepted))),
        )?;
        family(
            e,
            TCP_CLOSED,
            server().map(|((i, d), c)| (tcp_labels(i, d), ConstCounter::new(c.closed))),
        )?;
        family(
            e,
            TCP_ESTABLISHED,
            s.established
                .iter()
                .map(|((i, p), n)| (port_labels(i, *p), gauge(clamp(*n)))),
        )?;
        family(
            e,
            TCP_RETRANSMITS,
            s.tcp
                .iter()
                .map(|((i, d), c)| (tcp_labels(i, d), ConstCounter::new(c.retransmits))),
        )?;
        family(
            e,
            TCP_RTT,
            s.rtt
                .iter()
                .map(|((i, p), c)| (port_labels(i, *p), ConstHistogram::latency(c))),
        )?;
        family(
            e,
            PROC_TCP_BYTES,
            s.top_tcp
                .iter()
                .flat_map(|p: &TcpProcessRow| {
                    p.counters.iter().flat_map(move |(d, c)| {
                        let mut labels = tcp_labels(&p.instance, d);
                        labels.insert(1, ("pid", owned(p.pid.to_string())));
                        labels.insert(2, ("comm", esc(&p.comm)));
                        tcp_byte_rows(labels, c)
                    })
                })
                .chain(s.other_tcp.iter().flat_map(|((i, d), c)| {
                    let mut labels = tcp_labels(i, d);
                    labels.insert(1, ("pid", esc("other")));
                    labels.insert(2, ("comm", esc("other")));
                    tcp_byte_rows(labels, c)
                })),
        )?;
        family(
            e,
            RUNQ_EVENTS,
            [(
                vec![("result", esc("lost"))],
                ConstCounter::new(s.stats.runq_lost),
            )],
        )?;
        family(
            e,
            TCP_EVENTS,
            [(
                vec![("result", esc("lost"))],
                ConstCounter::new(s.stats.tcp_lost),
            )],
        )?;

        family(
            e,
            UP,
            s.collectors
                .iter()
                .map(|(c, up)| (vec![("collector", esc(c.name))], gauge(i64::from(*up)))),
        )?;
        let hooks = s.collectors.iter().filter_map(|(c, _)| {
            Some((
                vec![("collector", esc(c.name)), ("hook", esc(c.hook?))],
                gauge(1),
            ))
        });
        family(e, HOOK, hooks)?;
        family(
            e,
            ERRORS,
            s.stats
                .errors
                .iter()
                .map(|(c, n)| (vec![("collector", esc(c))], ConstCounter::new(*n))),
        )?;

        let prog = |p: &ProgramStats| vec![("program", esc(p.program))];
        family(
            e,
            MISSED,
            s.stats
                .programs
                .iter()
                .filter_map(|p| Some((prog(p), ConstCounter::new(p.missed?)))),
        )?;
        // Without statistics the kernel counts nothing: no rows rather than zeros that read
        // as "never ran".
        family(
            e,
            RUNS,
            s.stats
                .programs
                .iter()
                .filter_map(|p| Some((prog(p), ConstCounter::new(p.cost?.runs)))),
        )?;
        family(
            e,
            RUN_TIME,
            s.stats
                .programs
                .iter()
                .filter_map(|p| Some((prog(p), counter(secs(p.cost?.run_ns))))),
        )?;
        let exits = [
            ("recorded", s.stats.exits_recorded),
            ("lost", s.stats.exits_lost),
        ];
        family(
            e,
            EXITS,
            exits.map(|(r, n)| (vec![("result", esc(r))], ConstCounter::new(n))),
        )?;

        single(e, PROCESSES, gauge(clamp(s.processes as u64)))?;
        single(e, INSTANCES, gauge(clamp(s.instances.len() as u64)))?;
        single(e, FOLDED, gauge(clamp(s.folded_instances as u64)))?;
        family(
            e,
            RELOADS,
            [
                ("rules", s.stats.rule_reloads),
                ("web", s.stats.web_reloads),
            ]
            .into_iter()
            .flat_map(|(f, r)| {
                [("success", r.ok), ("failure", r.failed)].map(|(res, n)| {
                    (
                        vec![("file", esc(f)), ("result", esc(res))],
                        ConstCounter::new(n),
                    )
                })
            }),
        )?;
        family(
            e,
            RELOAD_OK,
            [
                ("rules", s.stats.rule_reloads),
                ("web", s.stats.web_reloads),
            ]
            .map(|(f, r)| {
                (
                    vec![("file", esc(f))],
                    gauge(i64::from(r.last_successful())),
                )
            }),
        )?;
        single(
            e,
            COLLECT,
            ConstGauge::new(s.stats.last_collect.as_secs_f64()),
        )?;
        single(e, COLLECTIONS, ConstCounter::new(s.stats.collections))?;
        single(e, RESTORED, gauge(i64::from(s.stats.restored)))?;
        single(
            e,
            STATE_SAVE_FAILURES,
            ConstCounter::new(s.stats.state_save_failures),
        )?;
        family(
            e,
            BUILD,
            [(vec![("version", esc(env!("CARGO_PKG_VERSION")))], gauge(1))],
        )?;
        Ok(())
    }
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{daemon::SelfStats, loader::CollectorStatus, model::io::IoCounters};

    fn snapshot() -> Snapshot {
        Snapshot {
            instances: vec![(
                "mariadbd:3307".into(),
                InstanceTotals {
                    cpu_ns: 1_500_000_000,
                    run_delay_ns: 250_000_000,
                    rss_bytes: 4096,
                    processes: 1,
                },
            )],
            top: vec![ProcessRow {
                pid: 42,
                comm: "a\"b\\c\nd".into(),
                instance: "x".into(),
                cpu_ns: 2_000_000_000,
                run_delay_ns: 0,
                score: 1.0,
            }],
            io: vec![
                (("mariadbd:3307".into(), ("vda".into(), Op::Write)), {
                    let mut c = IoCounters {
                        bytes: 1 << 20,
                        latency: Latency {
                            count: 3,
                            sum_ns: 3_500_000,
                            ..Latency::default()
                        },
                    };
                    c.latency.buckets[0] = 1;
                    c.latency.buckets[11] = 2;
                    c
                }),
                (
                    ("mariadbd:3307".into(), ("vda".into(), Op::Dirtied)),
                    IoCounters {
                        bytes: 8192,
                        ..IoCounters::default()
                    },
                ),
            ],
            top_io: vec![IoProcessRow {
                pid: 42,
                comm: "mariadbd".into(),
                instance: "mariadbd:3307".into(),
                counters: vec![
                    (
                        ("vda".into(), Op::Read),
                        IoCounters {
                            bytes: 4096,
                            latency: Latency {
                                count: 1,
                                ..Latency::default()
                            },
                        },
                    ),
                    (
                        ("vda".into(), Op::Dirtied),
                        IoCounters {
                            bytes: 8192,
                            ..IoCounters::default()
                        },
                    ),
                ],
                score: 1.0,
            }],
            tcp: vec![
                (
                    (
                        "mariadbd:3307".into(),
                        TcpDim {
                            role: Role::Server,
                            port: 3307,
                        },
                    ),
                    TcpCounters {
                        rx_bytes: 10,
                        tx_bytes: 20,
                        retransmits: 1,
                        accepted: 2,
                        closed: 1,
                    },
                ),
                (
                    (
                        "mariadbd:3307".into(),
                        TcpDim {
                            role: Role::Client,
                            port: 443,
                        },
                    ),
                    TcpCounters {
                        tx_bytes: 5,
                        ..TcpCounters::default()
                    },
                ),
            ],
            rtt: vec![(("mariadbd:3307".into(), 3307), {
                let mut c = Latency {
                    count: 2,
                    sum_ns: 60_000,
                    ..Latency::default()
                };
                c.buckets[5] = 2;
                c
            })],
            established: vec![(("mariadbd:3307".into(), 3307), 1)],
            top_tcp: vec![TcpProcessRow {
                pid: 42,
                comm: "mariadbd".into(),
                instance: "mariadbd:3307".into(),
                counters: vec![(
                    TcpDim {
                        role: Role::Client,
                        port: 0,
                    },
                    TcpCounters {
                        rx_bytes: 7,
                        ..TcpCounters::default()
                    },
                )],
                score: 1.0,
            }],
            runq: vec![("mariadbd:3307".into(), {
                let mut c = Latency {
                    count: 4,
                    sum_ns: 40_000,
                    ..Latency::default()
                };
                c.buckets[4] = 4;
                c
            })],
            other_cpu: vec![("mariadbd:3307".into(), (500_000_000, 0))],
            other_io: vec![(
                ("mariadbd:3307".into(), ("vda".into(), Op::Write)),
                IoCounters {
                    bytes: 512,
                    latency: Latency {
                        count: 1,
                        ..Latency::default()
                    },
                },
            )],
            other_tcp: vec![(
                (
                    "mariadbd:3307".into(),
                    TcpDim {
                        role: Role::Server,
                        port: 3307,
                    },
                ),
                TcpCounters {
                    rx_bytes: 3,
                    ..TcpCounters::default()
                },
            )],
            meta: vec![(
                "mariadbd:3307".into(),
                crate::daemon::InstanceMeta {
                    rule: "listener".into(),
                    container: Some("0123456789ab".into()),
                    pod_uid: None,
                },
            )],
            folded_instances: 2,
            collectors: vec![(
                CollectorStatus {
                    name: "cpu",
                    hook: Some("iter/task"),
                    notes: vec![],
                },
                true,
            )],
            stats: SelfStats::default(),
            processes: 1,
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let text = encode_openmetrics(snapshot()).expect("encode");
        assert!(
            text.contains(r#"probe_process_cpu_seconds_total{service_instance="x",pid="42",comm="a\"b\\c\nd"} 2.0"#),
            "{text}"
        );
    }

    #[test]
    fn counters_and_units_follow_the_naming_rules() {
        let text = encode_openmetrics(snapshot()).expect("encode");
        for line in [
            "# TYPE probe_cpu_seconds counter",
            "# UNIT probe_cpu_seconds seconds",
            r#"probe_cpu_seconds_total{service_instance="mariadbd:3307"} 1.5"#,
            r#"probe_cpu_runqueue_wait_seconds_total{service_instance="mariadbd:3307"} 0.25"#,
            r#"probe_memory_rss_bytes{service_instance="mariadbd:3307"} 4096"#,
            r#"probe_collector_up{collector="cpu"} 1"#,
            r#"probe_collector_hook_info{collector="cpu",hook="iter/task"} 1"#,
            r#"probe_block_bytes_total{service_instance="mariadbd:3307",device="vda",op="write"} 1048576"#,
            r#"probe_block_ops_total{service_instance="mariadbd:3307",device="vda",op="write"} 3"#,
            "# TYPE probe_block_latency_seconds histogram",
            r#"probe_block_latency_seconds_sum{service_instance="mariadbd:3307",device="vda",op="write"} 0.0035"#,
            r#"probe_block_latency_seconds_count{service_instance="mariadbd:3307",device="vda",op="write"} 3"#,
            r#"probe_block_latency_seconds_bucket{le="0.000001",service_instance="mariadbd:3307",device="vda",op="write"} 1"#,
            r#"probe_block_latency_seconds_bucket{le="0.001024",service_instance="mariadbd:3307",device="vda",op="write"} 1"#,
            r#"probe_block_latency_seconds_bucket{le="0.002048",service_instance="mariadbd:3307",device="vda",op="write"} 3"#,
            r#"probe_block_latency_seconds_bucket{le="+Inf",service_instance="mariadbd:3307",device="vda",op="write"} 3"#,
            r#"probe_block_dirtied_bytes_total{service_instance="mariadbd:3307",device="vda"} 8192"#,
            r#"probe_process_block_bytes_total{service_instance="mariadbd:3307",pid="42",comm="mariadbd",device="vda",op="read"} 4096"#,
            r#"probe_process_block_dirtied_bytes_total{service_instance="mariadbd:3307",pid="42",comm="mariadbd",device="vda"} 8192"#,
            r#"probe_tcp_bytes_total{service_instance="mariadbd:3307",port="3307",direction="rx"} 10"#,
            r#"probe_tcp_bytes_total{service_instance="mariadbd:3307",port="3307",direction="tx"} 20"#,
            r#"probe_tcp_bytes_total{service_instance="mariadbd:3307",port="ephemeral",remote_port="443",direction="tx"} 5"#,
            r#"probe_tcp_connections_total{service_instance="mariadbd:3307",port="3307"} 2"#,
            r#"probe_tcp_connections_closed_total{service_instance="mariadbd:3307",port="3307"} 1"#,
            r#"probe_tcp_established{service_instance="mariadbd:3307",port="3307"} 1"#,
            r#"probe_tcp_retransmits_total{service_instance="mariadbd:3307",port="3307"} 1"#,
            r#"probe_tcp_rtt_seconds_bucket{le="0.000032",service_instance="mariadbd:3307",port="3307"} 2"#,
            r#"probe_tcp_rtt_seconds_sum{service_instance="mariadbd:3307",port="3307"} 0.00006"#,
            r#"probe_process_tcp_bytes_total{service_instance="mariadbd:3307",pid="42",comm="mariadbd",port="ephemeral",direction="rx"} 7"#,
            r#"probe_runqueue_latency_seconds_bucket{le="0.000016",service_instance="mariadbd:3307"} 4"#,
            r#"probe_runqueue_latency_seconds_sum{service_instance="mariadbd:3307"} 0.00004"#,
            r#"probe_runqueue_latency_seconds_count{service_instance="mariadbd:3307"} 4"#,
            r#"probe_instance_info{service_instance="mariadbd:3307",rule="listener",container="0123456789ab",pod_uid=""} 1"#,
            r#"probe_process_cpu_seconds_total{service_instance="mariadbd:3307",pid="other",comm="other"} 0.5"#,
            r#"probe_process_block_bytes_total{service_instance="mariadbd:3307",pid="other",comm="other",device="vda",op="write"} 512"#,
            r#"probe_process_tcp_bytes_total{service_instance="mariadbd:3307",pid="other",comm="other",port="3307",direction="rx"} 3"#,
            "probe_instances_folded 2",
            r#"probe_config_reloads_total{file="rules",result="failure"} 0"#,
            r#"probe_config_reloads_total{file="web",result="success"} 0"#,
            r#"probe_config_last_reload_successful{file="web"} 1"#,
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }

    /// The README lists every family literally (HELP and TYPE as the classic format prints
    /// them); this keeps it true.
    #[test]
    fn readme_lists_every_metric() {
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README.md");
        let classic = crate::exporter::classic::from_openmetrics(
            &encode_openmetrics(snapshot()).expect("encode"),
        );
        for line in classic
            .lines()
            .filter(|l| l.starts_with("# HELP ") || l.starts_with("# TYPE "))
        {
            assert!(
                readme.lines().any(|r| r == line),
                "README.md does not list:\n{line}"
            );
        }
    }
}
