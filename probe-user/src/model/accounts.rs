//! Turning the kernel's per-process totals into monotonic per-instance counters.
//!
//! The kernel's totals are cumulative per process, and processes come, go and change instance.
//! Each collection adds to an instance only the *increase* of each process's total since the
//! previous collection, so instance counters only ever go up, whatever happens to processes:
//!
//! - a live process's total is its live threads plus the final totals of its threads that
//!   died ([`DeadSample`], recorded by the exit hook);
//! - a process's reported total never goes down (a thread that dies between the reads of the
//!   dead-thread map and of the live threads is briefly in neither; it shows up next time);
//! - a process that exited is folded in with its final totals and forgotten one collection
//!   later (so a thread whose final switch lands just after a read is still counted), at which
//!   point its entry in the kernel's dead-thread map can be deleted;
//! - a process that lived and died between two collections is known only from the dead-thread
//!   map, and is charged to the instance its identity resolves to.
//!
//! Block IO follows the same rule per (device, op): the kernel's per-process totals grow, each
//! collection adds their increase to the process's current instance. A process that exited
//! stays known for as long as the kernel still has IO entries for it (writeback can charge it
//! after it exited).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use probe_common::COMM_LEN;
use serde::{Deserialize, Serialize};

use super::{
    cumulative::{credit as credit_dims, credit_by_dim, Cumulative as _},
    instance::OTHER,
    io::{IoCounters, IoDim, ProcessIo},
    latency::Latency,
    names::display_name,
    process::{DeadSample, ProcessKey, ProcessSample},
    tcp::{ProcessTcp, Role, TcpCounters, TcpDim},
};

/// Cumulative run-queue waits of one process, per thread id.
pub type ProcessRunq = HashMap<u32, Latency>;

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
            max_instances: super::rules::DEFAULT_MAX_INSTANCES,
            expire_after_secs: super::rules::DEFAULT_EXPIRE_AFTER.as_secs_f64(),
        }
    }
}

/// Which instance names are exported: at most `max`, the rest folded into [`OTHER`].
#[derive(Debug, Default, Serialize, Deserialize)]
struct Registry {
    /// Admitted instances and when each was last active (s).
    known: HashMap<Arc<str>, f64>,
    /// Names folded into [`OTHER`] because of the cap, and when each was last seen (s).
    folded: HashMap<String, f64>,
    /// Activity signature of each instance at the last round (see [`Accounts::end_round`]).
    signature: HashMap<Arc<str>, u64>,
}

impl Registry {
    fn admit(&mut self, name: String, limits: &Limits, now: f64) -> Arc<str> {
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
}

/// Cumulative totals of one instance.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceTotals {
    pub cpu_ns: u64,
    pub run_delay_ns: u64,
    /// Resident memory of the instance's live processes at the last collection (a gauge).
    pub rss_bytes: u64,
    /// Live processes at the last collection.
    pub processes: u64,
}

/// What is exported for one of the top processes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcessRow {
    pub pid: u32,
    pub comm: Arc<str>,
    pub instance: Arc<str>,
    pub cpu_ns: u64,
    pub run_delay_ns: u64,
    /// Recent CPU seconds, exponentially decayed (the ranking key).
    pub score: f64,
}

/// What is exported for one of the top processes by a resource counted per dimension (block IO
/// per device and op, TCP per port and role).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopRow<D, C> {
    pub pid: u32,
    pub comm: Arc<str>,
    pub instance: Arc<str>,
    /// Cumulative counters of the process, by dimension, sorted.
    pub counters: Vec<(D, C)>,
    /// Recent bytes, exponentially decayed (the ranking key).
    pub score: f64,
}

/// Top processes by recent block bytes (read, write, discard; no latency histograms).
pub type IoProcessRow = TopRow<IoDim, IoCounters>;
/// Top processes by recent TCP payload bytes (both directions).
pub type TcpProcessRow = TopRow<TcpDim, TcpCounters>;

/// TCP totals that belong to ports rather than processes, for one collection.
pub struct PortRound<'a> {
    /// Per-port kernel totals (connections; bytes on the per-port fallback; retransmits of
    /// sockets without a known owner); None when they could not be read.
    pub traffic: Option<&'a HashMap<TcpDim, TcpCounters>>,
    /// RTT histograms per listening port.
    pub rtt: Option<&'a HashMap<u16, Latency>>,
    /// Established connections per local port (the daemon's network namespace).
    pub established: Option<&'a HashMap<u16, u64>>,
    /// Listening ports and the instance that owns each now.
    pub owners: &'a HashMap<u16, Arc<str>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ProcState {
    instance: Arc<str>,
    comm_raw: [u8; COMM_LEN],
    comm: Arc<str>,
    cpu_ns: u64,
    run_delay_ns: u64,
    score: f64,
    live: bool,
    /// Collections in a row in which the process was not seen alive.
    gone_rounds: u8,
    /// The kernel's IO totals for this process at the last collection.
    io_seen: ProcessIo,
    /// IO credited to this process so far (monotonic, exported).
    io_total: ProcessIo,
    io_score: f64,
    tcp_seen: ProcessTcp,
    tcp_total: ProcessTcp,
    tcp_score: f64,
    runq_seen: ProcessRunq,
}

/// One collection's input.
pub struct Round<'a> {
    pub live: &'a HashMap<ProcessKey, ProcessSample>,
    pub dead: &'a HashMap<ProcessKey, DeadSample>,
    /// Cumulative block IO per process, as the kernel reports it; None when it could not be
    /// read this time (nothing is concluded from its absence then).
    pub io: Option<&'a HashMap<ProcessKey, ProcessIo>>,
    /// Cumulative TCP counters per process (same rules as `io`).
    pub tcp: Option<&'a HashMap<ProcessKey, ProcessTcp>>,
    /// Cumulative run-queue waits per process (same rules as `io`).
    pub runq: Option<&'a HashMap<ProcessKey, ProcessRunq>>,
    /// Seconds since the previous collection.
    pub elapsed_secs: f64,
    /// A monotonic clock (s), for instance expiry.
    pub now_secs: f64,
    pub page_size: u64,
}

/// Per-process and per-instance accounting. Serialisable: `probe serve` saves it at every
/// collection and a restarted daemon carries on from it (see `state.rs`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Accounts {
    procs: HashMap<ProcessKey, ProcState>,
    instances: BTreeMap<Arc<str>, InstanceTotals>,
    /// Block IO per instance, device and op.
    io: BTreeMap<(Arc<str>, IoDim), IoCounters>,
    /// TCP per instance, port and role.
    tcp: BTreeMap<(Arc<str>, TcpDim), TcpCounters>,
    /// RTT histograms per instance and listening port.
    rtt: BTreeMap<(Arc<str>, u16), Latency>,
    /// Established connections per instance and listening port (a gauge).
    established: BTreeMap<(Arc<str>, u16), u64>,
    /// Run-queue latency per instance.
    runq: BTreeMap<Arc<str>, Latency>,
    port_seen: HashMap<TcpDim, TcpCounters>,
    rtt_seen: HashMap<u16, Latency>,
    /// What processes outside the exported top-K used, per instance: increases credited while
    /// a process was not listed (so the listed processes plus `other` add up, as rates).
    other_cpu: BTreeMap<Arc<str>, (u64, u64)>,
    other_io: BTreeMap<(Arc<str>, IoDim), IoCounters>,
    other_tcp: BTreeMap<(Arc<str>, TcpDim), TcpCounters>,
    /// The exported top-K lists, fixed at the end of each round.
    top: Tops,
    registry: Registry,
    limits: Limits,
    /// Time constant (s) of the decay that ranks processes by recent CPU use.
    tau_secs: f64,
    rounds: u64,
}

/// The processes exported one by one, per resource (see [`Accounts::end_round`]).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tops {
    pub cpu: Vec<ProcessRow>,
    pub io: Vec<IoProcessRow>,
    pub tcp: Vec<TcpProcessRow>,
    cpu_pids: HashSet<u32>,
    io_pids: HashSet<u32>,
    tcp_pids: HashSet<u32>,
}

impl Accounts {
    pub fn new(tau_secs: f64) -> Self {
        Self {
            procs: HashMap::new(),
            instances: BTreeMap::new(),
            io: BTreeMap::new(),
            tcp: BTreeMap::new(),
            rtt: BTreeMap::new(),
            established: BTreeMap::new(),
            runq: BTreeMap::new(),
            port_seen: HashMap::new(),
            rtt_seen: HashMap::new(),
            other_cpu: BTreeMap::new(),
            other_io: BTreeMap::new(),
            other_tcp: BTreeMap::new(),
            top: Tops::default(),
            registry: Registry::default(),
            limits: Limits::default(),
            tau_secs,
            rounds: 0,
        }
    }

    /// The exported name for an instance name a rule gave (see [`Limits::max_instances`]).
    pub fn admit(&mut self, name: String, now: f64) -> Arc<str> {
        self.registry.admit(name, &self.limits, now)
    }

    /// Sets the bounds (at start, and when the rules are reloaded).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Sets the time constant of the recent-use ranking (a restored state takes the flags').
    pub fn set_tau(&mut self, tau_secs: f64) {
        self.tau_secs = tau_secs;
    }

    /// Processes and instances known (for logs).
    pub fn sizes(&self) -> (usize, usize) {
        (self.procs.len(), self.instances.len())
    }

    /// Applies one collection. `resolve` names the instance of a key: it is called for every
    /// live process (instances can change while a process lives) and for processes known only
    /// from the dead-thread map. Returns the keys whose dead-thread map entries are no longer
    /// needed (the caller deletes them from the kernel map).
    pub fn apply(
        &mut self,
        round: &Round<'_>,
        resolve: &mut dyn FnMut(&ProcessKey) -> String,
    ) -> Vec<ProcessKey> {
        let decay = (-round.elapsed_secs.max(0.0) / self.tau_secs).exp();
        let first = self.rounds == 0;
        self.rounds += 1;
        let now = round.now_secs;
        let limits = &self.limits;
        let registry = &mut self.registry;
        let mut resolve = |key: &ProcessKey| registry.admit(resolve(key), limits, now);
        let top = &self.top;
        for t in self.instances.values_mut() {
            t.rss_bytes = 0;
            t.processes = 0;
        }

        for (key, sample) in round.live {
            let dead = round.dead.get(key);
            let cpu = sample.cpu_ns.saturating_add(dead.map_or(0, |d| d.cpu_ns));
            let delay = sample
                .run_delay_ns
                .saturating_add(dead.map_or(0, |d| d.run_delay_ns));
            let instance = resolve(key);
            let st = self
                .procs
                .entry(*key)
                .or_insert_with(|| ProcState::new(instance.clone(), &sample.identity.comm));
            st.update(instance, &sample.identity.comm);
            st.live = true;
            st.gone_rounds = 0;
            let totals = self.instances.entry(st.instance.clone()).or_default();
            let d = credit(st, totals, cpu, delay, decay, first);
            if !top.cpu_pids.contains(&key.tgid) {
                add_other_cpu(&mut self.other_cpu, &st.instance, d);
            }
            totals.rss_bytes = totals
                .rss_bytes
                .saturating_add(sample.rss_pages.saturating_mul(round.page_size));
            totals.processes += 1;
        }

        for (key, dead) in round.dead {
            if round.live.contains_key(key) {
                continue;
            }
            let st = self.procs.entry(*key).or_insert_with(|| {
                let mut st = ProcState::new(resolve(key), &dead.identity.comm);
                st.live = false;
                st
            });
            let totals = self.instances.entry(st.instance.clone()).or_default();
            let d = credit(st, totals, dead.cpu_ns, dead.run_delay_ns, decay, first);
            add_other_cpu(&mut self.other_cpu, &st.instance, d);
        }

        for (key, io) in round.io.into_iter().flatten() {
            let st = self.procs.entry(*key).or_insert_with(|| {
                let comm = round
                    .dead
                    .get(key)
                    .map(|d| d.identity.comm)
                    .unwrap_or_default();
                let mut st = ProcState::new(resolve(key), &comm);
                st.live = false;
                st
            });
            let other =
                (!top.io_pids.contains(&key.tgid) || !st.live).then_some(&mut self.other_io);
            credit_io(st, &mut self.io, other, io, decay, first);
        }

        for (key, tcp) in round.tcp.into_iter().flatten() {
            let st = self.procs.entry(*key).or_insert_with(|| {
                let comm = round
                    .dead
                    .get(key)
                    .map(|d| d.identity.comm)
                    .unwrap_or_default();
                let mut st = ProcState::new(resolve(key), &comm);
                st.live = false;
                st
            });
            let mut recent = 0u64;
            let listed = top.tcp_pids.contains(&key.tgid) && st.live;
            let other_tcp = &mut self.other_tcp;
            let instance = st.instance.clone();
            credit_dims(
                &mut st.tcp_seen,
                Some(&mut st.tcp_total),
                &mut self.tcp,
                &st.instance,
                tcp,
                |dim, d| {
                    recent = recent.saturating_add(d.bytes());
                    if !listed {
                        other_tcp
                            .entry((instance.clone(), *dim))
                            .or_default()
                            .add(d);
                    }
                },
            );
            st.tcp_score = st.tcp_score * decay + if first { 0.0 } else { recent as f64 };
        }

        for (key, runq) in round.runq.into_iter().flatten() {
            // Every process with waits was seen live or in the dead-thread map above.
            let Some(st) = self.procs.get_mut(key) else {
                continue;
            };
            credit_threads(&mut st.runq_seen, &mut self.runq, &st.instance, runq);
        }

        let mut forget = Vec::new();
        self.procs.retain(|key, st| {
            if round.live.contains_key(key) {
                return true;
            }
            let has_io = match round.io {
                Some(io) => io.contains_key(key),
                None => !st.io_seen.is_empty(),
            };
            if !has_io {
                st.io_seen.clear();
            }
            let has_tcp = match round.tcp {
                Some(tcp) => tcp.contains_key(key),
                None => !st.tcp_seen.is_empty(),
            };
            if !has_tcp {
                st.tcp_seen.clear();
            }
            if let Some(runq) = round.runq {
                if !runq.contains_key(key) {
                    st.runq_seen.clear();
                }
            }
            let has_io = has_io || has_tcp;
            st.live = false;
            st.gone_rounds = st.gone_rounds.saturating_add(1);
            // Keep an exited process while the kernel still has IO entries for it: writeback of
            // what it wrote can arrive after it is gone.
            if st.gone_rounds < 2 || has_io {
                return true;
            }
            if round.dead.contains_key(key) {
                forget.push(*key);
            }
            false
        });
        forget
    }

    /// Applies one collection's per-port TCP totals: increases go to the instance that owns the
    /// port now (server role) or to [`OTHER`] (client role: no process known).
    pub fn apply_ports(&mut self, round: &PortRound<'_>) {
        let owner = |port: u16| -> Arc<str> {
            round
                .owners
                .get(&port)
                .cloned()
                .unwrap_or_else(|| Arc::from(OTHER))
        };
        if let Some(traffic) = round.traffic {
            credit_by_dim(&mut self.port_seen, &mut self.tcp, traffic, |d| {
                match d.role {
                    Role::Server => owner(d.port),
                    Role::Client => Arc::from(OTHER),
                }
            });
        }
        if let Some(rtt) = round.rtt {
            credit_by_dim(&mut self.rtt_seen, &mut self.rtt, rtt, |&p| owner(p));
        }
        if let Some(est) = round.established {
            self.established = round
                .owners
                .iter()
                .map(|(&port, inst)| ((inst.clone(), port), est.get(&port).copied().unwrap_or(0)))
                .collect();
        }
    }

    /// TCP per (instance, port and role).
    pub fn tcp(&self) -> &BTreeMap<(Arc<str>, TcpDim), TcpCounters> {
        &self.tcp
    }

    /// RTT histograms per (instance, listening port).
    pub fn rtt(&self) -> &BTreeMap<(Arc<str>, u16), Latency> {
        &self.rtt
    }

    /// Established connections per (instance, listening port).
    pub fn established(&self) -> &BTreeMap<(Arc<str>, u16), u64> {
        &self.established
    }

    /// The `k` live processes with the most recent TCP payload bytes; processes without TCP
    /// traffic are not listed.
    pub fn top_tcp_processes(&self, k: usize) -> Vec<TcpProcessRow> {
        self.top_rows(k, |st| (&st.tcp_total, st.tcp_score), TcpCounters::bytes)
    }

    pub fn instances(&self) -> &BTreeMap<Arc<str>, InstanceTotals> {
        &self.instances
    }

    /// Block IO per (instance, (device, op)).
    pub fn io(&self) -> &BTreeMap<(Arc<str>, IoDim), IoCounters> {
        &self.io
    }

    /// The `k` live processes with the most recent block IO (bytes read, written, discarded);
    /// processes without block or dirtied bytes are not listed.
    pub fn top_io_processes(&self, k: usize) -> Vec<IoProcessRow> {
        self.top_rows(k, |st| (&st.io_total, st.io_score), |c| c.bytes)
    }

    /// The `k` live processes with the most recent `select`ed score; processes whose counters
    /// are all zero by `bytes` are not listed (ties: most bytes in total, then pid).
    fn top_rows<D: Clone + Ord, C: Clone>(
        &self,
        k: usize,
        select: impl Fn(&ProcState) -> (&HashMap<D, C>, f64),
        bytes: impl Fn(&C) -> u64,
    ) -> Vec<TopRow<D, C>> {
        let mut rows: Vec<(u64, TopRow<D, C>)> = self
            .procs
            .iter()
            .filter(|(_, st)| st.live)
            .filter_map(|(key, st)| {
                let (counters, score) = select(st);
                let total: u64 = counters.values().map(&bytes).sum();
                if total == 0 {
                    return None;
                }
                let mut counters: Vec<(D, C)> = counters
                    .iter()
                    .map(|(d, c)| (d.clone(), c.clone()))
                    .collect();
                counters.sort_by(|a, b| a.0.cmp(&b.0));
                let row = TopRow {
                    pid: key.tgid,
                    comm: st.comm.clone(),
                    instance: st.instance.clone(),
                    counters,
                    score,
                };
                Some((total, row))
            })
            .collect();
        rows.sort_by(|(ta, a), (tb, b)| {
            b.score
                .total_cmp(&a.score)
                .then(tb.cmp(ta))
                .then(a.pid.cmp(&b.pid))
        });
        rows.into_iter().take(k).map(|(_, r)| r).collect()
    }

    /// Ends a round (after [`Accounts::apply`] and [`Accounts::apply_ports`]): fixes the
    /// exported top-K lists, and drops instances that have had no live process and no activity
    /// for `expire_after` (their series disappear; if one comes back it starts from zero).
    pub fn end_round(&mut self, now: f64) {
        let k = self.limits.top_k;
        let cpu = self.top_processes(k);
        let io = self.top_io_processes(k);
        let tcp = self.top_tcp_processes(k);
        self.top = Tops {
            cpu_pids: cpu.iter().map(|r| r.pid).collect(),
            io_pids: io.iter().map(|r| r.pid).collect(),
            tcp_pids: tcp.iter().map(|r| r.pid).collect(),
            cpu,
            io,
            tcp,
        };

        // Activity: any counter of the instance moved, or it has live processes.
        let mut sig: HashMap<Arc<str>, u64> = HashMap::new();
        let mut mix = |inst: &Arc<str>, v: u64| {
            let e = sig.entry(inst.clone()).or_default();
            *e = e.wrapping_mul(31).wrapping_add(v);
        };
        for (inst, t) in &self.instances {
            mix(inst, t.cpu_ns ^ t.run_delay_ns.rotate_left(17));
        }
        for ((inst, _), c) in &self.io {
            mix(inst, c.bytes ^ c.ops().rotate_left(17));
        }
        for ((inst, _), c) in &self.tcp {
            mix(
                inst,
                c.bytes() ^ (c.accepted + c.closed + c.retransmits).rotate_left(17),
            );
        }
        let expire = self.limits.expire_after_secs;
        let mut dead: HashSet<Arc<str>> = HashSet::new();
        for (inst, last) in self.registry.known.iter_mut() {
            let s = sig.get(inst).copied().unwrap_or(0);
            let busy = self.instances.get(inst).is_some_and(|t| t.processes > 0);
            if busy || self.registry.signature.get(inst) != Some(&s) {
                *last = now;
            } else if now - *last >= expire {
                dead.insert(inst.clone());
            }
        }
        self.registry.signature = sig;
        self.registry.folded.retain(|_, seen| now - *seen < expire);
        if dead.is_empty() {
            return;
        }
        self.registry.known.retain(|k, _| !dead.contains(k));
        self.registry.signature.retain(|k, _| !dead.contains(k));
        self.instances.retain(|k, _| !dead.contains(k));
        self.other_cpu.retain(|k, _| !dead.contains(k));
        self.io.retain(|(k, _), _| !dead.contains(k));
        self.tcp.retain(|(k, _), _| !dead.contains(k));
        self.rtt.retain(|(k, _), _| !dead.contains(k));
        self.established.retain(|(k, _), _| !dead.contains(k));
        self.runq.retain(|k, _| !dead.contains(k));
        self.other_io.retain(|(k, _), _| !dead.contains(k));
        self.other_tcp.retain(|(k, _), _| !dead.contains(k));
    }

    /// The top-K lists fixed by the last [`Accounts::end_round`].
    pub fn tops(&self) -> &Tops {
        &self.top
    }

    /// CPU and run-queue wait (ns) of processes not in the CPU top-K, per instance.
    pub fn other_cpu(&self) -> &BTreeMap<Arc<str>, (u64, u64)> {
        &self.other_cpu
    }

    /// Block IO of processes not in the block IO top-K, per instance.
    pub fn other_io(&self) -> &BTreeMap<(Arc<str>, IoDim), IoCounters> {
        &self.other_io
    }

    /// TCP traffic of processes not in the TCP top-K, per instance.
    pub fn other_tcp(&self) -> &BTreeMap<(Arc<str>, TcpDim), TcpCounters> {
        &self.other_tcp
    }

    /// Run-queue latency per instance.
    pub fn runq(&self) -> &BTreeMap<Arc<str>, Latency> {
        &self.runq
    }

    /// Instance names currently folded into [`OTHER`] by the cap.
    pub fn folded_instances(&self) -> usize {
        self.registry.folded.len()
    }

    /// Live processes tracked.
    pub fn live_processes(&self) -> usize {
        self.procs.values().filter(|p| p.live).count()
    }

    /// The `k` live processes with the most recent CPU use (ties: most total CPU, then pid).
    pub fn top_processes(&self, k: usize) -> Vec<ProcessRow> {
        let mut rows: Vec<ProcessRow> = self
            .procs
            .iter()
            .filter(|(_, st)| st.live)
            .map(|(key, st)| ProcessRow {
                pid: key.tgid,
                comm: st.comm.clone(),
                instance: st.instance.clone(),
                cpu_ns: st.cpu_ns,
                run_delay_ns: st.run_delay_ns,
                score: st.score,
            })
            .collect();
        rows.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(b.cpu_ns.cmp(&a.cpu_ns))
                .then(a.pid.cmp(&b.pid))
        });
        rows.truncate(k);
        rows
    }
}

impl ProcState {
    fn new(instance: Arc<str>, comm: &[u8; COMM_LEN]) -> Self {
        Self {
            instance,
            comm_raw: *comm,
            comm: Arc::from(display_name(comm)),
            cpu_ns: 0,
            run_delay_ns: 0,
            score: 0.0,
            live: true,
            gone_rounds: 0,
            io_seen: ProcessIo::new(),
            io_total: ProcessIo::new(),
            io_score: 0.0,
            tcp_seen: ProcessTcp::new(),
            tcp_total: ProcessTcp::new(),
            tcp_score: 0.0,
            runq_seen: ProcessRunq::new(),
        }
    }

    /// Follows a change of instance or name (exec changes comm) without allocating otherwise.
    fn update(&mut self, instance: Arc<str>, comm: &[u8; COMM_LEN]) {
        if self.instance != instance {
            self.instance = instance;
        }
        if &self.comm_raw != comm {
            self.comm_raw = *comm;
            self.comm = Arc::from(display_name(comm));
        }
    }
}

/// Adds a process's increase to its instance and to its recent-use score; returns the increase
/// (CPU, run-queue wait).
fn credit(
    st: &mut ProcState,
    totals: &mut InstanceTotals,
    cpu: u64,
    delay: u64,
    decay: f64,
    first: bool,
) -> (u64, u64) {
    let d_cpu = cpu.saturating_sub(st.cpu_ns);
    let d_delay = delay.saturating_sub(st.run_delay_ns);
    st.cpu_ns += d_cpu;
    st.run_delay_ns += d_delay;
    totals.cpu_ns = totals.cpu_ns.saturating_add(d_cpu);
    totals.run_delay_ns = totals.run_delay_ns.saturating_add(d_delay);
    // On the very first collection every process brings its whole lifetime: that is not
    // recent use, so it does not rank anyone.
    st.score = st.score * decay + if first { 0.0 } else { d_cpu as f64 / 1e9 };
    (d_cpu, d_delay)
}

/// Credits the increase of a process's per-thread run-queue totals to its instance. A thread
/// the kernel no longer has (it died and its entry was deleted) is forgotten; a thread id whose
/// counters went down is another thread (reused id) and counts in full.
fn credit_threads(
    seen: &mut ProcessRunq,
    instance_map: &mut BTreeMap<Arc<str>, Latency>,
    instance: &Arc<str>,
    now: &ProcessRunq,
) {
    for (tid, cur) in now {
        let d = match seen.get(tid) {
            Some(prev) => cur.since(prev).unwrap_or_else(|| cur.clone()),
            None => cur.clone(),
        };
        if !d.is_zero() {
            instance_map.entry(instance.clone()).or_default().add(&d);
        }
    }
    seen.retain(|tid, _| now.contains_key(tid));
    for (tid, cur) in now {
        seen.insert(*tid, cur.clone());
    }
}

fn add_other_cpu(other: &mut BTreeMap<Arc<str>, (u64, u64)>, instance: &Arc<str>, d: (u64, u64)) {
    if d == (0, 0) {
        return;
    }
    let o = other.entry(instance.clone()).or_default();
    o.0 = o.0.saturating_add(d.0);
    o.1 = o.1.saturating_add(d.1);
}

/// Adds the increase of a process's IO totals to the process and to its current instance.
/// Entries the kernel no longer has (deleted) are forgotten, so a re-created one counts in full.
fn credit_io(
    st: &mut ProcState,
    instance_io: &mut BTreeMap<(Arc<str>, IoDim), IoCounters>,
    mut other: Option<&mut BTreeMap<(Arc<str>, IoDim), IoCounters>>,
    now: &ProcessIo,
    decay: f64,
    first: bool,
) {
    let mut recent = 0u64;
    let instance = st.instance.clone();
    credit_dims(
        &mut st.io_seen,
        Some(&mut st.io_total),
        instance_io,
        &st.instance,
        now,
        |dim, d| {
            if dim.1 != super::io::Op::Dirtied {
                recent = recent.saturating_add(d.bytes);
            }
            if let Some(o) = other.as_deref_mut() {
                o.entry((instance.clone(), dim.clone())).or_default().add(d);
            }
        },
    );
    st.io_score = st.io_score * decay + if first { 0.0 } else { recent as f64 };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{io::Op, process::Identity};

    const A: ProcessKey = ProcessKey {
        tgid: 10,
        start_ns: 1,
    };
    const B: ProcessKey = ProcessKey {
        tgid: 20,
        start_ns: 2,
    };

    fn live(cpu: u64, delay: u64) -> ProcessSample {
        ProcessSample {
            cpu_ns: cpu,
            run_delay_ns: delay,
            rss_pages: 2,
            threads: 1,
            identity: Identity::default(),
        }
    }

    fn dead(cpu: u64, delay: u64) -> DeadSample {
        DeadSample {
            cpu_ns: cpu,
            run_delay_ns: delay,
            threads: 1,
            identity: Identity::default(),
        }
    }

    struct Harness {
        acc: Accounts,
        names: HashMap<ProcessKey, &'static str>,
        now: f64,
    }

    impl Harness {
        fn new() -> Self {
            Self {
                acc: Accounts::new(30.0),
                names: HashMap::from([(A, "a:1"), (B, "b:2")]),
                now: 0.0,
            }
        }
        fn round(
            &mut self,
            l: &[(ProcessKey, ProcessSample)],
            d: &[(ProcessKey, DeadSample)],
        ) -> Vec<ProcessKey> {
            self.round_io(l, d, &[])
        }
        fn round_io(
            &mut self,
            l: &[(ProcessKey, ProcessSample)],
            d: &[(ProcessKey, DeadSample)],
            io: &[(ProcessKey, Op, u64)],
        ) -> Vec<ProcessKey> {
            self.round_all(l, d, io, None)
        }
        /// A round with TCP rx bytes per process on server port 3306.
        fn round_tcp(
            &mut self,
            l: &[(ProcessKey, ProcessSample)],
            tcp: &[(ProcessKey, u64)],
        ) -> Vec<ProcessKey> {
            let map: HashMap<ProcessKey, ProcessTcp> = tcp
                .iter()
                .map(|(k, rx)| (*k, HashMap::from([(SERVER_3306, rx_bytes(*rx))])))
                .collect();
            self.round_all(l, &[], &[], Some(&map))
        }
        fn round_all(
            &mut self,
            l: &[(ProcessKey, ProcessSample)],
            d: &[(ProcessKey, DeadSample)],
            io: &[(ProcessKey, Op, u64)],
            tcp: Option<&HashMap<ProcessKey, ProcessTcp>>,
        ) -> Vec<ProcessKey> {
            let live: HashMap<_, _> = l.iter().cloned().collect();
            let dead: HashMap<_, _> = d.iter().cloned().collect();
            let mut io_map: HashMap<ProcessKey, ProcessIo> = HashMap::new();
            for (k, op, bytes) in io {
                let c = IoCounters {
                    bytes: *bytes,
                    latency: Latency {
                        count: bytes / 4096,
                        ..Latency::default()
                    },
                };
                io_map
                    .entry(*k)
                    .or_default()
                    .insert((Arc::from("vda"), *op), c);
            }
            let names = self.names.clone();
            let mut resolve = |k: &ProcessKey| names.get(k).copied().unwrap_or("other").to_string();
            self.acc.apply(
                &Round {
                    live: &live,
                    dead: &dead,
                    io: Some(&io_map),
                    tcp,
                    runq: None,
                    elapsed_secs: 1.0,
                    now_secs: self.now,
                    page_size: 4096,
                },
                &mut resolve,
            )
        }
        fn cpu(&self, inst: &str) -> u64 {
            self.acc.instances().get(inst).map_or(0, |t| t.cpu_ns)
        }
        fn inst(&self, inst: &str) -> &InstanceTotals {
            &self.acc.instances()[inst]
        }
        fn io(&self, inst: &str, op: Op) -> u64 {
            self.acc
                .io()
                .get(&(Arc::from(inst), (Arc::from("vda"), op)))
                .map_or(0, |c| c.bytes)
        }
    }

    fn limits(top_k: usize, max_instances: usize, expire_after_secs: f64) -> Limits {
        Limits {
            top_k,
            max_instances,
            expire_after_secs,
        }
    }

    const SERVER_3306: TcpDim = TcpDim {
        role: Role::Server,
        port: 3306,
    };

    fn rx_bytes(n: u64) -> TcpCounters {
        TcpCounters {
            rx_bytes: n,
            ..TcpCounters::default()
        }
    }

    fn tcp_rx(h: &Harness, inst: &str) -> u64 {
        h.acc
            .tcp()
            .get(&(Arc::from(inst), SERVER_3306))
            .map_or(0, |c| c.rx_bytes)
    }

    #[test]
    fn tcp_bytes_flow_to_the_process_instance_and_rank_processes() {
        let mut h = Harness::new();
        h.round_tcp(&[(A, live(1, 0)), (B, live(1, 0))], &[(A, 100), (B, 0)]);
        h.round_tcp(&[(A, live(1, 0)), (B, live(1, 0))], &[(A, 150), (B, 5000)]);
        assert_eq!((tcp_rx(&h, "a:1"), tcp_rx(&h, "b:2")), (150, 5000));
        let top = h.acc.top_tcp_processes(1);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].pid, B.tgid, "ranked by recent bytes");
        // A exits; its entry stays readable until the daemon deletes it; late bytes still count.
        h.round_tcp(&[(B, live(1, 0))], &[(A, 170), (B, 5000)]);
        assert_eq!(tcp_rx(&h, "a:1"), 170);
        assert!(h.acc.top_tcp_processes(5).iter().all(|r| r.pid != A.tgid));
    }

    #[test]
    fn per_port_totals_go_to_the_ports_listener_or_other() {
        let mut acc = Accounts::new(30.0);
        let conns = |accepted| TcpCounters {
            accepted,
            ..TcpCounters::default()
        };
        let client = TcpDim {
            role: Role::Client,
            port: 0,
        };
        let owners = HashMap::from([(3306, Arc::<str>::from("mariadbd:3306"))]);
        let traffic = HashMap::from([(SERVER_3306, conns(4)), (client, rx_bytes(9))]);
        let est = HashMap::from([(3306, 2), (40000, 1)]);
        acc.apply_ports(&PortRound {
            traffic: Some(&traffic),
            rtt: None,
            established: Some(&est),
            owners: &owners,
        });
        let traffic = HashMap::from([(SERVER_3306, conns(10)), (client, rx_bytes(9))]);
        // The listener went away: its port's increase goes to `other`.
        acc.apply_ports(&PortRound {
            traffic: Some(&traffic),
            rtt: None,
            established: None,
            owners: &HashMap::new(),
        });
        let get = |i: &str, d: TcpDim| acc.tcp().get(&(Arc::from(i), d)).cloned();
        assert_eq!(get("mariadbd:3306", SERVER_3306), Some(conns(4)));
        assert_eq!(get(OTHER, SERVER_3306), Some(conns(6)));
        assert_eq!(get(OTHER, client), Some(rx_bytes(9)));
        // Established: listening ports only, the last reading kept when one fails.
        assert_eq!(
            acc.established().iter().collect::<Vec<_>>(),
            vec![(&(Arc::from("mariadbd:3306"), 3306), &2)]
        );
    }

    #[test]
    fn io_increases_flow_into_the_current_instance() {
        let mut h = Harness::new();
        h.round_io(&[(A, live(1, 0))], &[], &[(A, Op::Write, 4096)]);
        h.round_io(
            &[(A, live(1, 0))],
            &[],
            &[(A, Op::Write, 12288), (A, Op::Read, 8192)],
        );
        assert_eq!(
            (h.io("a:1", Op::Write), h.io("a:1", Op::Read)),
            (12288, 8192)
        );
        h.names.insert(A, "a:2");
        h.round_io(
            &[(A, live(1, 0))],
            &[],
            &[(A, Op::Write, 16384), (A, Op::Read, 8192)],
        );
        assert_eq!(
            (h.io("a:1", Op::Write), h.io("a:2", Op::Write)),
            (12288, 4096)
        );
        let top = h.acc.top_io_processes(5);
        assert_eq!(top.len(), 1);
        let written: u64 = top[0]
            .counters
            .iter()
            .filter(|((_, op), _)| *op == Op::Write)
            .map(|(_, c)| c.bytes)
            .sum();
        assert_eq!(
            written, 16384,
            "per-process IO is the process's whole total"
        );
    }

    #[test]
    fn writeback_after_exit_still_reaches_the_writers_instance() {
        let mut h = Harness::new();
        h.round_io(&[(A, live(1, 0))], &[], &[(A, Op::Dirtied, 1 << 20)]);
        // A exits; its dirty pages are written back over the next rounds and charged to it.
        h.round_io(
            &[],
            &[(A, dead(1, 0))],
            &[(A, Op::Dirtied, 1 << 20), (A, Op::Write, 4096)],
        );
        h.round_io(
            &[],
            &[],
            &[(A, Op::Dirtied, 1 << 20), (A, Op::Write, 1 << 20)],
        );
        h.round_io(
            &[],
            &[],
            &[(A, Op::Dirtied, 1 << 20), (A, Op::Write, 1 << 20)],
        );
        assert_eq!(h.io("a:1", Op::Write), 1 << 20);
        assert_eq!(h.io("other", Op::Write), 0);
        assert!(
            h.acc.top_io_processes(5).is_empty(),
            "exited processes are not listed"
        );
        // Once the daemon deleted its entries, the process is forgotten.
        h.round_io(&[], &[], &[]);
        h.round_io(&[], &[], &[]);
        assert_eq!(h.io("a:1", Op::Write), 1 << 20);
    }

    #[test]
    fn a_deleted_and_recreated_entry_is_counted_in_full() {
        let mut h = Harness::new();
        h.round_io(&[], &[(B, dead(1, 0))], &[(B, Op::Write, 8192)]);
        h.round_io(&[], &[], &[]);
        // The entry was deleted; the kernel charges B again (late writeback) from zero.
        h.round_io(&[], &[], &[(B, Op::Write, 4096)]);
        assert_eq!(h.io("b:2", Op::Write) + h.io("other", Op::Write), 12288);
    }

    #[test]
    fn live_process_totals_flow_into_its_instance() {
        let mut h = Harness::new();
        h.round(&[(A, live(100, 5))], &[]);
        h.round(&[(A, live(250, 9))], &[]);
        assert_eq!(h.cpu("a:1"), 250);
        assert_eq!(h.inst("a:1").run_delay_ns, 9);
        assert_eq!(h.inst("a:1").rss_bytes, 8192);
    }

    #[test]
    fn exited_threads_count_through_the_dead_map() {
        let mut h = Harness::new();
        h.round(&[(A, live(300, 0))], &[]);
        // Two of three threads exited with 100 each; the survivor is at 150 now.
        h.round(&[(A, live(150, 0))], &[(A, dead(200, 0))]);
        assert_eq!(h.cpu("a:1"), 350);
    }

    #[test]
    fn a_thread_caught_between_the_two_reads_never_makes_the_counter_go_down() {
        let mut h = Harness::new();
        h.round(&[(A, live(300, 0))], &[]);
        // The thread with 100 died after the dead map was read: in neither.
        h.round(&[(A, live(210, 0))], &[]);
        assert_eq!(h.cpu("a:1"), 300);
        // Next time it is in the dead map with its final 105.
        h.round(&[(A, live(220, 0))], &[(A, dead(105, 0))]);
        assert_eq!(h.cpu("a:1"), 325);
    }

    #[test]
    fn a_process_that_exits_is_folded_in_and_forgotten_a_round_later() {
        let mut h = Harness::new();
        h.round(&[(A, live(100, 0))], &[]);
        assert!(h.round(&[], &[(A, dead(120, 0))]).is_empty());
        assert_eq!(h.cpu("a:1"), 120);
        // A late final switch (another thread) still lands in the next round.
        let forget = h.round(&[], &[(A, dead(130, 0))]);
        assert_eq!(forget, vec![A]);
        assert_eq!(h.cpu("a:1"), 130);
        assert!(h.acc.top_processes(10).is_empty());
        assert_eq!(h.round(&[], &[]), vec![]);
        assert_eq!(h.cpu("a:1"), 130);
    }

    #[test]
    fn a_process_seen_only_dead_is_charged_by_its_identity() {
        let mut h = Harness::new();
        h.round(&[], &[(B, dead(5_000_000, 7))]);
        assert_eq!(h.cpu("b:2"), 5_000_000);
        assert_eq!(h.inst("b:2").run_delay_ns, 7);
    }

    #[test]
    fn moving_to_another_instance_keeps_both_counters_monotonic() {
        let mut h = Harness::new();
        h.round(&[(A, live(100, 0))], &[]);
        h.names.insert(A, "a:2");
        h.round(&[(A, live(180, 0))], &[]);
        assert_eq!((h.cpu("a:1"), h.cpu("a:2")), (100, 80));
    }

    #[test]
    fn top_k_ranks_recent_use_not_lifetime() {
        let mut h = Harness::new();
        // First round: A has a long past, B is new; nobody is ranked by history.
        h.round(&[(A, live(1_000_000_000_000, 0)), (B, live(0, 0))], &[]);
        h.round(
            &[(A, live(1_000_000_000_000, 0)), (B, live(2_000_000_000, 0))],
            &[],
        );
        let top = h.acc.top_processes(1);
        assert_eq!(top.len(), 1);
        assert_eq!(top[0].pid, B.tgid);
        assert_eq!(h.acc.top_processes(5).len(), 2);
    }

    #[test]
    fn gauges_are_recomputed_each_round() {
        let mut h = Harness::new();
        h.round(&[(A, live(1, 0))], &[]);
        h.round(&[], &[]);
        assert_eq!(h.inst("a:1").rss_bytes, 0);
        assert_eq!(h.inst("a:1").processes, 0);
        assert_eq!(h.inst("a:1").cpu_ns, 1);
    }

    #[test]
    fn instances_beyond_the_cap_are_folded_into_other_and_counted() {
        let mut h = Harness::new();
        h.acc.set_limits(limits(5, 1, 600.0));
        h.round(&[(A, live(100, 0)), (B, live(50, 0))], &[]);
        h.acc.end_round(h.now);
        let names: Vec<&str> = h.acc.instances().keys().map(|k| &**k).collect();
        assert_eq!(names.len(), 2, "{names:?}");
        assert!(names.contains(&OTHER));
        assert_eq!(h.acc.folded_instances(), 1);
        // Whatever was admitted first keeps its name; the other one is in `other`.
        assert_eq!(h.cpu("a:1") + h.cpu("b:2") + h.cpu(OTHER), 150);
    }

    #[test]
    fn idle_instances_without_processes_expire_and_busy_ones_stay() {
        let mut h = Harness::new();
        h.acc.set_limits(limits(5, 10, 60.0));
        h.round(&[(A, live(100, 0)), (B, live(50, 0))], &[]);
        h.acc.end_round(h.now);
        // B exits; A keeps running.
        h.now = 10.0;
        h.round(&[(A, live(150, 0))], &[(B, dead(60, 0))]);
        h.acc.end_round(h.now);
        for t in [20.0, 40.0, 60.0] {
            h.now = t;
            h.round(&[(A, live(150, 0))], &[]);
            h.acc.end_round(h.now);
        }
        assert!(
            h.acc.instances().contains_key("b:2"),
            "not idle long enough"
        );
        h.now = 80.0;
        h.round(&[(A, live(150, 0))], &[]);
        h.acc.end_round(h.now);
        assert!(!h.acc.instances().contains_key("b:2"), "expired");
        assert_eq!(h.cpu("a:1"), 150, "idle but alive: stays");
    }

    #[test]
    fn processes_outside_the_top_k_add_up_in_other_rows() {
        let mut h = Harness::new();
        h.names.insert(B, "a:1");
        h.acc.set_limits(limits(1, 10, 600.0));
        h.round(&[(A, live(0, 0)), (B, live(0, 0))], &[]);
        h.acc.end_round(h.now);
        h.round(&[(A, live(1000, 0)), (B, live(10, 0))], &[]);
        h.acc.end_round(h.now);
        // A was listed (a tie, broken by pid): only B's increase is in `other`.
        assert_eq!(h.acc.other_cpu()["a:1"], (10, 0));
        assert_eq!(h.acc.tops().cpu.len(), 1);
        assert_eq!(h.acc.tops().cpu[0].pid, A.tgid);
        // B becomes the busiest: listed from the next round on; A's increase meanwhile is
        // still its own, B's goes to `other` one last time.
        h.round(&[(A, live(1010, 0)), (B, live(5000, 0))], &[]);
        h.acc.end_round(h.now);
        assert_eq!(h.acc.tops().cpu[0].pid, B.tgid);
        assert_eq!(h.acc.other_cpu()["a:1"], (5000, 0));
        h.round(&[(A, live(1500, 0)), (B, live(5100, 0))], &[]);
        h.acc.end_round(h.now);
        assert_eq!(h.acc.other_cpu()["a:1"], (5490, 0));
    }

    #[test]
    fn run_queue_waits_flow_into_the_instance() {
        let mut h = Harness::new();
        let waits = |n: u64| {
            let c = Latency {
                count: n,
                sum_ns: n * 1000,
                ..Latency::default()
            };
            HashMap::from([(A, HashMap::from([(7u32, c)]))])
        };
        let live_a = HashMap::from([(A, live(1, 0))]);
        let dead = HashMap::new();
        for n in [3, 10] {
            let runq = waits(n);
            let names = h.names.clone();
            let mut resolve = |k: &ProcessKey| names[k].to_string();
            h.acc.apply(
                &Round {
                    live: &live_a,
                    dead: &dead,
                    io: None,
                    tcp: None,
                    runq: Some(&runq),
                    elapsed_secs: 1.0,
                    now_secs: 0.0,
                    page_size: 4096,
                },
                &mut resolve,
            );
        }
        let got: Vec<(String, u64, u64)> = h
            .acc
            .runq()
            .iter()
            .map(|(k, c)| (k.to_string(), c.count, c.sum_ns))
            .collect();
        assert_eq!(got, vec![("a:1".to_string(), 10, 10_000)]);
    }
}
