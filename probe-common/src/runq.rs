//! Run-queue latency: how long a thread that became runnable waited for a CPU, per process, as
//! a histogram.
//!
//! The scheduler already times every wait: it stamps a thread when it is enqueued (woken by
//! `sched_wakeup`, new by `sched_wakeup_new`, or preempted while runnable) and, when it switches
//! the thread in, adds the wait to `sched_info.run_delay` and counts it in `sched_info.pcount`.
//! The sched_switch program (shared with the exit hook, [`crate::cpu::SWITCH_BTF_PROGRAM`]) reads
//! both when a thread is switched *out*: the increase since the thread's previous switch-out is
//! the wait that preceded its current slice, which goes into the thread's histogram. No
//! timestamps of its own, no wakeup programs, and the sum is exactly what /proc/<pid>/schedstat
//! reports.

use crate::latency::BUCKETS as LATENCY_BUCKETS;

/// Per thread (thread id -> [`ThreadRunq`]), created at the thread's first switch-out, marked
/// dead at its last; the daemon deletes dead entries once it has read them.
pub const THREADS_MAP: &str = "RUNQ_THREADS";
/// Default capacity of [`THREADS_MAP`]: threads at once (`--runq.map-size`). Preallocated
/// (~300 bytes an entry: ~5 MiB): the map is written from the scheduler, where allocating is
/// unsafe (see probe-ebpf/src/runq.rs).
pub const THREADS_MAP_ENTRIES: u32 = 16_384;
/// Per-CPU array of self-counters; slots below.
pub const STATS_MAP: &str = "RUNQ_STATS";
/// Slot: threads whose waits were not counted because [`THREADS_MAP`] was full.
pub const STAT_LOST: u32 = 0;
pub const STAT_SLOTS: u32 = 1;

/// Name of the read-only global that turns the histograms on (1, default) or off (0: the
/// sched_switch program then only watches for exits; `--hooks.skip runq`).
pub const ENABLED_GLOBAL: &str = "RUNQ_ENABLED";

/// Name of the read-only global with the boot-time clock (ns) when the daemon loaded the
/// programs: threads started later are counted from their first wait.
pub const LOADED_AT_GLOBAL: &str = "LOADED_AT_BOOTTIME_NS";

/// Value of [`THREADS_MAP`]. Written only by the CPU that switches the thread out (a thread is
/// switched out on one CPU at a time), so without atomics.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadRunq {
    /// The thread's process: tgid and the leader's start time, as everywhere.
    pub tgid: u32,
    /// 1 once the thread did its final switch: the entry will not change any more.
    pub dead: u32,
    pub start_ns: u64,
    /// sched_info.run_delay and pcount at the last switch-out (the baseline of the next).
    pub seen_run_delay: u64,
    pub seen_pcount: u64,
    /// Sum of the waits counted (ns).
    pub wait_ns: u64,
    /// Histogram of the waits, see [`crate::latency`] (not cumulative); the
    /// number of waits is its sum.
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Default for ThreadRunq {
    fn default() -> Self {
        Self {
            tgid: 0,
            dead: 0,
            start_ns: 0,
            seen_run_delay: 0,
            seen_pcount: 0,
            wait_ns: 0,
            buckets: [0; LATENCY_BUCKETS],
        }
    }
}
