//! `probe check`: what would run on this kernel, and why not the rest.

use std::{fmt::Write as _, process::ExitCode};

use crate::{
    daemon::{Daemon, Options},
    loader::{self, names, Kernel},
};

/// Loads everything as `serve` would, collects once, and prints a report.
pub fn run(skip_hooks: Vec<String>) -> ExitCode {
    let kernel = loader::load(&loader::LoadOptions {
        skip_hooks,
        ..loader::LoadOptions::default()
    });
    let mut daemon = Daemon::new(kernel, Options::default());
    let summary = daemon.collect();
    let report = report(daemon.kernel(), &summary, &daemon.snapshot().stats.failing);
    print!("{report}");
    if any_kernel_hook(daemon.kernel()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn any_kernel_hook(k: &Kernel) -> bool {
    k.statuses
        .iter()
        .any(|s| s.hook.is_some_and(|h| h != "procfs"))
}

fn report(
    k: &Kernel,
    summary: &crate::daemon::Summary,
    failing: &std::collections::HashSet<&str>,
) -> String {
    let mut out = String::new();
    let uname = kernel_release();
    let _ = writeln!(out, "kernel: {uname}");
    for e in &k.environment {
        let _ = writeln!(out, "note:   {e}");
    }
    let _ = writeln!(
        out,
        "\n{:<14} {:<5} {:<30} detail",
        "COLLECTOR", "STATE", "HOOK"
    );
    for s in &k.statuses {
        let state = match (s.up(), failing.contains(s.name)) {
            (true, false) => "up",
            (true, true) => "error",
            (false, _) => "down",
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
        let _ = writeln!(
            out,
            "{:<14} {:<5} {:<30} {detail}",
            s.name,
            state,
            s.hook.unwrap_or("-")
        );
        for n in &s.notes {
            let _ = writeln!(out, "{:<14} {:<5} {:<30} - {n}", "", "", "");
        }
    }
    if !any_kernel_hook(k) {
        let _ = writeln!(
            out,
            "\nno eBPF hook can run here, so `probe serve` would read /proc only (slower; processes that \
             exit between collections are missed). eBPF needs root (or CAP_BPF, CAP_PERFMON, \
             CAP_NET_ADMIN and CAP_SYS_PTRACE), Linux 5.8+ and kernel BTF (/sys/kernel/btf/vmlinux)"
        );
    }
    out
}

fn kernel_release() -> String {
    let read = |f: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{f}"))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    format!(
        "{} {} ({})",
        read("ostype"),
        read("osrelease"),
        std::env::consts::ARCH
    )
}
