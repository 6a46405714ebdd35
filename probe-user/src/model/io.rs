//! Block IO counters as the model handles them: per operation group, with a latency histogram.

use std::{collections::HashMap, sync::Arc};

use probe_common::block::{
    IoTotals, LATENCY_BUCKETS, OP_DIRTIED, OP_DISCARD, OP_FLUSH, OP_READ, OP_WRITE,
};
use serde::{Deserialize, Serialize};

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

/// Cumulative counters of one (process or instance, device, op).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoCounters {
    pub bytes: u64,
    pub ops: u64,
    /// Sum of the latencies (ns) of the `ops` requests.
    pub latency_ns: u64,
    /// Latency histogram (not cumulative), see `probe_common::block::latency_bucket`.
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl From<&IoTotals> for IoCounters {
    fn from(t: &IoTotals) -> Self {
        Self {
            bytes: t.bytes,
            ops: t.ops,
            latency_ns: t.latency_ns,
            buckets: t.buckets,
        }
    }
}

impl IoCounters {
    /// The increase since `prev`, the previous reading of the same kernel entry. If any counter
    /// went down, the entry was deleted and created again in between (the daemon deletes idle
    /// entries of exited processes): then everything in it is new.
    pub fn since(&self, prev: &Self) -> Self {
        let reset = self.bytes < prev.bytes
            || self.ops < prev.ops
            || self.latency_ns < prev.latency_ns
            || self.buckets.iter().zip(&prev.buckets).any(|(a, b)| a < b);
        if reset {
            return self.clone();
        }
        let mut d = Self {
            bytes: self.bytes - prev.bytes,
            ops: self.ops - prev.ops,
            latency_ns: self.latency_ns - prev.latency_ns,
            buckets: [0; LATENCY_BUCKETS],
        };
        for (i, b) in d.buckets.iter_mut().enumerate() {
            *b = self.buckets[i] - prev.buckets[i];
        }
        d
    }

    pub fn add(&mut self, d: &Self) {
        self.bytes = self.bytes.saturating_add(d.bytes);
        self.ops = self.ops.saturating_add(d.ops);
        self.latency_ns = self.latency_ns.saturating_add(d.latency_ns);
        for (a, b) in self.buckets.iter_mut().zip(&d.buckets) {
            *a = a.saturating_add(*b);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.bytes == 0 && self.ops == 0
    }
}

impl super::cumulative::Cumulative for IoCounters {
    fn since(&self, prev: &Self) -> Self {
        IoCounters::since(self, prev)
    }
    fn add(&mut self, d: &Self) {
        IoCounters::add(self, d);
    }
    fn is_zero(&self) -> bool {
        IoCounters::is_zero(self) && self.latency_ns == 0
    }
}

/// A block device (its name in /sys/block) and an operation.
pub type IoDim = (Arc<str>, Op);

/// One process's cumulative IO as the kernel reports it, per device and operation.
pub type ProcessIo = HashMap<IoDim, IoCounters>;

#[cfg(test)]
mod tests {
    use super::*;

    fn c(bytes: u64, ops: u64, bucket: usize) -> IoCounters {
        let mut x = IoCounters {
            bytes,
            ops,
            latency_ns: ops * 10,
            ..IoCounters::default()
        };
        x.buckets[bucket] = ops;
        x
    }

    #[test]
    fn increase_since_the_previous_reading() {
        let d = c(300, 3, 2).since(&c(100, 1, 2));
        assert_eq!(
            (d.bytes, d.ops, d.latency_ns, d.buckets[2]),
            (200, 2, 20, 2)
        );
    }

    #[test]
    fn a_recreated_entry_counts_from_zero() {
        // Deleted at (100, 1) and created again: now (40, 1) in another bucket.
        let d = c(40, 1, 5).since(&c(100, 1, 2));
        assert_eq!(d, c(40, 1, 5));
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
