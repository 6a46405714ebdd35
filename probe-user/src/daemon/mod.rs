//! One collection: read the kernel and /proc, resolve instances, update the accounts.
//! [`Daemon::collect`] runs on every scrape and on a timer (so exited processes are folded in
//! even when nobody scrapes); [`Daemon::snapshot`] is what the exporter encodes.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::{
    collect::{
        self,
        block::IoReader,
        cgroups::CgroupPaths,
        cpu::DeadRead,
        ports::Listeners,
        proctasks::ProcTasks,
        reading::{Cleanup, Reading},
        runq::RunqRead,
        sockdiag::ListenSockets,
        tcp::{monotonic_ns, TcpReader},
    },
    loader::{names, Kernel},
    model::{
        accounts::{Accounts, Limits, PortRound, Round},
        instance::{Facts, Resolver},
        latency::Latency,
        process::{self, DeadSample, ProcessKey, ProcessSample},
        rules::{CgroupMeta, Rules},
    },
};

mod persist;
mod snapshot;

pub use snapshot::{Reloads, SelfStats, Snapshot};

/// Listening sockets are mapped to processes again at least this often even when the set of
/// listening sockets did not change (a socket can change hands: fork, SCM_RIGHTS).
const LISTEN_FULL_REFRESH: Duration = Duration::from_secs(30);

/// Daemon settings that shape the output.
#[derive(Clone, Debug)]
pub struct Options {
    /// How many processes are exported individually.
    pub top_k: usize,
    /// Time constant (s) of the recent-CPU ranking of processes.
    pub rank_tau_secs: f64,
    /// Instance rules (and the instance cap and expiry they set).
    pub rules: Arc<Rules>,
    /// Where the accounts are saved at every collection and restored from at start, when the
    /// kernel maps are pinned (see [`crate::state`]).
    pub state_file: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            top_k: 20,
            rank_tau_secs: 30.0,
            rules: Arc::new(Rules::defaults()),
            state_file: None,
        }
    }
}

/// How an instance was named, and what its cgroup path says (labels of probe_instance_info).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceMeta {
    /// The rule that named it.
    pub rule: Arc<str>,
    pub container: Option<String>,
    pub pod_uid: Option<String>,
}

/// What /proc told about a process, in the form rules read it.
#[derive(Clone, Debug, Default)]
struct Known {
    cmdline: Option<Arc<str>>,
    exe: Option<Arc<str>>,
}

/// What one collection saw (for `probe check` and logs).
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub threads: usize,
    pub processes: usize,
    pub exited_processes: usize,
    pub listening_processes: usize,
    pub duration: Duration,
}

pub struct Daemon {
    kernel: Kernel,
    opts: Options,
    accounts: Accounts,
    procinfo: HashMap<ProcessKey, Option<Known>>,
    meta: HashMap<Arc<str>, InstanceMeta>,
    started: Instant,
    cgroups: CgroupPaths,
    listeners: Listeners,
    io_reader: IoReader,
    tcp_reader: TcpReader,
    /// CLOCK_MONOTONIC ns when `listeners` was last built (see collect::tcp::sync_listen_ports).
    listeners_seen_at: u64,
    /// The kernel's listening ports when `listeners` was last built.
    listen_ports_checked: HashSet<u16>,
    /// Live threads from /proc, where the task iterator is not available.
    proc_tasks: Option<ProcTasks>,
    /// Listening sockets when `listeners` was last built.
    listen_sockets: Option<ListenSockets>,
    last_listen_walk: Option<Instant>,
    buf: Vec<u8>,
    last: Option<Instant>,
    /// When the latest collection started (scrapes asked before it can share it).
    last_started: Option<Instant>,
    ticks_per_sec: u64,
    page_size: u64,
    stats: SelfStats,
    /// CLOCK_MONOTONIC ns at which `started` reads zero (kept across restarts with the state).
    epoch_mono_ns: u64,
    boot_id: String,
    /// Kernel ids of the pinned maps (a saved state names them); fixed for the daemon's life.
    map_ids: Vec<(String, u32)>,
}

impl Daemon {
    pub fn new(kernel: Kernel, opts: Options) -> Self {
        let proc_tasks = kernel
            .task_iter
            .is_none()
            .then(|| ProcTasks::new(procfs::ticks_per_second(), crate::sys::cgroup2_mount()));
        let mut accounts = Accounts::new(opts.rank_tau_secs);
        accounts.set_limits(limits(&opts, &opts.rules));
        let kernel_pins_ids = kernel
            .pins
            .as_ref()
            .map(|p| p.map_ids())
            .unwrap_or_default();
        let mut daemon = Self {
            kernel,
            accounts,
            opts,
            meta: HashMap::new(),
            started: Instant::now(),
            procinfo: HashMap::new(),
            cgroups: CgroupPaths::new(crate::sys::cgroup2_mount()),
            listeners: HashMap::new(),
            io_reader: IoReader::default(),
            tcp_reader: TcpReader::default(),
            listeners_seen_at: 0,
            listen_ports_checked: HashSet::new(),
            proc_tasks,
            listen_sockets: None,
            last_listen_walk: None,
            buf: Vec::with_capacity(1 << 20),
            last: None,
            last_started: None,
            ticks_per_sec: procfs::ticks_per_second(),
            page_size: procfs::page_size(),
            stats: SelfStats::default(),
            epoch_mono_ns: crate::state::monotonic_ns(),
            boot_id: crate::state::boot_id(),
            map_ids: kernel_pins_ids,
        };
        daemon.restore();
        daemon
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Collects unless the latest collection started at or after `asked`: what it read is
    /// then at least as fresh as the caller asked for, and concurrent scrapes share it.
    /// Returns whether it collected.
    pub fn collect_since(&mut self, asked: Instant) -> bool {
        if self.last_started.is_some_and(|t| t >= asked) {
            return false;
        }
        self.collect();
        true
    }

    /// Seconds since the daemon started (a monotonic clock for samples).
    pub fn uptime_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Replaces the instance rules (SIGHUP). Counts are kept: processes whose instance changes
    /// carry on in the new one from the next collection.
    pub fn set_rules(&mut self, rules: Arc<Rules>) {
        self.accounts.set_limits(limits(&self.opts, &rules));
        self.opts.rules = rules;
    }

    /// Counts a rule file reload (SIGHUP) and its outcome, for the self-metrics.
    pub fn reloaded(&mut self, ok: bool) {
        self.stats.rule_reloads.record(ok);
    }

    /// Counts a web config reload (SIGHUP).
    pub fn web_reloaded(&mut self, ok: bool) {
        self.stats.web_reloads.record(ok);
    }

    fn failed(&mut self, collector: &'static str, err: &dyn std::fmt::Display) {
        warn!(collector, error = %err, "read failed");
        *self.stats.errors.entry(collector).or_default() += 1;
        self.stats.failing.insert(collector);
    }

    /// One collection: read everything, account it, then clean up the kernel maps.
    pub fn collect(&mut self) -> Summary {
        let t0 = Instant::now();
        self.last_started = Some(t0);
        let mut summary = Summary::default();
        self.stats.failing.clear();
        if let Some(reading) = self.read(&mut summary) {
            let cleanup = self.account(&reading);
            self.cleanup(&reading, cleanup);
            self.last = Some(Instant::now());
            self.procinfo.retain(|k, _| reading.live.contains_key(k));
        }
        self.finish(t0, &mut summary);
        debug!(?summary, "collected");
        summary
    }

    /// Reads the kernel and /proc, in the order the accounting needs. None if the live threads
    /// or the dead-thread map could not be read: the round is skipped whole (accounting it
    /// would take every process for dead, or fold exited ones in short), and nothing is lost by
    /// waiting for the next one.
    fn read(&mut self, summary: &mut Summary) -> Option<Reading> {
        self.cgroups.new_round();
        // The dead-thread map first, then the live threads: a thread that dies in between is
        // briefly in neither (harmless, see model::accounts), never in both.
        let granularity = self.granularity();
        let mut dead = DeadRead::default();
        if let Some(map) = &self.kernel.dead_tasks {
            match collect::cpu::read_dead(map, granularity) {
                Ok(d) => dead = d,
                Err(e) => {
                    self.failed(names::CPU_EXIT, &e);
                    return None;
                }
            }
        }
        let records = match (&self.kernel.task_iter, &mut self.proc_tasks) {
            (Some(link), _) => collect::cpu::read_tasks(link, &mut self.buf),
            (None, Some(proc_tasks)) => proc_tasks.read().map_err(collect::cpu::CpuError::Proc),
            (None, None) => Err(collect::cpu::CpuError::Proc(std::io::Error::other(
                "no task source",
            ))),
        };
        let records = match records {
            Ok(r) => r,
            Err(e) => {
                self.failed(names::CPU, &e);
                return None;
            }
        };
        summary.threads = records.len();
        let live = process::aggregate(records);
        let io = match &self.kernel.block_io {
            Some(map) => match self.io_reader.read(map, granularity) {
                Ok(io) => Some(io),
                Err(e) => {
                    self.failed(names::BLOCK, &e);
                    None
                }
            },
            None => Some(HashMap::new()),
        };
        let tcp = match &self.kernel.tcp {
            Some(maps) => match self.tcp_reader.read(&maps.traffic, granularity) {
                Ok(t) => {
                    debug!(
                        processes = t.processes.len(),
                        ports = t.ports.len(),
                        "tcp read"
                    );
                    Some(t)
                }
                Err(e) => {
                    self.failed(names::TCP, &e);
                    None
                }
            },
            None => Some(collect::tcp::TcpRead::default()),
        };
        let runq = match &self.kernel.runq {
            Some(maps) => match collect::runq::read(&maps.threads, granularity) {
                Ok(r) => Some(r),
                Err(e) => {
                    self.failed(names::RUNQ, &e);
                    None
                }
            },
            None => Some(RunqRead::default()),
        };
        summary.processes = live.len();
        summary.exited_processes = dead
            .samples
            .keys()
            .filter(|k| !live.contains_key(k))
            .count();

        self.refresh_listeners();
        summary.listening_processes = self.listeners.len();
        let rtt = self.read_rtt();
        let established = self.read_established();
        let mut listening: HashSet<u16> = self.listeners.values().flatten().copied().collect();
        listening.extend(self.listen_sockets.iter().flat_map(|s| s.values().copied()));

        self.read_new_procinfo(&live);
        let facts = self.facts(&live);
        let cgroup_paths = self.cgroup_paths(&live, &dead.samples);
        Some(Reading {
            elapsed_secs: self.last.map_or(0.0, |l| l.elapsed().as_secs_f64()),
            now_secs: self.started.elapsed().as_secs_f64(),
            dead,
            live,
            io,
            tcp,
            runq,
            rtt,
            established,
            listeners: self.listeners.clone(),
            listening,
            listeners_seen_at: self.listeners_seen_at,
            facts,
            cgroup_paths,
        })
    }

    /// Accounts one reading: resolves instances, credits processes, instances and ports, fixes
    /// the top-K rows. Touches neither the kernel nor /proc. Returns what the kernel maps no
    /// longer need.
    fn account(&mut self, r: &Reading) -> Cleanup {
        let dead = &r.dead.samples;
        let lookup = |id: u64| r.cgroup_paths.get(&id).cloned();
        let rules = self.opts.rules.clone();
        let resolver = Resolver {
            rules: &rules,
            live: &r.facts,
            cgroup_paths: &lookup,
        };
        let mut metas: HashMap<String, InstanceMeta> = HashMap::new();
        let mut resolve = |key: &ProcessKey| -> String {
            let (named, cgroup_id) = match (r.live.contains_key(key), r.facts.get(&key.tgid)) {
                (true, Some(f)) => (resolver.resolve(f), f.identity.cgroup_id),
                _ => {
                    let identity = dead
                        .get(key)
                        .map(|d| d.identity.clone())
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
            page_size: self.page_size,
        };
        let forget = self.accounts.apply(&round, &mut resolve);
        let owners = self.port_owners(r, &resolver);
        if self.kernel.tcp.is_some() {
            self.accounts.apply_ports(&PortRound {
                traffic: r.tcp.as_ref().map(|t| &t.ports),
                rtt: r.rtt.as_ref(),
                established: r.established.as_ref(),
                owners: &owners,
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

    /// Saves the accounts with the deletions about to follow (a successor of a daemon killed
    /// in between makes them), then deletes what the kernel maps no longer need and brings the
    /// kernel's listening-port set in line.
    fn cleanup(&mut self, r: &Reading, cleanup: Cleanup) {
        self.save(crate::state::Pending {
            dead: cleanup.dead.iter().map(|k| (k.tgid, k.start_ns)).collect(),
            runq_dead: cleanup.runq_dead.clone(),
        });
        if let Some(map) = &mut self.kernel.dead_tasks {
            self.stats.dead_delete_failures += collect::cpu::forget_dead(map, &cleanup.dead) as u64;
        }
        let granularity = self.granularity();
        let is_live = |tgid, start_ns| r.live.contains_key(&ProcessKey { tgid, start_ns });
        if let Some(map) = &mut self.kernel.block_io {
            self.stats.io_delete_failures +=
                self.io_reader.forget_idle(map, is_live, granularity) as u64;
        }
        if let Some(maps) = &mut self.kernel.tcp {
            self.stats.tcp_map_failures +=
                self.tcp_reader
                    .forget_idle(&mut maps.traffic, is_live, granularity) as u64;
            self.stats.tcp_map_failures += collect::tcp::sync_listen_ports(
                &mut maps.listen,
                &r.listening,
                r.listeners_seen_at,
            ) as u64;
        }
        if let Some(maps) = &mut self.kernel.runq {
            self.stats.runq_delete_failures +=
                collect::runq::forget_dead(&mut maps.threads, &cleanup.runq_dead) as u64;
        }
    }

    /// Start times are rounded to this (1 with the task iterator; a clock tick from /proc).
    fn granularity(&self) -> u64 {
        self.proc_tasks
            .as_ref()
            .map_or(1, ProcTasks::start_granularity_ns)
    }

    fn finish(&mut self, t0: Instant, summary: &mut Summary) {
        if let Some(map) = &self.kernel.exit_stats {
            match collect::cpu::exit_stats(map) {
                Ok((recorded, lost)) => {
                    if lost > self.stats.exits_lost {
                        warn!(
                            lost = lost - self.stats.exits_lost,
                            "dead-thread map full: exited threads not counted"
                        );
                    }
                    self.stats.exits_recorded = recorded;
                    self.stats.exits_lost = lost;
                }
                Err(e) => self.failed(names::CPU_EXIT, &e),
            }
        }
        if let Some(map) = &mut self.kernel.block_starts {
            let now = collect::tcp::monotonic_ns();
            let found = collect::block::missed_ends(map, now, collect::block::in_flight) as u64;
            if found > 0 {
                debug!(
                    found,
                    "block requests whose completion the kernel did not report"
                );
            }
            self.stats.block_ends_found += found;
        }
        if let Some(map) = &self.kernel.block_stats {
            match collect::block::stats(map) {
                Ok(s) => {
                    if s.lost > self.stats.block.lost {
                        warn!(
                            lost = s.lost - self.stats.block.lost,
                            "block IO map full: IO not counted (raise --block.map-size)"
                        );
                    }
                    self.stats.block = s;
                }
                Err(e) => self.failed(names::BLOCK, &e),
            }
        }
        if let Some(maps) = &self.kernel.tcp {
            match collect::tcp::lost(&maps.stats) {
                Ok(lost) => {
                    if lost > self.stats.tcp_lost {
                        warn!(
                            lost = lost - self.stats.tcp_lost,
                            "TCP map full: events not counted (raise --tcp.map-size)"
                        );
                    }
                    self.stats.tcp_lost = lost;
                }
                Err(e) => self.failed(names::TCP, &e),
            }
        }
        if let Some(maps) = &self.kernel.runq {
            match collect::runq::lost(&maps.stats) {
                Ok(lost) => {
                    if lost > self.stats.runq_lost {
                        warn!(
                            threads = lost - self.stats.runq_lost,
                            "run-queue thread map full: waits not counted"
                        );
                    }
                    self.stats.runq_lost = lost;
                }
                Err(e) => self.failed(names::RUNQ, &e),
            }
        }
        // Skipped runs are always counted; runs and run time only with statistics on.
        self.stats.programs = match &self.kernel.ebpf {
            Some(ebpf) => {
                collect::bpfstats::read(ebpf, &self.kernel.attached, self.kernel.bpf_stats_on())
            }
            None => Vec::new(),
        };
        summary.duration = t0.elapsed();
        self.stats.last_collect = summary.duration;
        self.stats.collections += 1;
    }

    /// Maps listening sockets to processes again, but only when the set of listening sockets
    /// changed (a cheap sock_diag dump tells) or the last walk is [`LISTEN_FULL_REFRESH`] old:
    /// walking every process's files is the most expensive part of a collection.
    fn refresh_listeners(&mut self) {
        let sockets = collect::sockdiag::listening().ok();
        let changed = sockets.is_none() || sockets != self.listen_sockets;
        let stale = self
            .last_listen_walk
            .is_none_or(|t| t.elapsed() >= LISTEN_FULL_REFRESH);
        // sock_diag sees the daemon's network namespace only; the TCP state program adds every
        // new listening port, in any namespace, to the kernel's port set.
        let kernel_ports: HashSet<u16> = self
            .kernel
            .tcp
            .as_ref()
            .map(|m| m.listen.keys().filter_map(Result::ok).collect())
            .unwrap_or_default();
        let elsewhere = !kernel_ports.is_subset(&self.listen_ports_checked);
        if !changed && !stale && !elsewhere {
            return;
        }
        self.listen_ports_checked = kernel_ports;
        let seen_at = monotonic_ns();
        let ports = match &self.kernel.listen_iter {
            Some(link) => collect::ports::from_iter(link, &mut self.buf),
            None => collect::ports::from_procfs(std::process::id()),
        };
        match ports {
            Ok(l) => {
                self.listeners = l;
                self.listen_sockets = sockets;
                self.last_listen_walk = Some(Instant::now());
                self.listeners_seen_at = seen_at;
            }
            Err(e) => self.failed(names::PORTS, &e), // keep the previous view, retry next time
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
        by_port
            .into_iter()
            .filter(|(_, tgid)| live_tgids.contains(tgid))
            .filter_map(|(port, tgid)| Some((port, resolver.resolve(r.facts.get(&tgid)?).instance)))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(port, name)| (port, self.accounts.admit(name, r.now_secs)))
            .collect()
    }

    /// RTT histograms per listening port.
    fn read_rtt(&mut self) -> Option<HashMap<u16, Latency>> {
        let maps = self.kernel.tcp.as_ref()?;
        collect::tcp::read_rtt(&maps.rtt)
            .map_err(|e| self.failed(names::TCP_RTT, &e))
            .ok()
    }

    /// Established connections per local port. The dump lists every established connection on
    /// the host: skipped when no process listens.
    fn read_established(&mut self) -> Option<HashMap<u16, u64>> {
        self.kernel.tcp.as_ref()?;
        if self.listeners.is_empty() {
            return Some(HashMap::new());
        }
        collect::sockdiag::established_by_port()
            .map_err(|e| self.failed(names::TCP_STATE, &e))
            .ok()
    }

    /// /proc facts for processes seen for the first time (kernel threads have none).
    fn read_new_procinfo(&mut self, live: &HashMap<ProcessKey, ProcessSample>) {
        for (key, sample) in live {
            if self.procinfo.contains_key(key) {
                continue;
            }
            let info = if sample.identity.kthread {
                None
            } else {
                collect::procinfo::read(*key, self.ticks_per_sec)
            };
            if let Some(path) = info.as_ref().and_then(|i| i.cgroup.as_deref()) {
                self.cgroups.learn(sample.identity.cgroup_id, path);
            }
            let known = info.map(|i| Known {
                cmdline: i.cmdline.as_deref().map(Facts::cmdline_from_raw),
                exe: i
                    .exe
                    .map(|e| Arc::from(crate::model::names::display_name(e.as_bytes()))),
            });
            self.procinfo.insert(*key, known);
        }
    }

    fn facts(&self, live: &HashMap<ProcessKey, ProcessSample>) -> HashMap<u32, Facts> {
        live.iter()
            .map(|(key, s)| {
                let info = self.procinfo.get(key).and_then(Option::as_ref);
                let facts = Facts {
                    identity: s.identity.clone(),
                    ports: self.listeners.get(&key.tgid).cloned().unwrap_or_default(),
                    cmdline: info.and_then(|i| i.cmdline.clone()),
                    exe: info.and_then(|i| i.exe.clone()),
                };
                (key.tgid, facts)
            })
            .collect()
    }

    fn cgroup_paths(
        &mut self,
        live: &HashMap<ProcessKey, ProcessSample>,
        dead: &HashMap<ProcessKey, DeadSample>,
    ) -> HashMap<u64, String> {
        let ids: HashSet<u64> = live
            .values()
            .map(|s| s.identity.cgroup_id)
            .chain(dead.values().map(|d| d.identity.cgroup_id))
            .collect();
        ids.into_iter()
            .filter_map(|id| Some((id, self.cgroups.get(id)?)))
            .collect()
    }
}

fn limits(opts: &Options, rules: &Rules) -> Limits {
    Limits {
        top_k: opts.top_k,
        max_instances: rules.max_instances,
        expire_after_secs: rules.expire_after.as_secs_f64(),
    }
}
