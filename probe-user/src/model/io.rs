//! Block IO counters as the model handles them: per operation group, with a latency histogram.

use std::{collections::HashMap, sync::Arc};

use probe_common::block::{IoTotals, OP_DIRTIED, OP_DISCARD, OP_FLUSH, OP_READ, OP_WRITE};
use serde::{Deserialize, Serialize};

use super::latency::Latency;

/// What a block counter counts. `Dirtied` is not a block operation: page-cache bytes the
/// process dirtied (what buffered writes will cost the disk later, charged to the writer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Op {
    Read,
    Write,
    Discard,
    Flush,
    Dirtied,
}

impl Op {
    pub fn from_kernel(op: u32) -> Option<Self> {
        Some(match op {
            OP_READ => Self::Read,
            OP_WRITE => Self::Write,
            OP_DISCARD => Self::Discard,
            OP_FLUSH => Self::Flush,
            OP_DIRTIED => Self::Dirtied,
            _ => return None,
        })
    }

    /// The `op` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Discard => "discard",
            Self::Flush => "flush",
            Self::Dirtied => "dirtied",
        }
    }
}

/// Cumulative counters of one (process or instance, device, op): bytes, and the requests with
/// their latencies (`latency.count` is the number of requests; page-cache bytes dirtied come
/// without requests).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoCounters {
    pub bytes: u64,
    pub latency: Latency,
}

impl From<&IoTotals> for IoCounters {
    fn from(t: &IoTotals) -> Self {
        Self {
            bytes: t.bytes,
            latency: Latency {
                count: t.ops,
                sum_ns: t.latency_ns,
                buckets: t.buckets,
            },
        }
    }
}

impl IoCounters {
    /// Requests.
    pub fn ops(&self) -> u64 {
        self.latency.count
    }
}

impl super::cumulative::Cumulative for IoCounters {
    /// If any counter went down, the entry was deleted and created again in between (the daemon
    /// deletes idle entries of exited processes): then everything in it is new.
    fn since(&self, prev: &Self) -> Self {
        match (
            self.bytes.checked_sub(prev.bytes),
            self.latency.since(&prev.latency),
        ) {
            (Some(bytes), Some(latency)) => Self { bytes, latency },
            _ => self.clone(),
        }
    }
    fn add(&mut self, d: &Self) {
        self.bytes = self.bytes.saturating_add(d.bytes);
        self.latency.add(&d.latency);
    }
    fn is_zero(&self) -> bool {
        self.bytes == 0 && self.latency.is_zero()
    }
}

/// A block device (its name in /sys/block) and an operation.
pub type IoDim = (Arc<str>, Op);

/// One process's cumulative IO as the kernel reports it, per device and operation.
pub type ProcessIo = HashMap<IoDim, IoCounters>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cumulative::Cumulative as _;

    fn c(bytes: u64, ops: u64, bucket: usize) -> IoCounters {
        let mut x = IoCounters {
            bytes,
            latency: Latency {
                count: ops,
                sum_ns: ops * 10,
                ..Latency::default()
            },
        };
        x.latency.buckets[bucket] = ops;
        x
    }

    #[test]
    fn increase_since_the_previous_reading() {
        let d = c(300, 3, 2).since(&c(100, 1, 2));
        assert_eq!(
            (d.bytes, d.ops(), d.latency.sum_ns, d.latency.buckets[2]),
            (200, 2, 20, 2)
        );
    }

    #[test]
    fn a_recreated_entry_counts_from_zero() {
        // Deleted at (100, 1) and created again: now (40, 1) in another bucket.
        let d = c(40, 1, 5).since(&c(100, 1, 2));
        assert_eq!(d, c(40, 1, 5));
        // Bytes only (dirtied pages) that went down.
        let d = c(40, 0, 0).since(&c(100, 0, 0));
        assert_eq!(d, c(40, 0, 0));
    }

    #[test]
    fn every_kernel_op_has_a_label() {
        for op in 0..5 {
            assert!(Op::from_kernel(op).is_some(), "op {op}");
        }
        assert_eq!(Op::from_kernel(5), None);
        assert_eq!(Op::Dirtied.label(), "dirtied");
    }
}
