//! Run-queue latency: how long a thread that became runnable waited for a CPU, per process, as
//! a histogram. The kernel already sums this wait per task (sched_info.run_delay, read by the
//! task iterator); the histogram tells a few long waits from many short ones.
//!
//! A thread becomes runnable when it is woken (`sched_wakeup`), when it is new
//! (`sched_wakeup_new`), or when it is preempted and stays runnable (`sched_switch` with prev in
//! TASK_RUNNING); its wait ends when `sched_switch` switches it in.

use crate::block::LATENCY_BUCKETS;

/// Programs, in order of preference: BTF-typed tracepoints, raw tracepoints. Each set is a
/// wakeup, a wakeup_new and a switch program.
pub const WAKEUP_BTF_PROGRAM: &str = "probe_runq_wakeup_btf";
pub const WAKEUP_NEW_BTF_PROGRAM: &str = "probe_runq_wakeup_new_btf";
pub const SWITCH_BTF_PROGRAM: &str = "probe_runq_switch_btf";
pub const WAKEUP_RAW_PROGRAM: &str = "probe_runq_wakeup_raw";
pub const WAKEUP_NEW_RAW_PROGRAM: &str = "probe_runq_wakeup_new_raw";
pub const SWITCH_RAW_PROGRAM: &str = "probe_runq_switch_raw";

/// Threads waiting for a CPU: thread id -> when it became runnable (bpf_ktime_get_ns).
pub const QUEUED_MAP: &str = "RUNQ_QUEUED";
/// Capacity of [`QUEUED_MAP`]: threads runnable at once (entries are deleted at switch-in).
pub const QUEUED_MAP_ENTRIES: u32 = 65_536;
/// Latency histogram per process ([`crate::cpu::DeadKey`] -> [`RunqTotals`]).
pub const LATENCY_MAP: &str = "RUNQ_LATENCY";
/// Capacity of [`LATENCY_MAP`]: processes; entries of exited processes are deleted once idle.
pub const LATENCY_MAP_ENTRIES: u32 = 16_384;
/// Per-CPU array of self-counters; slots below.
pub const STATS_MAP: &str = "RUNQ_STATS";
/// Slot: runnable threads not recorded because [`QUEUED_MAP`] was full.
pub const STAT_QUEUED_LOST: u32 = 0;
/// Slot: waits not counted because [`LATENCY_MAP`] was full.
pub const STAT_LATENCY_LOST: u32 = 1;
pub const STAT_SLOTS: u32 = 2;

/// Value of [`LATENCY_MAP`]: cumulative, written only by the kernel (atomic adds).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunqTotals {
    /// Waits that ended (switch-ins after a wait was recorded).
    pub waits: u64,
    /// Sum of their lengths (ns).
    pub wait_ns: u64,
    /// Histogram, see [`crate::block::latency_bucket`] (not cumulative).
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Default for RunqTotals {
    fn default() -> Self {
        Self {
            waits: 0,
            wait_ns: 0,
            buckets: [0; LATENCY_BUCKETS],
        }
    }
}
