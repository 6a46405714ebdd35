//! Reading kernel memory at offsets resolved from BTF by the daemon (read-only globals).

use aya_ebpf::{
    helpers::{bpf_probe_read_kernel, generated::bpf_get_current_task},
    macros::map,
    maps::{Array, PerCpuArray},
};
use probe_common::{
    config::{Offsets, OFFSET_MISSING},
    cpu::PF_KTHREAD,
    latency::BUCKETS as LATENCY_BUCKETS,
};

/// Struct offsets, set by the daemon before load (the verifier sees them as constants).
#[unsafe(no_mangle)]
pub(crate) static OFFSETS: Offsets = Offsets::MISSING;

/// The daemon's own tgid: its threads are not attributed to any instance.
#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;

/// The port the daemon serves HTTP on (0: none).
#[unsafe(no_mangle)]
static SELF_PORT: u32 = 0;

/// The daemon's network namespace (its inode number; 0: unknown).
#[unsafe(no_mangle)]
static SELF_NETNS: u32 = 0;

/// This load's generation, set by the daemon before load (see `probe_common::config::ACTIVE_MAP`).
#[unsafe(no_mangle)]
static GENERATION: u32 = 0;

/// The generation that counts now (one entry). Written only by the daemon.
#[map]
static ACTIVE_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

/// Whether these programs count now: false only while another daemon's programs do, during a
/// handover at restart. Every program that counts returns at once when it is false.
#[inline(always)]
pub(crate) fn active() -> bool {
    // SAFETY: a global the loader sets before load and nothing writes afterwards; read volatile so
    // that the compiler does not fold its initial value.
    let mine = unsafe { core::ptr::read_volatile(&GENERATION) };
    ACTIVE_GENERATION.get(0).is_some_and(|g| *g == mine)
}

/// One field of [`OFFSETS`]. Volatile so the compiler does not fold the default value in.
macro_rules! off {
    ($field:ident) => {
        // SAFETY: a global the loader sets before load and nothing writes afterwards; read volatile
        // so that the compiler does not fold its initial value.
        unsafe { core::ptr::read_volatile(&$crate::kernel::OFFSETS.$field) }
    };
}
pub(crate) use off;

#[inline(always)]
pub(crate) fn self_tgid() -> u32 {
    // SAFETY: a global the loader sets before load and nothing writes afterwards; read volatile so
    // that the compiler does not fold its initial value.
    unsafe { core::ptr::read_volatile(&SELF_TGID) }
}

#[inline(always)]
pub(crate) fn self_port() -> u32 {
    // SAFETY: as for SELF_TGID.
    unsafe { core::ptr::read_volatile(&SELF_PORT) }
}

#[inline(always)]
pub(crate) fn self_netns() -> u32 {
    // SAFETY: as for SELF_TGID.
    unsafe { core::ptr::read_volatile(&SELF_NETNS) }
}

/// Reads a `T` at `base + off` with bpf_probe_read_kernel. None if the offset is unknown on this
/// kernel, the base is NULL, or the read faults.
#[inline(always)]
pub(crate) fn read<T: Copy>(base: *const u8, off: u32) -> Option<T> {
    if base.is_null() || off == OFFSET_MISSING {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copies from any kernel address and fails, rather than faults,
    // on a bad one.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T).ok() }
}

/// How a program reads kernel memory: BTF-typed programs (tp_btf) may load through their
/// pointer arguments directly (the verifier checks each load against BTF; read-only globals are
/// constants to it), which costs a few instructions instead of a helper call; others must use
/// bpf_probe_read_kernel.
pub(crate) trait Mem {
    fn get<T: Copy>(base: *const u8, off: u32) -> Option<T>;
}

/// bpf_probe_read_kernel: works from any program.
pub(crate) struct Probe;

impl Mem for Probe {
    #[inline(always)]
    fn get<T: Copy>(base: *const u8, off: u32) -> Option<T> {
        read(base, off)
    }
}

/// Direct loads: only from pointers the verifier knows by BTF type (tp_btf arguments and what
/// they point to).
pub(crate) struct Direct;

impl Mem for Direct {
    #[inline(always)]
    fn get<T: Copy>(base: *const u8, off: u32) -> Option<T> {
        if base.is_null() || off == OFFSET_MISSING {
            return None;
        }
        // SAFETY: the verifier turns this into a fault-tolerant load (PROBE_MEM) checked
        // against the kernel's BTF for the pointer's type.
        Some(unsafe { core::ptr::read_volatile(base.wrapping_add(off as usize) as *const T) })
    }
}

/// Reads a kernel pointer at `base + off`; NULL becomes None.
#[inline(always)]
pub(crate) fn read_ptr(base: *const u8, off: u32) -> Option<*const u8> {
    read::<*const u8>(base, off).filter(|p| !p.is_null())
}

#[inline(always)]
pub(crate) fn current_task() -> *const u8 {
    // SAFETY: a BPF helper without arguments; it reads the clock or the current task.
    unsafe { bpf_get_current_task() as *const u8 }
}

/// task->__state (5.14+, 4 bytes) or task->state (before, 8 bytes).
#[inline(always)]
pub(crate) fn task_state<M: Mem>(task: *const u8) -> u64 {
    if off!(task_state_size) == 4 {
        u64::from(M::get::<u32>(task, off!(task_state)).unwrap_or(0))
    } else {
        M::get::<u64>(task, off!(task_state)).unwrap_or(0)
    }
}

/// A process as the kernel programs key it: tgid and the leader's start time (tells a reused
/// pid apart), and whether it is a kernel thread.
#[derive(Clone, Copy)]
pub(crate) struct Process {
    pub tgid: u32,
    pub start_ns: u64,
    pub kthread: bool,
}

#[inline(always)]
pub(crate) fn process_of(task: *const u8) -> Option<Process> {
    let tgid: u32 = read(task, off!(task_tgid))?;
    let leader = read_ptr(task, off!(task_group_leader)).unwrap_or(task);
    let flags: u32 = read(task, off!(task_flags)).unwrap_or(0);
    Some(Process {
        tgid,
        start_ns: read(leader, off!(task_start_boottime)).unwrap_or(0),
        kthread: flags & PF_KTHREAD != 0,
    })
}

/// A latency histogram bucket ([`probe_common::latency::bucket`]); always below
/// [`LATENCY_BUCKETS`].
#[derive(Clone, Copy)]
pub(crate) struct Bucket(usize);

impl Bucket {
    /// The bucket of a latency, capped in a form that the verifier of every supported kernel
    /// bounds.
    ///
    /// Written in Rust, the cap `min(bits, 25)` compiles (BPF v1, which rustc targets) to
    /// `r1 = 25; if r1 > bits`: a register-register compare. The verifier of Linux 6.1 does not
    /// decide such a branch from the bounds it knows, walks the impossible side with
    /// contradictory bounds (umin 30 > umax 24) and then rejects the store into the histogram
    /// ("invalid mem access 'scalar'", "misaligned access"). A compare with an immediate, which
    /// this assembly is, is decided (or refines the bounds) on every kernel, and the compiler
    /// can neither drop it nor turn it back into a register compare. Two instructions.
    #[inline(always)]
    pub(crate) fn of(ns: u64) -> Self {
        let mut b = probe_common::latency::bit_length(ns);
        // SAFETY: a compare and a move on one register: no memory, no stack, no side effect.
        unsafe {
            core::arch::asm!(
                "if {b} <= {last} goto +1",
                "{b} = {last}",
                b = inout(reg) b,
                last = const LATENCY_BUCKETS - 1,
                options(pure, nomem, nostack),
            );
        }
        Self(b as usize)
    }

    /// This bucket's counter in `histogram`. No bounds check is emitted: a Rust one would be
    /// the register compare described in [`Bucket::of`] again.
    #[inline(always)]
    pub(crate) fn slot(self, histogram: *mut [u64; LATENCY_BUCKETS]) -> *mut u64 {
        // SAFETY: self.0 <= LATENCY_BUCKETS - 1 (the cap in `of`), so the slot is inside the
        // array `histogram` points to.
        unsafe { histogram.cast::<u64>().add(self.0) }
    }
}

/// Adds `n` to the u64 at `p`, atomically: the BPF `lock +=` instruction (the result is not
/// used). Through the `atomic_xadd` intrinsic because `AtomicU64::fetch_add` does not exist
/// for bpfel-unknown-none (the target has no compare-and-swap, so core leaves the atomic
/// read-modify-write methods out).
///
/// # Safety
/// `p` is an 8-byte-aligned u64 inside a map value that stays valid while the program runs.
#[inline(always)]
pub(crate) unsafe fn atomic_add(p: *mut u64, n: u64) {
    // SAFETY: the caller's promise (above).
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, n,
        )
    };
}

/// Adds one to slot `slot` of a per-CPU self-counter array and returns its new value on this
/// CPU.
#[inline(always)]
pub(crate) fn bump(map: &PerCpuArray<u64>, slot: u32) -> u64 {
    match map.get_ptr_mut(slot) {
        // SAFETY: a slot of a per-CPU array the lookup just returned; only this CPU's programs
        // touch it.
        Some(counter) => unsafe {
            *counter += 1;
            *counter
        },
        None => 0,
    }
}

/// `struct bpf_iter_meta`: the first member of every iterator context.
#[repr(C)]
pub(crate) struct IterMeta {
    pub seq: *mut core::ffi::c_void,
    pub session_id: u64,
    pub seq_num: u64,
}

/// Appends `value` to the iterator's output (bpf_seq_write). Returns false when the kernel
/// refused it (the seq buffer is full: the kernel then re-runs the program for this element).
#[inline(always)]
pub(crate) fn seq_write<T>(meta: *const IterMeta, value: &T) -> bool {
    if meta.is_null() {
        return false;
    }
    // SAFETY: meta is the iterator's meta, checked non-null; value is a live reference of
    // size_of::<T>() bytes.
    unsafe {
        let seq = (*meta).seq;
        aya_ebpf::helpers::generated::bpf_seq_write(
            seq as *mut _,
            value as *const T as *const core::ffi::c_void,
            core::mem::size_of::<T>() as u32,
        ) == 0
    }
}
