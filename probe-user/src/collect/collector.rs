//! The kernel and /proc side of a collection: [`Collector`] owns the kernel handles, the
//! listener tracker and what /proc said of each process; [`Collector::read`] returns one
//! owned [`Reading`], doing all I/O in the order ARCHITECTURE.md's invariants require, and
//! [`Collector::cleanup`] deletes what the accounting no longer needs.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::{debug, warn};

use super::{
    block::IoReader,
    cgroups::CgroupPaths,
    cpu::DeadRead,
    ports::Listeners,
    proctasks::ProcTasks,
    reading::{Cleanup, Reading},
    runq::RunqRead,
    sockdiag::ListenSockets,
    tcp::{monotonic_ns, TcpReader},
};
use crate::{
    daemon::{SelfStats, Summary},
    loader::{hooks, names, Kernel},
    model::{
        instance::Facts,
        latency::Latency,
        process::{self, DeadSample, ProcessKey, ProcessSample},
    },
    state::Pending,
};

/// Listening sockets are mapped to processes again at least this often even when the set of
/// listening sockets did not change (a socket can change hands: fork, SCM_RIGHTS).
const LISTEN_FULL_REFRESH: Duration = Duration::from_secs(30);

/// What /proc told about a process, in the form rules read it.
#[derive(Clone, Debug, Default)]
struct Known {
    cmdline: Option<Arc<str>>,
    exe: Option<Arc<str>>,
}

/// The daemon's clock at a reading (s).
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    pub now_secs: f64,
    /// Since the previous reading (0 for the first).
    pub elapsed_secs: f64,
}

pub struct Collector {
    kernel: Kernel,
    /// /proc facts per process, read when it is first seen and again when its comm changes
    /// (an exec keeps the pid and start time: a process seen between fork and exec had its
    /// parent's command line), with the comm they were read under (None: a kernel thread, or
    /// gone before it was read).
    procinfo: HashMap<ProcessKey, ([u8; probe_common::COMM_LEN], Option<Known>)>,
    cgroups: CgroupPaths,
    listeners: Listeners,
    io_reader: IoReader,
    tcp_reader: TcpReader,
    /// The processes the previous reading saw alive: gone means missing from it and from the
    /// current one (see [`Collector::cleanup`]).
    prev_live: HashSet<ProcessKey>,
    /// CLOCK_MONOTONIC ns when `listeners` was last built (see super::tcp::sync_listen_ports).
    listeners_seen_at: u64,
    /// The kernel's listening ports when `listeners` was last built.
    listen_ports_checked: HashSet<u16>,
    /// Live threads from /proc, where the task iterator is not available.
    proc_tasks: Option<ProcTasks>,
    /// Listening sockets when `listeners` was last built.
    listen_sockets: Option<ListenSockets>,
    last_listen_walk: Option<Instant>,
    buf: Vec<u8>,
    ticks_per_sec: u64,
    page_size: u64,
}

/// Walks of the listeners per collection at most, while the listening set keeps changing.
const LISTEN_WALK_ATTEMPTS: usize = 3;

/// Logs a failed read and counts it for the self-metrics.
fn failed(stats: &mut SelfStats, collector: &'static str, err: &dyn std::fmt::Display) {
    warn!(collector, error = %err, "read failed");
    *stats.errors.entry(collector).or_default() += 1;
    stats.failing.insert(collector);
}

impl Collector {
    pub fn new(kernel: Kernel) -> Self {
        let proc_tasks = kernel
            .task_iter
            .is_none()
            .then(|| ProcTasks::new(procfs::ticks_per_second(), crate::sys::cgroup2_mount()));
        Self {
            kernel,
            procinfo: HashMap::new(),
            cgroups: CgroupPaths::new(crate::sys::cgroup2_mount()),
            listeners: HashMap::new(),
            io_reader: IoReader::default(),
            tcp_reader: TcpReader::default(),
            prev_live: HashSet::new(),
            listeners_seen_at: 0,
            listen_ports_checked: HashSet::new(),
            proc_tasks,
            listen_sockets: None,
            last_listen_walk: None,
            buf: Vec::with_capacity(1 << 20),
            ticks_per_sec: procfs::ticks_per_second(),
            page_size: procfs::page_size(),
        }
    }

    pub fn kernel(&self) -> &Kernel {
        &self.kernel
    }

    /// Forgets the /proc facts of processes that are gone.
    pub fn retain_live(&mut self, r: &Reading) {
        self.procinfo.retain(|k, _| r.live.contains_key(k));
    }

    /// Deletes the entries a previous daemon credited but did not delete (it was killed
    /// between its save and its deletions).
    pub fn forget_pending(&mut self, pending: &Pending) {
        if let Some(map) = &mut self.kernel.dead_tasks {
            let keys = pending
                .dead
                .iter()
                .map(|&(tgid, start_ns)| ProcessKey { tgid, start_ns });
            super::cpu::forget_dead(map, keys);
        }
        if let Some(maps) = &mut self.kernel.runq {
            super::runq::forget_if_dead(&mut maps.threads, &pending.runq_dead);
        }
    }

    /// Reads the kernel and /proc, in the order the accounting needs. None if the live threads
    /// or the dead-thread map could not be read: the round is skipped whole (accounting it
    /// would take every process for dead, or fold exited ones in short), and nothing is lost by
    /// waiting for the next one.
    pub fn read(
        &mut self,
        clock: impl FnOnce() -> Clock,
        stats: &mut SelfStats,
        summary: &mut Summary,
    ) -> Option<Reading> {
        self.cgroups.new_round();
        let granularity = self.granularity();
        // The counters of block IO, TCP and run-queue waits before the processes they are
        // charged to: the name and ports the task read and the walk of the listeners below see
        // are never older than what a process did by these reads. Read after, a process that
        // execs, renames itself or listens just after the task read had its first traffic
        // charged under its old name (`<parent's comm>:<port>`: the churn soak and the TCP tests
        // saw it). The other way round, what a process did just before it renames itself goes
        // under the new name: a change after the fact, as at any collection.
        let io = match &self.kernel.block_io {
            Some(map) => match self.io_reader.read(map, granularity) {
                Ok(io) => Some(io),
                Err(e) => {
                    failed(stats, names::BLOCK, &e);
                    None
                }
            },
            None => Some(HashMap::new()),
        };
        // The sockets' counters first, so that this read has what they carried.
        if let Err(e) = self.kernel.walk_tcp() {
            failed(stats, names::TCP, &format!("{}: {e}", hooks::TCP_WALK));
        }
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
                    failed(stats, names::TCP, &e);
                    None
                }
            },
            None => Some(super::tcp::TcpRead::default()),
        };
        let runq = match &self.kernel.runq {
            Some(maps) => match super::runq::read(&maps.threads, granularity) {
                Ok(r) => Some(r),
                Err(e) => {
                    failed(stats, names::RUNQ, &e);
                    None
                }
            },
            None => Some(RunqRead::default()),
        };
        // The dead-thread map first, then the live threads: a thread that dies in between is
        // briefly in neither (harmless, see model::accounts), never in both.
        let mut dead = DeadRead::default();
        if let Some(map) = &self.kernel.dead_tasks {
            match super::cpu::read_dead(map, granularity) {
                Ok(d) => dead = d,
                Err(e) => {
                    failed(stats, names::CPU_EXIT, &e);
                    self.tcp_reader.unread();
                    return None;
                }
            }
        }
        let records = match (&self.kernel.task_iter, &mut self.proc_tasks) {
            (Some(link), _) => super::cpu::read_tasks(link, &mut self.buf),
            (None, Some(proc_tasks)) => proc_tasks.read().map_err(super::cpu::CpuError::Proc),
            (None, None) => Err(super::cpu::CpuError::Proc(std::io::Error::other(
                "no task source",
            ))),
        };
        let records = match records {
            Ok(r) => r,
            Err(e) => {
                failed(stats, names::CPU, &e);
                self.tcp_reader.unread();
                return None;
            }
        };
        summary.threads = records.len();
        let live = process::aggregate(records);
        summary.processes = live.len();
        summary.exited_processes = dead
            .samples
            .keys()
            .filter(|k| !live.contains_key(k))
            .count();

        self.refresh_listeners(stats);
        summary.listening_processes = self.listeners.len();
        let rtt = self.read_rtt(stats);
        let established = self.read_established(stats);
        let mut listening: HashSet<u16> = self.listeners.values().flatten().copied().collect();
        listening.extend(self.listen_sockets.iter().flat_map(|s| s.values().copied()));

        self.read_new_procinfo(&live);
        let facts = self.facts(&live);
        let cgroup_paths = self.cgroup_paths(&live, &dead.samples);
        // The reading's time is when it is complete.
        let clock = clock();
        Some(Reading {
            elapsed_secs: clock.elapsed_secs,
            now_secs: clock.now_secs,
            dead,
            live,
            io,
            tcp,
            runq,
            rtt,
            established,
            tcp_loaded: self.kernel.tcp.is_some(),
            listeners: self.listeners.clone(),
            listening,
            listeners_seen_at: self.listeners_seen_at,
            facts,
            cgroup_paths,
            page_size: self.page_size,
        })
    }

    /// Deletes what the kernel maps no longer need and brings the kernel's listening-port set
    /// in line.
    pub fn cleanup(&mut self, r: &Reading, cleanup: &Cleanup, stats: &mut SelfStats) {
        if let Some(map) = &mut self.kernel.dead_tasks {
            stats.dead_delete_failures +=
                super::cpu::forget_dead(map, cleanup.dead.iter().copied()) as u64;
        }
        let granularity = self.granularity();
        // The counters were read before the tasks: a process alive then may have exited since,
        // and whatever it added in between (a socket's last bytes, moved as it is destroyed) is
        // in its entry but not in the reading. Its entries go once it is missing from two
        // readings (one born since the previous reading has entries first seen now: not idle).
        let prev_live = std::mem::replace(&mut self.prev_live, r.live.keys().copied().collect());
        let is_live = |tgid, start_ns| {
            let key = ProcessKey { tgid, start_ns };
            r.live.contains_key(&key) || prev_live.contains(&key)
        };
        if let Some(map) = &mut self.kernel.block_io {
            stats.io_delete_failures +=
                self.io_reader.forget_idle(map, is_live, granularity) as u64;
        }
        if let Some(maps) = &mut self.kernel.tcp {
            // Ports nobody listens on: known only once a walk of the listeners succeeded, and
            // never one the kernel added to its listening set since.
            let listening = (r.listeners_seen_at != 0).then(|| {
                let mut l = r.listening.clone();
                l.extend(maps.listen.keys().filter_map(Result::ok));
                l
            });
            if r.tcp.is_some() {
                let rtt = r.rtt.is_some().then_some(&mut maps.rtt);
                stats.tcp_map_failures += self.tcp_reader.forget_idle(
                    &mut maps.traffic,
                    rtt,
                    is_live,
                    listening.as_ref(),
                    granularity,
                ) as u64;
            }
            stats.tcp_map_failures +=
                super::tcp::sync_listen_ports(&mut maps.listen, &r.listening, r.listeners_seen_at)
                    as u64;
        }
        if let Some(maps) = &mut self.kernel.runq {
            stats.runq_delete_failures +=
                super::runq::forget_dead(&mut maps.threads, &cleanup.runq_dead) as u64;
        }
    }

    /// Start times are rounded to this (1 with the task iterator; a clock tick from /proc).
    fn granularity(&self) -> u64 {
        self.proc_tasks
            .as_ref()
            .map_or(1, ProcTasks::start_granularity_ns)
    }

    /// Reads the kernel programs' own counters (what they could not count, their run time) and
    /// finds block requests whose completion was missed.
    pub fn health(&mut self, stats: &mut SelfStats) {
        if let Some(map) = &self.kernel.exit_stats {
            match super::cpu::exit_stats(map) {
                Ok((recorded, lost)) => {
                    if lost > stats.exits_lost {
                        warn!(
                            lost = lost - stats.exits_lost,
                            "dead-thread map full: exited threads not counted"
                        );
                    }
                    stats.exits_recorded = recorded;
                    stats.exits_lost = lost;
                }
                Err(e) => failed(stats, names::CPU_EXIT, &e),
            }
        }
        if let Some(map) = &mut self.kernel.block_starts {
            let now = super::tcp::monotonic_ns();
            let found = super::block::missed_ends(map, now, super::block::in_flight) as u64;
            if found > 0 {
                debug!(
                    found,
                    "block requests whose completion the kernel did not report"
                );
            }
            stats.block_ends_found += found;
        }
        if let Some(map) = &self.kernel.block_stats {
            match super::block::stats(map) {
                Ok(s) => {
                    if s.lost > stats.block.lost {
                        warn!(
                            lost = s.lost - stats.block.lost,
                            "block IO map full: IO not counted (raise --block.map-size)"
                        );
                    }
                    stats.block = s;
                }
                Err(e) => failed(stats, names::BLOCK, &e),
            }
        }
        if let Some(maps) = &self.kernel.tcp {
            match super::tcp::lost(&maps.stats) {
                Ok(lost) => {
                    if lost > stats.tcp_lost {
                        warn!(
                            lost = lost - stats.tcp_lost,
                            "TCP map full: events not counted (raise --tcp.map-size, or --tcp.socket-map-size above the connections open at once)"
                        );
                    }
                    stats.tcp_lost = lost;
                }
                Err(e) => failed(stats, names::TCP, &e),
            }
        }
        if let Some(maps) = &self.kernel.runq {
            match super::runq::lost(&maps.stats) {
                Ok(lost) => {
                    if lost > stats.runq_lost {
                        warn!(
                            threads = lost - stats.runq_lost,
                            "run-queue thread map full: waits not counted"
                        );
                    }
                    stats.runq_lost = lost;
                }
                Err(e) => failed(stats, names::RUNQ, &e),
            }
        }
        // Skipped runs are always counted; runs and run time only with statistics on.
        stats.programs = match &self.kernel.ebpf {
            Some(ebpf) => {
                super::bpfstats::read(ebpf, &self.kernel.attached, self.kernel.bpf_stats_on())
            }
            None => Vec::new(),
        };
    }

    /// Maps listening sockets to processes again, but only when the set of listening sockets
    /// changed (a cheap sock_diag dump tells) or the last walk is [`LISTEN_FULL_REFRESH`] old:
    /// walking every process's files is the most expensive part of a collection.
    fn refresh_listeners(&mut self, stats: &mut SelfStats) {
        let sockets = super::sockdiag::listening().ok();
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
        let mut sockets = sockets;
        for attempt in 1..=LISTEN_WALK_ATTEMPTS {
            let seen_at = monotonic_ns();
            let ports = match &self.kernel.listen_iter {
                Some(link) => super::ports::from_iter(link, &mut self.buf),
                None => super::ports::from_procfs(std::process::id()),
            };
            let l = match ports {
                Ok(l) => l,
                Err(e) => {
                    // Keep the previous view, retry next time.
                    failed(stats, names::PORTS, &e);
                    return;
                }
            };
            // The walk reads each process's open files while they change: a process that opens
            // a listener on a lower descriptor than the one it then closes (moving to another
            // port) can be seen with neither, and its traffic would go to another instance. A
            // listening set that did not change during the walk was seen whole; one that did
            // is walked again, and after the last attempt the next collection walks anew.
            // (Without sock_diag both are None: one walk, and one again at every collection.)
            let after = super::sockdiag::listening().ok();
            let settled = after == sockets;
            if settled || attempt == LISTEN_WALK_ATTEMPTS {
                self.listeners = l;
                self.listen_sockets = if settled { after } else { None };
                self.last_listen_walk = Some(Instant::now());
                self.listeners_seen_at = seen_at;
                return;
            }
            sockets = after;
        }
    }

    /// RTT histograms per listening port.
    fn read_rtt(&mut self, stats: &mut SelfStats) -> Option<HashMap<u16, Latency>> {
        let maps = self.kernel.tcp.as_ref()?;
        self.tcp_reader
            .read_rtt(&maps.rtt)
            .map_err(|e| failed(stats, names::TCP_RTT, &e))
            .ok()
    }

    /// Established connections per local port. The dump lists every established connection on
    /// the host: skipped when no process listens.
    fn read_established(&mut self, stats: &mut SelfStats) -> Option<HashMap<u16, u64>> {
        self.kernel.tcp.as_ref()?;
        if self.listeners.is_empty() {
            return Some(HashMap::new());
        }
        super::sockdiag::established_by_port()
            .map_err(|e| failed(stats, names::TCP_STATE, &e))
            .ok()
    }

    /// /proc facts for processes seen for the first time or under a new comm (kernel threads
    /// have none).
    fn read_new_procinfo(&mut self, live: &HashMap<ProcessKey, ProcessSample>) {
        for (key, sample) in live {
            if self
                .procinfo
                .get(key)
                .is_some_and(|(comm, _)| *comm == sample.identity.comm)
            {
                continue;
            }
            let info = if sample.identity.kthread {
                None
            } else {
                super::procinfo::read(*key, self.ticks_per_sec)
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
            // During an exec the new comm is set before the new command line is (for a moment
            // /proc/<pid>/cmdline reads empty): facts read then are read again next time.
            let settled = sample.identity.kthread
                || known
                    .as_ref()
                    .is_some_and(|k| k.cmdline.as_deref().is_some_and(|c| !c.is_empty()));
            let comm = if settled {
                sample.identity.comm
            } else {
                [0; probe_common::COMM_LEN]
            };
            self.procinfo.insert(*key, (comm, known));
        }
    }

    fn facts(&self, live: &HashMap<ProcessKey, ProcessSample>) -> HashMap<u32, Facts> {
        live.iter()
            .map(|(key, s)| {
                let info = self.procinfo.get(key).and_then(|(_, k)| k.as_ref());
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
