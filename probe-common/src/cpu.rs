//! CPU accounting: what the task iterator reports per thread, and what the exit hook keeps for
//! threads that died between two reads.

/// Program name of the task iterator (section `iter/task`).
pub const TASK_ITER_PROGRAM: &str = "probe_tasks";
/// Program names of the sched_switch program (the exit hook, and run-queue latency: see
/// [`crate::runq`]), in order of preference: BTF-typed tracepoint, raw tracepoint.
pub const SWITCH_BTF_PROGRAM: &str = "probe_sched_switch_btf";
pub const SWITCH_RAW_PROGRAM: &str = "probe_sched_switch_raw";
/// Program name of the preferred exit hook: fentry on `cgroup_release`, which `release_task`
/// calls once for every thread the kernel releases (nothing at context switches).
pub const RELEASE_PROGRAM: &str = "probe_task_release";
/// The kernel function [`RELEASE_PROGRAM`] attaches to.
pub const RELEASE_FUNCTION: &str = "cgroup_release";
/// One-entry array, per load (not pinned): 1 when the sched_switch program is the exit hook
/// (set by the daemon before it attaches it), 0 when [`RELEASE_PROGRAM`] is.
pub const EXIT_AT_SWITCH_MAP: &str = "EXIT_AT_SWITCH";
/// Map of final totals of threads that died, keyed by process ([`DeadKey`]).
pub const DEAD_MAP: &str = "DEAD_TASKS";
/// Capacity of [`DEAD_MAP`]. The daemon drains it on every collection (every few seconds), so this
/// is the number of distinct processes that may lose threads between two collections.
pub const DEAD_MAP_ENTRIES: u32 = 32_768;
/// Per-CPU array of self-counters of the exit hook; indexes below.
pub const EXIT_STATS_MAP: &str = "EXIT_STATS";
/// Slot: thread deaths recorded.
pub const EXIT_STAT_RECORDED: u32 = 0;
/// Slot: thread deaths that could not be recorded because [`DEAD_MAP`] was full.
pub const EXIT_STAT_LOST: u32 = 1;
pub const EXIT_STAT_SLOTS: u32 = 2;

/// `TASK_DEAD` in task_struct.__state: the task is doing its final context switch.
pub const TASK_DEAD: u64 = 0x80;
/// `EXIT_DEAD` in task_struct.exit_state: the task is being released (set before
/// `release_task`, so before [`RELEASE_FUNCTION`]).
pub const EXIT_DEAD: u32 = 0x10;
/// `PF_KTHREAD` in task_struct.flags.
pub const PF_KTHREAD: u32 = 0x0020_0000;

/// One thread, as the task iterator saw it. Process-wide fields (`rss_pages`, `cgroup_id`,
/// `ppid`, `comm`) are filled on the thread group leader only (`is_leader == 1`).
///
/// A thread the exit hook in use may have recorded already (at the switch hook, one doing its
/// final context switch; at the release hook, one being released) reports
/// `cpu_ns == run_delay_ns == 0`: its final totals belong to [`DEAD_MAP`], and counting them
/// here too would count them twice.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskRecord {
    pub pid: u32,
    pub tgid: u32,
    /// Thread group leader's start_boottime (ns): with `tgid` it names a process uniquely.
    pub start_ns: u64,
    /// se.sum_exec_runtime of this thread (ns).
    pub cpu_ns: u64,
    /// sched_info.run_delay of this thread (ns).
    pub run_delay_ns: u64,
    /// Resident pages (file + anon + shmem), leader only.
    pub rss_pages: u64,
    /// cgroup v2 id, leader only.
    pub cgroup_id: u64,
    /// real_parent's tgid, leader only.
    pub ppid: u32,
    /// 1 on the thread group leader.
    pub is_leader: u32,
    /// 1 for kernel threads.
    pub is_kthread: u32,
    pub _pad: u32,
    pub comm: [u8; crate::COMM_LEN],
}

/// Key of [`DEAD_MAP`]: a process, not a pid, so a reused pid never inherits another's totals.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeadKey {
    pub tgid: u32,
    pub _pad: u32,
    /// Thread group leader's start_boottime (ns).
    pub start_ns: u64,
}

/// Value of [`DEAD_MAP`]: the sum of the final totals of the process's threads that died since
/// the entry was created. Written only by the kernel (atomic adds); the daemon reads it and
/// deletes the entry once the process is gone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeadTotals {
    pub cpu_ns: u64,
    pub run_delay_ns: u64,
    /// Number of threads folded in.
    pub threads: u64,
    pub cgroup_id: u64,
    pub ppid: u32,
    pub _pad: u32,
    /// comm of the first thread that died (for a single-threaded process, the process name).
    pub comm: [u8; crate::COMM_LEN],
}
