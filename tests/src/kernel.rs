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
        // Once per released thread where trampolines are allowed, else at every switch.
        "cpu_exit" if allows_fentry("cgroup_release") => "fentry/cgroup_release",
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
        // The RTT part of the TCP walk: the walk's hook.
        "tcp_rtt" => "iter/task_file/tcp",
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

/// Whether this kernel lets a BPF program attach to a kernel function through a trampoline
/// (fentry): asked of the kernel itself, by loading and attaching an empty fentry program to
/// `function` (some hosts forbid trampolines: this test host's 6.18 refuses them with EPERM).
pub fn allows_fentry(function: &str) -> bool {
    let Some(btf_id) = vmlinux_func_id(function) else {
        return false;
    };
    // r0 = 0; exit
    let insns: [u64; 2] = [0x0000_0000_0000_00b7, 0x0000_0000_0000_0095];
    let license = b"GPL\0";
    let mut attr = [0u8; 128];
    let put =
        |attr: &mut [u8; 128], off: usize, v: &[u8]| attr[off..off + v.len()].copy_from_slice(v);
    put(&mut attr, 0, &26u32.to_ne_bytes()); // BPF_PROG_TYPE_TRACING
    put(&mut attr, 4, &2u32.to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 68, &24u32.to_ne_bytes()); // BPF_TRACE_FENTRY
    put(&mut attr, 108, &btf_id.to_ne_bytes()); // attach_btf_id
                                                // SAFETY: bpf(BPF_PROG_LOAD) reads `attr` (its size given) and the buffers it points to,
                                                // which live until the call returns.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return false;
    }
    let mut open = [0u8; 16];
    open[8..12].copy_from_slice(&(fd as u32).to_ne_bytes()); // raw_tracepoint.prog_fd
                                                             // SAFETY: bpf(BPF_RAW_TRACEPOINT_OPEN) reads `open`; a NULL name attaches a tracing program
                                                             // to its BTF target.
    let link = unsafe { libc::syscall(libc::SYS_bpf, 17, open.as_ptr(), open.len()) };
    // SAFETY: closing descriptors this function opened (the link goes with its fd).
    unsafe {
        if link >= 0 {
            libc::close(link as i32);
        }
        libc::close(fd as i32);
    }
    link >= 0
}

/// The BTF type id of the kernel function `name` in /sys/kernel/btf/vmlinux.
fn vmlinux_func_id(name: &str) -> Option<u32> {
    let data = std::fs::read("/sys/kernel/btf/vmlinux").ok()?;
    let u32_at = |off: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?))
    };
    if data.get(0..2)? != [0x9f, 0xeb] {
        return None; // not little-endian BTF
    }
    let hdr_len = u32_at(4)? as usize;
    let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
    let str_off = u32_at(16)? as usize;
    let types = hdr_len + type_off;
    let strings = hdr_len + str_off;
    let (mut at, mut id) = (types, 1u32);
    while at < types + type_len {
        let (name_off, info) = (u32_at(at)? as usize, u32_at(at + 4)?);
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        if kind == 12 {
            // FUNC
            let s = data.get(strings + name_off..)?;
            let end = s.iter().position(|&b| b == 0)?;
            if &s[..end] == name.as_bytes() {
                return Some(id);
            }
        }
        at += 12
            + match kind {
                1 | 14 | 17 => 4,     // INT, VAR, DECL_TAG
                3 => 12,              // ARRAY
                4 | 5 => 12 * vlen,   // STRUCT, UNION
                6 | 13 => 8 * vlen,   // ENUM, FUNC_PROTO
                15 | 19 => 12 * vlen, // DATASEC, ENUM64
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                2 | 7..=12 | 16 | 18 => 0,
                _ => return None, // a kind newer than this walk: its size is unknown
            };
        id += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_kernel_functions_in_btf() {
        // Both in every kernel's BTF; the ids differ, and a made-up name is absent.
        let release = vmlinux_func_id("cgroup_release").expect("cgroup_release in BTF");
        let schedule = vmlinux_func_id("schedule").expect("schedule in BTF");
        assert_ne!(release, schedule);
        assert_eq!(vmlinux_func_id("probe_no_such_function"), None);
    }
}
