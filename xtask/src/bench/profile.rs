//! Where probe's cost lands on each CPU during one OLTP round: `perf record` samples (the
//! cpu-clock event, which works in VMs without hardware counters), summed by CPU and kernel
//! symbol. Unlike the BPF statistics (which time the programs alone, and add two clock reads to
//! every run), the samples also see the tracepoint and cgroup dispatch around the programs and
//! the helpers and map code they call, with nothing added to the runs; and the share is a ratio
//! within one round, free of the noise between rounds.
//!
//! Kernel code that probe's programs share with the rest of the kernel (RCU read locks, for
//! one) is not counted: the shares are a lower bound.

use std::{
    collections::BTreeMap,
    path::Path,
    process::{Child, Command, Stdio},
};

use anyhow::{bail, Context as _, Result};

/// Samples per second and CPU.
pub const FREQ: u32 = 999;

/// What a sampled symbol is, for probe's cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// One of probe's programs (JIT symbols `bpf_prog_<tag>_<name>`).
    Program,
    /// Running a program: tracepoint and cgroup dispatch, trampolines.
    Dispatch,
    /// BPF helpers and map code called by the programs.
    Helper,
    /// probe's daemon (any symbol, in its threads).
    Daemon,
    /// perf itself (not counted as busy: it is the measurement's own cost).
    Sampler,
    /// The CPU was idle.
    Idle,
    /// Everything else: the workload and the kernel's work for it.
    Other,
}

/// The class of a sampled symbol (perf's `[k] name` or `[.] name`) in thread `tid` of process
/// `comm`; `daemon` holds the daemon's thread ids.
pub fn classify(comm: &str, tid: u32, symbol: &str, daemon: &[u32]) -> Class {
    if daemon.contains(&tid) {
        return Class::Daemon;
    }
    if comm == "perf" {
        return Class::Sampler;
    }
    // Programs and their helpers count in any context, softirq on an idle CPU included.
    let idle = if comm == "swapper" {
        Class::Idle
    } else {
        Class::Other
    };
    let Some(name) = symbol.strip_prefix("[k] ") else {
        return idle;
    };
    if name.starts_with("bpf_prog_") {
        return Class::Program;
    }
    const DISPATCH: &[&str] = &[
        "bpf_trace_run",
        "__bpf_trace_",
        "call_trace_",
        "__traceiter_",
        "__bpf_prog_enter",
        "__bpf_prog_exit",
        "bpf_trampoline_",
        "__cgroup_bpf_run_filter_",
        "bpf_skops_",
    ];
    const HELPERS: &[&str] = &[
        "bpf_sk_storage_",
        "bpf_local_storage_",
        "bpf_task_storage_",
        "htab_",
        "__htab_",
        "lookup_nulls_elem_raw",
        "lookup_elem_raw",
        "bpf_get_current_",
        "bpf_ktime_get_",
        "bpf_probe_read_kernel",
        "copy_from_kernel_nofault",
        "bpf_sock_ops_",
        "bpf_map_",
        "array_map_",
        "percpu_array_",
        "bpf_perf_event_output",
        "bpf_ringbuf_",
    ];
    if DISPATCH.iter().any(|p| name.starts_with(p)) {
        Class::Dispatch
    } else if HELPERS.iter().any(|p| name.starts_with(p)) {
        Class::Helper
    } else {
        idle
    }
}

/// Samples of one CPU, by class, and probe's programs by name.
#[derive(Debug, Default, PartialEq)]
pub struct CpuProfile {
    pub by_class: BTreeMap<Class, u64>,
    pub programs: BTreeMap<String, u64>,
}

impl CpuProfile {
    pub fn get(&self, c: Class) -> u64 {
        self.by_class.get(&c).copied().unwrap_or(0)
    }
    /// Samples of a busy CPU (not idle, not perf's own).
    pub fn busy(&self) -> u64 {
        self.by_class
            .iter()
            .filter(|(c, _)| !matches!(c, Class::Idle | Class::Sampler))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Starts sampling every CPU for `seconds` (perf record writes `data`), with the cpu-clock
/// event: a sample is 1/[`FREQ`] s of a CPU, busy or idle, with or without hardware counters.
pub fn record(data: &Path, seconds: u32) -> Result<Child> {
    Command::new("perf")
        .args([
            "record",
            "-e",
            "cpu-clock",
            "-a",
            "-F",
            &FREQ.to_string(),
            "-o",
        ])
        .arg(data)
        .args(["--", "sleep", &seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("perf (Debian package linux-perf)")
}

/// Reads `data` back: samples per CPU (by number), classified.
pub fn report(data: &Path, daemon: &[u32]) -> Result<BTreeMap<u32, CpuProfile>> {
    let out = Command::new("perf")
        .args([
            "report",
            "--sort",
            "cpu,pid,sym",
            "-n",
            "--stdio",
            "-t",
            "\t",
            "-i",
        ])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("perf report")?;
    if !out.status.success() {
        bail!("perf report failed ({})", out.status);
    }
    parse_report(&String::from_utf8_lossy(&out.stdout), daemon)
}

/// Parses `perf report --sort cpu,pid,sym -n -t '\t'` lines: `overhead \t samples \t cpu \t
/// tid:comm \t symbol`.
pub fn parse_report(text: &str, daemon: &[u32]) -> Result<BTreeMap<u32, CpuProfile>> {
    let mut cpus: BTreeMap<u32, CpuProfile> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split('\t').map(str::trim).collect();
        let [_, samples, cpu, task, symbol] = f[..] else {
            bail!("unexpected perf report line: {line:?}");
        };
        let samples: u64 = samples
            .parse()
            .with_context(|| format!("samples in {line:?}"))?;
        let cpu: u32 = cpu.parse().with_context(|| format!("cpu in {line:?}"))?;
        let (tid, comm) = task
            .split_once(':')
            .with_context(|| format!("tid:comm in {line:?}"))?;
        let tid: u32 = tid
            .trim()
            .parse()
            .with_context(|| format!("tid in {line:?}"))?;
        let class = classify(comm.trim(), tid, symbol, daemon);
        let p = cpus.entry(cpu).or_default();
        *p.by_class.entry(class).or_default() += samples;
        if class == Class::Program {
            // bpf_prog_<16 hex digits>_<name>
            let name = symbol
                .trim_start_matches("[k] bpf_prog_")
                .split_once('_')
                .map_or(symbol, |(_, n)| n);
            *p.programs.entry(name.to_string()).or_default() += samples;
        }
    }
    Ok(cpus)
}

/// Thread ids of a process.
pub fn threads(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symbols_are_classed_by_what_runs_them() {
        let d = [77];
        assert_eq!(
            classify(
                "mariadbd",
                5,
                "[k] bpf_prog_04e31afc6737ceb7_probe_tcp_recv",
                &d
            ),
            Class::Program
        );
        assert_eq!(
            classify("mariadbd", 5, "[k] bpf_trace_run3", &d),
            Class::Dispatch
        );
        assert_eq!(
            classify("mariadbd", 5, "[k] call_trace_sock_recv_length", &d),
            Class::Dispatch
        );
        assert_eq!(
            classify("mariadbd", 5, "[k] bpf_sk_storage_get_tracing", &d),
            Class::Helper
        );
        assert_eq!(
            classify("mariadbd", 5, "[k] lookup_nulls_elem_raw", &d),
            Class::Helper
        );
        assert_eq!(
            classify("mariadbd", 5, "[k] tcp_sendmsg_locked", &d),
            Class::Other
        );
        assert_eq!(
            classify("mariadbd", 5, "[.] bpf_prog_lookalike", &d),
            Class::Other,
            "user space"
        );
        assert_eq!(
            classify("swapper", 0, "[k] pv_native_safe_halt", &d),
            Class::Idle
        );
        assert_eq!(
            classify(
                "swapper",
                0,
                "[k] bpf_prog_04e31afc6737ceb7_probe_tcp_sockops",
                &d
            ),
            Class::Program,
            "softirq on an idle CPU"
        );
        assert_eq!(classify("perf", 9, "[k] do_syscall_64", &d), Class::Sampler);
        assert_eq!(
            classify("tokio-rt-worker", 77, "[k] bpf_prog_x_probe_tasks", &d),
            Class::Daemon
        );
    }

    #[test]
    fn a_report_sums_per_cpu_and_names_programs() {
        let text = "# comment\n\
             33.59% \t 100 \t001\t      0:swapper \t[k] pv_native_safe_halt\n\
             3.76% \t 40 \t000\t   3603:mariadbd \t[k] bpf_prog_04e31afc6737ceb7_probe_tcp_recv\n\
             3.70% \t 2 \t000\t   3602:mariadbd \t[k] bpf_prog_04e31afc6737ceb7_probe_tcp_recv\n\
             2.24% \t 7 \t000\t   3602:mariadbd \t[k] bpf_trace_run3\n\
             2.17% \t 50 \t000\t   3603:mariadbd \t[.] dispatch_command\n\
             1.00% \t 3 \t001\t     77:probe \t[k] do_syscall_64\n";
        let cpus = parse_report(text, &[77]).expect("a report perf writes");
        let c0 = &cpus[&0];
        assert_eq!(c0.get(Class::Program), 42);
        assert_eq!(c0.get(Class::Dispatch), 7);
        assert_eq!(c0.get(Class::Other), 50);
        assert_eq!(c0.busy(), 99);
        assert_eq!(c0.programs["probe_tcp_recv"], 42);
        let c1 = &cpus[&1];
        assert_eq!(
            (c1.get(Class::Idle), c1.get(Class::Daemon), c1.busy()),
            (100, 3, 3)
        );
        assert!(parse_report("1%\t2\tx\t0:a\t[k] b\n", &[]).is_err());
    }
}
