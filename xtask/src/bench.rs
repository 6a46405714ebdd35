//! `cargo xtask bench`: probe's cost, measured against a baseline in the same run. Every
//! section compares variants (without probe, `probe serve` with defaults, with `--bpf.stats`
//! for the programs' cost per event, ...) in alternating rounds and prints medians and ratios
//! (see `compare`).
//!
//! 0. A real MariaDB under sysbench (see `oltp`). Goal: point select TPS >= 0.98x, p95 <= 1.03x.
//!    Also where probe's cost lands on each CPU, from perf samples of one round (see `profile`).
//! 1. Scheduler overhead: `perf bench sched pipe` without and with `probe serve` running
//!    (alternating rounds, medians), as a ratio. Goal: <= 1.03x. Also with both pipe tasks on
//!    one CPU, the worst case per context switch.
//! 2. Cost per event of each kernel program, from the kernel's BPF statistics.
//! 3. Block IO throughput: `dd` with O_DIRECT 4 KiB writes (one request each: the worst case
//!    per byte) and buffered 1 MiB writes with fsync (the dirty-page hook and writeback), without
//!    and with probe, alternating rounds, medians, as a ratio; and the block programs' cost per
//!    event. Goal: >= 0.98x.
//! 4. TCP throughput over loopback: iperf3 with 128 KiB writes (bulk) and 128-byte writes (one
//!    hook run per small send: the worst case per byte), without and with probe, alternating
//!    rounds, medians, as a ratio; and the TCP programs' cost per event. Goal: >= 0.97x.
//! 5. Cost per event of every kernel program under one fixed workload, on this machine and in
//!    VMs of Debian's kernels (see `programs`).
//! 6. Scrape cost with N extra sleeping processes: wall time and CPU per scrape, and daemon RSS,
//!    side by side with Debian's prometheus-process-exporter scraped on the same host, and with
//!    `--scrape.baseline PROBE` against another probe binary (an earlier commit's build) in the
//!    same alternating rounds. Goal: probe >= 10x faster per scrape, RSS no larger.
//! 7. History: bytes and CPU per frame, the daemon's cost of recording, window queries (see
//!    `history`).
//!
//! Numbers are printed, not asserted: they depend on the machine.
//!
//! Over 500 lines: the bench sections (sched, block, TCP, scrape) share the alternating-rounds
//! driver here; the MariaDB, compare and per-program parts are modules of their own.

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::run::probe_bin;

pub mod compare;
pub mod history;
pub mod oltp;
pub mod profile;
pub mod programs;

use compare::{compare, print_costs, print_table, Metric, Outcome, Variant};

const ROUNDS: usize = 5;
const PIPE_LOOPS: &str = "60000";
/// Both pipe tasks on one CPU switch ~7x faster per loop: more loops, still shorter rounds.
const PINNED_LOOPS: &str = "100000";
/// The pipe benchmark's rounds are short and its noise (±5% here) is above the cost measured:
/// more rounds than the other sections.
const SCHED_ROUNDS: usize = 11;
const SCRAPES: usize = 20;

/// The benchmark sections, as `--only` names them.
pub const SECTIONS: &[&str] = &[
    "oltp", "sched", "block", "tcp", "programs", "scrape", "history",
];

/// Runs the sections (all, or `only`); `kernels` are where the `programs` section measures.
pub fn run(
    processes: usize,
    only: Option<&str>,
    kernels: &[String],
    oltp: &oltp::Options,
    scrape_baseline: Option<&Path>,
    programs_baseline: Option<&Path>,
) -> Result<()> {
    let want = |s: &str| only.is_none_or(|o| o == s);
    if let Some(base) = programs_baseline {
        if !want("programs") || !kernels.iter().any(|k| k == "host") {
            bail!("--programs.baseline compares on this machine: it needs the programs section and `host` in --kernels");
        }
        let same = std::fs::canonicalize(base)
            .with_context(|| format!("--programs.baseline {}", base.display()))?
            == std::fs::canonicalize(probe_bin())?;
        if same {
            bail!(
                "--programs.baseline is this build ({}): give a copy of another build",
                base.display()
            );
        }
    }
    // A run killed outright leaves its probe's pins (programs attached): not in this baseline.
    crate::run::remove_stale_test_pins();
    if want("oltp") {
        oltp::section(oltp)?;
    }
    if want("sched") {
        sched_overhead()?;
    }
    if want("block") {
        block_io()?;
    }
    if want("tcp") {
        tcp_throughput()?;
    }
    if want("programs") {
        programs::section(kernels, programs_baseline)?;
    }
    if want("scrape") {
        scrape_cost(processes, scrape_baseline)?;
    }
    if want("history") {
        history::section()?;
    }
    Ok(())
}

fn sched_overhead() -> Result<()> {
    println!(
        "\n== scheduler overhead: perf bench sched pipe -l {PIPE_LOOPS}, and -l {PINNED_LOOPS} with both \
         tasks on one CPU ({SCHED_ROUNDS} rounds each, medians)"
    );
    // What each part of the sched_switch program costs: the defaults (the exit hook, where the
    // kernel forbids trampolines, as this project's test host does), with the opt-in run-queue
    // histograms, without the program (what the defaults cost where the exit hook is
    // fentry/cgroup_release: it runs once per thread exit, and none exits here); and the
    // statistics' variants for the cost per run.
    let variants = [
        Variant::without(),
        Variant::probe("probe (defaults)", &[]),
        Variant::probe("probe --runq.histograms", &["--runq.histograms"]),
        Variant::probe(
            "probe, nothing at sched_switch",
            &["--hooks.skip", "tp_btf/sched_switch,raw_tp/sched_switch"],
        ),
        Variant::probe(
            "probe --bpf.stats --runq.histograms",
            &["--bpf.stats", "--runq.histograms"],
        ),
        Variant::probe("probe --bpf.stats", &["--bpf.stats"]),
    ];
    let metrics = [
        Metric {
            name: "seconds",
            higher_is_better: false,
        },
        Metric {
            name: "seconds, one CPU",
            higher_is_better: false,
        },
    ];
    let out = compare(SCHED_ROUNDS, &variants, &metrics, |_| {
        Ok(vec![sched_pipe(false)?, sched_pipe(true)?])
    })?;
    print_table(&metrics, &out);
    println!("  (goal: probe (defaults) <= 1.03x; `seconds, one CPU` is the steadier column)");
    println!(
        "  (the exit hook here: {}; where it is fentry/cgroup_release, the defaults cost what \
         `nothing at sched_switch` does)",
        exit_hook()
    );
    println!(
        "  (one CPU: the two tasks wake each other on one CPU, with no idle and no cross-CPU wakeup \
         in between: every switch is pure scheduler work, so the per-switch programs weigh most: \
         the worst case)"
    );
    // On one CPU each loop is two context switches; what probe adds per switch, by variant.
    let loops: f64 = PINNED_LOOPS.parse()?;
    let base = out[0].medians[1];
    let added: Vec<String> = out[1..4]
        .iter()
        .map(|o| {
            format!(
                "{}: {:.0} ns",
                o.name,
                (o.medians[1] - base) / (2.0 * loops) * 1e9
            )
        })
        .collect();
    println!(
        "  added per context switch on one CPU (medians): {}",
        added.join(", ")
    );

    println!("\n== kernel program cost during the last round, both pipe runs (BPF statistics)");
    print_costs(&out[4], |_| true);
    // Run-queue latency lives in the sched_switch program: its cost is the difference between
    // the program with and without it, per context switch.
    let per_run = |o: &Outcome| {
        o.costs
            .iter()
            .find(|(p, _, _)| p == "probe_sched_switch_btf" || p == "probe_sched_switch_raw")
            .filter(|(_, runs, _)| *runs > 0.0)
            .map(|(_, runs, ns)| ns / runs)
    };
    if let (Some(full), Some(base)) = (per_run(&out[4]), per_run(&out[5])) {
        println!(
            "  sched_switch program: {full:.1} ns per context switch with run-queue latency, {base:.1} ns without: run-queue latency costs {:.1} ns per event (goal <= 100 ns)",
            full - base
        );
    }
    // The same overhead measured directly, free of the benchmark's run-to-run noise.
    let in_kernel_ns: f64 = out[4].costs.iter().map(|(_, _, ns)| ns).sum();
    let round_s = out[4].medians.iter().sum::<f64>();
    println!(
        "  in-kernel time of probe's programs: {:.1} ms in a {round_s:.3} s round of both runs ({:.2}% of it)",
        in_kernel_ns / 1e6,
        in_kernel_ns / 1e9 / round_s * 100.0
    );

    Ok(())
}

fn scrape_cost(processes: usize, baseline: Option<&Path>) -> Result<()> {
    println!("\n== scrape cost with {processes} extra sleeping processes ({SCRAPES} scrapes each, medians)");
    let sleepers = Sleepers::spawn(processes)?;
    let config = std::env::temp_dir().join("probe-bench-process-exporter.yml");
    std::fs::write(
        &config,
        "process_names:\n  - name: \"{{.Comm}}\"\n    cmdline:\n    - '.+'\n",
    )?;
    // The default saves the accounts at every collection (restarts lose nothing); `--bpf.no-pin`
    // does not: alternating rounds, medians.
    // With `--scrape.baseline`, that binary runs in the same alternation.
    let (mut saving, mut not_saving, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..3 {
        saving.push(measure(&Server::probe()?)?);
        not_saving.push(measure(&Server::probe_with(&["--bpf.no-pin"])?)?);
        if let Some(bin) = baseline {
            base.push(measure(&Server::probe_binary(bin, &[])?)?);
        }
    }
    let mut rows = vec![("probe", Measured::median(&mut saving))];
    let no_pin = Measured::median(&mut not_saving);
    let base = (!base.is_empty()).then(|| Measured::median(&mut base));
    // What users install: the static build (musl's allocator, not glibc's).
    let shipped = crate::dist::dir().join("probe");
    let shipped = measure(&Server::probe_binary(&shipped, &[])?)?;
    let pe = |extra: &[&str]| Server::process_exporter(&config, extra);
    rows.push(("process-exporter (defaults)", measure(&pe(&[])?)?));
    rows.push((
        "process-exporter -gather-smaps=false",
        measure(&pe(&["-gather-smaps=false"])?)?,
    ));
    drop(sleepers);
    println!(
        "  {:<38} {:>12} {:>14} {:>10}",
        "exporter", "ms/scrape", "CPU ms/scrape", "RSS MiB"
    );
    for (name, m) in &rows {
        println!(
            "  {name:<38} {:>12.2} {:>14.2} {:>10.1}",
            m.wall_ms, m.cpu_ms, m.rss_mib
        );
    }
    let p = &rows[0].1;
    println!(
        "  {:<38} {:>12.2} {:>14.2} {:>10.1}",
        "probe (static, target/dist)", shipped.wall_ms, shipped.cpu_ms, shipped.rss_mib
    );
    println!(
        "  {:<38} {:>12.2} {:>14.2} {:>10.1}",
        "probe --bpf.no-pin (saves no accounts)", no_pin.wall_ms, no_pin.cpu_ms, no_pin.rss_mib
    );
    println!(
        "  saving the accounts for restarts (default) vs --bpf.no-pin: {:.2}x time per scrape, {:.2}x CPU per scrape, RSS {:.2}x (medians of 3 alternating rounds)",
        p.wall_ms / no_pin.wall_ms,
        p.cpu_ms / no_pin.cpu_ms,
        p.rss_mib / no_pin.rss_mib
    );
    println!(
        "  static (musl) vs glibc build: {:.2}x time per scrape, {:.2}x CPU per scrape, RSS {:.2}x",
        shipped.wall_ms / p.wall_ms,
        shipped.cpu_ms / p.cpu_ms,
        shipped.rss_mib / p.rss_mib
    );
    if let (Some(b), Some(bin)) = (&base, baseline) {
        println!(
            "  {:<38} {:>12.2} {:>14.2} {:>10.1}",
            "baseline (--scrape.baseline)", b.wall_ms, b.cpu_ms, b.rss_mib
        );
        println!(
            "  this build vs {}: {:.2}x time per scrape, {:.2}x CPU per scrape, RSS {:.2}x (medians of 3 alternating rounds)",
            bin.display(),
            p.wall_ms / b.wall_ms,
            p.cpu_ms / b.cpu_ms,
            p.rss_mib / b.rss_mib
        );
    }
    for (name, m) in &rows[1..] {
        println!(
            "  probe vs {name}: {:.1}x faster per scrape, {:.1}x less CPU per scrape, RSS {:.2}x",
            m.wall_ms / p.wall_ms,
            m.cpu_ms / p.cpu_ms,
            p.rss_mib / m.rss_mib
        );
    }
    println!("  (goals: >= 10x faster per scrape than process-exporter, RSS no larger)");
    Ok(())
}

/// dd workloads of the block IO benchmark: (name, dd arguments after `of=FILE`).
const DD_RUNS: &[(&str, &[&str])] = &[
    (
        "O_DIRECT 4 KiB writes",
        &["bs=4k", "count=40000", "oflag=direct"],
    ),
    (
        "buffered 1 MiB writes + fsync",
        &["bs=1M", "count=512", "conv=fsync"],
    ),
];

fn block_io() -> Result<()> {
    // On the disk the build lives on (not a tmpfs).
    let file = probe_bin()
        .parent()
        .context("target dir")?
        .join("bench-block-io");
    for (name, args) in DD_RUNS {
        println!("\n== block IO: dd {name} ({ROUNDS} rounds each, medians)");
        let costs = without_and_with(ROUNDS, "MB/s", "0.98x", || dd_mb_per_s(&file, args))?;
        for (prog, runs, ns) in costs
            .iter()
            .filter(|(p, r, _)| p.contains("block") && *r > 0.0)
        {
            println!("  {prog:<24} {runs:>10.0} runs {:>10.1} ns/run", ns / runs);
        }
    }
    let _ = std::fs::remove_file(&file);
    Ok(())
}

/// Measures a throughput (higher is better) without probe, with `probe serve` (defaults) and
/// with `probe serve --bpf.stats`, in alternating rounds; prints each round and the medians'
/// ratios against `goal`. Returns the kernel programs' cost (name, runs, ns) during the last
/// round with statistics.
fn without_and_with(
    rounds: usize,
    unit: &'static str,
    goal: &str,
    mut measure: impl FnMut() -> Result<f64>,
) -> Result<Vec<(String, f64, f64)>> {
    let variants = [
        Variant::without(),
        Variant::probe("probe (defaults)", &[]),
        Variant::probe("probe --bpf.stats", &["--bpf.stats"]),
    ];
    let metrics = [Metric {
        name: unit,
        higher_is_better: true,
    }];
    let mut out = compare(rounds, &variants, &metrics, |_| Ok(vec![measure()?]))?;
    print_table(&metrics, &out);
    println!("  (goal: probe (defaults) >= {goal})");
    Ok(std::mem::take(&mut out[2].costs))
}

/// Loopback throughput is noisy on a small VM; more rounds steady the medians.
const TCP_ROUNDS: usize = 9;

const IPERF_RUNS: &[(&str, &[&str])] = &[
    ("128 KiB writes", &["-l", "128K"]),
    ("128-byte writes", &["-l", "128"]),
];

fn tcp_throughput() -> Result<()> {
    let port = free_port()?.to_string();
    let mut server = Command::new("iperf3")
        .args(["-s", "-B", "127.0.0.1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("iperf3 (Debian package iperf3)")?;
    thread::sleep(Duration::from_millis(300));
    let result = (|| -> Result<()> {
        for (name, args) in IPERF_RUNS {
            println!(
                "\n== TCP over loopback: iperf3 {name}, 2 s ({TCP_ROUNDS} rounds each, medians)"
            );
            let costs = without_and_with(TCP_ROUNDS, "Gbit/s", "0.97x", || {
                iperf_gbit_per_s(&port, args)
            })?;
            let tcp: Vec<_> = costs
                .iter()
                .filter(|(p, r, _)| p.contains("tcp") && *r > 0.0)
                .collect();
            for (prog, runs, ns) in &tcp {
                println!("  {prog:<28} {runs:>10.0} runs {:>10.1} ns/run", ns / runs);
            }
            // The overhead measured directly, free of the run-to-run noise of throughput.
            let in_kernel_ns: f64 = tcp.iter().map(|(_, _, ns)| ns).sum();
            println!(
                "  in-kernel time of the TCP programs in the last round: {:.1} ms of the 2 s the \
                 transfer ran on its one CPU ({:.2}%)",
                in_kernel_ns / 1e6,
                in_kernel_ns / 1e9 / 2.0 * 100.0
            );
        }
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    result
}

/// Receiver throughput of one 2-second iperf3 run, from its summary line
/// ("[  5]   0.00-2.00   sec  5.91 GBytes  25.4 Gbits/sec                  receiver").
fn iperf_gbit_per_s(port: &str, args: &[&str]) -> Result<f64> {
    let out = Command::new("iperf3")
        // Client and server on CPU 0: loopback between two CPUs jumps between two throughput
        // levels on a small VM (cache placement); on one CPU it is steady, and every
        // nanosecond the programs add shows.
        .args([
            "-c",
            "127.0.0.1",
            "-p",
            port,
            "-t",
            "2",
            "-f",
            "g",
            "-A",
            "0,0",
        ])
        .args(args)
        .output()
        .context("iperf3")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "iperf3 failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = text
        .lines()
        .find(|l| l.trim_end().ends_with("receiver"))
        .with_context(|| format!("unexpected iperf3 output: {text}"))?;
    let fields: Vec<&str> = line.split_whitespace().collect();
    let i = fields
        .iter()
        .position(|f| *f == "Gbits/sec")
        .with_context(|| format!("no Gbits/sec in {line:?}"))?;
    Ok(fields[i - 1].parse()?)
}

/// Throughput of one dd run writing `file`, from dd's own summary line.
fn dd_mb_per_s(file: &Path, args: &[&str]) -> Result<f64> {
    let _ = std::fs::remove_file(file);
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args(args)
        .output()
        .context("dd")?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("dd failed: {text}");
    }
    // "67108864 bytes (67 MB, 64 MiB) copied, 0.0714467 s, 939 MB/s"
    let line = text
        .lines()
        .find(|l| l.contains(" copied, "))
        .with_context(|| format!("unexpected dd output: {text}"))?;
    let bytes: f64 = line.split_whitespace().next().unwrap_or("").parse()?;
    let secs: f64 = line
        .split(" copied, ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or("")
        .parse()?;
    Ok(bytes / secs / 1e6)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Wall seconds of one `perf bench sched pipe` run; `one_cpu`: both tasks on the last CPU.
fn sched_pipe(one_cpu: bool) -> Result<f64> {
    let mut cmd = if one_cpu {
        let mut c = Command::new("taskset");
        c.args(["-c", &last_allowed_cpu()?, "perf"]);
        c
    } else {
        Command::new("perf")
    };
    let loops = if one_cpu { PINNED_LOOPS } else { PIPE_LOOPS };
    let out = cmd
        .args(["bench", "sched", "pipe", "-l", loops])
        .output()
        .context("perf (Debian package linux-perf)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Total time:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("unexpected perf output: {text}"))
}

/// The highest CPU this process may run on (`Cpus_allowed_list` of /proc/self/status, e.g.
/// `0-1` or `0,2,5-7`).
fn last_allowed_cpu() -> Result<String> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|list| list.trim().rsplit([',', '-']).next())
        .map(str::to_string)
        .context("no Cpus_allowed_list in /proc/self/status")
}

/// (program, runs, run ns) increases between two scrapes.
fn program_deltas(before: &str, after: &str) -> Vec<(String, f64, f64)> {
    let read = |text: &str, metric: &str| -> Vec<(String, f64)> {
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(metric)?.strip_prefix("{program=\"")?;
                let (prog, value) = rest.split_once("\"} ")?;
                Some((prog.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    };
    let delta = |metric: &str, prog: &str| -> f64 {
        let find = |t: &str| {
            read(t, metric)
                .into_iter()
                .find(|(p, _)| p == prog)
                .map_or(0.0, |(_, v)| v)
        };
        find(after) - find(before)
    };
    read(after, "probe_bpf_program_runs_total")
        .into_iter()
        .map(|(prog, _)| {
            let runs = delta("probe_bpf_program_runs_total", &prog);
            let ns = delta("probe_bpf_program_run_seconds_total", &prog) * 1e9;
            (prog, runs, ns)
        })
        .collect()
}

struct Measured {
    wall_ms: f64,
    cpu_ms: f64,
    rss_mib: f64,
}

impl Measured {
    /// Each field's median over rounds.
    fn median(rounds: &mut [Measured]) -> Measured {
        let field = |f: fn(&Measured) -> f64| median(&mut rounds.iter().map(f).collect::<Vec<_>>());
        Measured {
            wall_ms: field(|m| m.wall_ms),
            cpu_ms: field(|m| m.cpu_ms),
            rss_mib: field(|m| m.rss_mib),
        }
    }
}

fn measure(server: &Server) -> Result<Measured> {
    server.scrape_text()?; // warm up (first scrape reads /proc for every process)
    let cpu0 = cpu_ns(server.pid())?;
    let mut walls = Vec::with_capacity(SCRAPES);
    for _ in 0..SCRAPES {
        let t0 = Instant::now();
        server.scrape_text()?;
        walls.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    let cpu_ms = (cpu_ns(server.pid())? - cpu0) as f64 / 1e6 / SCRAPES as f64;
    Ok(Measured {
        wall_ms: median(&mut walls),
        cpu_ms,
        rss_mib: probe_tests::rss_kib(server.pid()).context("exporter gone")? as f64 / 1024.0,
    })
}

/// utime + stime of a process, in ns (from /proc/<pid>/stat, clock ticks).
fn cpu_ns(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_comm = stat.rsplit_once(')').map(|(_, r)| r).context("bad stat")?;
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>()? + f[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Ok(ticks * 1_000_000_000 / hz.max(1))
}

/// An exporter process on a loopback port, stopped on drop (probe: SIGTERM, so its programs
/// are detached, then `probe unpin` of its own pin directory: nothing of it stays attached to
/// measure the next round's baseline).
struct Server {
    child: Child,
    port: u16,
    /// probe's binary, pin directory and state file.
    pins: Option<(PathBuf, String, String)>,
    /// A history directory of its own (removed on drop), unless the caller chose one.
    history: Option<PathBuf>,
    /// The flags added to the defaults (probe).
    extra: Vec<String>,
}

impl Server {
    fn probe() -> Result<Self> {
        Self::probe_with(&[])
    }

    fn probe_with(extra: &[&str]) -> Result<Self> {
        Self::probe_binary(&probe_bin(), extra)
    }

    fn probe_binary(bin: &Path, extra: &[&str]) -> Result<Self> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let pin_dir = format!("/sys/fs/bpf/probe-bench-{}-{port}", std::process::id());
        let state = std::env::temp_dir()
            .join(format!("probe-bench-{port}.state"))
            .to_string_lossy()
            .into_owned();
        // Recording history as users run it, into a directory of its own (not the host's
        // /var/lib/probe), if this probe records at all (a --scrape.baseline may be older).
        let history = (!extra.iter().any(|a| a.starts_with("--history.")) && records_history(bin))
            .then(|| std::env::temp_dir().join(format!("probe-bench-history-{port}")));
        let mut history_args = Vec::new();
        if let Some(h) = &history {
            let _ = std::fs::remove_dir_all(h);
            history_args.push("--history.dir".to_string());
            history_args.push(h.to_string_lossy().into_owned());
        }
        let child = Command::new(bin)
            .args(["serve", "--web.listen-address", &addr])
            .args(["--bpf.pin-path", &pin_dir, "--state.file", &state])
            .args(&history_args)
            .args(extra)
            .env("PROBE_LOG", "error")
            .stdin(Stdio::null())
            .spawn()
            .context("start probe serve")?;
        Self {
            child,
            port,
            pins: Some((bin.to_path_buf(), pin_dir, state)),
            history,
            extra: extra.iter().map(ToString::to_string).collect(),
        }
        .ready()
    }

    fn process_exporter(config: &Path, extra: &[&str]) -> Result<Self> {
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let config = config.to_string_lossy();
        let mut args = vec!["-web.listen-address", &addr, "-config.path", &config];
        args.extend_from_slice(extra);
        let child = Command::new("prometheus-process-exporter")
            .args(&args)
            .stdout(Stdio::null())
            .stdin(Stdio::null())
            .spawn()
            .context("start prometheus-process-exporter (Debian package)")?;
        Self {
            child,
            port,
            pins: None,
            history: None,
            extra: Vec::new(),
        }
        .ready()
    }

    fn ready(mut self) -> Result<Self> {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(30) {
            if let Some(status) = self.child.try_wait()? {
                bail!("exporter exited before serving ({status})");
            }
            if self.scrape_text().is_ok() {
                return Ok(self);
            }
            thread::sleep(Duration::from_millis(100));
        }
        bail!("exporter on port {} did not answer within 30 s", self.port)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn scrape_text(&self) -> Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(s, "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        if !body.starts_with("HTTP/1.0 200") && !body.starts_with("HTTP/1.1 200") {
            bail!("scrape failed: {}", body.lines().next().unwrap_or_default());
        }
        Ok(body)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
        // After the daemon is gone (it would create the directory again).
        if let Some(h) = &self.history {
            let _ = std::fs::remove_dir_all(h);
        }
    }
}

impl Server {
    fn stop(&mut self) {
        if let Some((bin, dir, state)) = &self.pins {
            // SAFETY: kill(2) with our own child's pid.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = Command::new(bin)
                .args(["unpin", "--bpf.pin-path", dir, "--state.file", state])
                .output();
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether this probe binary has `serve --history.dir`.
fn records_history(bin: &Path) -> bool {
    Command::new(bin)
        .args(["serve", "--help"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--history.dir"))
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// N idle `sleep` processes, killed on drop.
struct Sleepers(Vec<Child>);

impl Sleepers {
    fn spawn(n: usize) -> Result<Self> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(
                Command::new("sleep")
                    .arg("3600")
                    .stdin(Stdio::null())
                    .spawn()
                    .context("spawn sleep")?,
            );
        }
        thread::sleep(Duration::from_millis(500));
        Ok(Self(v))
    }
}

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

/// The hook `probe check` puts the exit hook (`cpu_exit`) on here, or why it cannot say.
fn exit_hook() -> String {
    let out = match Command::new(probe_bin())
        .args(["check", "--format", "json"])
        .env("PROBE_LOG", "error")
        .output()
    {
        Ok(out) => out,
        Err(e) => return format!("unknown (probe check: {e})"),
    };
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    report["collectors"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == "cpu_exit"))
        .and_then(|c| c["hook"].as_str())
        .unwrap_or("unknown (not in probe check's report)")
        .to_string()
}
