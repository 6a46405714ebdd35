//! Block IO families: per instance and disk, per top-K process, and the block programs' own
//! counters.

use prometheus_client::{
    encoding::DescriptorEncoder, metrics::counter::ConstCounter, registry::Unit,
};

use super::{
    family,
    labels::{Disk, Outcome, Pid, ProcessDisk, Writeback},
    ConstHistogram, Desc,
};
use crate::{
    daemon::Snapshot,
    model::{
        accounts::IoProcessRow,
        io::{IoCounters, Op},
    },
};

const BLOCK_BYTES: Desc = ("probe_block", Some(Unit::Bytes), "Bytes the instance's processes read, wrote or discarded on each disk, counted at completion; writeback is charged to the process that dirtied the file.");
const BLOCK_OPS: Desc = (
    "probe_block_ops",
    None,
    "Block requests of the instance's processes completed on each disk.",
);
const BLOCK_LATENCY: Desc = ("probe_block_latency", Some(Unit::Seconds), "Time from the start of each block request to its completion (what /sys/block/<dev>/stat counts).");
const BLOCK_DIRTIED: Desc = ("probe_block_dirtied", Some(Unit::Bytes), "Page-cache bytes the instance's processes dirtied on files of each disk (buffered writes, counted when written, before writeback).");
const PROC_BLOCK_BYTES: Desc = (
    "probe_process_block",
    Some(Unit::Bytes),
    "Block bytes of the top processes by recent block IO (--process.top-k).",
);
const PROC_BLOCK_OPS: Desc = (
    "probe_process_block_ops",
    None,
    "Block requests of the top processes by recent block IO.",
);
const PROC_DIRTIED: Desc = (
    "probe_process_block_dirtied",
    Some(Unit::Bytes),
    "Page-cache bytes dirtied by the top processes by recent block IO.",
);
const BLOCK_EVENTS: Desc = ("probe_block_events", None, "Block requests not counted: result=unmatched: completed, its start was not seen (in flight when probe started); result=lost: the block IO map was full; result=end_missed: started, its completion was not seen (the kernel did not run probe's program; found when its device is idle or its slot is reused).");
const WRITEBACK: Desc = ("probe_block_writeback_requests", None, "Writes issued by kernel threads (writeback, journal): charged_to=writer: to the process that dirtied the file; charged_to=kernel: no writer known (metadata, journal).");

pub(super) fn encode(s: &Snapshot, e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let block = || {
        s.io.iter()
            .filter(|((_, (_, op)), _)| *op != Op::Dirtied)
            .map(|((i, (d, op)), c)| (disk(i, d, Some(*op)), c))
    };
    family(
        e,
        BLOCK_BYTES,
        block().map(|(l, c)| (l, ConstCounter::new(c.bytes))),
    )?;
    family(
        e,
        BLOCK_OPS,
        block().map(|(l, c)| (l, ConstCounter::new(c.ops()))),
    )?;
    family(
        e,
        BLOCK_LATENCY,
        block().map(|(l, c)| (l, ConstHistogram::latency(&c.latency))),
    )?;
    family(
        e,
        BLOCK_DIRTIED,
        s.io.iter()
            .filter(|((_, (_, op)), _)| *op == Op::Dirtied)
            .map(|((i, (d, _)), c)| (disk(i, d, None), ConstCounter::new(c.bytes))),
    )?;
    family(
        e,
        PROC_BLOCK_BYTES,
        processes(s, false).map(|(l, c)| (l, ConstCounter::new(c.bytes))),
    )?;
    family(
        e,
        PROC_BLOCK_OPS,
        processes(s, false).map(|(l, c)| (l, ConstCounter::new(c.ops()))),
    )?;
    family(
        e,
        PROC_DIRTIED,
        processes(s, true).map(|(l, c)| (l, ConstCounter::new(c.bytes))),
    )?;
    let b = &s.stats.block;
    family(
        e,
        BLOCK_EVENTS,
        [
            ("unmatched", b.unmatched),
            ("lost", b.lost),
            ("end_missed", b.end_missed + s.stats.block_ends_found),
        ]
        .map(|(result, n)| (Outcome { result }, ConstCounter::new(n))),
    )?;
    family(
        e,
        WRITEBACK,
        [
            ("writer", b.writeback_charged),
            ("kernel", b.writeback_kernel),
        ]
        .map(|(charged_to, n)| (Writeback { charged_to }, ConstCounter::new(n))),
    )
}

fn disk<'a>(service_instance: &'a str, device: &'a str, op: Option<Op>) -> Disk<'a> {
    Disk {
        service_instance,
        device,
        op,
    }
}

/// The block rows of the top-K processes and of each instance's `other` row: dirtied bytes
/// (`dirtied`, without `op`) or block requests.
fn processes(s: &Snapshot, dirtied: bool) -> impl Iterator<Item = (ProcessDisk<'_>, &IoCounters)> {
    let wanted = move |op: &Op| (*op == Op::Dirtied) == dirtied;
    let op = move |op: &Op| (!dirtied).then_some(*op);
    let listed = s.top_io.iter().flat_map(move |p: &IoProcessRow| {
        p.counters
            .iter()
            .filter(move |((_, o), _)| wanted(o))
            .map(move |((device, o), c)| {
                let labels = ProcessDisk {
                    service_instance: &p.instance,
                    pid: Pid::Of(p.pid),
                    comm: &p.comm,
                    device,
                    op: op(o),
                };
                (labels, c)
            })
    });
    let other = s
        .other_io
        .iter()
        .filter(move |((_, (_, o)), _)| wanted(o))
        .map(move |((i, (device, o)), c)| {
            let labels = ProcessDisk {
                service_instance: i,
                pid: Pid::Other,
                comm: "other",
                device,
                op: op(o),
            };
            (labels, c)
        });
    listed.chain(other)
}
