//! Cumulative counters read from the kernel, and how their increases are credited.

use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    sync::Arc,
};

/// A set of counters that only grow while their kernel entry lives.
pub trait Cumulative: Clone + Default {
    /// The increase since `prev`, the previous reading of the same kernel entry. If any counter
    /// went down, the entry was deleted and created again in between: then all of it is new.
    fn since(&self, prev: &Self) -> Self;
    fn add(&mut self, d: &Self);
    fn is_zero(&self) -> bool;
}

/// Credits the increase of one owner's kernel totals (`now`, per dimension) since `seen` to the
/// owner's own totals and to its instance's, then remembers `now`. Dimensions the kernel no
/// longer has are forgotten, so a re-created entry counts in full. Calls `each` with every
/// non-zero increase.
pub fn credit<D, C>(
    seen: &mut HashMap<D, C>,
    total: Option<&mut HashMap<D, C>>,
    instance_map: &mut BTreeMap<(Arc<str>, D), C>,
    instance: &Arc<str>,
    now: &HashMap<D, C>,
    mut each: impl FnMut(&D, &C),
) where
    D: Clone + Eq + Hash + Ord,
    C: Cumulative,
{
    let mut total = total;
    for (dim, cur) in now {
        let d = match seen.get(dim) {
            Some(prev) => cur.since(prev),
            None => cur.clone(),
        };
        if d.is_zero() {
            continue;
        }
        each(dim, &d);
        if let Some(t) = total.as_deref_mut() {
            t.entry(dim.clone()).or_default().add(&d);
        }
        instance_map
            .entry((instance.clone(), dim.clone()))
            .or_default()
            .add(&d);
    }
    seen.retain(|dim, _| now.contains_key(dim));
    for (dim, cur) in now {
        match seen.get_mut(dim) {
            Some(s) => s.clone_from(cur),
            None => {
                seen.insert(dim.clone(), cur.clone());
            }
        }
    }
}

/// Like [`credit`] for totals that have no process (per port): each dimension's increase goes
/// to the instance `instance_of` names for it now.
pub fn credit_by_dim<D, C>(
    seen: &mut HashMap<D, C>,
    instance_map: &mut BTreeMap<(Arc<str>, D), C>,
    now: &HashMap<D, C>,
    instance_of: impl Fn(&D) -> Arc<str>,
) where
    D: Clone + Eq + Hash + Ord,
    C: Cumulative,
{
    for (dim, cur) in now {
        let d = match seen.get(dim) {
            Some(prev) => cur.since(prev),
            None => cur.clone(),
        };
        if !d.is_zero() {
            instance_map
                .entry((instance_of(dim), dim.clone()))
                .or_default()
                .add(&d);
        }
    }
    seen.clone_from(now);
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
    fn per_port_increases_follow_the_ports_current_owner() {
        let mut seen = HashMap::new();
        let mut map = BTreeMap::new();
        let a: Arc<str> = Arc::from("a:3306");
        let b: Arc<str> = Arc::from("b:3306");
        credit_by_dim(&mut seen, &mut map, &HashMap::from([(P, rx(100))]), |_| {
            a.clone()
        });
        // The port changed hands: only the increase goes to the new owner.
        credit_by_dim(&mut seen, &mut map, &HashMap::from([(P, rx(130))]), |_| {
            b.clone()
        });
        assert_eq!(map[&(a.clone(), P)], rx(100));
        assert_eq!(map[&(b.clone(), P)], rx(30));
    }

    #[test]
    fn owner_increases_reach_owner_and_instance() {
        let (mut seen, mut total, mut map) = (HashMap::new(), HashMap::new(), BTreeMap::new());
        let i: Arc<str> = Arc::from("x");
        let mut recent = 0;
        for now in [50, 80, 20] {
            credit(
                &mut seen,
                Some(&mut total),
                &mut map,
                &i,
                &HashMap::from([(P, rx(now))]),
                |_, d: &TcpCounters| recent += d.rx_bytes,
            );
        }
        // 50, +30, then a re-created entry at 20 counts in full.
        assert_eq!(total[&P], rx(100));
        assert_eq!(map[&(i, P)], rx(100));
        assert_eq!(recent, 100);
    }
}
