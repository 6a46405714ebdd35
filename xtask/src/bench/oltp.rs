//! The cost that matters most: a real MariaDB under sysbench, without probe, with probe
//! (scraped every 15 s, as Prometheus would) and with each hot-path collector skipped or put on
//! its fallback in turn, so the table says what every collector costs on an OLTP workload.
//!
//! The server runs on CPU 0 and sysbench on CPU 1 (pinned), both workloads with 2 client
//! threads: `oltp_point_select` (one primary-key lookup per transaction: the most
//! per-packet and per-switch work per unit of useful work) and `oltp_read_only`. The daemon
//! is not pinned: its collections compete with both, as on a real host.

use std::{
    collections::BTreeMap,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use probe_tests::mariadb::MariaDb;

use super::{
    compare::{compare, print_table, Metric, Outcome, Variant},
    profile::{self, Class, CpuProfile},
    program_deltas, Server,
};
use crate::run::probe_bin;

/// How the section runs (`cargo xtask bench --oltp.rounds N --oltp.seconds S`).
#[derive(Clone, Debug)]
pub struct Options {
    pub rounds: usize,
    pub seconds: u32,
    /// Also run a variant per hot-path collector skipped.
    pub skips: bool,
}

/// Prometheus' usual scrape interval.
const SCRAPE_EVERY: Duration = Duration::from_secs(15);
const THREADS: &str = "--threads=2";
const WORKLOADS: &[&str] = &["oltp_point_select", "oltp_read_only"];

/// Without probe, with probe, and with its statistics on (for the cost per program); with
/// `skips`, also with each hot-path collector skipped in turn (each skipped hook set is one
/// collector's per-event work), RTT on its per-event fallback, and with the opt-in run-queue
/// histograms added. On a noisy machine the TPS of the skip variants differ by less
/// than the noise; the programs' own time (from the statistics) is the sharper measure.
fn variants(skips: bool) -> Vec<Variant> {
    let mut v = vec![
        Variant::without(),
        Variant::probe("probe (defaults)", &[]),
        Variant::probe("probe --bpf.stats", &["--bpf.stats"]),
    ];
    if skips {
        v.extend([
            Variant::probe(
                "nothing at sched_switch (cpu_exit's fallback)",
                &["--hooks.skip", "tp_btf/sched_switch,raw_tp/sched_switch"],
            ),
            Variant::probe("with --runq.histograms", &["--runq.histograms"]),
            Variant::probe(
                "skip TCP bytes (tcp)",
                &["--hooks.skip", "iter/task_file/tcp,cgroup_skb"],
            ),
            Variant::probe("RTT on sock_ops (tcp_rtt's fallback)", &["--hooks.skip", "rtt_walk"]),
            Variant::probe(
                "skip block IO (block)",
                &[
                    "--hooks.skip",
                    "raw_tp/block_io_start,raw_tp/block_rq_issue,raw_tp/writeback_dirty_folio,raw_tp/writeback_dirty_page",
                ],
            ),
        ]);
    }
    v
}

pub fn section(opts: &Options) -> Result<()> {
    let seconds = opts.seconds;
    println!(
        "\n== MariaDB under sysbench ({}, 2 threads, {seconds} s each; server on CPU 0, sysbench on CPU 1; \
         {} rounds, order rotating, medians)",
        WORKLOADS.join(" and "),
        opts.rounds
    );
    // On the disk the build lives on (not a tmpfs), as a database would be.
    let base = probe_bin()
        .parent()
        .context("target dir")?
        .join("bench-mariadb");
    let db = MariaDb::start_many(&base, &["oltp"])
        .pop()
        .context("no server")?;
    pin(&["-a", "-cp", "0", &db.pid.to_string()])?;
    db.sql("CREATE DATABASE sbtest");
    let common: Vec<String> = db
        .sysbench_args("sbtest")
        .into_iter()
        .chain(["--tables=4".into(), "--table-size=25000".into()])
        .collect();
    sysbench(&common, "oltp_read_only", &["prepare"])?;
    // Warm the buffer pool and the server's caches.
    for w in WORKLOADS {
        sysbench(&common, w, &[THREADS, "--time=5", "run"])?;
    }

    let metrics: Vec<Metric> = WORKLOADS
        .iter()
        .flat_map(|w| {
            let short = w.trim_start_matches("oltp_");
            [
                Metric {
                    name: leak(format!("{short} TPS")),
                    higher_is_better: true,
                },
                Metric {
                    name: leak(format!("{short} p95 ms")),
                    higher_is_better: false,
                },
                Metric {
                    name: leak(format!("{short} CPU us/tx")),
                    higher_is_better: false,
                },
            ]
        })
        .collect();
    let variants = variants(opts.skips);
    let time = format!("--time={seconds}");
    // Per workload, the programs' costs of the latest run with statistics on.
    let mut costs: Vec<Vec<(String, f64, f64)>> = vec![Vec::new(); WORKLOADS.len()];
    // Per CPU, the samples of the latest point_select round of probe (defaults), and the
    // transactions in the sampled window.
    let mut sampled: Option<(BTreeMap<u32, CpuProfile>, f64)> = None;
    let perf_data = base.join("oltp-perf.data");
    let mut defaults_rounds = 0;
    let out = compare(opts.rounds, &variants, &metrics, |probe| {
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            if let Some(p) = probe {
                let stop = &stop;
                s.spawn(move || {
                    let mut next = Instant::now() + SCRAPE_EVERY / 2;
                    while !stop.load(Ordering::Relaxed) {
                        if Instant::now() >= next {
                            let _ = p.scrape_text();
                            next += SCRAPE_EVERY;
                        }
                        thread::sleep(Duration::from_millis(100));
                    }
                });
            }
            let result =
                (|| {
                    let mut got = Vec::new();
                    for (i, w) in WORKLOADS.iter().enumerate() {
                        let stats_before = probe.map(Server::scrape_text).transpose()?;
                        // Sampled: point_select in the last round of probe's defaults (one round
                        // of ten carries perf's own cost), the middle of the run.
                        let defaults = probe.filter(|p| p.extra.is_empty());
                        if i == 0 && defaults.is_some() {
                            defaults_rounds += 1;
                        }
                        let sample = defaults
                            .filter(|_| i == 0 && defaults_rounds == opts.rounds && seconds > 2);
                        let window = seconds.saturating_sub(2);
                        let recorder = sample.map(|_| {
                            let perf_data = &perf_data;
                            s.spawn(move || {
                                thread::sleep(Duration::from_secs(1));
                                let status = profile::record(perf_data, window)?.wait()?;
                                anyhow::ensure!(status.success(), "perf record: {status}");
                                anyhow::Ok(())
                            })
                        });
                        let busy0 = busy_cpu_ns()?;
                        let text = sysbench(
                            &common,
                            w,
                            &[
                                THREADS,
                                &time,
                                "--histogram=on",
                                "--report-interval=0",
                                "run",
                            ],
                        )?;
                        let busy = (busy_cpu_ns()? - busy0) as f64;
                        let (tps, p95) = parse_sysbench(&text)
                            .with_context(|| format!("unexpected sysbench output:\n{text}"))?;
                        let cpu_us_per_tx = busy / 1e3 / (tps * f64::from(seconds));
                        got.extend([tps, p95, cpu_us_per_tx]);
                        if let (Some(p), Some(r)) = (sample, recorder) {
                            // The samples are an addition: their failure is said, not fatal.
                            match r.join().expect("perf thread").and_then(|()| {
                                profile::report(&perf_data, &profile::threads(p.pid()))
                            }) {
                                Ok(cpus) => sampled = Some((cpus, tps * f64::from(window))),
                                Err(e) => println!("  (no perf samples: {e:#})"),
                            }
                        }
                        if let (Some(p), Some(before)) = (probe, stats_before) {
                            // Empty unless the kernel keeps statistics (--bpf.stats).
                            let c = program_deltas(&before, &p.scrape_text()?);
                            if c.iter().any(|(_, runs, _)| *runs > 0.0) {
                                costs[i] = c;
                            }
                        }
                    }
                    Ok(got)
                })();
            stop.store(true, Ordering::Relaxed);
            result
        })
    })?;
    print_table(&metrics, &out);
    println!(
        "  (goals: probe (defaults) point_select TPS >= 0.98x and p95 <= 1.03x; noise: compare \
         the rounds above, and see whether the paired interval holds 1.000x)"
    );
    if opts.skips {
        print_prices(&metrics, &out);
    }

    // The programs' own time, from the kernel's statistics (the --bpf.stats variant, latest
    // round): a direct measure, free of the throughput's noise.
    let stats = &out[2];
    for (w, workload) in WORKLOADS.iter().enumerate() {
        let transactions = stats.medians[3 * w] * f64::from(seconds);
        let cpu_ns_per_tx = stats.medians[3 * w + 2] * 1e3;
        println!(
            "\n== probe's programs per {workload} transaction (--bpf.stats, latest round; {:.1} us of CPU per transaction)",
            cpu_ns_per_tx / 1e3
        );
        println!(
            "  {:<28} {:>10} {:>10} {:>10} {:>12}",
            "program", "runs/tx", "ns/run", "ns/tx", "% of CPU/tx"
        );
        let mut total = 0.0;
        for (prog, runs, ns) in costs[w].iter().filter(|(_, r, _)| *r > 0.0) {
            total += ns;
            println!(
                "  {prog:<28} {:>10.2} {:>10.1} {:>10.1} {:>11.2}%",
                runs / transactions,
                ns / runs,
                ns / transactions,
                ns / transactions / cpu_ns_per_tx * 100.0
            );
        }
        println!(
            "  {:<28} {:>10} {:>10} {:>10.1} {:>11.2}%",
            "all",
            "",
            "",
            total / transactions,
            total / transactions / cpu_ns_per_tx * 100.0
        );
    }
    println!(
        "  (transactions from the median TPS; ns/run includes the statistics' own clock reads, which the default run has not)"
    );
    if let Some((cpus, transactions)) = &sampled {
        print_sampled(cpus, *transactions);
    }
    Ok(())
}

/// probe's share of each CPU per point_select transaction, from perf's samples.
fn print_sampled(cpus: &BTreeMap<u32, CpuProfile>, transactions: f64) {
    let us = |samples: u64| samples as f64 / f64::from(profile::FREQ) * 1e6 / transactions;
    println!(
        "\n== where probe's cost lands per {} transaction (perf samples at {} Hz in the middle of the latest round of probe (defaults); CPU 0 runs the server, whose CPU decides the TPS)",
        WORKLOADS[0],
        profile::FREQ
    );
    println!(
        "  {:<4} {:>11} {:>10} {:>10} {:>10} {:>10} {:>14}",
        "CPU", "busy us/tx", "programs", "dispatch", "helpers", "daemon", "probe (share)"
    );
    for (cpu, p) in cpus {
        let (prog, disp, help, daemon) = (
            p.get(Class::Program),
            p.get(Class::Dispatch),
            p.get(Class::Helper),
            p.get(Class::Daemon),
        );
        let all = prog + disp + help + daemon;
        println!(
            "  {cpu:<4} {:>11.2} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>7.3} ({:.2}%)",
            us(p.busy()),
            us(prog),
            us(disp),
            us(help),
            us(daemon),
            us(all),
            all as f64 / p.busy().max(1) as f64 * 100.0
        );
        let mut progs: Vec<_> = p.programs.iter().collect();
        progs.sort_by(|a, b| b.1.cmp(a.1));
        let named: Vec<String> = progs
            .iter()
            .map(|(n, s)| format!("{n} {:.3}", us(**s)))
            .collect();
        if !named.is_empty() {
            println!("       programs (us/tx): {}", named.join(", "));
        }
    }
    println!(
        "  (us of CPU per transaction; dispatch: tracepoint and cgroup code that runs the programs; helpers: \
         BPF helpers and map code they call. A lower bound: kernel code shared with everything else, such as \
         RCU read locks, is not counted, and cpu-clock samples cannot land where \
         interrupts are off, so the sched_switch program is not seen: its time is in the statistics above)"
    );
}

/// What each collector costs: the variant without it against probe with defaults.
fn print_prices(metrics: &[Metric], out: &[Outcome]) {
    let defaults = &out[1];
    println!("  price of each part, from the medians (probe defaults vs the variant without it):");
    for o in &out[3..] {
        let parts: Vec<String> = metrics
            .iter()
            .enumerate()
            .filter(|(_, m)| m.higher_is_better)
            .map(|(j, m)| {
                // Skipping a part gains what the part costs; --bpf.stats adds instead.
                let pct = (o.medians[j] / defaults.medians[j] - 1.0) * 100.0;
                format!("{} {pct:+.1}%", m.name)
            })
            .collect();
        println!("    {:<40} {}", o.name, parts.join(", "));
    }
}

/// CPU time the whole host spent busy (everything but idle and iowait in /proc/stat), in ns.
fn busy_cpu_ns() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user already).
    let busy: u64 = f
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(busy * 1_000_000_000 / hz)
}

/// A metric name for the whole run (a handful, built once).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

fn pin(args: &[&str]) -> Result<()> {
    let out = Command::new("taskset")
        .args(args)
        .output()
        .context("taskset (util-linux)")?;
    if !out.status.success() {
        bail!(
            "taskset {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// sysbench on CPU 1; its standard output.
fn sysbench(common: &[String], workload: &str, extra: &[&str]) -> Result<String> {
    let out = Command::new("taskset")
        .args(["-c", "1", "sysbench", workload])
        .args(common)
        .args(extra)
        .output()
        .context("sysbench (Debian package sysbench)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "sysbench {workload} {} failed: {text}{}",
            extra.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

/// (transactions per second, 95th percentile latency in ms) of a sysbench run. The percentile
/// comes from the latency histogram (`--histogram=on`: three decimals, buckets ~1.5% apart),
/// not from the summary line, which rounds to 0.01 ms (15% of a 0.07 ms point select).
fn parse_sysbench(text: &str) -> Option<(f64, f64)> {
    // "    transactions:                        287845 (28782.07 per sec.)"
    let tps: f64 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("transactions:"))?
        .split('(')
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // "       0.070 |**********                               1234"
    let buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| {
            let (value, rest) = l.split_once('|')?;
            Some((
                value.trim().parse().ok()?,
                rest.split_whitespace().last()?.parse().ok()?,
            ))
        })
        .collect();
    let total: u64 = buckets.iter().map(|b| b.1).sum();
    if total == 0 {
        return None;
    }
    let mut seen = 0;
    let p95 = buckets.iter().find_map(|&(value, count)| {
        seen += count;
        (seen * 100 >= total * 95).then_some(value)
    })?;
    Some((tps, p95))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tps_and_the_95th_percentile_from_the_histogram() {
        // 100 samples: 90 at 0.050 ms, 6 at 0.061, 4 at 0.250 (the 95th is in the second).
        let text = "\
Latency histogram (values are in milliseconds)
       value  ------------- distribution ------------- count
       0.050 |**************************************** 90
       0.061 |***                                      6
       0.250 |**                                       4

SQL statistics:
    queries performed:
        read:                            100
    transactions:                        100    (9.99 per sec.)
Latency (ms):
         95th percentile:                        0.06
";
        assert_eq!(parse_sysbench(text), Some((9.99, 0.061)));
        assert_eq!(parse_sysbench("transactions: 1 (1.0 per sec.)"), None);
    }
}
