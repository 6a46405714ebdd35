//! One collection: read the kernel and /proc, resolve instances, update the accounts.
//! [`Daemon::collect`] runs on every scrape and on a timer (so exited processes are folded in
//! even when nobody scrapes); [`Daemon::snapshot`] is what the exporter encodes.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tracing::debug;

use crate::{
    collect::{
        collector::{Clock, Collector},
        reading::Reading,
    },
    loader::Kernel,
    model::rules::Rules,
    record::{Frame, Recorder},
};

mod ledger;
mod persist;
mod snapshot;

pub use ledger::{limits, InstanceMeta, Ledger};
pub use snapshot::{Reloads, SelfStats, Snapshot};

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

/// What one collection saw (for `probe check` and logs).
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub threads: usize,
    pub processes: usize,
    pub exited_processes: usize,
    pub listening_processes: usize,
    pub duration: Duration,
}

/// The daemon: a [`Collector`] (kernel and /proc), a [`Ledger`] (the accounts, no I/O) and
/// its own counters.
pub struct Daemon {
    collector: Collector,
    opts: Options,
    ledger: Ledger,
    started: Instant,
    last: Option<Instant>,
    /// When the latest collection started (scrapes asked before it can share it).
    last_started: Option<Instant>,
    stats: SelfStats,
    /// Whether the kernel maps are pinned (the accounts are then saved and restored).
    pinned: bool,
    /// CLOCK_MONOTONIC ns at which `started` reads zero (kept across restarts with the state).
    epoch_mono_ns: u64,
    boot_id: String,
    /// Kernel ids of the pinned maps (a saved state names them); fixed for the daemon's life.
    map_ids: Vec<(String, u32)>,
    /// Where readings are recorded (`--record-readings`).
    recorder: Option<Recorder>,
    /// Where history frames go (`--history.dir`), and when this daemon started (unix ms).
    history: Option<crate::history::writer::Recorder>,
    started_unix_ms: i64,
}

impl Daemon {
    pub fn new(kernel: Kernel, opts: Options) -> Self {
        let ledger = Ledger::new(opts.rank_tau_secs, limits(opts.top_k, &opts.rules));
        let map_ids = kernel
            .pins
            .as_ref()
            .map(|p| p.map_ids())
            .unwrap_or_default();
        let pinned = kernel.pins.is_some();
        let reused = kernel.pins.as_ref().is_some_and(|p| p.reused);
        let mut daemon = Self {
            collector: Collector::new(kernel),
            ledger,
            opts,
            started: Instant::now(),
            last: None,
            last_started: None,
            stats: SelfStats::default(),
            pinned,
            epoch_mono_ns: crate::state::monotonic_ns(),
            boot_id: crate::state::boot_id(),
            map_ids,
            recorder: None,
            history: None,
            started_unix_ms: unix_ms(),
        };
        daemon.restore(reused);
        daemon
    }

    pub fn kernel(&self) -> &Kernel {
        self.collector.kernel()
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

    /// Records every reading from now on, after the settings, rules and accounts it starts
    /// from (see [`crate::record`]).
    pub fn record(&mut self, mut recorder: Recorder) {
        let placeholder = Ledger::new(0.0, limits(0, &self.opts.rules));
        let start = Frame::Start {
            top_k: self.opts.top_k as u64,
            rank_tau_secs: self.opts.rank_tau_secs,
            rules: self.opts.rules.file.as_deref().map(str::to_owned),
            ledger: Box::new(std::mem::replace(&mut self.ledger, placeholder)),
        };
        recorder.write(&start);
        if let Frame::Start { ledger, .. } = start {
            self.ledger = *ledger;
        }
        self.recorder = Some(recorder);
    }

    /// Writes a history frame after every collection from now on.
    pub fn record_history(&mut self, recorder: crate::history::writer::Recorder) {
        self.history = Some(recorder);
    }

    /// Where this daemon records history, if it does.
    pub fn history_dir(&self) -> Option<PathBuf> {
        self.history.as_ref().map(|h| h.dir.clone())
    }

    /// The history recorder's counters, for the self-metrics.
    pub fn history_stats(&self) -> Option<&crate::history::writer::Stats> {
        self.history.as_ref().map(|h| &*h.stats)
    }

    /// Replaces the instance rules (SIGHUP). Counts are kept: processes whose instance changes
    /// carry on in the new one from the next collection.
    pub fn set_rules(&mut self, rules: Arc<Rules>) {
        self.ledger
            .accounts
            .set_limits(limits(self.opts.top_k, &rules));
        if let Some(r) = &mut self.recorder {
            r.write(&Frame::Rules {
                rules: rules.file.as_deref().map(str::to_owned),
            });
        }
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

    /// One collection: read everything, account it, then clean up the kernel maps.
    pub fn collect(&mut self) -> Summary {
        let t0 = Instant::now();
        self.last_started = Some(t0);
        let mut summary = Summary::default();
        self.stats.failing.clear();
        let (started, last) = (self.started, self.last);
        let clock = || Clock {
            now_secs: started.elapsed().as_secs_f64(),
            elapsed_secs: last.map_or(0.0, |l| l.elapsed().as_secs_f64()),
        };
        if let Some(reading) = self.collector.read(clock, &mut self.stats, &mut summary) {
            let cleanup = self.ledger.account(&reading, &self.opts.rules);
            // Saved with the deletions about to follow: a successor of a daemon killed in
            // between makes them.
            self.save(crate::state::Pending {
                dead: cleanup.dead.iter().map(|k| (k.tgid, k.start_ns)).collect(),
                runq_dead: cleanup.runq_dead.clone(),
            });
            self.collector.cleanup(&reading, &cleanup, &mut self.stats);
            self.last = Some(Instant::now());
            self.collector.retain_live(&reading);
            self.record_reading(reading);
        }
        self.collector.health(&mut self.stats);
        self.offer_history();
        summary.duration = t0.elapsed();
        self.stats.last_collect = summary.duration;
        self.stats.collections += 1;
        debug!(?summary, "collected");
        summary
    }

    /// The accounts as of this collection, to the history writer (which never blocks).
    fn offer_history(&self) {
        let Some(history) = &self.history else { return };
        let mut snapshot = self.ledger.snapshot();
        // The ranking scores (decayed floats, different in every frame) are not history: a
        // third of a frame's compressed size with them (740 B against 531 B measured).
        snapshot.top.iter_mut().for_each(|r| r.score = 0.0);
        snapshot.top_io.iter_mut().for_each(|r| r.score = 0.0);
        snapshot.top_tcp.iter_mut().for_each(|r| r.score = 0.0);
        history.offer(crate::history::Frame {
            t_ms: unix_ms(),
            daemon_started_ms: self.started_unix_ms,
            restored: self.stats.restored,
            snapshot,
            collectors: self
                .kernel()
                .statuses
                .iter()
                .filter(|s| s.off.is_none())
                .map(|s| {
                    (
                        s.name.to_string(),
                        s.up() && !self.stats.failing.contains(s.name),
                    )
                })
                .collect(),
        });
    }

    fn record_reading(&mut self, reading: Reading) {
        let Some(recorder) = self.recorder.as_mut().filter(|r| r.active()) else {
            return;
        };
        let exposition = recorder
            .expositions
            .then(|| crate::exporter::metrics::encode_accounts(self.ledger.snapshot()).ok())
            .flatten();
        recorder.write(&Frame::Reading {
            reading: Box::new(reading),
            exposition,
        });
    }
}

/// Wall-clock time in unix milliseconds (history frames are found by it).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
