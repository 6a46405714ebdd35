//! The metrics, encoded with prometheus-client from a [`Snapshot`] taken at scrape time.

use std::borrow::Cow;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelValue, EncodeMetric, LabelValueEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
    registry::{Registry, Unit},
};

use crate::{daemon::Snapshot, model::accounts::ProcessRow};

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

const NS: f64 = 1e-9;

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
fn family<'a, M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels<'a>, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = enc.encode_descriptor(name, help, unit, kind)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn inst(name: &str) -> Labels<'_> {
    vec![("service_instance", esc(name))]
}

fn proc_labels(p: &ProcessRow) -> Labels<'_> {
    vec![("service_instance", esc(&p.instance)), ("pid", owned(p.pid.to_string())), ("comm", esc(&p.comm))]
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let secs = Some(&Unit::Seconds);

        family(&mut enc, "probe_cpu", "On-CPU time of the instance's processes, from the kernel's per-task accounting (se.sum_exec_runtime).", secs, MetricType::Counter,
            s.instances.iter().map(|(n, t)| (inst(n), ConstCounter::new(t.cpu_ns as f64 * NS))))?;
        family(&mut enc, "probe_cpu_runqueue_wait", "Time the instance's threads spent runnable but waiting for a CPU (sched_info.run_delay).", secs, MetricType::Counter,
            s.instances.iter().map(|(n, t)| (inst(n), ConstCounter::new(t.run_delay_ns as f64 * NS))))?;
        family(&mut enc, "probe_memory_rss", "Resident memory of the instance's live processes (file + anon + shmem pages).", Some(&Unit::Bytes), MetricType::Gauge,
            s.instances.iter().map(|(n, t)| (inst(n), ConstGauge::new(t.rss_bytes as i64))))?;
        family(&mut enc, "probe_instance_processes", "Live processes in the instance.", None, MetricType::Gauge,
            s.instances.iter().map(|(n, t)| (inst(n), ConstGauge::new(t.processes as i64))))?;

        family(&mut enc, "probe_process_cpu", "On-CPU time of the top processes by recent CPU use (see --top-k); other processes are only in their instance's total.", secs, MetricType::Counter,
            s.top.iter().map(|p| (proc_labels(p), ConstCounter::new(p.cpu_ns as f64 * NS))))?;
        family(&mut enc, "probe_process_cpu_runqueue_wait", "Run-queue wait of the top processes by recent CPU use.", secs, MetricType::Counter,
            s.top.iter().map(|p| (proc_labels(p), ConstCounter::new(p.run_delay_ns as f64 * NS))))?;

        family(&mut enc, "probe_collector_up", "1 if the collector's hook is attached and its last read succeeded.", None, MetricType::Gauge,
            s.collectors.iter().map(|(c, up)| (vec![("collector", esc(c.name))], ConstGauge::new(i64::from(*up)))))?;
        family(&mut enc, "probe_collector_hook_info", "The hook each working collector uses on this kernel.", None, MetricType::Gauge,
            s.collectors.iter().filter_map(|(c, _)| Some((vec![("collector", esc(c.name)), ("hook", esc(c.hook?))], ConstGauge::new(1)))))?;
        family(&mut enc, "probe_collector_errors", "Failed reads per collector since the daemon started.", None, MetricType::Counter,
            s.stats.errors.iter().map(|(c, n)| (vec![("collector", esc(c))], ConstCounter::new(*n))))?;

        family(&mut enc, "probe_bpf_program_runs", "Times each kernel program ran (BPF statistics).", None, MetricType::Counter,
            s.stats.programs.iter().map(|p| (vec![("program", esc(p.program))], ConstCounter::new(p.runs))))?;
        family(&mut enc, "probe_bpf_program_run", "Time spent in each kernel program (BPF statistics); divide by runs for the cost per event.", secs, MetricType::Counter,
            s.stats.programs.iter().map(|p| (vec![("program", esc(p.program))], ConstCounter::new(p.run_ns as f64 * NS))))?;
        family(&mut enc, "probe_exited_threads", "Exiting threads whose final CPU totals the exit hook recorded (result=\"lost\": dead-thread map full).", None, MetricType::Counter,
            [("recorded", s.stats.exits_recorded), ("lost", s.stats.exits_lost)]
                .map(|(r, n)| (vec![("result", esc(r))], ConstCounter::new(n))))?;

        family(&mut enc, "probe_processes", "Live processes tracked.", None, MetricType::Gauge,
            [(Vec::new(), ConstGauge::new(s.processes as i64))])?;
        family(&mut enc, "probe_instances", "Service instances exported.", None, MetricType::Gauge,
            [(Vec::new(), ConstGauge::new(s.instances.len() as i64))])?;
        family(&mut enc, "probe_collect_duration", "Time the collection for this scrape took (kernel reads, /proc, aggregation).", secs, MetricType::Gauge,
            [(Vec::new(), ConstGauge::new(s.stats.last_collect.as_secs_f64()))])?;
        family(&mut enc, "probe_collections", "Collections since the daemon started (scrapes and timer).", None, MetricType::Counter,
            [(Vec::new(), ConstCounter::new(s.stats.collections))])?;
        family(&mut enc, "probe_build_info", "Version of the probe daemon; the value is always 1.", None, MetricType::Gauge,
            [(vec![("version", esc(env!("CARGO_PKG_VERSION")))], ConstGauge::new(1))])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{daemon::SelfStats, loader::CollectorStatus, model::accounts::InstanceTotals};

    fn snapshot() -> Snapshot {
        Snapshot {
            instances: vec![(
                "mariadbd:3307".into(),
                InstanceTotals { cpu_ns: 1_500_000_000, run_delay_ns: 250_000_000, rss_bytes: 4096, processes: 1 },
            )],
            top: vec![ProcessRow {
                pid: 42,
                comm: "a\"b\\c\nd".into(),
                instance: "x".into(),
                cpu_ns: 2_000_000_000,
                run_delay_ns: 0,
                score: 1.0,
            }],
            collectors: vec![(CollectorStatus { name: "cpu", hook: Some("iter/task"), notes: vec![] }, true)],
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
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
