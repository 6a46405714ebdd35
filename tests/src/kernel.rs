//! What the running kernel offers, read from the kernel itself (its tracefs), and so which hook
//! each collector must be on: the kernel tests run on several kernels (the host, and Debian's
//! 6.1 and 6.12 in VMs), and a collector that fell back although the kernel has its preferred
//! hook is a failure (a verifier rejection, say), not a variant.

use std::path::{Path, PathBuf};

/// The tracefs `events` directory; mounts tracefs at /sys/kernel/tracing if nothing has.
fn events_dir() -> PathBuf {
    for dir in [
        "/sys/kernel/tracing/events",
        "/sys/kernel/debug/tracing/events",
    ] {
        if Path::new(dir).join("sched").is_dir() {
            return PathBuf::from(dir);
        }
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status()
        .expect("run mount");
    assert!(
        status.success() && Path::new("/sys/kernel/tracing/events/sched").is_dir(),
        "tracefs is not mounted and cannot be mounted at /sys/kernel/tracing: the tests need it \
         to know which tracepoints this kernel has"
    );
    PathBuf::from("/sys/kernel/tracing/events")
}

/// Whether the kernel has the tracepoint `system:name`.
pub fn has_tracepoint(system: &str, name: &str) -> bool {
    events_dir().join(system).join(name).is_dir()
}

/// Every collector, in the order `probe check` lists them; all but `process_table` are eBPF.
pub const COLLECTORS: &[&str] = &[
    "cpu",
    "cpu_exit",
    "ports",
    "block",
    "block_dirty",
    "tcp",
    "tcp_state",
    "tcp_retransmit",
    "tcp_rtt",
    "runq",
    "process_table",
];

/// The hook `collector` must use here: its preferred one wherever the kernel has it.
pub fn best_hook(collector: &str) -> &'static str {
    match collector {
        "cpu" => "iter/task",
        "cpu_exit" | "runq" => "tp_btf/sched_switch",
        "ports" => "iter/task_file",
        // block_io_start/done: Linux 6.5+.
        "block" if has_tracepoint("block", "block_io_start") => "raw_tp/block_io_start",
        "block" => "raw_tp/block_rq_issue",
        // writeback_dirty_folio: Linux 5.18+.
        "block_dirty" if has_tracepoint("writeback", "writeback_dirty_folio") => {
            "raw_tp/writeback_dirty_folio"
        }
        "block_dirty" => "raw_tp/writeback_dirty_page",
        // The walk over sockets at each collection: iter/task_file with bpf_sock_from_file,
        // Linux 5.12+ (every kernel the tests run on).
        "tcp" => "iter/task_file/tcp",
        "tcp_state" => "tp_btf/inet_sock_set_state",
        "tcp_retransmit" => "tp_btf/tcp_retransmit_skb",
        "tcp_rtt" => "sock_ops",
        "process_table" => "procfs",
        other => panic!("no expected hook for collector {other:?}"),
    }
}

/// `uname -r`.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .expect("/proc/sys/kernel/osrelease")
        .trim()
        .to_string()
}
