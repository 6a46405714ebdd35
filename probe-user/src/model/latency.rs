//! The one latency histogram type: block IO, run-queue waits and TCP RTT on the user side, in
//! the accounts, the exporter and the JSON API. Buckets as the kernel counts them
//! ([`probe_common::latency`]): bucket `i` holds what took at most 2^i µs, not cumulative.

use probe_common::latency::{upper_secs, BUCKETS};
use serde::{Deserialize, Serialize};

/// Cumulative latencies of one thing (a process's requests on a device, an instance's waits).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Events measured.
    pub count: u64,
    /// Sum of their latencies (ns).
    pub sum_ns: u64,
    /// Events per bucket (bucket `i`: at most 2^i µs; the last: everything longer).
    #[serde(with = "buckets")]
    pub buckets: [u64; BUCKETS],
}

impl Latency {
    /// The increase since `prev`, the previous reading of the same cumulative source; None if
    /// any counter went down (the source was deleted and created again in between).
    pub fn since(&self, prev: &Self) -> Option<Self> {
        let mut d = Self {
            count: self.count.checked_sub(prev.count)?,
            sum_ns: self.sum_ns.checked_sub(prev.sum_ns)?,
            buckets: [0; BUCKETS],
        };
        for ((d, now), before) in d.buckets.iter_mut().zip(&self.buckets).zip(&prev.buckets) {
            *d = now.checked_sub(*before)?;
        }
        Some(d)
    }

    pub fn add(&mut self, d: &Self) {
        self.count = self.count.saturating_add(d.count);
        self.sum_ns = self.sum_ns.saturating_add(d.sum_ns);
        for (a, b) in self.buckets.iter_mut().zip(&d.buckets) {
            *a = a.saturating_add(*b);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.count == 0 && self.sum_ns == 0 && self.buckets.iter().all(|&n| n == 0)
    }

    /// Mean latency in seconds; None without events.
    pub fn mean_secs(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum_ns as f64 / self.count as f64 / 1e9)
    }

    /// Upper bound (s) of the bucket that holds quantile `q` (0 < q <= 1) of the events: None
    /// without events, +inf when it is the last bucket.
    pub fn quantile_upper_secs(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let want = (total as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(upper_secs(i));
            }
        }
        None
    }

    /// (upper bound in seconds, events in that bucket alone) per bucket, for the exporter.
    pub fn bounded_buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.buckets
            .iter()
            .enumerate()
            .map(|(i, &n)| (upper_secs(i), n))
    }
}

impl super::cumulative::Cumulative for Latency {
    fn since(&self, prev: &Self) -> Self {
        Latency::since(self, prev).unwrap_or_else(|| self.clone())
    }
    fn add(&mut self, d: &Self) {
        Latency::add(self, d);
    }
    fn is_zero(&self) -> bool {
        Latency::is_zero(self)
    }
}

/// The buckets as a sequence (JSON: an array). A reader takes any length: a shorter one (an
/// empty histogram of an older daemon was `[]`) is padded with zeros, and the buckets of a
/// longer one past the last are added to the last (it counts everything longer).
mod buckets {
    use probe_common::latency::BUCKETS;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &[u64; BUCKETS], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(b)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u64; BUCKETS], D::Error> {
        let v = Vec::<u64>::deserialize(d)?;
        let mut out = [0u64; BUCKETS];
        for (i, n) in v.into_iter().enumerate() {
            let slot = &mut out[i.min(BUCKETS - 1)];
            *slot = slot.saturating_add(n);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use probe_common::latency::bucket;

    use super::*;

    /// `n` events of `us` microseconds each.
    pub(crate) fn events(n: u64, us: u64) -> Latency {
        let mut l = Latency {
            count: n,
            sum_ns: n * us * 1000,
            ..Latency::default()
        };
        l.buckets[bucket(us * 1000)] = n;
        l
    }

    #[test]
    fn increase_since_the_previous_reading() {
        let mut now = events(3, 10);
        now.add(&events(2, 4000));
        let d = now.since(&events(1, 10)).expect("grew");
        assert_eq!((d.count, d.sum_ns), (4, 2 * 10_000 + 2 * 4_000_000));
        assert_eq!(d.buckets[bucket(10_000)], 2);
        assert_eq!(d.buckets[bucket(4_000_000)], 2);
    }

    #[test]
    fn a_counter_that_went_down_is_a_new_source() {
        // Same count, but moved to another bucket: deleted and created again.
        assert_eq!(events(1, 4000).since(&events(1, 10)), None);
        assert_eq!(events(1, 10).since(&events(2, 10)), None);
        let c = &events(1, 4000);
        assert_eq!(
            super::super::cumulative::Cumulative::since(c, &events(1, 10)),
            events(1, 4000)
        );
    }

    #[test]
    fn mean_and_quantile_bounds() {
        let mut l = events(990, 20); // bucket of 32 us
        l.add(&events(10, 5000)); // bucket of 8192 us
        let mean = l.mean_secs().expect("events");
        assert!((mean - 69.8e-6).abs() < 1e-12, "{mean}");
        assert_eq!(l.quantile_upper_secs(0.99), Some(32e-6));
        assert_eq!(l.quantile_upper_secs(0.995), Some(8192e-6));
        assert_eq!(Latency::default().quantile_upper_secs(0.99), None);
        assert_eq!(Latency::default().mean_secs(), None);
        let last = events(1, 100_000_000).quantile_upper_secs(1.0);
        assert!(last.expect("events").is_infinite(), "{last:?}");
    }

    #[test]
    fn json_is_an_array_and_any_length_reads() {
        let l = events(2, 3);
        let json = serde_json::to_string(&l).expect("json");
        assert!(json.contains("\"buckets\":[0,0,2,0,"), "{json}");
        assert_eq!(serde_json::from_str::<Latency>(&json).expect("back"), l);
        let old: Latency =
            serde_json::from_str(r#"{"count":0,"sum_ns":0,"buckets":[]}"#).expect("empty");
        assert_eq!(old, Latency::default());
        // A newer daemon's 28 buckets: the last three are all in this one's last.
        let mut b = ["0"; 28];
        (b[25], b[26], b[27]) = ("1", "2", "3");
        let long = format!(r#"{{"count":6,"sum_ns":0,"buckets":[{}]}}"#, b.join(","));
        let read: Latency = serde_json::from_str(&long).expect("28 buckets");
        assert_eq!(read.buckets[BUCKETS - 1], 6);
        assert_eq!(read.buckets.iter().sum::<u64>(), 6);
    }
}
