//! Run-queue latency per thread, from the scheduler's own accounting (see probe_common::runq):
//! at each switch-out, the increase of the thread's sched_info.run_delay and pcount since its
//! previous switch-out is the wait before its current slice.
//!
//! This runs on every context switch, inside the sched_switch program of `cpu.rs`: one hash
//! lookup and a few loads and stores in the common case. The BTF-typed program reads task fields
//! with direct loads, the raw-tracepoint fallback with bpf_probe_read_kernel.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use probe_common::{
    cpu::TASK_DEAD,
    runq::{ThreadRunq, STAT_LOST, STAT_SLOTS, THREADS_MAP_ENTRIES},
};

use crate::kernel::{bump, off, Bucket, Mem};

/// Preallocated (flags 0): entries are created inside the scheduler (sched_switch, run-queue lock
/// held, interrupts off), where a map that allocates on insert (BPF_F_NO_PREALLOC) calls the
/// slab allocator (before 6.1: "trace type programs with run-time allocated hash maps are
/// unsafe", says the verifier; its allocations can take locks the scheduler holds) or queues
/// irq_work to refill its caches (6.1+). A preallocated map takes entries from a free list.
#[map]
static RUNQ_THREADS: HashMap<u32, ThreadRunq> = HashMap::with_max_entries(THREADS_MAP_ENTRIES, 0);

#[map]
static RUNQ_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// Boot-time clock when the daemon loaded the programs (set before load).
#[unsafe(no_mangle)]
static LOADED_AT_BOOTTIME_NS: u64 = 0;

/// 0 when the daemon was told not to keep run-queue histograms (set before load).
#[unsafe(no_mangle)]
static RUNQ_ENABLED: u32 = 1;

/// Called by the sched_switch program for every switch, with prev's state.
#[inline(always)]
pub(crate) fn switched_out<M: Mem>(prev: *const u8, prev_state: u64) {
    // SAFETY: a global the loader sets before load and nothing writes afterwards; read volatile so
    // that the compiler does not fold its initial value.
    if unsafe { core::ptr::read_volatile(&RUNQ_ENABLED) } == 0 {
        return;
    }
    let Some(tid) = M::get::<u32>(prev, off!(task_pid)) else {
        return;
    };
    if tid == 0 {
        return; // the idle task
    }
    let run_delay: u64 = M::get(prev, off!(task_run_delay)).unwrap_or(0);
    let pcount: u64 = M::get(prev, off!(task_pcount)).unwrap_or(0);
    let dying = prev_state & TASK_DEAD != 0;
    if let Some(e) = RUNQ_THREADS.get_ptr_mut(&tid) {
        // SAFETY: a map value the lookup just returned: non-null, of this type, valid while the
        // program runs.
        let e = unsafe { &mut *e };
        if pcount < e.seen_pcount || run_delay < e.seen_run_delay {
            // Another thread with a reused id: the entry is stale (its owner died unseen).
            start_entry::<M>(prev, tid, run_delay, pcount, dying);
            return;
        }
        account(e, run_delay, pcount);
        if dying {
            e.dead = 1;
        }
        return;
    }
    start_entry::<M>(prev, tid, run_delay, pcount, dying);
}

/// Adds the waits since the entry's baseline to its histogram and moves the baseline.
#[inline(always)]
fn account(e: &mut ThreadRunq, run_delay: u64, pcount: u64) {
    let waits = pcount - e.seen_pcount;
    if waits == 0 {
        return;
    }
    let waited = run_delay - e.seen_run_delay;
    e.seen_pcount = pcount;
    e.seen_run_delay = run_delay;
    e.wait_ns += waited;
    // Normally one wait per slice; if switch-outs were missed (the program was attached in
    // between), their waits go into the bucket of their average.
    // SAFETY: a slot of the entry's own histogram (Bucket::slot).
    unsafe { *Bucket::of(waited / waits).slot(&raw mut e.buckets) += waits };
}

/// A thread seen for the first time. One that started after the programs were loaded is counted
/// from its first wait; an older one from now on (its past waits are in run_delay, but not
/// when they happened).
#[inline(never)]
fn start_entry<M: Mem>(task: *const u8, tid: u32, run_delay: u64, pcount: u64, dying: bool) {
    let started: u64 = M::get(task, off!(task_start_boottime)).unwrap_or(0);
    // SAFETY: a global the loader sets before load and nothing writes afterwards; read volatile so
    // that the compiler does not fold its initial value.
    let loaded_at = unsafe { core::ptr::read_volatile(&LOADED_AT_BOOTTIME_NS) };
    let leader = M::get::<*const u8>(task, off!(task_group_leader))
        .filter(|p| !p.is_null())
        .unwrap_or(task);
    let mut e = ThreadRunq {
        tgid: M::get(task, off!(task_tgid)).unwrap_or(0),
        dead: u32::from(dying),
        start_ns: M::get(leader, off!(task_start_boottime)).unwrap_or(0),
        seen_run_delay: run_delay,
        seen_pcount: pcount,
        ..ThreadRunq::default()
    };
    if started > loaded_at {
        e.seen_run_delay = 0;
        e.seen_pcount = 0;
        account(&mut e, run_delay, pcount);
    }
    if RUNQ_THREADS.insert(&tid, &e, 0).is_err() {
        bump(&RUNQ_STATS, STAT_LOST);
    }
}
