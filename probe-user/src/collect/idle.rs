//! Deleting the kernel-map entries of processes that are gone, once they stopped changing.
//!
//! Per-process maps (block IO, TCP) keep an entry per (process, ...) for as long as the daemon
//! lets them: the kernel cannot know when the last event for a process has arrived (writeback
//! or a retransmit can come after it exited). The daemon remembers when each entry last changed
//! and deletes those of processes that are gone and have been idle for a while.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, MapError},
    Pod,
};

/// Block IO entries of processes that are gone are deleted once they have not changed for
/// this long. Writeback of a file can charge its writer up to dirty_expire_centisecs (30 s by
/// default) plus a writeback period after the writer exited; this leaves room for that.
pub const BLOCK_IDLE_FORGET: Duration = Duration::from_secs(90);

/// TCP entries of processes that are gone are deleted once they have not changed for this
/// long. After its owner exits a socket only sees retransmits and its close; one that comes
/// later re-creates the entry, which then counts in full. Short, because hosts that fork a
/// process per connection leave one entry per process: at 450 new processes a second, 90 s
/// filled the default map (8,192) and lost events (the churn soak test).
pub const TCP_IDLE_FORGET: Duration = Duration::from_secs(10);

/// When each entry of a kernel map last changed.
#[derive(Debug)]
pub struct IdleTracker<K, V> {
    last: HashMap<K, (V, Instant)>,
}

impl<K, V> Default for IdleTracker<K, V> {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
        }
    }
}

impl<K: Pod + Eq + Hash, V: Pod + PartialEq> IdleTracker<K, V> {
    /// Reads every entry of `map`, calling `each` for each, and notes which ones changed.
    pub fn read(
        &mut self,
        map: &BpfHashMap<MapData, K, V>,
        mut each: impl FnMut(&K, &V),
    ) -> Result<(), MapError> {
        let now = Instant::now();
        let mut seen = HashMap::with_capacity(self.last.len());
        for item in map.iter() {
            let (k, v) = match item {
                Ok(kv) => kv,
                // Deleted while we iterated.
                Err(MapError::KeyNotFound) => continue,
                Err(e) => return Err(e),
            };
            let changed = match self.last.get(&k) {
                Some((prev, at)) if *prev == v => *at,
                _ => now,
            };
            each(&k, &v);
            seen.insert(k, (v, changed));
        }
        self.last = seen;
        Ok(())
    }

    /// Deletes the entries for which `gone` is true that have not changed for `after`.
    /// Returns how many deletions failed.
    pub fn forget_idle(
        &mut self,
        map: &mut BpfHashMap<MapData, K, V>,
        after: Duration,
        gone: impl Fn(&K) -> bool,
    ) -> usize {
        self.forget_idle_noting(map, after, gone, |_| {})
    }

    /// [`IdleTracker::forget_idle`], calling `deleted` with each key deleted.
    pub fn forget_idle_noting(
        &mut self,
        map: &mut BpfHashMap<MapData, K, V>,
        after: Duration,
        gone: impl Fn(&K) -> bool,
        mut deleted: impl FnMut(&K),
    ) -> usize {
        let idle: Vec<K> = self
            .last
            .iter()
            .filter(|(k, (_, at))| at.elapsed() >= after && gone(k))
            .map(|(k, _)| *k)
            .collect();
        let mut failed = 0;
        for k in idle {
            match map.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {
                    self.last.remove(&k);
                    deleted(&k);
                }
                Err(_) => failed += 1,
            }
        }
        failed
    }
}
