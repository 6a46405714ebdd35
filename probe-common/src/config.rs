//! Runtime configuration handed to the kernel programs as read-only globals.
//!
//! Kernel struct layouts differ between kernel versions and builds, so no offset is compiled in:
//! the daemon reads them from the running kernel's BTF (/sys/kernel/btf/vmlinux) at load time and
//! sets these globals before the programs are loaded. The verifier then sees them as constants.

/// Name of the read-only global that holds [`Offsets`].
pub const OFFSETS_GLOBAL: &str = "OFFSETS";
/// Name of the read-only global that holds the daemon's own tgid (its tasks are skipped).
pub const SELF_TGID_GLOBAL: &str = "SELF_TGID";

/// An offset that could not be resolved on this kernel. Programs treat the field as absent.
pub const OFFSET_MISSING: u32 = u32::MAX;

/// Byte offsets of the kernel struct fields the programs read, resolved from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Offsets {
    /// task_struct.pid
    pub task_pid: u32,
    /// task_struct.tgid
    pub task_tgid: u32,
    /// task_struct.flags (PF_KTHREAD lives here)
    pub task_flags: u32,
    /// task_struct.__state (5.14+) or task_struct.state
    pub task_state: u32,
    /// Size in bytes of the state field (4 for `unsigned int __state`, 8 for `long state`).
    pub task_state_size: u32,
    /// task_struct.se.sum_exec_runtime: on-CPU nanoseconds of this thread.
    pub task_sum_exec_runtime: u32,
    /// task_struct.sched_info.run_delay: nanoseconds this thread waited on a run queue.
    pub task_run_delay: u32,
    /// task_struct.start_boottime (ns since boot, what /proc/<pid>/stat field 22 is made from).
    pub task_start_boottime: u32,
    /// task_struct.group_leader
    pub task_group_leader: u32,
    /// task_struct.real_parent
    pub task_real_parent: u32,
    /// task_struct.comm
    pub task_comm: u32,
    /// task_struct.mm
    pub task_mm: u32,
    /// task_struct.cgroups (struct css_set *)
    pub task_cgroups: u32,
    /// css_set.dfl_cgrp (the cgroup v2 cgroup)
    pub css_set_dfl_cgrp: u32,
    /// cgroup.kn
    pub cgroup_kn: u32,
    /// kernfs_node.id (the cgroup id, equal to the cgroup directory's inode number)
    pub kernfs_node_id: u32,
    /// Offsets of the RSS counters inside mm_struct, for MM_FILEPAGES, MM_ANONPAGES and
    /// MM_SHMEMPAGES: each points at a signed 64-bit page count (percpu_counter.count on 6.2+,
    /// the atomic_long_t of mm_rss_stat before).
    pub mm_rss_file: u32,
    pub mm_rss_anon: u32,
    pub mm_rss_shmem: u32,
    /// socket.sk
    pub socket_sk: u32,
    /// sock_common.skc_family
    pub sk_family: u32,
    /// sock_common.skc_state
    pub sk_state: u32,
    /// sock_common.skc_num (local port, host byte order)
    pub sk_num: u32,
    /// sock.sk_protocol (u16 on 5.6+)
    pub sk_protocol: u32,
    /// 1 when the sched_switch tracepoint passes `prev_state` as its 4th argument (5.18+).
    pub sched_switch_has_prev_state: u32,
}

impl Offsets {
    /// All offsets missing; the daemon fills in what BTF provides.
    pub const MISSING: Self = Self {
        task_pid: OFFSET_MISSING,
        task_tgid: OFFSET_MISSING,
        task_flags: OFFSET_MISSING,
        task_state: OFFSET_MISSING,
        task_state_size: 0,
        task_sum_exec_runtime: OFFSET_MISSING,
        task_run_delay: OFFSET_MISSING,
        task_start_boottime: OFFSET_MISSING,
        task_group_leader: OFFSET_MISSING,
        task_real_parent: OFFSET_MISSING,
        task_comm: OFFSET_MISSING,
        task_mm: OFFSET_MISSING,
        task_cgroups: OFFSET_MISSING,
        css_set_dfl_cgrp: OFFSET_MISSING,
        cgroup_kn: OFFSET_MISSING,
        kernfs_node_id: OFFSET_MISSING,
        mm_rss_file: OFFSET_MISSING,
        mm_rss_anon: OFFSET_MISSING,
        mm_rss_shmem: OFFSET_MISSING,
        socket_sk: OFFSET_MISSING,
        sk_family: OFFSET_MISSING,
        sk_state: OFFSET_MISSING,
        sk_num: OFFSET_MISSING,
        sk_protocol: OFFSET_MISSING,
        sched_switch_has_prev_state: 0,
    };
}
