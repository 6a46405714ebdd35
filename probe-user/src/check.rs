//! `probe check`: what would run on this kernel, and why not the rest.

use std::{collections::HashSet, fmt::Write as _, process::ExitCode};

use serde::Serialize;

use crate::{
    args::{Format, HookArgs},
    daemon::{Daemon, Options, Summary},
    loader::{self, names, CollectorStatus, Kernel},
};

/// Loads everything as `serve` would, collects once, and prints a report.
pub fn run(hooks: HookArgs, bpf_stats: bool, format: Format) -> ExitCode {
    let kernel = loader::load(&loader::LoadOptions {
        skip_hooks: hooks.skip,
        runq_histograms: hooks.runq_histograms,
        cgroup_path: hooks.cgroup,
        bpf_stats,
        ..loader::LoadOptions::default()
    });
    let mut daemon = Daemon::new(kernel, Options::default());
    let summary = daemon.collect();
    let report = Report::new(
        daemon.kernel(),
        &summary,
        &daemon.snapshot().stats.failing,
        KernelId::running(),
    );
    match format {
        Format::Table => print!("{}", report.table()),
        Format::Json => match serde_json::to_string_pretty(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("probe check: cannot encode the report: {e}");
                return ExitCode::FAILURE;
            }
        },
    }
    if report.any_kernel_hook {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// What `probe check --format json` prints (`version` changes only on incompatible changes).
#[derive(Debug, Serialize)]
pub struct Report {
    pub version: u32,
    pub kernel: KernelId,
    /// Mounts made, BTF fields missing, statistics unavailable.
    pub environment: Vec<String>,
    pub collectors: Vec<CollectorReport>,
    /// False when no eBPF hook works (the daemon would read /proc only).
    pub any_kernel_hook: bool,
}

#[derive(Debug, Serialize)]
pub struct KernelId {
    pub sysname: String,
    pub release: String,
    pub machine: String,
}

impl KernelId {
    fn running() -> Self {
        let read = |f: &str| {
            std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        Self {
            sysname: read("ostype"),
            release: read("osrelease"),
            machine: std::env::consts::ARCH.to_string(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CollectorReport {
    pub name: &'static str,
    /// `up`, `error` (attached, but its last collection failed), `down`, or `off` (a flag
    /// turns it on; named in `reasons`).
    pub state: &'static str,
    /// The hook in use, e.g. `tp_btf/sched_switch`; null when down or off.
    pub hook: Option<&'static str>,
    /// What it saw in the collection `check` made.
    pub detail: String,
    /// Why better hooks were not used, or why it is down; one line each.
    pub reasons: Vec<String>,
}

impl Report {
    fn new(k: &Kernel, summary: &Summary, failing: &HashSet<&str>, kernel: KernelId) -> Self {
        Self {
            version: 1,
            kernel,
            environment: k.environment.clone(),
            collectors: k
                .statuses
                .iter()
                .map(|s| collector(s, summary, failing))
                .collect(),
            any_kernel_hook: any_kernel_hook(k),
        }
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let k = &self.kernel;
        let _ = writeln!(out, "kernel: {} {} ({})", k.sysname, k.release, k.machine);
        for e in &self.environment {
            let _ = writeln!(out, "note:   {e}");
        }
        let _ = writeln!(
            out,
            "\n{:<14} {:<5} {:<30} detail",
            "COLLECTOR", "STATE", "HOOK"
        );
        for c in &self.collectors {
            let _ = writeln!(
                out,
                "{:<14} {:<5} {:<30} {}",
                c.name,
                c.state,
                c.hook.unwrap_or("-"),
                c.detail
            );
            for r in &c.reasons {
                let _ = writeln!(out, "{:<14} {:<5} {:<30} - {r}", "", "", "");
            }
        }
        if !self.any_kernel_hook {
            let _ = writeln!(
                out,
                "\nno eBPF hook can run here, so `probe serve` would read /proc only (slower; processes \
                 that exit between collections are missed). eBPF needs root (or CAP_BPF, CAP_PERFMON, \
                 CAP_NET_ADMIN and CAP_SYS_PTRACE), Linux 5.8+ and kernel BTF (/sys/kernel/btf/vmlinux)"
            );
        }
        out
    }
}

fn collector(s: &CollectorStatus, summary: &Summary, failing: &HashSet<&str>) -> CollectorReport {
    let state = match (s.off, s.up(), failing.contains(s.name)) {
        (Some(_), ..) => "off",
        (None, true, false) => "up",
        (None, true, true) => "error",
        (None, false, _) => "down",
    };
    let detail = match s.name {
        names::CPU if s.up() => format!(
            "{} threads in {} processes, collected in {:.1} ms",
            summary.threads,
            summary.processes,
            summary.duration.as_secs_f64() * 1e3
        ),
        names::PORTS if s.up() => {
            format!("{} processes listen on TCP", summary.listening_processes)
        }
        _ => String::new(),
    };
    CollectorReport {
        name: s.name,
        state,
        hook: s.hook,
        detail,
        reasons: s
            .off
            .map(|flag| format!("{flag} turns it on"))
            .into_iter()
            .chain(s.notes.iter().map(ToString::to_string))
            .collect(),
    }
}

fn any_kernel_hook(k: &Kernel) -> bool {
    k.statuses
        .iter()
        .any(|s| s.hook.is_some_and(|h| h != loader::hooks::PROCFS))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(collectors: Vec<CollectorReport>, any_kernel_hook: bool) -> Report {
        Report {
            version: 1,
            kernel: KernelId {
                sysname: "Linux".into(),
                release: "6.1.0-57-amd64".into(),
                machine: "x86_64".into(),
            },
            environment: vec!["mounted tracefs at /sys/kernel/tracing".into()],
            collectors,
            any_kernel_hook,
        }
    }

    fn row(name: &'static str, hook: Option<&'static str>, reasons: &[&str]) -> CollectorReport {
        CollectorReport {
            name,
            state: if hook.is_some() { "up" } else { "down" },
            hook,
            detail: String::new(),
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn table_lists_each_collector_with_its_reasons() {
        let r = report(
            vec![
                row("cpu", Some("iter/task"), &[]),
                row(
                    "block",
                    None,
                    &["raw_tp/block_io_start: the verifier refused it"],
                ),
            ],
            true,
        );
        let t = r.table();
        assert!(t.starts_with("kernel: Linux 6.1.0-57-amd64 (x86_64)\nnote:   mounted tracefs"));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines
            .iter()
            .any(|l| l.split_whitespace().eq(["cpu", "up", "iter/task"])));
        assert!(lines
            .iter()
            .any(|l| l.split_whitespace().eq(["block", "down", "-"])));
        assert!(t.contains("- raw_tp/block_io_start: the verifier refused it"));
        assert!(!t.contains("no eBPF hook can run here"));
        assert!(report(vec![], false)
            .table()
            .contains("no eBPF hook can run here"));
    }

    #[test]
    fn an_off_collector_is_neither_up_nor_down_and_names_its_flag() {
        let off = CollectorStatus {
            name: names::RUNQ,
            hook: None,
            notes: Vec::new(),
            off: Some("--runq.histograms"),
        };
        let r = collector(&off, &Summary::default(), &HashSet::new());
        assert_eq!((r.state, r.hook), ("off", None));
        assert_eq!(r.reasons, ["--runq.histograms turns it on"]);
    }

    #[test]
    fn json_has_the_documented_fields() {
        let r = report(vec![row("tcp", Some("cgroup_skb"), &["fallback"])], true);
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).expect("encode")).expect("json");
        assert_eq!(v["version"], 1);
        assert_eq!(v["kernel"]["release"], "6.1.0-57-amd64");
        assert_eq!(v["collectors"][0]["name"], "tcp");
        assert_eq!(v["collectors"][0]["state"], "up");
        assert_eq!(v["collectors"][0]["hook"], "cgroup_skb");
        assert_eq!(v["collectors"][0]["reasons"][0], "fallback");
        assert_eq!(v["any_kernel_hook"], true);
        let down = serde_json::to_value(row("block", None, &[])).expect("encode");
        assert!(down["hook"].is_null());
    }
}
