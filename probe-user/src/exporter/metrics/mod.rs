//! The metrics, encoded with prometheus-client from a [`Snapshot`] taken at scrape time.
//!
//! One module per signal writes its families in a fixed order (`instances`, `block`, `tcp`,
//! `selfstats`); [`labels`] holds the label sets as types.

mod block;
mod instances;
mod labels;
mod selfstats;
mod tcp;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType, TypedMetric},
    registry::{Registry, Unit},
};

use crate::{daemon::Snapshot, model::latency::Latency};

/// Encodes the snapshot as OpenMetrics text.
pub fn encode_openmetrics(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    encode(SnapshotCollector {
        snapshot,
        daemon: true,
    })
}

/// Encodes only the families the accounts make (instances, processes, block IO, TCP), not the
/// daemon's own: what a replay of a recording reproduces exactly.
pub fn encode_accounts(snapshot: Snapshot) -> Result<String, std::fmt::Error> {
    encode(SnapshotCollector {
        snapshot,
        daemon: false,
    })
}

fn encode(collector: SnapshotCollector) -> Result<String, std::fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

#[derive(Debug)]
struct SnapshotCollector {
    snapshot: Snapshot,
    /// Whether the daemon's own families (`selfstats`) are written too.
    daemon: bool,
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.snapshot;
        instances::encode(s, &mut enc)?;
        block::encode(s, &mut enc)?;
        tcp::encode(s, &mut enc)?;
        if self.daemon {
            selfstats::encode(s, &mut enc)?;
        }
        Ok(())
    }
}

/// Name (without the unit suffix), unit and help of a family.
type Desc = (&'static str, Option<Unit>, &'static str);

/// Writes one metric family: `rows` are (labels, value) pairs.
fn family<L: EncodeLabelSet, M: EncodeMetric + TypedMetric>(
    enc: &mut DescriptorEncoder,
    (name, unit, help): Desc,
    rows: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = enc.encode_descriptor(name, help, unit.as_ref(), M::TYPE)?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A family with a single, unlabelled sample.
fn single<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    (name, unit, help): Desc,
    value: M,
) -> Result<(), std::fmt::Error> {
    value.encode(enc.encode_descriptor(name, help, unit.as_ref(), value.metric_type())?)
}

/// A histogram whose buckets are already counted (by the kernel).
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    /// (upper bound, count in this bucket alone); the last bound is f64::MAX (+Inf).
    buckets: Vec<(f64, u64)>,
}

impl ConstHistogram {
    fn latency(l: &Latency) -> Self {
        let buckets = l
            .bounded_buckets()
            .map(|(le, n)| (if le.is_infinite() { f64::MAX } else { le }, n))
            .collect();
        Self {
            sum: secs(l.sum_ns),
            count: l.count,
            buckets,
        }
    }
}

impl TypedMetric for ConstHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Nanoseconds to seconds (a division, so that e.g. 1_064_000 ns is exactly 0.001064).
fn secs(ns: u64) -> f64 {
    ns as f64 / 1e9
}

fn counter(v: f64) -> ConstCounter<f64> {
    ConstCounter::new(v)
}

fn gauge(v: i64) -> ConstGauge<i64> {
    ConstGauge::new(v)
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests;
