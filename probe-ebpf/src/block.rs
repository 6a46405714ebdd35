//! Block IO per process, device and operation, and page-cache dirtying per process.
//!
//! A request is charged to the task that is current when the block layer starts accounting it
//! (block_io_start, in the submitter's context), except a write that a kernel thread issues
//! (writeback, journal): that one is charged to the process that last dirtied the file the
//! request's first page belongs to, if [`BLOCK_WRITERS`] knows it. Bytes are added as the driver
//! completes them (block_rq_complete); operations and latency at the end (block_io_done), with
//! the latency measured from request.start_time_ns, the same start /sys/block/<dev>/stat uses.
//!
//! The fallback for kernels without block_io_start/done (before 6.5) starts at block_rq_insert
//! or block_rq_issue, whichever comes first (BPF_NOEXIST: a requeue fires them again), and ends
//! at the block_rq_complete that completes the request's last byte.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_NOEXIST},
    helpers::generated::bpf_ktime_get_ns,
    macros::{map, raw_tracepoint},
    maps::{HashMap, LruHashMap, PerCpuArray},
    programs::RawTracePointContext,
    EbpfContext,
};
use aya_log_ebpf::warn;
use probe_common::{
    block::{
        encode_dev, op_group, IoKey, IoStart, IoTotals, Writer, IO_MAP_ENTRIES, OP_DIRTIED,
        OP_FLUSH, OP_WRITE, STARTS_MAP_ENTRIES, STAT_END_MISSED, STAT_LOST, STAT_SLOTS,
        STAT_UNMATCHED, STAT_WRITEBACK_CHARGED, STAT_WRITEBACK_KERNEL, WRITERS_MAP_ENTRIES,
    },
    config::OFFSET_MISSING,
};

use crate::kernel::{atomic_add, bump, current_task, off, read, read_ptr, self_tgid, Bucket};

#[map]
static BLOCK_IO: HashMap<IoKey, IoTotals> = HashMap::with_max_entries(IO_MAP_ENTRIES, 0);

#[map]
static BLOCK_STARTS: LruHashMap<u64, IoStart> = LruHashMap::with_max_entries(STARTS_MAP_ENTRIES, 0);

#[map]
static BLOCK_WRITERS: LruHashMap<u64, Writer> =
    LruHashMap::with_max_entries(WRITERS_MAP_ENTRIES, 0);

#[map]
static BLOCK_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_SLOTS, 0);

/// block_io_start(struct request *rq): the block layer starts accounting a request, in the
/// submitter's context. Called once per request: an entry still recorded for this request
/// address belongs to an earlier request whose end probe never saw (block_io_done fired but
/// the kernel did not run probe's program for it, seen on a 6.18 kernel with ftrace). It is
/// counted ([`STAT_END_MISSED`]) and replaced.
#[raw_tracepoint(tracepoint = "block_io_start")]
pub fn probe_block_io_start(ctx: RawTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    let rq: *const u8 = ctx.arg(0);
    if !start(rq, u64::from(BPF_NOEXIST)) {
        bump(&BLOCK_STATS, STAT_END_MISSED);
        start(rq, u64::from(BPF_ANY));
    }
    0
}

/// block_rq_complete(struct request *rq, blk_status_t error, unsigned int nr_bytes).
#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn probe_block_rq_bytes(ctx: RawTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    let rq: *const u8 = ctx.arg(0);
    let nr_bytes: u64 = ctx.arg::<u64>(2) & 0xffff_ffff;
    if let Some(s) = BLOCK_STARTS.get_ptr_mut(rq as u64) {
        // One request completes on one CPU at a time: no atomics needed.
        // SAFETY: a map value the lookup just returned: non-null, of this type, valid while the
        // program runs.
        unsafe { (*s).bytes += nr_bytes };
    }
    0
}

/// block_io_done(struct request *rq).
#[raw_tracepoint(tracepoint = "block_io_done")]
pub fn probe_block_io_done(ctx: RawTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    let rq: *const u8 = ctx.arg(0);
    match BLOCK_STARTS.get_ptr(rq as u64) {
        Some(s) => {
            // SAFETY: a map value the lookup just returned: non-null, of this type, valid while the
            // program runs.
            let s = unsafe { *s };
            let _ = BLOCK_STARTS.remove(rq as u64);
            finish(&ctx, rq, &s);
        }
        None => no_start(&ctx, rq),
    }
    0
}

/// Fallback start, attached to block_rq_insert and block_rq_issue (first argument: the request).
#[raw_tracepoint(tracepoint = "block_rq_issue")]
pub fn probe_block_rq_start(ctx: RawTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    let _ = start(ctx.arg(0), u64::from(BPF_NOEXIST));
    0
}

/// Fallback end: block_rq_complete, done when it completes the request's remaining bytes.
#[raw_tracepoint(tracepoint = "block_rq_complete")]
pub fn probe_block_rq_done(ctx: RawTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    let rq: *const u8 = ctx.arg(0);
    let nr_bytes: u64 = ctx.arg::<u64>(2) & 0xffff_ffff;
    let Some(s) = BLOCK_STARTS.get_ptr_mut(rq as u64) else {
        no_start(&ctx, rq);
        return 0;
    };
    // SAFETY: a map value the lookup just returned: non-null, of this type, valid while the program
    // runs.
    unsafe { (*s).bytes += nr_bytes };
    // The tracepoint fires before __data_len is reduced by nr_bytes.
    let remaining: u32 = read(rq, off!(rq_data_len)).unwrap_or(0);
    if nr_bytes >= u64::from(remaining) {
        // SAFETY: a map value the lookup just returned: non-null, of this type, valid while the
        // program runs.
        let s = unsafe { *s };
        let _ = BLOCK_STARTS.remove(rq as u64);
        finish(&ctx, rq, &s);
    }
    0
}

/// block_rq_merge(struct request *rq) fires for a request merged into another one: it never
/// completes on its own (its bytes complete with the other), so its start goes now.
#[raw_tracepoint(tracepoint = "block_rq_merge")]
pub fn probe_block_rq_merge(ctx: RawTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    let rq: *const u8 = ctx.arg(0);
    let _ = BLOCK_STARTS.remove(rq as u64);
    0
}

/// writeback_dirty_folio(struct folio *, struct address_space *) (writeback_dirty_page before
/// 5.18): a page-cache folio turns dirty, in the context of the task that dirtied it. This is
/// where the kernel counts /proc/<pid>/io write_bytes too.
#[raw_tracepoint(tracepoint = "writeback_dirty_folio")]
pub fn probe_block_dirty(ctx: RawTracePointContext) -> i32 {
    if !crate::kernel::active() {
        return 0;
    }
    on_dirty(&ctx, ctx.arg(0), ctx.arg(1));
    0
}

/// The process a task belongs to, as an IoKey without device and op, and whether it is a
/// kernel thread.
#[inline(always)]
fn process_of(task: *const u8) -> Option<(IoKey, bool)> {
    let p = crate::kernel::process_of(task)?;
    let key = IoKey {
        tgid: p.tgid,
        dev: 0,
        start_ns: p.start_ns,
        op: 0,
        _pad: 0,
    };
    Some((key, p.kthread))
}

/// Records the start of a request. False only if `flags` is BPF_NOEXIST and an entry for this
/// request address exists.
#[inline(always)]
fn start(rq: *const u8, flags: u64) -> bool {
    if rq.is_null() {
        return true;
    }
    let Some((mut key, kthread)) = process_of(current_task()) else {
        return true;
    };
    key.op = op_group(read(rq, off!(rq_cmd_flags)).unwrap_or(0));
    key.dev = rq_disk(rq).map_or(0, disk_dev);
    if key.op == OP_WRITE && kthread {
        charge_writeback(rq, &mut key);
    }
    let s = IoStart {
        // SAFETY: a BPF helper without arguments; it reads the clock or the current task.
        start_ns: unsafe { bpf_ktime_get_ns() },
        bytes: 0,
        key,
    };
    match BLOCK_STARTS.insert(rq as u64, s, flags) {
        Ok(()) => true,
        // -EEXIST; any other failure (-ENOMEM) shows up as an unmatched completion.
        Err(e) => e != -17,
    }
}

/// A write from a kernel thread: charge it to the process that last dirtied the file its first
/// page belongs to (page -> folio head -> mapping), if known.
#[inline(never)]
fn charge_writeback(rq: *const u8, key: &mut IoKey) {
    match writer_of(rq) {
        Some(w) => {
            key.tgid = w.tgid;
            key.start_ns = w.start_ns;
            bump(&BLOCK_STATS, STAT_WRITEBACK_CHARGED);
        }
        None => {
            bump(&BLOCK_STATS, STAT_WRITEBACK_KERNEL);
        }
    }
}

#[inline(always)]
fn writer_of(rq: *const u8) -> Option<Writer> {
    let bio = read_ptr(rq, off!(rq_bio))?;
    let vec = read_ptr(bio, off!(bio_io_vec))?;
    let mut page = read_ptr(vec, off!(bvec_page))?;
    let head: u64 = read(page, off!(page_compound_head)).unwrap_or(0);
    if head & 1 == 1 {
        page = (head - 1) as *const u8;
    }
    let mapping: u64 = read(page, off!(page_mapping))?;
    // Low bits set: anonymous, movable or KSM pages, not a file's mapping.
    if mapping == 0 || mapping & 3 != 0 {
        return None;
    }
    // SAFETY: a map value the lookup just returned: non-null, of this type, valid while the program
    // runs.
    BLOCK_WRITERS.get_ptr(mapping).map(|w| unsafe { *w })
}

/// The whole disk of a request: request.rq_disk before 5.16, request.q->disk after.
#[inline(always)]
fn rq_disk(rq: *const u8) -> Option<*const u8> {
    if let Some(disk) = read_ptr(rq, off!(rq_rq_disk)) {
        return Some(disk);
    }
    let q = read_ptr(rq, off!(rq_q))?;
    read_ptr(q, off!(queue_disk))
}

#[inline(always)]
fn disk_dev(disk: *const u8) -> u32 {
    let major: u32 = read(disk, off!(disk_major)).unwrap_or(0);
    let minor: u32 = read(disk, off!(disk_first_minor)).unwrap_or(0);
    encode_dev(major, minor)
}

/// A completion without a start entry. The block layer's own flush requests (RQF_FLUSH_SEQ,
/// issued on behalf of every writer that asked for a cache flush) never had one: they are
/// counted, charged to no process (tgid 0). Anything else was in flight when the probe started,
/// or its entry aged out of the LRU map.
#[inline(never)]
fn no_start<C: EbpfContext>(ctx: &C, rq: *const u8) {
    let rq_flags: u32 = read(rq, off!(rq_rq_flags)).unwrap_or(0);
    if rq_flags & off!(rqf_flush_seq) == 0 || off!(rqf_flush_seq) == 0 {
        bump(&BLOCK_STATS, STAT_UNMATCHED);
        return;
    }
    let Some(begin) = read::<u64>(rq, off!(rq_start_time_ns)).filter(|t| *t != 0) else {
        return;
    };
    // SAFETY: a BPF helper without arguments; it reads the clock or the current task.
    let now = unsafe { bpf_ktime_get_ns() };
    if begin > now {
        return;
    }
    let key = IoKey {
        tgid: 0,
        dev: rq_disk(rq).map_or(0, disk_dev),
        start_ns: 0,
        op: OP_FLUSH,
        _pad: 0,
    };
    account(ctx, &key, 0, Some(now - begin));
}

#[inline(never)]
fn finish<C: EbpfContext>(ctx: &C, rq: *const u8, s: &IoStart) {
    if s.key.tgid == self_tgid() && s.key.tgid != 0 {
        return;
    }
    // SAFETY: a BPF helper without arguments; it reads the clock or the current task.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut begin = s.start_ns;
    let rq_flags: u32 = read(rq, off!(rq_rq_flags)).unwrap_or(0);
    if rq_flags & off!(rqf_io_stat) != 0 {
        if let Some(t) = read::<u64>(rq, off!(rq_start_time_ns)) {
            if t != 0 && t <= now {
                begin = t;
            }
        }
    }
    account(ctx, &s.key, s.bytes, Some(now.saturating_sub(begin)));
}

/// Adds bytes, and one operation with its latency if `latency_ns` is set, to a process's totals.
#[inline(always)]
fn account<C: EbpfContext>(ctx: &C, key: &IoKey, bytes: u64, latency_ns: Option<u64>) {
    if let Some(t) = BLOCK_IO.get_ptr_mut(key) {
        add(t, bytes, latency_ns);
        return;
    }
    let mut fresh = IoTotals {
        bytes,
        ..IoTotals::default()
    };
    if let Some(ns) = latency_ns {
        fresh.ops = 1;
        fresh.latency_ns = ns;
        // SAFETY: a slot of `fresh`'s own histogram (Bucket::slot).
        unsafe { *Bucket::of(ns).slot(&raw mut fresh.buckets) = 1 };
    }
    if BLOCK_IO.insert(key, &fresh, u64::from(BPF_NOEXIST)).is_ok() {
        return;
    }
    // Another CPU created the entry between our lookup and insert: add to it.
    if let Some(t) = BLOCK_IO.get_ptr_mut(key) {
        add(t, bytes, latency_ns);
        return;
    }
    let lost = bump(&BLOCK_STATS, STAT_LOST);
    if lost.is_power_of_two() {
        warn!(
            ctx,
            "block IO map full: {} events lost on this CPU (latest: tgid {})", lost, key.tgid
        );
    }
}

#[inline(always)]
fn add(t: *mut IoTotals, bytes: u64, latency_ns: Option<u64>) {
    // SAFETY: `t` is a map value (callers pass what the lookup returned); other CPUs update it too,
    // so every field is added to atomically.
    unsafe {
        if bytes != 0 {
            atomic_add(&raw mut (*t).bytes, bytes);
        }
        let Some(ns) = latency_ns else {
            return;
        };
        atomic_add(&raw mut (*t).ops, 1);
        atomic_add(&raw mut (*t).latency_ns, ns);
        atomic_add(Bucket::of(ns).slot(&raw mut (*t).buckets), 1);
    }
}

/// `S_IFMT` and `S_IFREG` of inode.i_mode.
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;

#[inline(always)]
fn on_dirty<C: EbpfContext>(ctx: &C, folio: *const u8, mapping: *const u8) {
    let Some((mut key, kthread)) = process_of(current_task()) else {
        return;
    };
    if key.tgid == self_tgid() {
        return;
    }
    let Some(host) = read_ptr(mapping, off!(mapping_host)) else {
        return;
    };
    // Remember the writer of regular files only: the block device's own page cache holds
    // filesystem metadata that many processes dirty; its writeback stays with the kernel.
    let mode: u16 = read(host, off!(inode_mode)).unwrap_or(0);
    if !kthread && mode & S_IFMT == S_IFREG {
        let writer = Writer {
            tgid: key.tgid,
            _pad: 0,
            start_ns: key.start_ns,
        };
        let known = BLOCK_WRITERS
            .get_ptr(mapping as u64)
            // SAFETY: a map value the lookup just returned: non-null, of this type, valid while the
            // program runs.
            .is_some_and(|w| unsafe { *w } == writer);
        if !known {
            let _ = BLOCK_WRITERS.insert(mapping as u64, writer, u64::from(BPF_ANY));
        }
    }
    // Dirtied bytes count for files on block devices only (not NFS, FUSE, ...).
    let Some(sb) = read_ptr(host, off!(inode_sb)) else {
        return;
    };
    let Some(disk) = read_ptr(sb, off!(sb_bdev)).and_then(|b| read_ptr(b, off!(bdev_disk))) else {
        return;
    };
    key.dev = disk_dev(disk);
    key.op = OP_DIRTIED;
    account(
        ctx,
        &key,
        folio_pages(folio) * u64::from(off!(page_size)),
        None,
    );
}

/// folio_nr_pages(): 1, or for a large folio (PG_head set) _nr_pages, or 2^order with the
/// order in the low byte of _flags_1.
#[inline(always)]
fn folio_pages(folio: *const u8) -> u64 {
    let head_bit = off!(pg_head_bit);
    if head_bit == OFFSET_MISSING || head_bit >= 64 {
        return 1;
    }
    let flags: u64 = read(folio, 0).unwrap_or(0);
    if (flags >> head_bit) & 1 == 0 {
        return 1;
    }
    if let Some(n) = read::<u32>(folio, off!(folio_nr_pages)) {
        return u64::from(n.max(1));
    }
    match read::<u64>(folio, off!(folio_flags_1)) {
        Some(f) => 1u64 << (f & 0xff).min(20),
        None => 1,
    }
}
