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

/// Latency buckets: bucket `i` counts requests that took at most 2^i microseconds
/// (1 µs .. 2^24 µs = 16.8 s); the last one everything longer.
pub const LATENCY_BUCKETS: usize = 26;

/// The bucket of a latency, exactly: the smallest `i` with `ns <= 1000 * 2^i`, at most the last.
#[inline(always)]
pub fn latency_bucket(ns: u64) -> usize {
    let bits = latency_bit_length(ns) as usize;
    if bits >= LATENCY_BUCKETS - 1 {
        LATENCY_BUCKETS - 1
    } else {
        bits
    }
}

/// The smallest `i` with `ns <= 1000 * 2^i` (0..=55), without the cap of [`latency_bucket`]:
/// the kernel programs cap it themselves in a form every supported verifier can follow.
/// Branches only (no loop), so it runs in the kernel programs as well.
#[inline(always)]
pub fn latency_bit_length(ns: u64) -> u64 {
    // ceil(ns / 1000) <= 2^i  <=>  ns <= 1000 * 2^i (2^i is an integer).
    let us = ns.div_ceil(1000);
    if us <= 1 {
        return 0;
    }
    // i = ceil(log2(us)) = bit length of (us - 1).
    let mut v = us - 1;
    let mut bits = 0u64;
    if v >> 32 != 0 {
        v >>= 32;
        bits += 32;
    }
    if v >> 16 != 0 {
        v >>= 16;
        bits += 16;
    }
    if v >> 8 != 0 {
        v >>= 8;
        bits += 8;
    }
    if v >> 4 != 0 {
        v >>= 4;
        bits += 4;
    }
    if v >> 2 != 0 {
        v >>= 2;
        bits += 2;
    }
    if v >> 1 != 0 {
        v >>= 1;
        bits += 1;
    }
    bits + v // v is 0 or 1 here
}

/// Upper bound of bucket `i` in seconds (`f64::INFINITY` for the last).
pub fn bucket_upper_secs(i: usize) -> f64 {
    if i + 1 >= LATENCY_BUCKETS {
        f64::INFINITY
    } else {
        (1u64 << i) as f64 / 1e6
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
    /// Latency histogram, see [`latency_bucket`] (not cumulative).
    pub buckets: [u64; LATENCY_BUCKETS],
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
    fn latency_buckets_are_exact_at_the_bounds() {
        assert_eq!(latency_bucket(0), 0);
        assert_eq!(latency_bucket(1000), 0);
        assert_eq!(latency_bucket(1001), 1);
        assert_eq!(latency_bucket(2000), 1);
        assert_eq!(latency_bucket(2001), 2);
        for i in 1..LATENCY_BUCKETS - 1 {
            let bound = 1000u64 << i;
            assert_eq!(latency_bucket(bound), i, "at 2^{i} us");
            assert_eq!(latency_bucket(bound + 1), i + 1, "just above 2^{i} us");
            assert_eq!(
                latency_bucket(bound / 2 + 1),
                i,
                "just above 2^{} us",
                i - 1
            );
        }
        assert_eq!(latency_bucket(u64::MAX), LATENCY_BUCKETS - 1);
        assert_eq!(latency_bit_length(u64::MAX), 55);
        for ns in [
            0,
            999,
            1000,
            1001,
            5_000_000,
            16_777_216_000,
            16_777_216_001,
            u64::MAX / 3,
        ] {
            assert_eq!(
                latency_bucket(ns) as u64,
                latency_bit_length(ns).min(LATENCY_BUCKETS as u64 - 1),
                "{ns} ns"
            );
        }
        assert_eq!(bucket_upper_secs(0), 1e-6);
        assert_eq!(bucket_upper_secs(10), 1024e-6);
        assert!(bucket_upper_secs(LATENCY_BUCKETS - 1).is_infinite());
    }

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
