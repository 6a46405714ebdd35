//! A synthetic host for `cargo xtask bench --only history` (hidden `probe history synth`):
//! frames of N instances and M processes whose counters grow as a busy host's do, written
//! through the real encoder and store, so that bytes per frame, CPU per frame and the query
//! time of a window in a store of days can be measured without waiting days.

use std::{path::PathBuf, sync::Arc, time::Duration};

use super::{
    store::{Retention, Store},
    Encoder, Frame,
};
use crate::{
    daemon::{InstanceMeta, Snapshot},
    model::{
        accounts::{InstanceTotals, ProcessRow, TopRow},
        io::{IoCounters, Op},
        latency::Latency,
        tcp::{Role, TcpCounters, TcpDim},
    },
};

#[derive(Debug, Clone, clap::Args)]
pub struct SynthArgs {
    /// Directory of the store to write (created; must not hold one already).
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 3)]
    pub instances: usize,
    #[arg(long, default_value_t = 100)]
    pub processes: usize,
    /// Time the frames cover, e.g. 1h, 7d.
    #[arg(long, default_value = "1h", value_parser = crate::cli::parse_age)]
    pub span: Duration,
    #[arg(long, default_value = "5s", value_parser = crate::args::parse_duration)]
    pub interval: Duration,
    /// Top-K processes per resource (probe serve --process.top-k).
    #[arg(long, default_value_t = 20)]
    pub top_k: usize,
    /// Instances with queries running (CPU, IO, TCP and their latencies change at every
    /// frame); the others are idle servers: a few background wakeups per frame, IO and TCP
    /// once a minute. Default: all of them (the worst case for compression).
    #[arg(long)]
    pub busy: Option<usize>,
}

/// xorshift64*: reproducible numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the struct passed by pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Writes the store and prints one JSON object: frames, stored bytes, CPU per frame.
pub fn run(args: &SynthArgs) -> anyhow::Result<()> {
    if args.dir.join(super::store::FILE).exists() {
        anyhow::bail!("{} already holds a store", args.dir.display());
    }
    let mut store = Store::create(&args.dir)?;
    let retention = Retention {
        max_age: args.span + Duration::from_secs(3_600),
        max_bytes: u64::MAX / 2,
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let step_ms = args.interval.as_millis() as i64;
    let frames = (args.span.as_millis() as i64 / step_ms).max(1);
    let end_ms = crate::daemon::unix_ms();
    let start_ms = end_ms - frames * step_ms;
    let mut host = Host::new(args, &mut rng);
    let mut encoder = Encoder::default();
    let (mut data_bytes, mut cpu) = (0u64, Vec::with_capacity(frames as usize));
    let t0 = std::time::Instant::now();
    for i in 0..frames {
        host.advance(args.interval.as_secs_f64(), &mut rng);
        let frame = Frame {
            t_ms: start_ms + i * step_ms,
            daemon_started_ms: start_ms,
            restored: false,
            snapshot: host.snapshot(args.top_k),
            collectors: vec![("cpu".into(), true), ("block".into(), true)],
        };
        let c0 = thread_cpu_ns();
        let encoded = encoder.encode(&frame)?;
        data_bytes += encoded.data.len() as u64;
        store.append(&encoded, &retention)?;
        cpu.push(thread_cpu_ns() - c0);
    }
    let wall = t0.elapsed().as_secs_f64();
    drop(store);
    let file_bytes: u64 = std::fs::read_dir(&args.dir)?
        .filter_map(|e| e.ok()?.metadata().ok())
        .map(|m| m.len())
        .sum();
    cpu.sort_unstable();
    let pct = |p: f64| cpu[((cpu.len() - 1) as f64 * p) as usize] as f64 / 1e3;
    println!(
        "{}",
        serde_json::json!({
            "frames": frames,
            "first_ms": start_ms,
            "last_ms": start_ms + (frames - 1) * step_ms,
            "bytes_per_frame": data_bytes as f64 / frames as f64,
            "file_bytes": file_bytes,
            "cpu_us_per_frame_median": pct(0.5),
            "cpu_us_per_frame_p99": pct(0.99),
            "wall_seconds": wall,
        })
    );
    Ok(())
}

/// Cumulative counters of the synthetic host.
struct Host {
    names: Vec<Arc<str>>,
    /// How busy each instance is (CPUs), and whether it runs queries at all.
    load: Vec<f64>,
    busy: Vec<bool>,
    frame: u64,
    totals: Vec<InstanceTotals>,
    runq: Vec<Latency>,
    io: Vec<[IoCounters; 2]>,
    tcp: Vec<TcpCounters>,
    rtt: Vec<Latency>,
    /// Per process: instance, pid, CPU, run delay, read, write, rx, tx.
    procs: Vec<(usize, u32, [u64; 6])>,
}

impl Host {
    fn new(args: &SynthArgs, rng: &mut Rng) -> Self {
        let n = args.instances.max(1);
        let names: Vec<Arc<str>> = (0..n)
            .map(|i| Arc::from(format!("mariadbd:{}", 3306 + i).as_str()))
            .collect();
        // A few busy instances, most nearly idle, as on a real host.
        let load = (0..n)
            .map(|i| {
                if i < 3 {
                    0.5 + i as f64 * 0.3
                } else {
                    0.01 * (1 + rng.below(5)) as f64
                }
            })
            .collect();
        let busy_n = args.busy.unwrap_or(n);
        Self {
            names,
            load,
            busy: (0..n).map(|i| i < busy_n).collect(),
            frame: 0,
            totals: vec![InstanceTotals::default(); n],
            runq: vec![Latency::default(); n],
            io: vec![[IoCounters::default(), IoCounters::default()]; n],
            tcp: vec![TcpCounters::default(); n],
            rtt: vec![Latency::default(); n],
            procs: (0..args.processes.max(1))
                .map(|p| (p % n, 1_000 + p as u32, [0; 6]))
                .collect(),
        }
    }

    fn advance(&mut self, secs: f64, rng: &mut Rng) {
        let jitter = |rng: &mut Rng| 0.5 + rng.below(1_000) as f64 / 1_000.0;
        fn hist(h: &mut Latency, n: u64, rng: &mut Rng) {
            for _ in 0..8 {
                let b = 3 + rng.below(8) as usize;
                let k = rng.below(n / 4 + 1);
                h.buckets[b] += k;
                h.count += k;
                h.sum_ns += k * (1_000 << b) / 2;
            }
        }
        self.frame += 1;
        for i in 0..self.names.len() {
            if !self.busy[i] {
                // An idle server: background threads wake up a few times (one bucket of the
                // run-queue histogram), it flushes and answers a health check once a minute.
                let cpu = 1_000_000 + rng.below(1_000_000);
                let t = &mut self.totals[i];
                t.cpu_ns += cpu;
                t.run_delay_ns += cpu / 100;
                let k = 20 + rng.below(10);
                self.runq[i].buckets[3] += k;
                self.runq[i].count += k;
                self.runq[i].sum_ns += k * 4_000;
                if self.frame % 12 == i as u64 % 12 {
                    self.io[i][1].bytes += 16_384;
                    self.io[i][1].latency.buckets[8] += 1;
                    self.io[i][1].latency.count += 1;
                    self.tcp[i].rx_bytes += 100;
                    self.tcp[i].tx_bytes += 1_000;
                }
                continue;
            }
            let cpu = (self.load[i] * secs * 1e9 * jitter(rng)) as u64;
            let t = &mut self.totals[i];
            t.cpu_ns += cpu;
            t.run_delay_ns += cpu / 10;
            t.rss_bytes = (1 << 30) + rng.below(1 << 20);
            hist(&mut self.runq[i], (cpu / 100_000).max(4), rng);
            for io in &mut self.io[i] {
                io.bytes += 4_096 * rng.below((cpu / 1_000_000).max(2));
                hist(&mut io.latency, (cpu / 10_000_000).max(4), rng);
            }
            let c = &mut self.tcp[i];
            c.rx_bytes += rng.below((cpu / 100).max(2));
            c.tx_bytes += rng.below((cpu / 10).max(2));
            c.accepted += rng.below(3);
            c.closed += rng.below(3);
            hist(&mut self.rtt[i], (cpu / 1_000_000).max(4), rng);
        }
        let procs = self.procs.len() as u64;
        for p in &mut self.procs {
            if !self.busy[p.0] {
                // Idle: its instance's trickle of CPU goes to one process.
                if p.1 as usize % (procs as usize / self.names.len()).max(1) == p.0 % 7 {
                    p.2[0] += 1_000_000;
                }
                continue;
            }
            // Each instance's CPU spread over its processes, a few of them busy.
            let busy = u64::from(p.1 % 10 == 0) * 9 + 1;
            let share = (self.load[p.0] * secs * 1e9) as u64 * busy / (procs / 5).max(1);
            let cpu = share / 2 + rng.below(share + 1) / 2;
            p.2[0] += cpu;
            p.2[1] += cpu / 10;
            p.2[2] += 4_096 * rng.below(busy * 4);
            p.2[3] += 4_096 * rng.below(busy * 8);
            p.2[4] += rng.below(busy * 10_000);
            p.2[5] += rng.below(busy * 100_000);
        }
    }

    fn snapshot(&self, k: usize) -> Snapshot {
        let top = |field: usize| -> Vec<&(usize, u32, [u64; 6])> {
            let mut v: Vec<_> = self.procs.iter().collect();
            if k < v.len() {
                v.select_nth_unstable_by_key(k, |p| std::cmp::Reverse(p.2[field]));
                v.truncate(k);
            }
            v.sort_by_key(|p| std::cmp::Reverse(p.2[field]));
            v
        };
        let dev: Arc<str> = Arc::from("nvme0n1");
        Snapshot {
            instances: self
                .names
                .iter()
                .cloned()
                .zip(self.totals.iter().cloned())
                .map(|(n, mut t)| {
                    t.processes = (self.procs.len() / self.names.len()) as u64;
                    (n, t)
                })
                .collect(),
            top: top(0)
                .into_iter()
                .map(|p| ProcessRow {
                    pid: p.1,
                    comm: Arc::from("mariadbd"),
                    instance: self.names[p.0].clone(),
                    cpu_ns: p.2[0],
                    run_delay_ns: p.2[1],
                    score: 0.0,
                })
                .collect(),
            io: self
                .names
                .iter()
                .zip(&self.io)
                .flat_map(|(n, io)| {
                    [Op::Read, Op::Write]
                        .into_iter()
                        .zip(io.iter().cloned())
                        .map(|(op, c)| ((n.clone(), (dev.clone(), op)), c))
                })
                .collect(),
            top_io: top(3)
                .into_iter()
                .map(|p| TopRow {
                    pid: p.1,
                    comm: Arc::from("mariadbd"),
                    instance: self.names[p.0].clone(),
                    counters: vec![
                        (
                            (dev.clone(), Op::Read),
                            IoCounters {
                                bytes: p.2[2],
                                latency: Latency::default(),
                            },
                        ),
                        (
                            (dev.clone(), Op::Write),
                            IoCounters {
                                bytes: p.2[3],
                                latency: Latency::default(),
                            },
                        ),
                    ],
                    score: 0.0,
                })
                .collect(),
            tcp: self
                .names
                .iter()
                .zip(&self.tcp)
                .enumerate()
                .map(|(i, (n, c))| {
                    let dim = TcpDim {
                        role: Role::Server,
                        port: 3306 + i as u16,
                    };
                    ((n.clone(), dim), c.clone())
                })
                .collect(),
            rtt: self
                .names
                .iter()
                .zip(&self.rtt)
                .enumerate()
                .map(|(i, (n, h))| ((n.clone(), 3306 + i as u16), h.clone()))
                .collect(),
            established: self
                .names
                .iter()
                .enumerate()
                .map(|(i, n)| ((n.clone(), 3306 + i as u16), 10 + (i as u64 % 7)))
                .collect(),
            top_tcp: top(5)
                .into_iter()
                .map(|p| TopRow {
                    pid: p.1,
                    comm: Arc::from("mariadbd"),
                    instance: self.names[p.0].clone(),
                    counters: vec![(
                        TcpDim {
                            role: Role::Server,
                            port: 3306 + p.0 as u16,
                        },
                        TcpCounters {
                            rx_bytes: p.2[4],
                            tx_bytes: p.2[5],
                            ..TcpCounters::default()
                        },
                    )],
                    score: 0.0,
                })
                .collect(),
            runq: self
                .names
                .iter()
                .cloned()
                .zip(self.runq.iter().cloned())
                .collect(),
            meta: self
                .names
                .iter()
                .map(|n| {
                    (
                        n.clone(),
                        InstanceMeta {
                            rule: Arc::from("listener"),
                            container: None,
                            pod_uid: None,
                        },
                    )
                })
                .collect(),
            processes: self.procs.len(),
            ..Snapshot::default()
        }
    }
}
