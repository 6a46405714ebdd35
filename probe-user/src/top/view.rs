//! Rates between two samples, ranking, and the noisy-neighbour marks: what `probe top` shows and
//! what `probe top --once --format json` prints. Pure, unit-tested.
//!
//! An instance is marked `noisy` for a resource when it uses at least half of what all
//! instances use of it (and a meaningful amount) while another instance suffers on the matching
//! latency: CPU with run-queue latency, disk with block IO latency. An instance `suffers` when,
//! over at least 20 waits (or requests) in the window, its 99th percentile is above an absolute
//! floor (run queue: 1 ms, what a latency-sensitive service notices; disk: 50 ms), or its mean
//! is at least 1.5 times its own long-run mean and above a floor (100 µs; 1 ms). Without
//! run-queue histograms (they need `--runq.histograms`), and with them too, an instance also
//! suffers on CPU when its threads waited at least 2% of a second per second, and at least half
//! as long as they ran (the rule of the NoisyNeighbourCPU alert).

use serde::{Deserialize, Serialize};

use crate::{
    api::{Histogram, InstanceSample, ProcessSample, Sample, FORMAT_VERSION},
    model::names::display_name,
};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct View {
    pub version: u32,
    pub interval_seconds: f64,
    /// Set when the view is of a past window (`probe top --begin/--end`), absent live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<HistoryWindow>,
    pub instances: Vec<InstanceView>,
    pub processes: Vec<ProcessView>,
}

/// The past window a view covers: its first and last frame (RFC 3339, UTC), and frames.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HistoryWindow {
    pub begin: String,
    pub end: String,
    /// The same, in unix milliseconds.
    pub begin_ms: i64,
    pub end_ms: i64,
    pub frames: usize,
    /// Stored frames in the window that could not be read (damaged), left out.
    pub damaged_frames: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct InstanceView {
    pub name: String,
    pub rule: String,
    pub container: Option<String>,
    pub pod_uid: Option<String>,
    pub processes: u64,
    /// CPU time per second, in percent of one CPU.
    pub cpu_percent: f64,
    /// Time the instance's threads waited for a CPU per second, in percent of one thread.
    pub runqueue_wait_percent: f64,
    pub runqueue_latency_avg_seconds: Option<f64>,
    /// Upper bound of the histogram bucket that holds the 99th percentile.
    pub runqueue_latency_p99_seconds: Option<f64>,
    pub disk_read_bytes_per_second: f64,
    pub disk_write_bytes_per_second: f64,
    pub disk_latency_avg_seconds: Option<f64>,
    pub disk_latency_p99_seconds: Option<f64>,
    pub tcp_rx_bytes_per_second: f64,
    pub tcp_tx_bytes_per_second: f64,
    pub ports: Vec<PortView>,
    /// Resources ("cpu", "disk") this instance dominates while another instance suffers.
    pub noisy: Vec<String>,
    /// Latencies ("runqueue", "disk") that rose for this instance.
    pub suffering: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PortView {
    pub port: String,
    pub rx_bytes_per_second: f64,
    pub tx_bytes_per_second: f64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessView {
    pub pid: u32,
    pub comm: String,
    pub instance: String,
    pub cpu_percent: Option<f64>,
    pub runqueue_wait_percent: Option<f64>,
    pub disk_read_bytes_per_second: Option<f64>,
    pub disk_write_bytes_per_second: Option<f64>,
    pub tcp_rx_bytes_per_second: Option<f64>,
    pub tcp_tx_bytes_per_second: Option<f64>,
}

impl ProcessView {
    /// Every rate of the row (None: not known over the interval).
    pub fn rates(&self) -> [Option<f64>; 6] {
        [
            self.cpu_percent,
            self.runqueue_wait_percent,
            self.disk_read_bytes_per_second,
            self.disk_write_bytes_per_second,
            self.tcp_rx_bytes_per_second,
            self.tcp_tx_bytes_per_second,
        ]
    }
}

/// Columns `probe top` sorts by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SortBy {
    Name,
    Cpu,
    Runq,
    Read,
    Write,
    Iolat,
    Rx,
    Tx,
}

impl SortBy {
    pub const ALL: [Self; 8] = [
        Self::Name,
        Self::Cpu,
        Self::Runq,
        Self::Read,
        Self::Write,
        Self::Iolat,
        Self::Rx,
        Self::Tx,
    ];

    pub fn next(self) -> Self {
        let i = Self::ALL.iter().position(|s| *s == self).unwrap_or(0);
        Self::ALL[(i + 1) % Self::ALL.len()]
    }

    fn key(self, i: &InstanceView) -> f64 {
        match self {
            Self::Name => 0.0,
            Self::Cpu => i.cpu_percent,
            Self::Runq => i.runqueue_wait_percent,
            Self::Read => i.disk_read_bytes_per_second,
            Self::Write => i.disk_write_bytes_per_second,
            Self::Iolat => i.disk_latency_avg_seconds.unwrap_or(0.0),
            Self::Rx => i.tcp_rx_bytes_per_second,
            Self::Tx => i.tcp_tx_bytes_per_second,
        }
    }

    fn process_key(self, p: &ProcessView) -> f64 {
        match self {
            Self::Name | Self::Iolat => 0.0,
            Self::Cpu => p.cpu_percent.unwrap_or(0.0),
            Self::Runq => p.runqueue_wait_percent.unwrap_or(0.0),
            Self::Read => p.disk_read_bytes_per_second.unwrap_or(0.0),
            Self::Write => p.disk_write_bytes_per_second.unwrap_or(0.0),
            Self::Rx => p.tcp_rx_bytes_per_second.unwrap_or(0.0),
            Self::Tx => p.tcp_tx_bytes_per_second.unwrap_or(0.0),
        }
    }
}

/// Sorts instances (and processes) by `by`: names ascending, everything else descending;
/// `reverse` flips it. Ties by name, so the order is stable from one refresh to the next.
pub fn sort(view: &mut View, by: SortBy, reverse: bool) {
    view.instances.sort_by(|a, b| {
        let o = match by {
            SortBy::Name => a.name.cmp(&b.name),
            _ => by.key(b).total_cmp(&by.key(a)).then(a.name.cmp(&b.name)),
        };
        if reverse {
            o.reverse()
        } else {
            o
        }
    });
    view.processes.sort_by(|a, b| {
        let o = match by {
            SortBy::Name => a.comm.cmp(&b.comm).then(a.pid.cmp(&b.pid)),
            _ => by
                .process_key(b)
                .total_cmp(&by.process_key(a))
                .then(a.pid.cmp(&b.pid)),
        };
        if reverse {
            o.reverse()
        } else {
            o
        }
    });
}

/// Text from the network or a process, made safe to print: control characters (escape
/// sequences) become visible `\xNN`.
pub fn safe(s: &str) -> String {
    if s.chars().any(char::is_control) {
        display_name(s.as_bytes())
    } else {
        s.to_string()
    }
}

impl View {
    /// Escapes control characters in every name (a view read from elsewhere, e.g. a daemon's
    /// /api/v1/history, is printed on a terminal).
    pub fn sanitize(&mut self) {
        let clean = |s: &mut String| *s = safe(s);
        for i in &mut self.instances {
            clean(&mut i.name);
            clean(&mut i.rule);
            i.container.iter_mut().for_each(clean);
            i.pod_uid.iter_mut().for_each(clean);
            i.ports.iter_mut().for_each(|p| clean(&mut p.port));
            i.noisy.iter_mut().for_each(clean);
            i.suffering.iter_mut().for_each(clean);
        }
        for p in &mut self.processes {
            clean(&mut p.comm);
            clean(&mut p.instance);
        }
        if let Some(h) = &mut self.history {
            clean(&mut h.begin);
            clean(&mut h.end);
        }
    }
}

/// Rates from `prev` to `cur`. Instances or processes missing from `prev` count from zero only
/// if they are new; counters that went down (an instance expired and came back) count from zero.
pub fn compute(prev: &Sample, cur: &Sample) -> View {
    let dt = (cur.taken_at_seconds - prev.taken_at_seconds).max(1e-3);
    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / dt;
    let mut instances: Vec<InstanceView> = cur
        .instances
        .iter()
        .map(|c| {
            let empty = InstanceSample::default();
            let p = prev
                .instances
                .iter()
                .find(|p| p.name == c.name)
                .unwrap_or(&empty);
            let p = if c.cpu_ns < p.cpu_ns { &empty } else { p };
            let runq = delta(&c.runqueue, &p.runqueue);
            let disk = delta(&c.disk_latency, &p.disk_latency);
            let cpu_percent = rate(c.cpu_ns, p.cpu_ns) / 1e7;
            let runqueue_wait_percent = rate(c.runqueue_wait_ns, p.runqueue_wait_ns) / 1e7;
            let suffering = suffering(c, &runq, &disk, cpu_percent, runqueue_wait_percent);
            let ports = c
                .tcp
                .iter()
                .map(|port| {
                    let before = p.tcp.iter().find(|q| q.port == port.port);
                    PortView {
                        port: safe(&port.port),
                        rx_bytes_per_second: rate(port.rx_bytes, before.map_or(0, |b| b.rx_bytes)),
                        tx_bytes_per_second: rate(port.tx_bytes, before.map_or(0, |b| b.tx_bytes)),
                    }
                })
                .collect::<Vec<_>>();
            InstanceView {
                name: safe(&c.name),
                rule: safe(&c.rule),
                container: c.container.as_deref().map(safe),
                pod_uid: c.pod_uid.as_deref().map(safe),
                processes: c.processes,
                cpu_percent,
                runqueue_wait_percent,
                runqueue_latency_avg_seconds: avg(&runq),
                runqueue_latency_p99_seconds: p99(&runq),
                disk_read_bytes_per_second: rate(c.disk_read_bytes, p.disk_read_bytes),
                disk_write_bytes_per_second: rate(c.disk_write_bytes, p.disk_write_bytes),
                disk_latency_avg_seconds: avg(&disk),
                disk_latency_p99_seconds: p99(&disk),
                tcp_rx_bytes_per_second: ports.iter().map(|p| p.rx_bytes_per_second).sum(),
                tcp_tx_bytes_per_second: ports.iter().map(|p| p.tx_bytes_per_second).sum(),
                ports,
                noisy: Vec::new(),
                suffering,
            }
        })
        .collect();
    mark_noisy(&mut instances);

    let processes = cur
        .processes
        .iter()
        .map(|c| {
            let empty = ProcessSample::default();
            let p = prev
                .processes
                .iter()
                .find(|p| p.pid == c.pid && p.comm == c.comm)
                .unwrap_or(&empty);
            // A field present now but not before: the process just entered that top-K list and
            // its whole past would look like one interval; leave it out.
            let r = |now: Option<u64>, before: Option<u64>| Some(rate(now?, before?));
            ProcessView {
                pid: c.pid,
                comm: safe(&c.comm),
                instance: safe(&c.instance),
                cpu_percent: r(c.cpu_ns, p.cpu_ns).map(|v| v / 1e7),
                runqueue_wait_percent: r(c.runqueue_wait_ns, p.runqueue_wait_ns).map(|v| v / 1e7),
                disk_read_bytes_per_second: r(c.disk_read_bytes, p.disk_read_bytes),
                disk_write_bytes_per_second: r(c.disk_write_bytes, p.disk_write_bytes),
                tcp_rx_bytes_per_second: r(c.tcp_rx_bytes, p.tcp_rx_bytes),
                tcp_tx_bytes_per_second: r(c.tcp_tx_bytes, p.tcp_tx_bytes),
            }
        })
        .filter(|p: &ProcessView| p.rates().iter().any(Option::is_some))
        .collect();
    let mut view = View {
        version: FORMAT_VERSION,
        interval_seconds: dt,
        history: None,
        instances,
        processes,
    };
    sort(&mut view, SortBy::Cpu, false);
    view
}

/// What happened between two readings of a cumulative histogram (all of `now` if the daemon
/// started again in between).
fn delta(now: &Histogram, before: &Histogram) -> Histogram {
    now.since(before).unwrap_or_else(|| now.clone())
}

fn avg(h: &Histogram) -> Option<f64> {
    h.mean_secs()
}

/// Upper bound (s) of the bucket holding the 99th percentile; None without data, +inf for the
/// last bucket.
fn p99(h: &Histogram) -> Option<f64> {
    h.quantile_upper_secs(0.99)
}

/// Waits or requests in the window below which nothing is concluded (a handful is noise).
const MIN_EVENTS: u64 = 20;
/// 99th percentiles that are suffering on their own.
const RUNQ_P99_SECS: f64 = 1e-3;
const DISK_P99_SECS: f64 = 50e-3;
/// Means that count as risen when 1.5 times the long-run mean and above these.
const RUNQ_FLOOR_SECS: f64 = 100e-6;
const DISK_FLOOR_SECS: f64 = 1e-3;
const RISE: f64 = 1.5;

/// The latencies an instance suffers from in the window; `cpu_percent` and `wait_percent` are
/// its CPU and run-queue wait rates there (for [`waits_long`]).
fn suffering(
    c: &InstanceSample,
    runq: &Histogram,
    disk: &Histogram,
    cpu_percent: f64,
    wait_percent: f64,
) -> Vec<String> {
    let suffers = |window: &Histogram, life: &Histogram, p99_floor: f64, floor: f64| {
        if window.count < MIN_EVENTS {
            return false;
        }
        if p99(window).is_some_and(|p| p >= p99_floor) {
            return true;
        }
        let (Some(w), Some(l)) = (avg(window), avg(life)) else {
            return false;
        };
        w >= floor && w >= RISE * l
    };
    let mut out = Vec::new();
    if waits_long(cpu_percent, wait_percent)
        || suffers(runq, &c.runqueue, RUNQ_P99_SECS, RUNQ_FLOOR_SECS)
    {
        out.push("runqueue".to_string());
    }
    if suffers(disk, &c.disk_latency, DISK_P99_SECS, DISK_FLOOR_SECS) {
        out.push("disk".to_string());
    }
    out
}

/// Run-queue wait (% of a thread) from which an instance can suffer by the wait counter...
const WAIT_FLOOR_PERCENT: f64 = 2.0;
/// ...when it is at least this share of its CPU time.
const WAIT_SHARE_OF_CPU: f64 = 0.5;

/// Suffering by the run-queue wait counter, which is kept without histograms: the instance's
/// threads waited for a CPU long enough, and long compared with how long they ran.
fn waits_long(cpu_percent: f64, wait_percent: f64) -> bool {
    wait_percent >= WAIT_FLOOR_PERCENT && wait_percent >= WAIT_SHARE_OF_CPU * cpu_percent
}

/// Shares at or above this of a resource make an instance dominant...
const DOMINANT_SHARE: f64 = 0.5;
/// ...if it uses at least this much (10% of a CPU; 1 MiB/s of disk).
const CPU_FLOOR_PERCENT: f64 = 10.0;
const DISK_FLOOR_BPS: f64 = 1_048_576.0;

/// A resource: its name, the victim signal that goes with it, how much an instance uses, and
/// the floor of use that can dominate.
type Resource = (&'static str, &'static str, fn(&InstanceView) -> f64, f64);

fn mark_noisy(instances: &mut [InstanceView]) {
    let resources: [Resource; 2] = [
        ("cpu", "runqueue", |i| i.cpu_percent, CPU_FLOOR_PERCENT),
        (
            "disk",
            "disk",
            |i| i.disk_read_bytes_per_second + i.disk_write_bytes_per_second,
            DISK_FLOOR_BPS,
        ),
    ];
    for (resource, victim_signal, used, floor) in resources {
        let total: f64 = instances.iter().map(used).sum();
        let Some(top) = (0..instances.len())
            .max_by(|&a, &b| used(&instances[a]).total_cmp(&used(&instances[b])))
        else {
            continue;
        };
        let u = used(&instances[top]);
        if u < floor || u < DOMINANT_SHARE * total {
            continue;
        }
        let victims = instances
            .iter()
            .enumerate()
            .any(|(i, v)| i != top && v.suffering.iter().any(|s| s == victim_signal));
        if victims {
            instances[top].noisy.push(resource.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PortSample;

    fn hist(count: u64, avg_us: u64) -> Histogram {
        let mut buckets = [0; probe_common::latency::BUCKETS];
        buckets[probe_common::latency::bucket(avg_us * 1000)] = count;
        Histogram {
            count,
            sum_ns: count * avg_us * 1000,
            buckets,
        }
    }

    fn inst(name: &str, cpu_s: u64, runq: Histogram) -> InstanceSample {
        InstanceSample {
            name: name.into(),
            processes: 1,
            cpu_ns: cpu_s * 1_000_000_000,
            runqueue: runq,
            ..InstanceSample::default()
        }
    }

    fn sample(at: f64, instances: Vec<InstanceSample>) -> Sample {
        Sample {
            version: FORMAT_VERSION,
            taken_at_seconds: at,
            instances,
            processes: Vec::new(),
        }
    }

    #[test]
    fn rates_and_percentiles() {
        let mut a = inst("a", 10, hist(100, 10));
        a.tcp = vec![PortSample {
            port: "3306".into(),
            rx_bytes: 1000,
            tx_bytes: 0,
        }];
        let mut b = inst("a", 12, hist(200, 10));
        b.tcp = vec![PortSample {
            port: "3306".into(),
            rx_bytes: 5000,
            tx_bytes: 800,
        }];
        let v = compute(&sample(1.0, vec![a]), &sample(3.0, vec![b]));
        let i = &v.instances[0];
        assert_eq!(v.interval_seconds, 2.0);
        assert!((i.cpu_percent - 100.0).abs() < 1e-9);
        assert_eq!(i.tcp_rx_bytes_per_second, 2000.0);
        assert_eq!(i.tcp_tx_bytes_per_second, 400.0);
        assert!((i.runqueue_latency_avg_seconds.expect("avg") - 10e-6).abs() < 1e-12);
        assert_eq!(i.runqueue_latency_p99_seconds, Some(16e-6));
    }

    #[test]
    fn the_hog_is_marked_when_others_wait_for_cpu() {
        // "hog" uses 1.8 CPUs; "victim" used to wait 20 µs per wakeup and now waits 2 ms.
        let before = sample(
            0.0,
            vec![
                inst("hog", 100, hist(0, 0)),
                inst("victim", 5, hist(1000, 20)),
            ],
        );
        let after = sample(
            10.0,
            vec![
                inst("hog", 118, hist(0, 0)),
                inst("victim", 6, {
                    let mut h = hist(1000, 20);
                    let w = hist(500, 2000);
                    h.add(&w);
                    h
                }),
            ],
        );
        let v = compute(&before, &after);
        assert_eq!(v.instances[0].name, "hog", "sorted by CPU");
        assert_eq!(v.instances[0].noisy, vec!["cpu"]);
        assert_eq!(v.instances[1].suffering, vec!["runqueue"]);
        assert!(v.instances[1].noisy.is_empty());
        // Mostly short waits with a tail (the mean stays under 100 us): the tail counts.
        let tail = sample(
            10.0,
            vec![
                inst("hog", 118, hist(0, 0)),
                inst("victim", 6, {
                    let mut h = hist(1000, 20);
                    for (n, us) in [(2000, 10), (30, 4000)] {
                        let w = hist(n, us);
                        h.add(&w);
                    }
                    h
                }),
            ],
        );
        let v = compute(&before, &tail);
        assert!(v.instances[1].runqueue_latency_avg_seconds.expect("avg") < 100e-6);
        assert_eq!(v.instances[1].suffering, vec!["runqueue"]);
        assert_eq!(v.instances[0].noisy, vec!["cpu"]);
        // Nobody suffers: nobody is marked, however busy.
        let calm = sample(
            10.0,
            vec![
                inst("hog", 118, hist(0, 0)),
                inst("victim", 6, hist(2000, 20)),
            ],
        );
        let v = compute(&before, &calm);
        assert!(v.instances.iter().all(|i| i.noisy.is_empty()));
    }

    #[test]
    fn without_histograms_the_wait_counter_says_who_suffers() {
        // No run-queue histograms (the default): "victim" ran 0.1 s a second and waited 0.2 s.
        let waited = |name: &str, cpu_s: u64, wait_ms: u64| InstanceSample {
            runqueue_wait_ns: wait_ms * 1_000_000,
            ..inst(name, cpu_s, hist(0, 0))
        };
        let before = sample(0.0, vec![waited("hog", 100, 0), waited("victim", 5, 0)]);
        let v = compute(
            &before,
            &sample(
                10.0,
                vec![waited("hog", 118, 5000), waited("victim", 6, 2000)],
            ),
        );
        assert_eq!(v.instances[1].suffering, vec!["runqueue"]);
        assert_eq!(v.instances[0].noisy, vec!["cpu"]);
        // The hog waits too (0.5 s a second), but not half as long as it runs.
        assert!(v.instances[0].suffering.is_empty());
        // Below the floor (1.5% of a thread), or a fifth of its CPU time: nobody suffers.
        for (cpu, wait) in [(6, 150), (15, 2000)] {
            let v = compute(
                &before,
                &sample(
                    10.0,
                    vec![waited("hog", 118, 0), waited("victim", cpu, wait)],
                ),
            );
            assert!(
                v.instances
                    .iter()
                    .all(|i| i.suffering.is_empty() && i.noisy.is_empty()),
                "{cpu} {wait}: {v:?}"
            );
        }
    }

    #[test]
    fn sorting_and_safe_names() {
        let mut v = compute(
            &sample(0.0, vec![]),
            &sample(
                1.0,
                vec![
                    inst("b\x1b[31m", 1, hist(0, 0)),
                    inst("a", 2, hist(0, 0)),
                    inst("c", 0, hist(0, 0)),
                ],
            ),
        );
        let names = |v: &View| {
            v.instances
                .iter()
                .map(|i| i.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&v), vec!["a", "b\\x1b[31m", "c"]);
        sort(&mut v, SortBy::Name, true);
        assert_eq!(names(&v), vec!["c", "b\\x1b[31m", "a"]);
        assert_eq!(safe("plain"), "plain");
    }

    #[test]
    fn a_process_new_to_a_list_has_no_rate_yet() {
        let p = |cpu: Option<u64>| ProcessSample {
            pid: 7,
            comm: "x".into(),
            instance: "i".into(),
            cpu_ns: cpu,
            ..ProcessSample::default()
        };
        let mut a = sample(0.0, vec![]);
        a.processes = vec![p(None)];
        let mut b = sample(1.0, vec![]);
        b.processes = vec![p(Some(5_000_000_000))];
        assert!(compute(&a, &b).processes.is_empty(), "nothing to show yet");
        a.processes = vec![p(Some(4_500_000_000))];
        assert_eq!(compute(&a, &b).processes[0].cpu_percent, Some(50.0));
    }
}
