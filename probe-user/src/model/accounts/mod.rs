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
//!
//! Over 500 lines: `Accounts` is one state machine (crediting every signal, the end of a round,
//! expiry) whose invariants span all of it; the registry, the top-K rows and the crediting path
//! are already modules of their own.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
};

use probe_common::COMM_LEN;
use serde::{Deserialize, Serialize};

use super::{
    cumulative::{Cumulative as _, Seen, Tracked},
    instance::OTHER,
    io::{IoCounters, IoDim, Op, ProcessIo},
    latency::Latency,
    names::display_name,
    process::{DeadSample, ProcessKey, ProcessSample},
    tcp::{ProcessTcp, Role, TcpCounters, TcpDim},
};

mod registry;
mod top;

pub use registry::Limits;
use registry::Registry;
pub use top::{IoProcessRow, ProcessRow, TcpProcessRow, TopRow, Tops};

/// Cumulative run-queue waits of one process, per thread id.
pub type ProcessRunq = HashMap<u32, Latency>;

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
    /// Every port listened on (also those without a known owner: kernel listeners, sockets
    /// the walk could not map).
    pub listening: &'a HashSet<u16>,
}

/// What the accounts know of one process.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ProcState {
    instance: Arc<str>,
    comm_raw: [u8; COMM_LEN],
    comm: Arc<str>,
    /// CPU and run-queue wait credited so far, and recent CPU seconds (the CPU ranking key).
    cpu_ns: u64,
    run_delay_ns: u64,
    score: f64,
    live: bool,
    /// Collections in a row in which the process was not seen alive.
    gone_rounds: u8,
    io: Tracked<IoDim, IoCounters>,
    tcp: Tracked<TcpDim, TcpCounters>,
    runq: Seen<u32, Latency>,
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
    port_seen: Seen<TcpDim, TcpCounters>,
    rtt_seen: Seen<u16, Latency>,
    /// What processes outside the exported top-K used, per instance: increases credited while
    /// a process was not listed (so the listed processes plus `other` add up, as rates).
    other_cpu: BTreeMap<Arc<str>, (u64, u64)>,
    other_io: BTreeMap<(Arc<str>, IoDim), IoCounters>,
    other_tcp: BTreeMap<(Arc<str>, TcpDim), TcpCounters>,
    /// The exported top-K lists, fixed at the end of each round.
    top: Tops,
    registry: Registry,
    limits: Limits,
    /// Time constant (s) of the decay that ranks processes by recent use.
    tau_secs: f64,
    rounds: u64,
    /// [`OTHER`]'s per-port series of listening ports (late traffic of ports no instance owns
    /// any more): a signature of their counters and when it last changed (s). They expire like
    /// instances, or a host whose services move ports would gather them without bound. Not
    /// saved: after a restart an idle one lives one more `expire_after`.
    #[serde(skip)]
    other_ports: HashMap<u16, (u64, f64)>,
    /// Processes whose IO or TCP entries wait a round for their identity (see
    /// [`Accounts::apply`]). Not saved: after a restart they wait again.
    #[serde(skip)]
    unidentified: HashSet<ProcessKey>,
    /// Processes charged without an identity (to [`OTHER`]) after that round: named again
    /// if their dead-thread sample comes. Not saved.
    #[serde(skip)]
    unnamed: HashSet<ProcessKey>,
    /// Ports listened on at the last [`Accounts::apply_ports`]: `other`'s series of these
    /// never expire. Not saved.
    #[serde(skip)]
    owned_ports: HashSet<u16>,
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
            port_seen: Seen::default(),
            rtt_seen: Seen::default(),
            other_cpu: BTreeMap::new(),
            other_io: BTreeMap::new(),
            other_tcp: BTreeMap::new(),
            top: Tops::default(),
            registry: Registry::default(),
            limits: Limits::default(),
            tau_secs,
            rounds: 0,
            other_ports: HashMap::new(),
            unidentified: HashSet::new(),
            unnamed: HashSet::new(),
            owned_ports: HashSet::new(),
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

        for (key, sample) in by_key(round.live) {
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
            let d = st.credit_cpu(totals, cpu, delay, decay, first);
            if !top.cpu_keys.contains(key) {
                add_other_cpu(&mut self.other_cpu, &st.instance, d);
            }
            totals.rss_bytes = totals
                .rss_bytes
                .saturating_add(sample.rss_pages.saturating_mul(round.page_size));
            totals.processes += 1;
        }

        for (key, dead) in by_key(round.dead) {
            if round.live.contains_key(key) {
                continue;
            }
            let st = self
                .procs
                .entry(*key)
                .or_insert_with(|| ProcState::gone(resolve(key), &dead.identity.comm));
            if self.unnamed.remove(key) {
                // Charged to `other` without an identity so far: what it did from now on goes
                // where its identity says.
                st.update(resolve(key), &dead.identity.comm);
            }
            let totals = self.instances.entry(st.instance.clone()).or_default();
            let d = st.credit_cpu(totals, dead.cpu_ns, dead.run_delay_ns, decay, first);
            add_other_cpu(&mut self.other_cpu, &st.instance, d);
        }

        // A process known only from its IO or TCP entries (it lived and died between two
        // collections, or exited long ago and its writeback lands now) is charged by identity.
        // One the task read did not see and the dead-thread map does not know yet exited
        // between those two reads (the collector reads the counters before both), or was born
        // after the task read in a recording of an earlier daemon, which read the counters
        // after the tasks: nothing says whose it is until the next collection, so its entries
        // wait one round in the kernel map. Charged at once, a server's short-lived children
        // went to `other` (1.7% of their CPU in the churn soak, 450 processes a second).
        let procs = &self.procs;
        let unknown = |key: &ProcessKey| {
            !procs.contains_key(key)
                && !round.live.contains_key(key)
                && !round.dead.contains_key(key)
        };
        let waiting: HashSet<ProcessKey> = round
            .io
            .into_iter()
            .flat_map(|m| m.keys())
            .chain(round.tcp.into_iter().flat_map(|m| m.keys()))
            .filter(|k| !first && unknown(k) && !self.unidentified.contains(k))
            .copied()
            .collect();
        self.unidentified = waiting;
        let wait = &self.unidentified;
        let unnamed = &mut self.unnamed;
        let comm = |key: &ProcessKey| round.dead.get(key).map(|d| d.identity.comm);
        for (key, io) in round.io.into_iter().flat_map(by_key) {
            if wait.contains(key) {
                continue;
            }
            let st = known_by_entries(&mut self.procs, unnamed, key, comm(key), || resolve(key));
            let listed = top.io_keys.contains(key) && st.live;
            let instance = &st.instance;
            let (all, other) = (&mut self.io, &mut self.other_io);
            let recent = |(_, op): &IoDim, d: &IoCounters| match op {
                Op::Dirtied => 0,
                _ => d.bytes,
            };
            st.io.credit(io, decay, first, recent, |dim, d| {
                credit_to(all, other, listed, instance, dim, d);
            });
        }

        for (key, tcp) in round.tcp.into_iter().flat_map(by_key) {
            if wait.contains(key) {
                continue;
            }
            let st = known_by_entries(&mut self.procs, unnamed, key, comm(key), || resolve(key));
            let listed = top.tcp_keys.contains(key) && st.live;
            let instance = &st.instance;
            let (all, other) = (&mut self.tcp, &mut self.other_tcp);
            let recent = |_: &TcpDim, d: &TcpCounters| d.bytes();
            st.tcp.credit(tcp, decay, first, recent, |dim, d| {
                credit_to(all, other, listed, instance, dim, d);
            });
        }

        for (key, runq) in round.runq.into_iter().flat_map(by_key) {
            // A thread marked dead in this (earlier) read had exited before the dead-thread read,
            // so its process is known above. A process that exited between the dead-thread read
            // and the task read is not, but its threads were alive at this read: their entries
            // stay, and count at the next collection, when the dead-thread map names it.
            let Some(st) = self.procs.get_mut(key) else {
                continue;
            };
            // The instance's entry only with a wait: threads that predate the programs have
            // entries without any, and an instance must not get an empty histogram from them.
            let (by_instance, instance) = (&mut self.runq, &st.instance);
            st.runq.credit(runq, |_, d| {
                by_instance.entry(instance.clone()).or_default().add(d);
            });
        }

        let forget = self.forget_gone(round);
        let procs = &self.procs;
        self.unnamed.retain(|k| procs.contains_key(k));
        forget
    }

    /// Marks the processes not seen alive this round, and forgets those gone for two rounds
    /// (so a thread whose final switch lands just after a read is still counted) that the
    /// kernel has no IO or TCP entries for any more. Returns the forgotten keys that are in
    /// the dead-thread map (the caller deletes them there).
    fn forget_gone(&mut self, round: &Round<'_>) -> Vec<ProcessKey> {
        let mut forget = Vec::new();
        self.procs.retain(|key, st| {
            if round.live.contains_key(key) {
                return true;
            }
            let has_io = match round.io {
                Some(io) => io.contains_key(key),
                None => !st.io.seen.is_empty(),
            };
            if !has_io {
                st.io.seen.clear();
            }
            let has_tcp = match round.tcp {
                Some(tcp) => tcp.contains_key(key),
                None => !st.tcp.seen.is_empty(),
            };
            if !has_tcp {
                st.tcp.seen.clear();
            }
            if round.runq.is_some_and(|runq| !runq.contains_key(key)) {
                st.runq.clear();
            }
            st.live = false;
            st.gone_rounds = st.gone_rounds.saturating_add(1);
            // Keep an exited process while the kernel still has IO entries for it: writeback of
            // what it wrote can arrive after it is gone.
            if st.gone_rounds < 2 || has_io || has_tcp {
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
        self.owned_ports = round.owners.keys().copied().collect();
        self.owned_ports.extend(round.listening);
        let owner = |port: u16| -> Arc<str> {
            round
                .owners
                .get(&port)
                .cloned()
                .unwrap_or_else(|| Arc::from(OTHER))
        };
        if let Some(traffic) = round.traffic {
            let tcp = &mut self.tcp;
            self.port_seen.credit(traffic, |dim, d| {
                let instance = match dim.role {
                    Role::Server => owner(dim.port),
                    Role::Client => Arc::from(OTHER),
                };
                tcp.entry((instance, *dim)).or_default().add(d);
            });
        }
        if let Some(rtt) = round.rtt {
            let by_port = &mut self.rtt;
            self.rtt_seen.credit(rtt, |&port, d| {
                by_port.entry((owner(port), port)).or_default().add(d);
            });
        }
        if let Some(est) = round.established {
            self.established = round
                .owners
                .iter()
                .map(|(&port, inst)| ((inst.clone(), port), est.get(&port).copied().unwrap_or(0)))
                .collect();
        }
    }

    /// Ends a round (after [`Accounts::apply`] and [`Accounts::apply_ports`]): fixes the
    /// exported top-K lists, and drops instances that have had no live process and no activity
    /// for `expire_after` (their series disappear; if one comes back it starts from zero).
    pub fn end_round(&mut self, now: f64) {
        self.top = Tops::rank(&self.procs, self.limits.top_k);

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
        self.expire_other_ports(now);
        let instances = &self.instances;
        let busy = |inst: &Arc<str>| instances.get(inst).is_some_and(|t| t.processes > 0);
        let dead: HashSet<Arc<str>> =
            self.registry
                .expire(sig, busy, now, self.limits.expire_after_secs);
        if dead.is_empty() {
            return;
        }
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

    /// Drops [`OTHER`]'s per-port series (server role, RTT) of a port nobody listens on that
    /// has not moved for `expire_after`: its late traffic is over. If the port
    /// gets traffic again its series starts from zero, as a reset.
    fn expire_other_ports(&mut self, now: f64) {
        let mut sig: HashMap<u16, u64> = HashMap::new();
        let mut mix = |port: u16, v: u64| {
            let e = sig.entry(port).or_default();
            *e = e.wrapping_mul(31).wrapping_add(v);
        };
        for ((inst, dim), c) in &self.tcp {
            if &**inst == OTHER && dim.role == Role::Server {
                mix(
                    dim.port,
                    c.bytes() ^ (c.accepted + c.closed + c.retransmits).rotate_left(17),
                );
            }
        }
        for ((inst, port), l) in &self.rtt {
            if &**inst == OTHER {
                mix(*port, l.count.rotate_left(29));
            }
        }
        let expire_after = self.limits.expire_after_secs;
        let mut idle = HashSet::new();
        self.other_ports.retain(|port, _| sig.contains_key(port));
        for (port, s) in sig {
            let e = self.other_ports.entry(port).or_insert((s, now));
            if e.0 != s {
                *e = (s, now);
            } else if now - e.1 >= expire_after {
                idle.insert(port);
            }
        }
        // Not a port someone still listens on, nor one a live process of `other` has bytes on
        // (its process row would no longer add up with the instance's series).
        idle.retain(|p| !self.owned_ports.contains(p));
        if idle.is_empty() {
            return;
        }
        for st in self.procs.values() {
            if st.live && &*st.instance == OTHER {
                for d in st.tcp.total.keys() {
                    if d.role == Role::Server {
                        idle.remove(&d.port);
                    }
                }
            }
        }
        if idle.is_empty() {
            return;
        }
        let other = |inst: &Arc<str>| &**inst == OTHER;
        let gone = |(k, d): &(Arc<str>, TcpDim)| {
            other(k) && d.role == Role::Server && idle.contains(&d.port)
        };
        self.tcp.retain(|k, _| !gone(k));
        self.other_tcp.retain(|k, _| !gone(k));
        self.rtt.retain(|(k, p), _| !(other(k) && idle.contains(p)));
        self.other_ports.retain(|p, _| !idle.contains(p));
    }

    pub fn instances(&self) -> &BTreeMap<Arc<str>, InstanceTotals> {
        &self.instances
    }

    /// Block IO per (instance, (device, op)).
    pub fn io(&self) -> &BTreeMap<(Arc<str>, IoDim), IoCounters> {
        &self.io
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

    /// Run-queue latency per instance.
    pub fn runq(&self) -> &BTreeMap<Arc<str>, Latency> {
        &self.runq
    }

    /// The top-K lists fixed by the last [`Accounts::end_round`].
    pub fn tops(&self) -> &Tops {
        &self.top
    }

    /// The `k` live processes with the most recent CPU use (ties: most total CPU, then pid).
    pub fn top_processes(&self, k: usize) -> Vec<ProcessRow> {
        strip(top::by_cpu(&self.procs, k))
    }

    /// The `k` live processes with the most recent block IO (bytes read, written, discarded);
    /// processes without block or dirtied bytes are not listed.
    pub fn top_io_processes(&self, k: usize) -> Vec<IoProcessRow> {
        strip(top::by_use(&self.procs, k, |st| &st.io, |c| c.bytes))
    }

    /// The `k` live processes with the most recent TCP payload bytes; processes without TCP
    /// traffic are not listed.
    pub fn top_tcp_processes(&self, k: usize) -> Vec<TcpProcessRow> {
        strip(top::by_use(
            &self.procs,
            k,
            |st| &st.tcp,
            TcpCounters::bytes,
        ))
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

    /// Instance names currently folded into [`OTHER`] by the cap.
    pub fn folded_instances(&self) -> usize {
        self.registry.folded()
    }

    /// Live processes tracked.
    pub fn live_processes(&self) -> usize {
        self.procs.values().filter(|p| p.live).count()
    }
}

fn strip<R>(rows: Vec<(ProcessKey, R)>) -> Vec<R> {
    rows.into_iter().map(|(_, r)| r).collect()
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
            io: Tracked::default(),
            tcp: Tracked::default(),
            runq: Seen::default(),
        }
    }

    /// A process first known after it exited.
    fn gone(instance: Arc<str>, comm: &[u8; COMM_LEN]) -> Self {
        Self {
            live: false,
            ..Self::new(instance, comm)
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

    /// Adds the increase of the process's CPU and run-queue wait (which never go down: a
    /// thread caught between the two reads shows up next time) to it, its instance and its
    /// recent-use score; returns the increase.
    fn credit_cpu(
        &mut self,
        totals: &mut InstanceTotals,
        cpu: u64,
        delay: u64,
        decay: f64,
        first: bool,
    ) -> (u64, u64) {
        let d_cpu = cpu.saturating_sub(self.cpu_ns);
        let d_delay = delay.saturating_sub(self.run_delay_ns);
        self.cpu_ns += d_cpu;
        self.run_delay_ns += d_delay;
        totals.cpu_ns = totals.cpu_ns.saturating_add(d_cpu);
        totals.run_delay_ns = totals.run_delay_ns.saturating_add(d_delay);
        // On the very first collection every process brings its whole lifetime: that is not
        // recent use, so it does not rank anyone.
        self.score = self.score * decay + if first { 0.0 } else { d_cpu as f64 / 1e9 };
        (d_cpu, d_delay)
    }
}

/// Adds a process's increase in one dimension to its instance, and to the instance's `other`
/// row unless the process is `listed` in the exported top-K.
fn credit_to<D: Clone + Ord, C: crate::model::cumulative::Cumulative>(
    all: &mut BTreeMap<(Arc<str>, D), C>,
    other: &mut BTreeMap<(Arc<str>, D), C>,
    listed: bool,
    instance: &Arc<str>,
    dim: &D,
    d: &C,
) {
    all.entry((instance.clone(), dim.clone()))
        .or_default()
        .add(d);
    if !listed {
        other
            .entry((instance.clone(), dim.clone()))
            .or_default()
            .add(d);
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

/// The entries of `m` in key order: instances are admitted (under the cap) and described in
/// the order processes are met, which must not depend on a hash map's random order (a replay
/// of a recording must give what the live daemon gave).
fn by_key<K: Ord, V>(m: &HashMap<K, V>) -> Vec<(&K, &V)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_unstable_by(|a, b| a.0.cmp(b.0));
    v
}

/// The state of a process met in the IO or TCP entries of a round: created gone if it is new,
/// named after the dead-thread map's comm (`dead_comm`), or marked unnamed without one.
fn known_by_entries<'a>(
    procs: &'a mut HashMap<ProcessKey, ProcState>,
    unnamed: &mut HashSet<ProcessKey>,
    key: &ProcessKey,
    dead_comm: Option<[u8; COMM_LEN]>,
    instance: impl FnOnce() -> Arc<str>,
) -> &'a mut ProcState {
    procs.entry(*key).or_insert_with(|| {
        if dead_comm.is_none() {
            unnamed.insert(*key);
        }
        ProcState::gone(instance(), &dead_comm.unwrap_or_default())
    })
}

#[cfg(test)]
mod tests;
