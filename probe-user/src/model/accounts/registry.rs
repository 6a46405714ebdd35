//! Which instance names are exported: at most `max_instances`, the rest folded into [`OTHER`];
//! an instance with no live process and no activity for `expire_after_secs` is dropped.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::model::instance::OTHER;

/// Bounds on what is exported.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Limits {
    /// Processes exported one by one per resource (CPU, block IO, TCP).
    pub top_k: usize,
    /// Instances exported; names beyond are counted in [`OTHER`].
    pub max_instances: usize,
    /// An instance with no live process and no activity for this long (s) is dropped.
    pub expire_after_secs: f64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            top_k: 20,
            max_instances: crate::model::rules::DEFAULT_MAX_INSTANCES,
            expire_after_secs: crate::model::rules::DEFAULT_EXPIRE_AFTER.as_secs_f64(),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Registry {
    /// Admitted instances and when each was last active (s).
    known: HashMap<Arc<str>, f64>,
    /// Names folded into [`OTHER`] because of the cap, and when each was last seen (s).
    folded: HashMap<String, f64>,
    /// Activity signature of each instance at the last round (see [`Registry::expire`]).
    signature: HashMap<Arc<str>, u64>,
}

impl Registry {
    /// The exported name for an instance name a rule gave.
    pub fn admit(&mut self, name: String, limits: &Limits, now: f64) -> Arc<str> {
        if name == OTHER {
            return Arc::from(OTHER);
        }
        if let Some((k, _)) = self.known.get_key_value(name.as_str()) {
            return k.clone();
        }
        if self.known.len() < limits.max_instances {
            let k: Arc<str> = Arc::from(name);
            self.known.insert(k.clone(), now);
            return k;
        }
        self.folded.insert(name, now);
        Arc::from(OTHER)
    }

    /// Instance names folded into [`OTHER`] now.
    pub fn folded(&self) -> usize {
        self.folded.len()
    }

    /// Ends a round: an instance is active if it is `busy` (has live processes) or its activity
    /// `signature` (a hash of its counters) changed since the last round. Returns the instances
    /// inactive for `expire_after_secs`, forgotten here (the caller drops their series).
    pub fn expire(
        &mut self,
        signature: HashMap<Arc<str>, u64>,
        busy: impl Fn(&Arc<str>) -> bool,
        now: f64,
        expire_after_secs: f64,
    ) -> HashSet<Arc<str>> {
        let mut dead = HashSet::new();
        for (inst, last) in self.known.iter_mut() {
            let s = signature.get(inst).copied().unwrap_or(0);
            if busy(inst) || self.signature.get(inst) != Some(&s) {
                *last = now;
            } else if now - *last >= expire_after_secs {
                dead.insert(inst.clone());
            }
        }
        self.signature = signature;
        self.folded
            .retain(|_, seen| now - *seen < expire_after_secs);
        self.known.retain(|k, _| !dead.contains(k));
        self.signature.retain(|k, _| !dead.contains(k));
        dead
    }
}
