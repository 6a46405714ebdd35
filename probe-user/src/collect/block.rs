//! Block IO totals from the kernel's per-process map, block device names from sysfs, and the
//! block programs' self-counters.

use std::{collections::HashMap, path::Path, sync::Arc};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use probe_common::block::{
    dev_major, dev_minor, IoKey, IoStart, IoTotals, STAT_END_MISSED, STAT_LOST, STAT_UNMATCHED,
    STAT_WRITEBACK_CHARGED, STAT_WRITEBACK_KERNEL,
};

use super::idle::IdleTracker;
use crate::model::{
    cumulative::Cumulative as _,
    io::{IoCounters, Op, ProcessIo},
    process::ProcessKey,
};

/// Self-counters of the block programs, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockStats {
    pub unmatched: u64,
    pub lost: u64,
    pub end_missed: u64,
    pub writeback_charged: u64,
    pub writeback_kernel: u64,
}

pub fn stats(map: &PerCpuArray<MapData, u64>) -> Result<BlockStats, MapError> {
    let sum = |slot: u32| -> Result<u64, MapError> { Ok(map.get(&slot, 0)?.iter().sum()) };
    Ok(BlockStats {
        unmatched: sum(STAT_UNMATCHED)?,
        lost: sum(STAT_LOST)?,
        end_missed: sum(STAT_END_MISSED)?,
        writeback_charged: sum(STAT_WRITEBACK_CHARGED)?,
        writeback_kernel: sum(STAT_WRITEBACK_KERNEL)?,
    })
}

/// Requests whose end probe missed (the kernel did not run its completion program; see
/// `STAT_END_MISSED`), found without waiting for their request slot to be reused: an entry of the
/// in-flight map whose device has nothing in flight now, though it started before we looked.
/// The block layer runs the completion tracepoint before it stops counting a request as in
/// flight, so a completion probe saw has always removed its entry by then. Deletes the entries
/// found and returns how many. `in_flight` reads a device's in-flight requests (None: unknown).
pub fn missed_ends(
    map: &mut BpfHashMap<MapData, u64, IoStart>,
    now_ns: u64,
    in_flight: impl Fn(u32) -> Option<u64>,
) -> usize {
    let entries: Vec<(u64, IoStart)> = map.iter().filter_map(Result::ok).collect();
    let mut idle: HashMap<u32, bool> = HashMap::new();
    let mut found = 0;
    for (rq, start) in entries {
        if start.start_ns >= now_ns {
            continue;
        }
        let dev = start.key.dev;
        if !*idle.entry(dev).or_insert_with(|| in_flight(dev) == Some(0)) {
            continue;
        }
        if map.remove(&rq).is_ok() {
            found += 1;
        }
    }
    found
}

/// Requests in flight on a whole disk, from /sys/dev/block/<major>:<minor>/inflight (reads and
/// writes).
pub fn in_flight(dev: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!(
        "/sys/dev/block/{}:{}/inflight",
        dev_major(dev),
        dev_minor(dev)
    ))
    .ok()?;
    let mut sum = 0;
    for n in text.split_whitespace() {
        sum += n.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// Reads the per-process IO map and remembers when each entry last changed, to delete the
/// entries of processes that are gone once they are idle.
#[derive(Debug, Default)]
pub struct IoReader {
    tracker: IdleTracker<IoKey, IoTotals>,
    devices: DeviceNames,
}

impl IoReader {
    /// Reads every entry: cumulative IO per process, by device name and operation. Start times
    /// are rounded down to `start_granularity_ns` as for the dead-thread map.
    pub fn read(
        &mut self,
        map: &BpfHashMap<MapData, IoKey, IoTotals>,
        start_granularity_ns: u64,
    ) -> Result<HashMap<ProcessKey, ProcessIo>, MapError> {
        let g = start_granularity_ns.max(1);
        let mut out: HashMap<ProcessKey, ProcessIo> = HashMap::new();
        let devices = &mut self.devices;
        self.tracker.read(map, |k, v| {
            let Some(op) = Op::from_kernel(k.op) else {
                return;
            };
            let key = ProcessKey {
                tgid: k.tgid,
                start_ns: k.start_ns / g * g,
            };
            let dim = (devices.name(k.dev), op);
            out.entry(key)
                .or_default()
                .entry(dim)
                .or_default()
                .add(&IoCounters::from(v));
        })?;
        Ok(out)
    }

    /// Deletes the entries of processes not in `live` that have not changed for
    /// [`super::idle::BLOCK_IDLE_FORGET`]. Returns how many deletions failed.
    pub fn forget_idle(
        &mut self,
        map: &mut BpfHashMap<MapData, IoKey, IoTotals>,
        is_live: impl Fn(u32, u64) -> bool,
        start_granularity_ns: u64,
    ) -> usize {
        let g = start_granularity_ns.max(1);
        self.tracker
            .forget_idle(map, super::idle::BLOCK_IDLE_FORGET, |k| {
                !is_live(k.tgid, k.start_ns / g * g)
            })
    }
}

/// Names of block devices by dev_t, as /sys/block lists them (`vda`, `nvme0n1`, `loop3`).
#[derive(Debug, Default)]
pub struct DeviceNames {
    known: HashMap<u32, Arc<str>>,
}

impl DeviceNames {
    /// The whole disk's name, or `major:minor` if sysfs does not know the device (it vanished
    /// before it was first seen, or is not a block device). Only found names are cached, so a
    /// device seen again later gets its name.
    pub fn name(&mut self, dev: u32) -> Arc<str> {
        if let Some(n) = self.known.get(&dev) {
            return n.clone();
        }
        match disk_name(Path::new("/sys/dev/block"), dev_major(dev), dev_minor(dev)) {
            Some(name) => {
                let name: Arc<str> = Arc::from(name);
                self.known.insert(dev, name.clone());
                name
            }
            None => Arc::from(format!("{}:{}", dev_major(dev), dev_minor(dev))),
        }
    }
}

/// `<sysfs_dev_block>/<major>:<minor>` links to the device's sysfs directory; a partition's
/// directory sits inside its disk's and has a `partition` file.
pub fn disk_name(sysfs_dev_block: &Path, major: u32, minor: u32) -> Option<String> {
    let dir = std::fs::canonicalize(sysfs_dev_block.join(format!("{major}:{minor}"))).ok()?;
    let disk = if dir.join("partition").exists() {
        dir.parent()?.to_path_buf()
    } else {
        dir
    };
    Some(disk.file_name()?.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sysfs-like tree: devices/.../vda with a partition vda1, and dev/block links.
    fn fake_sysfs() -> std::path::PathBuf {
        let root = std::env::temp_dir().join(format!("probe-sysfs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let disk = root.join("devices/virtio0/block/vda");
        std::fs::create_dir_all(disk.join("vda1")).expect("mkdir");
        std::fs::write(disk.join("vda1/partition"), "1\n").expect("partition");
        let links = root.join("dev/block");
        std::fs::create_dir_all(&links).expect("mkdir");
        std::os::unix::fs::symlink(&disk, links.join("254:0")).expect("link");
        std::os::unix::fs::symlink(disk.join("vda1"), links.join("254:1")).expect("link");
        root
    }

    #[test]
    fn partitions_resolve_to_their_disk() {
        let root = fake_sysfs();
        let links = root.join("dev/block");
        assert_eq!(disk_name(&links, 254, 0).as_deref(), Some("vda"));
        assert_eq!(disk_name(&links, 254, 1).as_deref(), Some("vda"));
        assert_eq!(disk_name(&links, 7, 9), None);
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn unknown_devices_are_named_by_number_and_not_cached() {
        let mut names = DeviceNames::default();
        // No block device has major 4095 (the largest major).
        let dev = probe_common::block::encode_dev(4095, 17);
        assert_eq!(&*names.name(dev), "4095:17");
        assert!(names.known.is_empty());
    }
}
