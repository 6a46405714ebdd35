//! Per-instance CPU, memory and run-queue families, instance metadata, and the per-process CPU
//! rows (top-K and `other`).

use prometheus_client::{encoding::DescriptorEncoder, registry::Unit};

use super::{
    clamp, counter, family, gauge,
    labels::{Instance, InstanceInfo, Pid, Process},
    secs, ConstHistogram, Desc,
};
use crate::{
    daemon::Snapshot,
    model::accounts::{InstanceTotals, ProcessRow},
};

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
const PROC_RUNQ: Desc = (
    "probe_process_cpu_runqueue_wait",
    Some(Unit::Seconds),
    "Run-queue wait of the top processes by recent CPU use.",
);

pub(super) fn encode(s: &Snapshot, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let inst_rows = |f: fn(&InstanceTotals) -> u64| {
        s.instances.iter().map(move |(n, t)| {
            (
                Instance {
                    service_instance: n,
                },
                f(t),
            )
        })
    };
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
        s.runq.iter().map(|(i, c)| {
            (
                Instance {
                    service_instance: i,
                },
                ConstHistogram::latency(c),
            )
        }),
    )?;
    family(
        e,
        INSTANCE_INFO,
        s.meta.iter().map(|(i, m)| {
            let labels = InstanceInfo {
                service_instance: i,
                rule: &m.rule,
                container: m.container.as_deref().unwrap_or(""),
                pod_uid: m.pod_uid.as_deref().unwrap_or(""),
            };
            (labels, gauge(1))
        }),
    )?;
    let listed =
        |f: fn(&ProcessRow) -> u64| s.top.iter().map(move |p| (process(p), counter(secs(f(p)))));
    let others = |f: fn(&(u64, u64)) -> u64| {
        s.other_cpu
            .iter()
            .map(move |(i, c)| (other(i), counter(secs(f(c)))))
    };
    family(e, PROC_CPU, listed(|p| p.cpu_ns).chain(others(|c| c.0)))?;
    family(
        e,
        PROC_RUNQ,
        listed(|p| p.run_delay_ns).chain(others(|c| c.1)),
    )
}

fn process(p: &ProcessRow) -> Process<'_> {
    Process {
        service_instance: &p.instance,
        pid: Pid::Of(p.pid),
        comm: &p.comm,
    }
}

/// The `other` row of an instance in probe_process_* families: what its processes outside the
/// top-K used.
pub(super) fn other(instance: &str) -> Process<'_> {
    Process {
        service_instance: instance,
        pid: Pid::Other,
        comm: "other",
    }
}
