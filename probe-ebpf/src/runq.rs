//! Run-queue latency per process (see probe_common::runq): a thread's wait starts when it
//! becomes runnable (woken, new, or preempted while runnable) and ends when it is switched in.
//! The switch program runs on every context switch: one lookup when the incoming thread has no
//! recorded wait (the idle task, a thread whose wakeup was before probe started), a lookup, a
//! delete and the histogram's atomic adds when it has one.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::bpf_ktime_get_ns,
    macros::{btf_tracepoint, map, raw_tracepoint},
    maps::{HashMap, PerCpuArray},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use probe_common::{
    block::latency_bucket,
    cpu::DeadKey,
    runq::{
        RunqTotals, LATENCY_MAP_ENTRIES, QUEUED_MAP_ENTRIES, STAT_LATENCY_LOST, STAT_QUEUED_LOST,
        STAT_SLOTS,
    },
};

use crate::kernel::{bump, off, read, read_ptr, task_state};

#[map]
static RUNQ_QUEUED: HashMap<u32, u64> = HashMap::with_max_entries(QUEUED_MAP_ENTRIES, 0);

#[map]
static RUNQ_LATENCY: HashMap<DeadKey, RunqTotals> =
    HashMap::with_max_entries(LATENCY_MAP_ENTRIES, 0);

#[map]
static RUNQ_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// TASK_RUNNING: a thread switched out in this state was preempted and is still runnable.
const TASK_RUNNING: u64 = 0;

#[btf_tracepoint(function = "sched_wakeup")]
pub fn probe_runq_wakeup_btf(ctx: BtfTracePointContext) -> i32 {
    queued(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn probe_runq_wakeup_new_btf(ctx: BtfTracePointContext) -> i32 {
    queued(ctx.arg(0));
    0
}

#[btf_tracepoint(function = "sched_switch")]
pub fn probe_runq_switch_btf(ctx: BtfTracePointContext) -> i32 {
    switched(ctx.arg::<u64>(0) & 1 != 0, ctx.arg(1), ctx.arg(2), || {
        ctx.arg(3)
    });
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup")]
pub fn probe_runq_wakeup_raw(ctx: RawTracePointContext) -> i32 {
    queued(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "sched_wakeup_new")]
pub fn probe_runq_wakeup_new_raw(ctx: RawTracePointContext) -> i32 {
    queued(ctx.arg(0));
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn probe_runq_switch_raw(ctx: RawTracePointContext) -> i32 {
    switched(ctx.arg::<u64>(0) & 1 != 0, ctx.arg(1), ctx.arg(2), || {
        ctx.arg(3)
    });
    0
}

/// `task` became runnable now.
#[inline(always)]
fn queued(task: *const u8) {
    let Some(tid) = read::<u32>(task, off!(task_pid)) else {
        return;
    };
    if tid == 0 {
        return; // the idle task
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if RUNQ_QUEUED.insert(&tid, &now, 0).is_err() {
        bump(&RUNQ_STATS, STAT_QUEUED_LOST);
    }
}

/// `prev_state_arg` reads sched_switch's 4th argument (5.18+), as in the exit hook. A preempted
/// thread stays on the run queue whatever its state says (it may have been about to sleep).
#[inline(always)]
fn switched(preempt: bool, prev: *const u8, next: *const u8, prev_state_arg: impl FnOnce() -> u64) {
    let runnable = preempt
        || if off!(sched_switch_has_prev_state) != 0 {
            prev_state_arg() == TASK_RUNNING
        } else {
            task_state(prev) == TASK_RUNNING
        };
    if runnable {
        queued(prev);
    }
    let Some(tid) = read::<u32>(next, off!(task_pid)) else {
        return;
    };
    let Some(since) = (unsafe { RUNQ_QUEUED.get(&tid) }).copied() else {
        return;
    };
    let _ = RUNQ_QUEUED.remove(&tid);
    let waited = unsafe { bpf_ktime_get_ns() }.saturating_sub(since);
    charge(next, waited);
}

#[inline(never)]
fn charge(task: *const u8, waited: u64) {
    let Some(tgid) = read::<u32>(task, off!(task_tgid)) else {
        return;
    };
    let leader = read_ptr(task, off!(task_group_leader)).unwrap_or(task);
    let key = DeadKey {
        tgid,
        _pad: 0,
        start_ns: read(leader, off!(task_start_boottime)).unwrap_or(0),
    };
    let bucket = latency_bucket(waited);
    if add_to(&key, waited, bucket) {
        return;
    }
    let mut fresh = RunqTotals {
        waits: 1,
        wait_ns: waited,
        ..RunqTotals::default()
    };
    if let Some(b) = fresh.buckets.get_mut(bucket) {
        *b = 1;
    }
    if RUNQ_LATENCY
        .insert(&key, &fresh, u64::from(BPF_NOEXIST))
        .is_err()
        && !add_to(&key, waited, bucket)
    {
        bump(&RUNQ_STATS, STAT_LATENCY_LOST);
    }
}

#[inline(always)]
fn add_to(key: &DeadKey, waited: u64, bucket: usize) -> bool {
    let Some(t) = RUNQ_LATENCY.get_ptr_mut(key) else {
        return false;
    };
    if bucket >= probe_common::block::LATENCY_BUCKETS {
        return true;
    }
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*t).waits, 1);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*t).wait_ns, waited);
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*t).buckets[bucket], 1);
    }
    true
}
