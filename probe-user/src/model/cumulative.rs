//! Cumulative counters read from the kernel, and the one way their increases are credited.
//!
//! Every signal counted per dimension (block IO per device and op, TCP per port and role,
//! run-queue waits per thread, per-port totals and RTT) goes through [`Seen::credit`]: the
//! increase of each dimension since the previous reading, a re-created kernel entry counting in
//! full. [`Tracked`] adds what a process was credited so far and its recent-use score.

use std::{collections::HashMap, hash::Hash};

use serde::{Deserialize, Serialize};

/// A set of counters that only grow while their kernel entry lives.
pub trait Cumulative: Clone + Default {
    /// The increase since `prev`, the previous reading of the same kernel entry. If any counter
    /// went down, the entry was deleted and created again in between: then all of it is new.
    fn since(&self, prev: &Self) -> Self;
    fn add(&mut self, d: &Self);
    fn is_zero(&self) -> bool;
}

/// The previous reading of one cumulative source, per dimension.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "D: Serialize, C: Serialize",
    deserialize = "D: Deserialize<'de> + Eq + Hash, C: Deserialize<'de>"
))]
pub struct Seen<D: Eq + Hash, C>(HashMap<D, C>);

impl<D: Eq + Hash, C> Default for Seen<D, C> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<D: Clone + Eq + Hash, C: Cumulative> Seen<D, C> {
    /// Calls `each` with the increase of every dimension of `now` since the previous reading
    /// (non-zero ones only), then remembers `now`. A dimension `now` lacks is forgotten (its
    /// kernel entry was deleted), so if it comes back it counts in full.
    pub fn credit(&mut self, now: &HashMap<D, C>, mut each: impl FnMut(&D, &C)) {
        for (dim, cur) in now {
            let d = match self.0.get(dim) {
                Some(prev) => cur.since(prev),
                None => cur.clone(),
            };
            if !d.is_zero() {
                each(dim, &d);
            }
        }
        self.0.retain(|dim, _| now.contains_key(dim));
        for (dim, cur) in now {
            match self.0.get_mut(dim) {
                Some(s) => s.clone_from(cur),
                None => {
                    self.0.insert(dim.clone(), cur.clone());
                }
            }
        }
    }

    /// Forgets the previous reading (the source is gone): whatever comes next counts in full.
    pub fn clear(&mut self) {
        self.0.clear();
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// What one process used of a resource counted per dimension.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(bound(
    serialize = "D: Serialize, C: Serialize",
    deserialize = "D: Deserialize<'de> + Eq + Hash, C: Deserialize<'de>"
))]
pub struct Tracked<D: Eq + Hash, C> {
    /// The kernel's totals at the last collection.
    pub seen: Seen<D, C>,
    /// Credited so far (monotonic, exported).
    pub total: HashMap<D, C>,
    /// Recent use, exponentially decayed (the ranking key).
    pub score: f64,
}

impl<D: Eq + Hash, C> Default for Tracked<D, C> {
    fn default() -> Self {
        Self {
            seen: Seen::default(),
            total: HashMap::new(),
            score: 0.0,
        }
    }
}

impl<D: Clone + Eq + Hash, C: Cumulative> Tracked<D, C> {
    /// Credits the increases since the last reading to `total` and passes each to `each`. The
    /// score decays by `decay` and grows by the increases' `recent` measure, except on the first
    /// collection (every process then brings its whole lifetime: not recent use).
    pub fn credit(
        &mut self,
        now: &HashMap<D, C>,
        decay: f64,
        first: bool,
        recent: impl Fn(&D, &C) -> u64,
        mut each: impl FnMut(&D, &C),
    ) {
        let mut used = 0u64;
        let total = &mut self.total;
        self.seen.credit(now, |dim, d| {
            used = used.saturating_add(recent(dim, d));
            total.entry(dim.clone()).or_default().add(d);
            each(dim, d);
        });
        self.score = self.score * decay + if first { 0.0 } else { used as f64 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::tcp::{Role, TcpCounters, TcpDim};

    const P: TcpDim = TcpDim {
        role: Role::Server,
        port: 3306,
    };

    fn rx(n: u64) -> TcpCounters {
        TcpCounters {
            rx_bytes: n,
            ..TcpCounters::default()
        }
    }

    #[test]
    fn increases_go_where_the_caller_says_at_each_reading() {
        // A port that changed hands: only the increase goes to the new owner.
        let mut seen = Seen::default();
        let mut by_owner: HashMap<&str, u64> = HashMap::new();
        for (now, owner) in [(100, "a"), (130, "b")] {
            seen.credit(&HashMap::from([(P, rx(now))]), |_, d| {
                *by_owner.entry(owner).or_default() += d.rx_bytes;
            });
        }
        assert_eq!(by_owner, HashMap::from([("a", 100), ("b", 30)]));
    }

    #[test]
    fn a_dimension_gone_and_back_counts_in_full() {
        let mut seen = Seen::default();
        let mut credited = 0;
        for now in [
            HashMap::from([(P, rx(50))]),
            HashMap::new(),
            HashMap::from([(P, rx(20))]),
        ] {
            seen.credit(&now, |_, d| credited += d.rx_bytes);
        }
        assert_eq!(credited, 70);
        seen.clear();
        assert!(seen.is_empty());
    }

    #[test]
    fn owner_increases_reach_total_score_and_caller() {
        let mut t = Tracked::default();
        let mut passed = 0;
        for (i, now) in [50, 80, 20].into_iter().enumerate() {
            t.credit(
                &HashMap::from([(P, rx(now))]),
                0.5,
                i == 0,
                |_, d| d.rx_bytes,
                |_, d| passed += d.rx_bytes,
            );
        }
        // 50, +30, then a re-created entry at 20 counts in full.
        assert_eq!(t.total[&P], rx(100));
        assert_eq!(passed, 100);
        // The first reading does not rank: (0 * 0.5 + 30) * 0.5 + 20.
        assert_eq!(t.score, 35.0);
    }
}
