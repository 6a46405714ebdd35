//! The accounting of one collection, without I/O: a [`Reading`] and the rules in force go in,
//! the accounts and the instances' metadata are updated, and what the kernel maps no longer
//! need comes out ([`Cleanup`]). The live daemon and `probe replay` run the same code.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use super::Snapshot;
use crate::{
    collect::reading::{Cleanup, Reading},
    model::{
        accounts::{Accounts, Limits, PortRound, Round},
        instance::{Facts, Resolver},
        process::{Identity, ProcessKey},
        rules::{CgroupMeta, Rules},
    },
};

/// How an instance was named, and what its cgroup path says (labels of probe_instance_info).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMeta {
    /// The rule that named it.
    pub rule: Arc<str>,
    pub container: Option<String>,
    pub pod_uid: Option<String>,
}

/// The accounts and the metadata of the instances they hold.
#[derive(Debug, Serialize, Deserialize)]
pub struct Ledger {
    pub accounts: Accounts,
    pub meta: HashMap<Arc<str>, InstanceMeta>,
}

impl Ledger {
    pub fn new(rank_tau_secs: f64, limits: Limits) -> Self {
        let mut accounts = Accounts::new(rank_tau_secs);
        accounts.set_limits(limits);
        Self {
            accounts,
            meta: HashMap::new(),
        }
    }

    /// Accounts one reading: resolves instances, credits processes, instances and ports, fixes
    /// the top-K rows. Returns what the kernel maps no longer need.
    pub fn account(&mut self, r: &Reading, rules: &Rules) -> Cleanup {
        let dead = &r.dead.samples;
        let lookup = |id: u64| r.cgroup_paths.get(&id).cloned();
        let resolver = Resolver {
            rules,
            live: &r.facts,
            cgroup_paths: &lookup,
        };
        let mut metas: HashMap<String, InstanceMeta> = HashMap::new();
        let mut resolve = |key: &ProcessKey| -> String {
            let live = r.live.get(key);
            let (named, cgroup_id) = match (live, r.facts.get(&key.tgid)) {
                (Some(_), Some(f)) => (resolver.resolve(f), f.identity.cgroup_id),
                _ => {
                    // No /proc facts: gone by the time /proc was read. Named by what the task
                    // iterator saw (a child reaped between the two reads), else by its exit
                    // record: its parent and cgroup still place it.
                    let identity = live
                        .map(|s| s.identity.clone())
                        // Without its leader's record the iterator gave no identity.
                        .filter(|i| *i != Identity::default())
                        .or_else(|| dead.get(key).map(|d| d.identity.clone()))
                        .unwrap_or_default();
                    let id = identity.cgroup_id;
                    (
                        resolver.resolve(&Facts {
                            identity,
                            ..Facts::default()
                        }),
                        id,
                    )
                }
            };
            if !metas.contains_key(&named.instance) {
                let cg = lookup(cgroup_id)
                    .map(|p| CgroupMeta::parse(&p))
                    .unwrap_or_default();
                metas.insert(
                    named.instance.clone(),
                    InstanceMeta {
                        rule: named.rule,
                        container: cg.container,
                        pod_uid: cg.pod_uid,
                    },
                );
            }
            named.instance
        };
        let round = Round {
            live: &r.live,
            dead,
            io: r.io.as_ref(),
            tcp: r.tcp.as_ref().map(|t| &t.processes),
            runq: r.runq.as_ref().map(|r| &r.processes),
            elapsed_secs: r.elapsed_secs,
            now_secs: r.now_secs,
            page_size: r.page_size,
        };
        let forget = self.accounts.apply(&round, &mut resolve);
        let owners = self.port_owners(r, &resolver);
        if r.tcp_loaded {
            self.accounts.apply_ports(&PortRound {
                traffic: r.tcp.as_ref().map(|t| &t.ports),
                rtt: r.rtt.as_ref(),
                established: r.established.as_ref(),
                owners: &owners,
                listening: &r.listening,
            });
        }
        self.accounts.end_round(r.now_secs);
        for (name, m) in metas {
            self.meta.insert(Arc::from(name), m);
        }
        let exported = self.accounts.instances();
        self.meta.retain(|k, _| exported.contains_key(k));
        Cleanup {
            dead: forget
                .iter()
                .filter_map(|k| r.dead.kernel_keys.get(k))
                .flatten()
                .copied()
                .collect(),
            runq_dead: r.runq.as_ref().map(|r| r.dead.clone()).unwrap_or_default(),
        }
    }

    /// The instance that owns each listening port now (the lowest pid among its live
    /// listeners).
    fn port_owners(&mut self, r: &Reading, resolver: &Resolver<'_>) -> HashMap<u16, Arc<str>> {
        let mut by_port: HashMap<u16, u32> = HashMap::new();
        for (&tgid, ports) in &r.listeners {
            for &port in ports {
                let owner = by_port.entry(port).or_insert(tgid);
                *owner = (*owner).min(tgid);
            }
        }
        let live_tgids: HashSet<u32> = r.live.keys().map(|k| k.tgid).collect();
        let mut by_port: Vec<(u16, u32)> = by_port.into_iter().collect();
        by_port.sort_unstable();
        by_port
            .into_iter()
            .filter(|(_, tgid)| live_tgids.contains(tgid))
            .filter_map(|(port, tgid)| Some((port, resolver.resolve(r.facts.get(&tgid)?).instance)))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(port, name)| (port, self.accounts.admit(name, r.now_secs)))
            .collect()
    }

    /// The accounts as the exporter reads them (the daemon adds its collectors and own
    /// counters).
    pub fn snapshot(&self) -> Snapshot {
        fn owned<K: Clone, V: Clone>(m: &std::collections::BTreeMap<K, V>) -> Vec<(K, V)> {
            m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        let a = &self.accounts;
        let mut meta: Vec<_> = self
            .meta
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        meta.sort_by(|x, y| x.0.cmp(&y.0));
        Snapshot {
            instances: owned(a.instances()),
            top: a.tops().cpu.clone(),
            io: owned(a.io()),
            top_io: a.tops().io.clone(),
            tcp: owned(a.tcp()),
            rtt: owned(a.rtt()),
            established: owned(a.established()),
            top_tcp: a.tops().tcp.clone(),
            runq: owned(a.runq()),
            other_cpu: owned(a.other_cpu()),
            other_io: owned(a.other_io()),
            other_tcp: owned(a.other_tcp()),
            meta,
            folded_instances: a.folded_instances(),
            processes: a.live_processes(),
            ..Snapshot::default()
        }
    }
}

/// The accounts' limits under `rules`.
pub fn limits(top_k: usize, rules: &Rules) -> Limits {
    Limits {
        top_k,
        max_instances: rules.max_instances,
        expire_after_secs: rules.expire_after.as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::process::ProcessSample;

    fn comm(name: &str) -> [u8; probe_common::COMM_LEN] {
        let mut c = [0; probe_common::COMM_LEN];
        c[..name.len()].copy_from_slice(name.as_bytes());
        c
    }

    /// A child the task iterator saw but that was reaped before /proc was read (no facts, and
    /// where the exit hook runs when the kernel frees it, no exit record yet either) is named
    /// by its parent, as its exit record would name it, not charged to `other`.
    #[test]
    fn a_child_gone_before_proc_was_read_is_named_by_its_parent() {
        let rules = Rules::defaults();
        let mut ledger = Ledger::new(30.0, limits(5, &rules));
        let identity = |ppid| Identity {
            ppid,
            comm: comm("server"),
            cgroup_id: 0,
            kthread: false,
        };
        let parent = ProcessKey {
            tgid: 100,
            start_ns: 1,
        };
        let child = ProcessKey {
            tgid: 101,
            start_ns: 2,
        };
        let mut r = Reading {
            now_secs: 1.0,
            page_size: 4096,
            ..Reading::default()
        };
        for (key, ppid, cpu_ns) in [(parent, 1, 1_000), (child, 100, 5_000_000)] {
            r.live.insert(
                key,
                ProcessSample {
                    identity: identity(ppid),
                    cpu_ns,
                    threads: 1,
                    ..ProcessSample::default()
                },
            );
        }
        r.facts.insert(
            100,
            Facts {
                identity: identity(1),
                ports: vec![3306],
                ..Facts::default()
            },
        );
        ledger.account(&r, &rules);
        let instances = ledger.accounts.instances();
        assert_eq!(
            instances.get("server:3306").map(|t| t.cpu_ns),
            Some(5_001_000),
            "{instances:#?}"
        );
    }
}
