//! `probe top` over history: the frames of a window folded into the two samples
//! [`super::view::compute`] takes, so that rates, ranking and the noisy/suffering marks are the
//! ones a live `probe top` would have shown over that window. Pure, unit-tested.
//!
//! Counters are summed frame to frame as Prometheus' rate() does: one that went down (an
//! instance expired and came back) counts from zero. Across a daemon restart without its
//! saved accounts nothing is counted for that step: the new daemon's counters start from each
//! process's whole past, not from zero, so neither rule would be right there. A process that
//! enters a top-K list inside the window counts from its first frame there (before it, it was
//! below the list and its use is not in the frames). Frames are folded one at a time: a long
//! window is not held in memory.

use std::collections::HashMap;

use anyhow::Context as _;

use super::view::{HistoryWindow, View};
use crate::{
    api::{InstanceSample, PortSample, ProcessSample, Sample},
    history::{read::History, time, Frame},
};

/// The longest window the daemon's endpoint folds per request (`probe history dump` on the
/// host reads any).
pub const MAX_HTTP_WINDOW_MS: i64 = 86_400_000;

/// A window's frames folded in time order.
#[derive(Default)]
pub struct Fold {
    /// The first sample (plus processes first seen later, at their first value) and the same
    /// advanced by every increase since.
    base: Sample,
    acc: Sample,
    /// The previous frame: its sample, daemon start and whether it was restored.
    prev: Option<(Sample, i64)>,
    first_ms: i64,
    last_ms: i64,
    frames: usize,
    /// Steps between frames whose increases are known (not across a restart).
    steps: usize,
    /// Where each instance and process is in `acc` and `base`.
    acc_instances: HashMap<String, usize>,
    acc_processes: HashMap<(u32, String), usize>,
    base_processes: HashMap<(u32, String), usize>,
}

impl Fold {
    pub fn push(&mut self, f: &Frame) {
        let cur = Sample::from_snapshot(&f.snapshot, f.t_ms as f64 / 1e3);
        self.frames += 1;
        self.last_ms = f.t_ms;
        match self.prev.take() {
            None => {
                self.first_ms = f.t_ms;
                self.base = cur.clone();
                self.acc = cur.clone();
                self.acc_instances = index(&self.acc.instances, |i| i.name.clone());
                self.acc_processes = index(&self.acc.processes, |p| (p.pid, p.comm.clone()));
                self.base_processes = self.acc_processes.clone();
            }
            // A daemon that started again without the accounts of the one before: no increase
            // is known for this step.
            Some((_, started)) if started != f.daemon_started_ms && !f.restored => {}
            Some((prev, _)) => {
                self.advance(&prev, &cur);
                self.steps += 1;
            }
        }
        self.acc.taken_at_seconds = cur.taken_at_seconds;
        self.prev = Some((cur, f.daemon_started_ms));
    }

    /// The window's view, or None with fewer than two frames or only a daemon restart
    /// between them (nothing known to have happened: not the same as nothing happened).
    pub fn view(self, damaged: usize) -> Option<View> {
        if self.steps == 0 {
            return None;
        }
        let mut view = super::view::compute(&self.base, &self.acc);
        // A window sees every process that was in a top-K list at any of its frames: only
        // those that used something in it are shown.
        view.processes
            .retain(|p| p.rates().iter().any(|r| r.is_some_and(|r| r > 0.0)));
        view.history = Some(HistoryWindow {
            begin: time::rfc3339(self.first_ms),
            end: time::rfc3339(self.last_ms),
            begin_ms: self.first_ms,
            end_ms: self.last_ms,
            frames: self.frames,
            damaged_frames: damaged,
        });
        Some(view)
    }

    fn advance(&mut self, prev: &Sample, cur: &Sample) {
        let empty = InstanceSample::default();
        let prev_instances: HashMap<&str, &InstanceSample> = prev
            .instances
            .iter()
            .map(|i| (i.name.as_str(), i))
            .collect();
        for c in &cur.instances {
            let p = prev_instances
                .get(c.name.as_str())
                .copied()
                .unwrap_or(&empty);
            let n = self.acc.instances.len();
            let i = *self.acc_instances.entry(c.name.clone()).or_insert(n);
            if i == n {
                self.acc.instances.push(InstanceSample {
                    name: c.name.clone(),
                    ..InstanceSample::default()
                });
            }
            let a = &mut self.acc.instances[i];
            a.rule.clone_from(&c.rule);
            a.container.clone_from(&c.container);
            a.pod_uid.clone_from(&c.pod_uid);
            a.processes = c.processes;
            add(&mut a.cpu_ns, inc(c.cpu_ns, p.cpu_ns));
            add(
                &mut a.runqueue_wait_ns,
                inc(c.runqueue_wait_ns, p.runqueue_wait_ns),
            );
            add(
                &mut a.disk_read_bytes,
                inc(c.disk_read_bytes, p.disk_read_bytes),
            );
            add(
                &mut a.disk_write_bytes,
                inc(c.disk_write_bytes, p.disk_write_bytes),
            );
            a.runqueue.add(
                &c.runqueue
                    .since(&p.runqueue)
                    .unwrap_or_else(|| c.runqueue.clone()),
            );
            a.disk_latency.add(
                &c.disk_latency
                    .since(&p.disk_latency)
                    .unwrap_or_else(|| c.disk_latency.clone()),
            );
            for port in &c.tcp {
                let before = p.tcp.iter().find(|q| q.port == port.port);
                let (rx, tx) = (
                    inc(port.rx_bytes, before.map_or(0, |b| b.rx_bytes)),
                    inc(port.tx_bytes, before.map_or(0, |b| b.tx_bytes)),
                );
                match a.tcp.iter_mut().find(|q| q.port == port.port) {
                    Some(q) => {
                        add(&mut q.rx_bytes, rx);
                        add(&mut q.tx_bytes, tx);
                    }
                    None => a.tcp.push(PortSample {
                        port: port.port.clone(),
                        rx_bytes: rx,
                        tx_bytes: tx,
                    }),
                }
            }
        }

        let none = ProcessSample::default();
        let prev_processes: HashMap<(u32, &str), &ProcessSample> = prev
            .processes
            .iter()
            .map(|p| ((p.pid, p.comm.as_str()), p))
            .collect();
        for c in &cur.processes {
            let p = prev_processes
                .get(&(c.pid, c.comm.as_str()))
                .copied()
                .unwrap_or(&none);
            let key = (c.pid, c.comm.clone());
            let a = slot(&mut self.acc.processes, &mut self.acc_processes, &key, c);
            let b = slot(&mut self.base.processes, &mut self.base_processes, &key, c);
            let (a, b) = (&mut self.acc.processes[a], &mut self.base.processes[b]);
            a.instance.clone_from(&c.instance);
            let fields: [fn(&ProcessSample) -> Option<u64>; 6] = [
                |s| s.cpu_ns,
                |s| s.runqueue_wait_ns,
                |s| s.disk_read_bytes,
                |s| s.disk_write_bytes,
                |s| s.tcp_rx_bytes,
                |s| s.tcp_tx_bytes,
            ];
            let slots: [fn(&mut ProcessSample) -> &mut Option<u64>; 6] = [
                |s| &mut s.cpu_ns,
                |s| &mut s.runqueue_wait_ns,
                |s| &mut s.disk_read_bytes,
                |s| &mut s.disk_write_bytes,
                |s| &mut s.tcp_rx_bytes,
                |s| &mut s.tcp_tx_bytes,
            ];
            for (get, set) in fields.into_iter().zip(slots) {
                let Some(now) = get(c) else { continue };
                match (get(a), get(p)) {
                    // Known at both frames: what went up.
                    (Some(sum), Some(before)) => {
                        *set(a) = Some(sum.saturating_add(inc(now, before)));
                    }
                    // First seen in this list: counted from here.
                    (None, _) => {
                        *set(a) = Some(now);
                        *set(b) = Some(now);
                    }
                    // Left the list and came back: counted from here again.
                    (Some(_), None) => {}
                }
            }
        }
    }
}

fn index<T, K: std::hash::Hash + Eq>(v: &[T], key: impl Fn(&T) -> K) -> HashMap<K, usize> {
    v.iter().enumerate().map(|(i, t)| (key(t), i)).collect()
}

/// The process's place in `list`, added (names only) if it is not there yet.
fn slot(
    list: &mut Vec<ProcessSample>,
    index: &mut HashMap<(u32, String), usize>,
    key: &(u32, String),
    c: &ProcessSample,
) -> usize {
    *index.entry(key.clone()).or_insert_with(|| {
        list.push(ProcessSample {
            pid: c.pid,
            comm: c.comm.clone(),
            instance: c.instance.clone(),
            ..ProcessSample::default()
        });
        list.len() - 1
    })
}

/// What went up from `before` to `now`; all of `now` if it went down (a reset).
fn inc(now: u64, before: u64) -> u64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// Sums of counters read from a store (perhaps copied from elsewhere) do not overflow.
fn add(sum: &mut u64, v: u64) {
    *sum = sum.saturating_add(v);
}

/// The window's first sample and the same sample advanced by every increase in it (tests).
#[cfg(test)]
pub fn window_samples(frames: &[Frame]) -> Option<(Sample, Sample)> {
    let mut fold = Fold::default();
    for f in frames {
        fold.push(f);
    }
    (fold.steps > 0).then_some((fold.base, fold.acc))
}

/// The view of the window `begin_ms..=end_ms` of `history`, folded frame by frame.
pub fn window_view(history: &History, begin_ms: i64, end_ms: i64) -> anyhow::Result<View> {
    history.check_window(begin_ms, end_ms)?;
    let mut fold = Fold::default();
    let damaged = history.each(begin_ms, end_ms, |f| {
        fold.push(&f);
        true
    })?;
    let frames = fold.frames;
    fold.view(damaged).ok_or_else(|| {
        if frames >= 2 {
            anyhow::anyhow!(
                "between {} and {} the daemon restarted without its saved accounts: no rates \
                 are known across it; widen the window",
                time::show_local(begin_ms),
                time::show_local(end_ms)
            )
        } else {
            anyhow::anyhow!(
                "only {frames} frame(s) recorded between {} and {}: a rate needs two; widen \
                 the window (frames are one collection apart, 5s by default)",
                time::show_local(begin_ms),
                time::show_local(end_ms)
            )
        }
    })
}

/// The daemon's answer to GET /api/v1/history?QUERY from the history in `dir`: the view, or
/// an HTTP status and a message.
pub fn answer(dir: &std::path::Path, query: &str) -> Result<View, (u16, String)> {
    let mut params = HashMap::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v: i64 = v
            .parse()
            .map_err(|_| (400, format!("{k}={v:?}: expected an integer (unix ms)\n")))?;
        params.insert(k, v);
    }
    let history = History::open(dir).map_err(|e| (404, format!("{e}\n")))?;
    let not_found = |e: anyhow::Error| (404, format!("{e:#}\n"));
    match (params.get("at"), params.get("begin"), params.get("end")) {
        (Some(&at), None, None) => {
            let span = std::time::Duration::from_millis(
                params
                    .get("span")
                    .copied()
                    .unwrap_or(2_000)
                    .clamp(0, 3_600_000) as u64,
            );
            let mut c = Cursor::new(history, at, span).map_err(not_found)?;
            c.step(
                params
                    .get("step")
                    .copied()
                    .unwrap_or(0)
                    .clamp(-10_000, 10_000),
            )
            .map_err(not_found)?;
            c.view().map_err(|e| (422, format!("{e:#}\n")))
        }
        (None, Some(&begin), end) => {
            let end = match end {
                Some(&e) => e,
                None => history.range().map_err(not_found)?.1,
            };
            if end.saturating_sub(begin) > MAX_HTTP_WINDOW_MS {
                return Err((
                    400,
                    "at most one day per request (probe history dump on the host reads any window)\n"
                        .into(),
                ));
            }
            window_view(&history, begin, end).map_err(|e| (422, format!("{e:#}\n")))
        }
        _ => Err((
            400,
            "ask for ?begin=MS[&end=MS] or ?at=MS[&step=N][&span=MS] (unix milliseconds)\n"
                .to_string(),
        )),
    }
}

/// `probe top --at`: a moment in history that moves frame by frame. The view at a moment is
/// the rates over `span` up to it, or over the gap to the frame before, whichever is longer.
pub struct Cursor {
    backend: Backend,
    pub at_ms: i64,
    span_ms: i64,
}

enum Backend {
    Local(crate::history::read::History),
    /// A daemon's /api/v1/history; the view at `at_ms` as it last answered.
    Remote {
        authority: String,
        view: Option<View>,
    },
}

impl Cursor {
    /// At the frame at or before `t_ms` (the first frame, if `t_ms` is before it).
    pub fn new(
        history: crate::history::read::History,
        t_ms: i64,
        span: std::time::Duration,
    ) -> anyhow::Result<Self> {
        let (first, last) = history.range()?;
        if t_ms > last + 60_000 || t_ms < first - 60_000 {
            anyhow::bail!(
                "{} is outside the history: it holds {} to {}",
                crate::history::time::show_local(t_ms),
                crate::history::time::show_local(first),
                crate::history::time::show_local(last)
            );
        }
        let mut c = Self {
            backend: Backend::Local(history),
            at_ms: first,
            span_ms: span.as_millis() as i64,
        };
        c.seek(t_ms)?;
        Ok(c)
    }

    /// At the frame at or before `t_ms` of the history of the daemon at `authority`.
    pub fn remote(authority: &str, t_ms: i64, span: std::time::Duration) -> anyhow::Result<Self> {
        let mut c = Self {
            backend: Backend::Remote {
                authority: authority.to_string(),
                view: None,
            },
            at_ms: t_ms,
            span_ms: span.as_millis() as i64,
        };
        c.ask(t_ms, 0)?;
        Ok(c)
    }

    /// Where the cursor reads from, for the header line.
    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Local(h) => h.dir().display().to_string(),
            Backend::Remote { authority, .. } => format!("http://{authority}"),
        }
    }

    /// Asks the daemon for the view `step` frames from the frame at or before `t_ms`.
    fn ask(&mut self, t_ms: i64, step: i64) -> anyhow::Result<()> {
        let Backend::Remote { authority, view } = &mut self.backend else {
            return Ok(());
        };
        let path = format!(
            "{}?at={t_ms}&step={step}&span={}",
            crate::api::HISTORY_PATH,
            self.span_ms
        );
        let raw = super::source::get(authority, &path)?;
        let v = super::source::parse_history_response(authority, &raw)?;
        self.at_ms = v.history.as_ref().map_or(t_ms, |h| h.end_ms);
        *view = Some(v);
        Ok(())
    }

    /// To the frame at or before `t_ms`, or the first one.
    pub fn seek(&mut self, t_ms: i64) -> anyhow::Result<()> {
        let history = match &self.backend {
            Backend::Local(h) => h,
            Backend::Remote { .. } => return self.ask(t_ms, 0),
        };
        let (at_or_before, after) = history.around(t_ms)?;
        if let Some(t) = at_or_before.or(after) {
            self.at_ms = t;
        }
        Ok(())
    }

    /// To a TIME typed after `g`: the frame at or before it, an error outside the history.
    pub fn jump(&mut self, t_ms: i64) -> anyhow::Result<()> {
        if let Backend::Local(history) = &self.backend {
            let (first, last) = history.range()?;
            if t_ms > last + 60_000 || t_ms < first - 60_000 {
                anyhow::bail!(
                    "{} is outside the history: it holds {} to {}",
                    time::show_local(t_ms),
                    time::show_local(first),
                    time::show_local(last)
                );
            }
        }
        self.seek(t_ms)
    }

    /// `ms` later or earlier (`[`, `]`); past a gap longer than that (the daemon was not
    /// running), to the next frame after it.
    pub fn shift(&mut self, ms: i64) -> anyhow::Result<()> {
        let at = self.at_ms;
        self.seek(at + ms)?;
        if ms > 0 && self.at_ms <= at {
            self.at_ms = at;
            self.step(1)?;
        }
        Ok(())
    }

    /// `n` frames later (or earlier, negative); stops at the ends.
    pub fn step(&mut self, n: i64) -> anyhow::Result<()> {
        let history = match &self.backend {
            Backend::Local(h) => h,
            Backend::Remote { .. } => return self.ask(self.at_ms, n),
        };
        for _ in 0..n.unsigned_abs() {
            let (before, after) = if n > 0 {
                history.around(self.at_ms)?
            } else {
                history.around(self.at_ms - 1)?
            };
            match if n > 0 { after } else { before } {
                Some(t) => self.at_ms = t,
                None => break,
            }
        }
        Ok(())
    }

    /// The view at the cursor.
    pub fn view(&self) -> anyhow::Result<View> {
        let history = match &self.backend {
            Backend::Local(h) => h,
            Backend::Remote { view, .. } => {
                return view.clone().context("no view from the daemon yet");
            }
        };
        let Some(before) = history.around(self.at_ms - 1)?.0 else {
            anyhow::bail!(
                "{} is the first frame: rates need the one before (step forward, or a later time)",
                time::show_local(self.at_ms)
            );
        };
        window_view(history, before.min(self.at_ms - self.span_ms), self.at_ms)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        daemon::Snapshot,
        model::accounts::{InstanceTotals, ProcessRow},
        top::view::compute,
    };

    fn frame(t_s: i64, started: i64, cpu: &[(&str, u64)], procs: &[(u32, u64)]) -> Frame {
        Frame {
            t_ms: t_s * 1_000,
            daemon_started_ms: started,
            restored: false,
            snapshot: Snapshot {
                instances: cpu
                    .iter()
                    .map(|(n, ns)| {
                        (
                            Arc::from(*n),
                            InstanceTotals {
                                cpu_ns: *ns,
                                ..InstanceTotals::default()
                            },
                        )
                    })
                    .collect(),
                top: procs
                    .iter()
                    .map(|(pid, ns)| ProcessRow {
                        pid: *pid,
                        comm: "mariadbd".into(),
                        instance: Arc::from("mariadbd:3306"),
                        cpu_ns: *ns,
                        run_delay_ns: 0,
                        score: 0.0,
                    })
                    .collect(),
                ..Snapshot::default()
            },
            collectors: Vec::new(),
        }
    }

    const S: u64 = 1_000_000_000;

    #[test]
    fn a_window_gives_the_rate_over_it_across_a_restart() {
        // One CPU-second per second on 3306. The daemon restarts without its accounts after
        // 20 s: the new one's counter starts from the process's whole past (here 130 s, or
        // 5 s: either way not an increase), so that step counts nothing.
        for after_restart in [130 * S, 5 * S] {
            let frames = [
                frame(0, 1, &[("mariadbd:3306", 100 * S)], &[]),
                frame(10, 1, &[("mariadbd:3306", 110 * S)], &[]),
                frame(20, 1, &[("mariadbd:3306", 120 * S)], &[]),
                frame(30, 2, &[("mariadbd:3306", after_restart)], &[]),
                frame(40, 2, &[("mariadbd:3306", after_restart + 10 * S)], &[]),
            ];
            let (a, b) = window_samples(&frames).expect("two frames");
            let v = compute(&a, &b);
            assert_eq!(v.interval_seconds, 40.0);
            // 10 + 10 + (unknown: 0) + 10 = 30 s of CPU in 40 s.
            assert!((v.instances[0].cpu_percent - 75.0).abs() < 1e-9, "{v:?}");
        }
        // A restart that carried the accounts on (restored) is counted as usual.
        let mut frames = [
            frame(0, 1, &[("a", 100 * S)], &[]),
            frame(10, 2, &[("a", 110 * S)], &[]),
        ];
        frames[1].restored = true;
        let (a, b) = window_samples(&frames).expect("two frames");
        assert!((compute(&a, &b).instances[0].cpu_percent - 100.0).abs() < 1e-9);
        // Only a restart between two frames: nothing known, not "idle".
        frames[1].restored = false;
        assert!(window_samples(&frames).is_none());
    }

    #[test]
    fn an_instance_or_process_appearing_inside_the_window_counts_from_there() {
        let frames = [
            frame(0, 1, &[("a", 0)], &[]),
            frame(10, 1, &[("a", 5 * S), ("b", 2 * S)], &[(7, 40 * S)]),
            frame(20, 1, &[("a", 10 * S), ("b", 12 * S)], &[(7, 50 * S)]),
        ];
        let (a, b) = window_samples(&frames).expect("two frames");
        let v = compute(&a, &b);
        let cpu = |n: &str| {
            v.instances
                .iter()
                .find(|i| i.name == n)
                .map(|i| i.cpu_percent)
                .expect("instance")
        };
        // A new instance's counter is all its life, which began in the window.
        assert!((cpu("b") - 60.0).abs() < 1e-9);
        assert!((cpu("a") - 50.0).abs() < 1e-9);
        assert_eq!(v.instances[0].name, "b", "ranked first");
        // The process is counted from its first frame (10 s of CPU in the 20 s window), not
        // with the 40 s of its life before.
        let p = v.processes.iter().find(|p| p.pid == 7).expect("process");
        assert_eq!(p.cpu_percent, Some(50.0));
    }

    #[test]
    fn a_cursor_steps_through_a_store_frame_by_frame_and_by_the_minute() {
        use crate::history::{read::History, store::*, Encoder};
        let d = std::env::temp_dir().join(format!("probe-cursor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut w = Store::create(&d).expect("create");
        let keep = Retention {
            max_age: std::time::Duration::from_secs(86_400),
            max_bytes: 1 << 30,
        };
        let mut enc = Encoder::default();
        // 5 s apart, "a" using one CPU until 60 s, then two; then the daemon is down for
        // five minutes and one more frame comes at 445 s.
        let mut cpu = 0;
        for i in 0..30 {
            cpu += if i * 5 <= 60 { 5 * S } else { 10 * S };
            let f = frame(i * 5, 1, &[("a", cpu)], &[]);
            w.append(&enc.encode(&f).expect("encode"), &keep)
                .expect("append");
        }
        let f = frame(445, 1, &[("a", cpu + 600 * S)], &[]);
        w.append(&enc.encode(&f).expect("encode"), &keep)
            .expect("append");
        let history = History::open(&d).expect("open");
        let mut c = Cursor::new(history, 42_000, std::time::Duration::from_secs(2)).expect("at");
        assert_eq!(c.at_ms, 40_000, "the frame at or before");
        let v = c.view().expect("view");
        assert_eq!(v.interval_seconds, 5.0);
        assert!((v.instances[0].cpu_percent - 100.0).abs() < 1e-9);
        c.step(1).expect("step");
        assert_eq!(c.at_ms, 45_000);
        c.seek(c.at_ms + 60_000).expect("minute");
        assert_eq!(c.at_ms, 105_000);
        assert!((c.view().expect("view").instances[0].cpu_percent - 200.0).abs() < 1e-9);
        c.step(-3).expect("back");
        assert_eq!(c.at_ms, 90_000);
        c.step(100).expect("to the end");
        assert_eq!(c.at_ms, 445_000, "stops at the last frame");
        c.step(-1).expect("back over the gap");
        assert_eq!(c.at_ms, 145_000);
        c.shift(60_000).expect("a minute on");
        assert_eq!(
            c.at_ms, 445_000,
            "past a gap longer than a minute, the next frame"
        );
        assert!(c.jump(10_000_000).is_err(), "a time outside the history");
        assert_eq!(c.at_ms, 445_000, "stays where it was");
        c.jump(100_000).expect("jump");
        assert_eq!(c.at_ms, 100_000);
        c.step(-100).expect("to the start");
        assert_eq!(c.at_ms, 0);
        assert!(c.view().is_err(), "no rates at the first frame");
        let history = History::open(&d).expect("open");
        assert!(Cursor::new(history, 10_000_000, std::time::Duration::from_secs(2)).is_err());
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn one_frame_is_not_a_window() {
        assert!(window_samples(&[frame(0, 1, &[("a", 0)], &[])]).is_none());
        assert!(window_samples(&[]).is_none());
    }
}
