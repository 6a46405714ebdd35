//! Block IO: what the block-layer programs count per process, device and operation, and what
//! they keep in flight between the start and the completion of a request.

/// Programs, in order of preference. Main path (Linux 6.5+): block_io_start / block_io_done,
/// with block_rq_complete adding the bytes as the driver completes them.
pub const IO_START_PROGRAM: &str = "probe_block_io_start";
pub const IO_DONE_PROGRAM: &str = "probe_block_io_done";
pub const RQ_BYTES_PROGRAM: &str = "probe_block_rq_bytes";
/// Fallback (older kernels): start at block_rq_insert or block_rq_issue, whichever comes first
/// (a requeued request fires both again and keeps its first start); done at the block_rq_complete
/// that completes the last byte; a request merged into another is forgotten at block_rq_merge.
pub const RQ_START_PROGRAM: &str = "probe_block_rq_start";
pub const RQ_DONE_PROGRAM: &str = "probe_block_rq_done";
pub const RQ_MERGE_PROGRAM: &str = "probe_block_rq_merge";
/// Page-cache dirtying in the writer's context (writeback_dirty_folio, or writeback_dirty_page
/// before Linux 5.18; the same program serves both).
pub const DIRTY_PROGRAM: &str = "probe_block_dirty";

/// Per-process, per-device, per-operation totals ([`IoKey`] -> [`IoTotals`]).
pub const IO_MAP: &str = "BLOCK_IO";
/// Default capacity of [`IO_MAP`]: (process, device, op) combinations alive at once. Entries of
/// processes that are gone are deleted by the daemon once idle.
pub const IO_MAP_ENTRIES: u32 = 8192;
/// Requests between start and completion (LRU: an entry whose completion is never seen ages out).
pub const STARTS_MAP: &str = "BLOCK_STARTS";
pub const STARTS_MAP_ENTRIES: u32 = 16_384;
/// Which process last dirtied each file (address_space pointer -> [`Writer`]): writeback from
/// kernel threads is charged to it. LRU: files not dirtied for a long time age out.
pub const WRITERS_MAP: &str = "BLOCK_WRITERS";
pub const WRITERS_MAP_ENTRIES: u32 = 16_384;

/// Per-CPU self-counters of the block programs; slots below.
pub const STATS_MAP: &str = "BLOCK_STATS";
/// A completion whose start was not seen (in flight when the probe started, or aged out).
pub const STAT_UNMATCHED: u32 = 0;
/// An event not counted because [`IO_MAP`] was full.
pub const STAT_LOST: u32 = 1;
/// A write issued by a kernel thread (writeback) charged to the process that dirtied the file.
pub const STAT_WRITEBACK_CHARGED: u32 = 2;
/// A write issued by a kernel thread for which no dirtying process is known (metadata,
/// journal, files dirtied by kernel threads or before the probe started): left with the thread.
pub const STAT_WRITEBACK_KERNEL: u32 = 3;
/// A request that started while an earlier request at the same address was still recorded as
/// in flight: probe never saw that earlier request complete (the kernel did not run the
/// completion program; its bytes and latency are missing).
pub const STAT_END_MISSED: u32 = 4;
pub const STAT_SLOTS: u32 = 5;

/// Operations, grouped as the kernel groups them in /sys/block/<dev>/stat (op_stat_group).
pub const OP_READ: u32 = 0;
pub const OP_WRITE: u32 = 1;
pub const OP_DISCARD: u32 = 2;
pub const OP_FLUSH: u32 = 3;
/// Not a block operation: page-cache bytes dirtied by the process (only `bytes` is used).
pub const OP_DIRTIED: u32 = 4;

/// `REQ_OP_*` values (the low 8 bits of request.cmd_flags) that are grouped specially.
pub const REQ_OP_MASK: u32 = 0xff;
pub const REQ_OP_FLUSH: u32 = 2;
pub const REQ_OP_DISCARD: u32 = 3;

/// The stats group of a request, from its cmd_flags, exactly as the kernel's op_stat_group():
/// flush, discard, else write if the op's lowest bit is set (op_is_write), else read.
#[inline(always)]
pub fn op_group(cmd_flags: u32) -> u32 {
    match cmd_flags & REQ_OP_MASK {
        REQ_OP_FLUSH => OP_FLUSH,
        REQ_OP_DISCARD => OP_DISCARD,
        op if op & 1 == 1 => OP_WRITE,
        _ => OP_READ,
    }
}

/// A device as the kernel encodes dev_t internally: major << 20 | minor.
#[inline(always)]
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

pub fn dev_major(dev: u32) -> u32 {
    dev >> 20
}

pub fn dev_minor(dev: u32) -> u32 {
    dev & 0xf_ffff
}

/// Key of [`IO_MAP`]: a process (tgid + leader start time, as for CPU), a whole disk
/// ([`encode_dev`]) and an operation group (`OP_*`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IoKey {
    pub tgid: u32,
    pub dev: u32,
    /// Thread group leader's start_boottime (ns).
    pub start_ns: u64,
    pub op: u32,
    pub _pad: u32,
}

/// Value of [`IO_MAP`]: cumulative, written only by the kernel (atomic adds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoTotals {
    /// Bytes completed (block ops) or dirtied ([`OP_DIRTIED`]).
    pub bytes: u64,
    /// Requests completed.
    pub ops: u64,
    /// Sum of the requests' latencies (ns): from when the block layer started accounting the
    /// request (request.start_time_ns, what /sys/block/<dev>/stat uses) to its completion.
    pub latency_ns: u64,
    /// Latency histogram, see [`crate::latency`] (not cumulative).
    pub buckets: [u64; crate::latency::BUCKETS],
}

/// Value of [`STARTS_MAP`] (keyed by the request's address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStart {
    /// bpf_ktime_get_ns() at the start (used when the request carries no start_time_ns).
    pub start_ns: u64,
    /// Bytes completed so far (block_rq_complete can complete a request in parts).
    pub bytes: u64,
    /// Whom to charge (op already set).
    pub key: IoKey,
}

/// Value of [`WRITERS_MAP`]: the process that last dirtied a file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Writer {
    pub tgid: u32,
    pub _pad: u32,
    pub start_ns: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn op_groups_follow_the_kernel() {
        // REQ_OP_READ 0, WRITE 1, FLUSH 2, DISCARD 3, SECURE_ERASE 5, WRITE_ZEROES 9,
        // DRV_IN 34, DRV_OUT 35; flag bits above the low 8 do not matter.
        let cases = [
            (0, OP_READ),
            (1, OP_WRITE),
            (2, OP_FLUSH),
            (3, OP_DISCARD),
            (5, OP_WRITE),
            (9, OP_WRITE),
            (34, OP_READ),
            (35, OP_WRITE),
            (1 | 1 << 11, OP_WRITE),
        ];
        for (flags, want) in cases {
            assert_eq!(op_group(flags), want, "cmd_flags {flags:#x}");
        }
    }

    #[test]
    fn dev_encoding_round_trips() {
        let d = encode_dev(254, 3);
        assert_eq!((dev_major(d), dev_minor(d)), (254, 3));
        assert_eq!(encode_dev(7, 0), 7 << 20);
    }
}
