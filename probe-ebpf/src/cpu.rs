//! CPU: the kernel already accounts on-CPU time (se.sum_exec_runtime) and run-queue wait
//! (sched_info.run_delay) per task. Two programs read those totals instead of re-measuring them:
//!
//! - `probe_tasks` (iter/task) runs only when the daemon collects, and writes one
//!   [`TaskRecord`] per live thread. The scheduler pays nothing for it.
//! - `probe_task_release` (fentry on `cgroup_release`, which `release_task` calls for every
//!   thread the kernel releases) adds a thread's totals to [`DEAD_TASKS`] so a process that
//!   dies between two collections is not lost. It runs once per thread, never at a context
//!   switch. Its totals are the ones the kernel itself adds to the process's (signal_struct's)
//!   at the same moment, so /proc/<pid>/stat and getrusage agree with them.
//! - Where trampolines are not allowed, `probe_sched_switch_*` is the exit hook instead: it
//!   catches each thread's final context switch (prev is TASK_DEAD) when [`EXIT_AT_SWITCH`]
//!   says so. The same program keeps the run-queue latency histograms (`runq.rs`): one program
//!   per context switch, not two.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    macros::{btf_tracepoint, fentry, map, raw_tracepoint},
    maps::{Array, HashMap, PerCpuArray},
    programs::{BtfTracePointContext, FEntryContext, RawTracePointContext},
    EbpfContext,
};
use aya_log_ebpf::warn;
use probe_common::{
    cpu::{
        DeadKey, DeadTotals, TaskRecord, DEAD_MAP_ENTRIES, EXIT_DEAD, EXIT_STAT_LOST,
        EXIT_STAT_RECORDED, EXIT_STAT_SLOTS, PF_KTHREAD, TASK_DEAD,
    },
    COMM_LEN,
};

use crate::kernel::{
    atomic_add, bump, off, read, read_ptr, self_tgid, seq_write, task_state, Direct, IterMeta, Mem,
    Probe,
};

#[map]
static DEAD_TASKS: HashMap<DeadKey, DeadTotals> = HashMap::with_max_entries(DEAD_MAP_ENTRIES, 0);

#[map]
static EXIT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(EXIT_STAT_SLOTS, 0);

/// 1 when the sched_switch program is the exit hook, 0 when `probe_task_release` is (one entry;
/// set by the daemon before it attaches the switch program as the exit hook; not pinned: each
/// load has its own).
#[map]
static EXIT_AT_SWITCH: Array<u32> = Array::with_max_entries(1, 0);

/// `struct bpf_iter__task`.
#[repr(C)]
pub struct TaskIterCtx {
    meta: *const IterMeta,
    task: *const u8,
}

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn probe_tasks(ctx: *const TaskIterCtx) -> i32 {
    if ctx.is_null() {
        return 0;
    }
    // SAFETY: ctx is the iterator context the kernel passes, checked non-null above.
    let (meta, task) = unsafe { ((*ctx).meta, (*ctx).task) };
    if task.is_null() {
        return 0; // end of iteration
    }
    if let Some(record) = task_record(task) {
        seq_write(meta, &record);
    }
    0
}

#[inline(always)]
fn task_record(task: *const u8) -> Option<TaskRecord> {
    let tgid: u32 = read(task, off!(task_tgid))?;
    if tgid == self_tgid() {
        return None;
    }
    let pid: u32 = read(task, off!(task_pid))?;
    let mut rec = TaskRecord {
        pid,
        tgid,
        ..TaskRecord::default()
    };
    // A dying or dead thread's final totals go to DEAD_TASKS (see the exit hooks below), and
    // from the moment the exit hook in use may have recorded it, it reports zero here: never
    // counted twice. The switch hook records a thread in TASK_DEAD; the release hook one whose
    // exit_state is EXIT_DEAD (set before the kernel releases it; a zombie leader, not
    // released yet, still counts here, with its final totals). EXIT_TRACE (0x30, a leader
    // its ptracer reaped) also has the EXIT_DEAD bit but is not released: hence equality.
    let recorded = if exit_at_switch() {
        task_state::<Probe>(task) & TASK_DEAD != 0
    } else {
        read::<u32>(task, off!(task_exit_state)) == Some(EXIT_DEAD)
    };
    if !recorded {
        rec.cpu_ns = read(task, off!(task_sum_exec_runtime)).unwrap_or(0);
        rec.run_delay_ns = read(task, off!(task_run_delay)).unwrap_or(0);
    }
    let flags: u32 = read(task, off!(task_flags)).unwrap_or(0);
    rec.is_kthread = u32::from(flags & PF_KTHREAD != 0);
    let leader = read_ptr(task, off!(task_group_leader)).unwrap_or(task);
    rec.start_ns = read(leader, off!(task_start_boottime)).unwrap_or(0);
    if pid == tgid {
        rec.is_leader = 1;
        rec.comm = read(task, off!(task_comm)).unwrap_or([0; COMM_LEN]);
        rec.ppid = read_ptr(task, off!(task_real_parent))
            .and_then(|parent| read::<u32>(parent, off!(task_tgid)))
            .unwrap_or(0);
        rec.cgroup_id = task_cgroup_id(task).unwrap_or(0);
        if let Some(mm) = read_ptr(task, off!(task_mm)) {
            rec.rss_pages = rss_pages(mm);
        }
    }
    Some(rec)
}

/// task->cgroups->dfl_cgrp->kn->id: the cgroup v2 id (inode number of the cgroup directory).
#[inline(always)]
fn task_cgroup_id(task: *const u8) -> Option<u64> {
    let css_set = read_ptr(task, off!(task_cgroups))?;
    let cgroup = read_ptr(css_set, off!(css_set_dfl_cgrp))?;
    let kn = read_ptr(cgroup, off!(cgroup_kn))?;
    read(kn, off!(kernfs_node_id))
}

/// Resident pages as /proc/<pid>/statm counts them (file + anon + shmem; negative per-CPU
/// drift reads as 0, like the kernel's get_mm_counter).
#[inline(always)]
fn rss_pages(mm: *const u8) -> u64 {
    let count = |off: u32| read::<i64>(mm, off).unwrap_or(0).max(0) as u64;
    count(off!(mm_rss_file)) + count(off!(mm_rss_anon)) + count(off!(mm_rss_shmem))
}

#[btf_tracepoint(function = "sched_switch")]
pub fn probe_sched_switch_btf(ctx: BtfTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    let prev: *const u8 = ctx.arg(1);
    let state = prev_state::<Direct>(prev, || ctx.arg(3));
    crate::runq::switched_out::<Direct>(prev, state);
    if state & TASK_DEAD != 0 && exit_at_switch() {
        record_death(&ctx, prev);
    }
    0
}

#[raw_tracepoint(tracepoint = "sched_switch")]
pub fn probe_sched_switch_raw(ctx: RawTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    let prev: *const u8 = ctx.arg(1);
    let state = prev_state::<Probe>(prev, || ctx.arg(3));
    crate::runq::switched_out::<Probe>(prev, state);
    if state & TASK_DEAD != 0 && exit_at_switch() {
        record_death(&ctx, prev);
    }
    0
}

/// `cgroup_release(struct task_struct *task)`: called by `release_task` for each thread the
/// kernel releases (an exited thread at once, a thread group leader when it is reaped; in a
/// loop when the last thread's release reaps its zombie leader), before the thread's totals are
/// folded into its process's signal_struct. Once per thread, so nothing runs at context
/// switches. A thread that releases itself (any thread but a leader) is still running do_exit:
/// its current slice since the scheduler last updated se.sum_exec_runtime (up to a tick) is
/// not in the totals, and the kernel's own process totals (signal_struct, /proc/<pid>/stat,
/// getrusage) miss it the same way. A reaped leader's totals are final.
#[fentry(function = "cgroup_release")]
pub fn probe_task_release(ctx: FEntryContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    let task: *const u8 = ctx.arg(0);
    record_death(&ctx, task);
    0
}

/// Whether the switch program records deaths (else the release program does).
#[inline(always)]
fn exit_at_switch() -> bool {
    EXIT_AT_SWITCH.get(0).is_some_and(|v| *v != 0)
}

/// prev's state: sched_switch's 4th argument (5.18+); older kernels have no such argument and
/// the state is read from the task.
#[inline(always)]
fn prev_state<M: Mem>(prev: *const u8, prev_state_arg: impl FnOnce() -> u64) -> u64 {
    if off!(sched_switch_has_prev_state) != 0 {
        prev_state_arg()
    } else {
        task_state::<M>(prev)
    }
}

#[inline(never)]
fn record_death<C: EbpfContext>(ctx: &C, task: *const u8) {
    let Some(tgid) = read::<u32>(task, off!(task_tgid)) else {
        return;
    };
    if tgid == self_tgid() {
        return;
    }
    let leader = read_ptr(task, off!(task_group_leader)).unwrap_or(task);
    let key = DeadKey {
        tgid,
        _pad: 0,
        start_ns: read(leader, off!(task_start_boottime)).unwrap_or(0),
    };
    let cpu_ns: u64 = read(task, off!(task_sum_exec_runtime)).unwrap_or(0);
    let run_delay_ns: u64 = read(task, off!(task_run_delay)).unwrap_or(0);

    if add_to(&key, cpu_ns, run_delay_ns) {
        bump(&EXIT_STATS, EXIT_STAT_RECORDED);
        return;
    }
    let fresh = DeadTotals {
        cpu_ns,
        run_delay_ns,
        threads: 1,
        // The task's own: at cgroup_release, current is often its reaper.
        cgroup_id: task_cgroup_id(task).unwrap_or(0),
        ppid: read_ptr(leader, off!(task_real_parent))
            .and_then(|parent| read::<u32>(parent, off!(task_tgid)))
            .unwrap_or(0),
        _pad: 0,
        comm: read(leader, off!(task_comm)).unwrap_or([0; COMM_LEN]),
    };
    match DEAD_TASKS.insert(&key, &fresh, u64::from(BPF_NOEXIST)) {
        Ok(()) => {
            bump(&EXIT_STATS, EXIT_STAT_RECORDED);
        }
        // Another CPU created the entry between our lookup and insert: add to it.
        Err(_) if add_to(&key, cpu_ns, run_delay_ns) => {
            bump(&EXIT_STATS, EXIT_STAT_RECORDED);
        }
        Err(_) => {
            // Rare by design (the map holds a collection interval's worth of processes). Logged
            // at the 1st, 2nd, 4th, 8th... loss on each CPU, so a full map cannot flood the log;
            // the daemon forwards this to its own log.
            let lost = bump(&EXIT_STATS, EXIT_STAT_LOST);
            if lost.is_power_of_two() {
                warn!(
                    ctx,
                    "dead-thread map full: {} exiting threads lost on this CPU (latest: tgid {})",
                    lost,
                    tgid
                );
            }
        }
    }
}

#[inline(always)]
fn add_to(key: &DeadKey, cpu_ns: u64, run_delay_ns: u64) -> bool {
    let Some(totals) = DEAD_TASKS.get_ptr_mut(key) else {
        return false;
    };
    // SAFETY: `totals` is the map value the lookup just returned; other CPUs update it too, so
    // every field is added to atomically.
    unsafe {
        atomic_add(&raw mut (*totals).cpu_ns, cpu_ns);
        atomic_add(&raw mut (*totals).run_delay_ns, run_delay_ns);
        atomic_add(&raw mut (*totals).threads, 1);
    }
    true
}
