//! Cost per event of every kernel program (the kernel's BPF statistics) under one fixed
//! workload that makes each of them run: context switches (pipe ping-pong), O_DIRECT and
//! buffered writes with fsync, TCP small writes and short connections over loopback. It runs
//! on this machine and, with the same binary, inside VMs of Debian's kernels
//! (`xtask program-costs` in the guest), so the old kernels' verifiers and JITs are measured too.
//!
//! The workload is written here (no perf, no iperf3): a guest runs whatever the host has, and
//! Debian's `perf` refuses to run on a kernel other than the one it was built for.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::fd::{FromRawFd as _, OwnedFd},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{dd_mb_per_s, median, program_deltas, Server};
use crate::{
    matrix,
    run::root,
    vm::{self, Vm},
};

/// (program, runs, run-time ns) during the workload.
pub type Costs = Vec<(String, f64, f64)>;

/// How long each timed part of the workload runs.
const PART: Duration = Duration::from_secs(2);

/// Rounds of the host's comparison with a baseline binary (each binary once per round).
const BASELINE_ROUNDS: usize = 5;

/// Runs the workload on the running kernel with `probe serve` attached and returns the
/// programs' costs during it.
pub fn measure_here(scratch_dir: &Path) -> Result<Costs> {
    measure_with(&crate::run::probe_bin(), scratch_dir)
}

/// [`measure_here`] with the probe binary `bin`.
fn measure_with(bin: &Path, scratch_dir: &Path) -> Result<Costs> {
    fs::create_dir_all(scratch_dir)?;
    let probe = Server::probe_binary(bin, &["--bpf.stats"])?;
    let before = probe.scrape_text()?;
    pipe_ping_pong(PART)?;
    let file = scratch_dir.join("bench-programs");
    dd_mb_per_s(&file, &["bs=4k", "count=2000", "oflag=direct"])?;
    dd_mb_per_s(&file, &["bs=1M", "count=64", "conv=fsync"])?;
    let _ = fs::remove_file(&file);
    tcp_small_writes(PART, || probe.scrape_text().map(drop))?;
    tcp_connections(200)?;
    // Let the last completions and state changes land before reading the statistics.
    thread::sleep(Duration::from_millis(300));
    let after = probe.scrape_text()?;
    let mut costs = program_deltas(&before, &after);
    costs.retain(|(_, runs, _)| *runs > 0.0);
    costs.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(costs)
}

/// The guest side: measure and write the costs as JSON.
pub fn guest_main(out: &Path) -> Result<()> {
    let costs = measure_here(&root().join("target/tmp"))?;
    let json: Vec<serde_json::Value> = costs
        .iter()
        .map(|(p, runs, ns)| serde_json::json!({"program": p, "runs": runs, "ns": ns}))
        .collect();
    fs::write(out, serde_json::to_string_pretty(&json)?)?;
    Ok(())
}

fn read_costs(path: &Path) -> Result<Costs> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Vec<serde_json::Value> = serde_json::from_str(&text)?;
    Ok(v.iter()
        .filter_map(|e| {
            Some((
                e["program"].as_str()?.to_string(),
                e["runs"].as_f64()?,
                e["ns"].as_f64()?,
            ))
        })
        .collect())
}

/// Measures on the host and in a VM per Debian kernel in `kernels` (`host` is this machine),
/// and prints ns per run side by side. With `baseline` (another build), the host measures both
/// builds in alternating rounds and prints the medians and their ratio instead.
pub fn section(kernels: &[String], baseline: Option<&Path>) -> Result<()> {
    println!(
        "\n== kernel programs: cost per event (BPF statistics), one fixed workload on each kernel"
    );
    println!(
        "   (pipe ping-pong {PART:?}, 2000 O_DIRECT 4 KiB writes, 64 MiB buffered + fsync, \
         128-byte TCP writes {PART:?}, 200 TCP connections)"
    );
    let mut columns: Vec<(String, Costs)> = Vec::new();
    for k in kernels {
        if k == "host" {
            if let Some(base) = baseline {
                compare_here(base)?;
                continue;
            }
            let release = fs::read_to_string("/proc/sys/kernel/osrelease")?;
            let costs = measure_here(&root().join("target/tmp"))?;
            columns.push((format!("{} (host)", release.trim()), costs));
            continue;
        }
        let out_dir = matrix::out_dir().join(k);
        fs::create_dir_all(&out_dir)?;
        let out = out_dir.join("programs.json");
        let _ = fs::remove_file(&out);
        let xtask = std::env::current_exe().context("xtask's own path")?;
        let vm = Vm {
            disk: Some((root().join("target/tmp"), 2048)),
            shares: vec![matrix::out_dir()],
            prefix: format!("[{k}] "),
            timeout: Duration::from_secs(15 * 60),
            ..Vm::new(k)
        };
        let cmd = [
            xtask.to_string_lossy().into_owned(),
            "program-costs".to_string(),
            "--out".to_string(),
            out.to_string_lossy().into_owned(),
        ];
        let o = vm::run(&vm, &cmd)?;
        if o.status != 0 {
            bail!("measuring in the {k} guest failed (status {})", o.status);
        }
        columns.push((format!("{k} (qemu TCG)"), read_costs(&out)?));
    }
    if !columns.is_empty() {
        print!("{}", table(&columns));
    }
    if columns.len() > 1 {
        println!(
            "   qemu's TCG emulates the CPU: its ns are not comparable with the host's (no \
             ratio); compare programs within one kernel's column"
        );
    }
    Ok(())
}

/// This build against `base` on the host: [`BASELINE_ROUNDS`] alternating rounds, the median
/// ns per run of each program, and their ratio.
fn compare_here(base: &Path) -> Result<()> {
    let scratch = root().join("target/tmp");
    let (mut mine, mut theirs) = (Vec::new(), Vec::new());
    for round in 0..BASELINE_ROUNDS {
        // Alternate which goes first, so that a trend on the machine favours neither.
        if round % 2 == 0 {
            mine.push(measure_with(&crate::run::probe_bin(), &scratch)?);
            theirs.push(measure_with(base, &scratch)?);
        } else {
            theirs.push(measure_with(base, &scratch)?);
            mine.push(measure_with(&crate::run::probe_bin(), &scratch)?);
        }
    }
    let (mine, theirs) = (medians(&mine), medians(&theirs));
    println!(
        "   this build vs {} on this machine: medians of {BASELINE_ROUNDS} alternating rounds",
        base.display()
    );
    println!(
        "  {:<30} {:>14} {:>14} {:>8}",
        "program", "this build", "baseline", "ratio"
    );
    let names: std::collections::BTreeSet<&String> = mine.keys().chain(theirs.keys()).collect();
    for p in names {
        let cell = |m: &BTreeMap<String, f64>| {
            m.get(p).map_or("-".to_string(), |ns| format!("{ns:.1} ns"))
        };
        let ratio = match (mine.get(p), theirs.get(p)) {
            (Some(a), Some(b)) if *b > 0.0 => format!("{:.3}x", a / b),
            _ => "-".to_string(),
        };
        println!(
            "  {p:<30} {:>14} {:>14} {ratio:>8}",
            cell(&mine),
            cell(&theirs)
        );
    }
    Ok(())
}

/// Per program, the median over rounds of its ns per run.
fn medians(rounds: &[Costs]) -> BTreeMap<String, f64> {
    let mut all: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for costs in rounds {
        for (p, runs, ns) in costs {
            all.entry(p.clone()).or_default().push(ns / runs);
        }
    }
    all.into_iter()
        .map(|(p, mut v)| (p, median(&mut v)))
        .collect()
}

fn table(columns: &[(String, Costs)]) -> String {
    let mut programs: BTreeMap<&str, ()> = BTreeMap::new();
    for (_, costs) in columns {
        for (p, _, _) in costs {
            programs.insert(p, ());
        }
    }
    let mut t = format!("  {:<30}", "program");
    for (head, _) in columns {
        t.push_str(&format!(" {head:>34}"));
    }
    t.push('\n');
    for p in programs.keys() {
        t.push_str(&format!("  {p:<30}"));
        for (_, costs) in columns {
            let cell = costs
                .iter()
                .find(|(q, _, _)| q == p)
                .map_or("-".to_string(), |(_, runs, ns)| {
                    format!("{:.1} ns/run ({runs:.0} runs)", ns / runs)
                });
            t.push_str(&format!(" {cell:>34}"));
        }
        t.push('\n');
    }
    t
}

/// Two threads passing one byte back and forth over two pipes: two context switches per round
/// trip when they share a CPU, wakeups either way.
fn pipe_ping_pong(d: Duration) -> Result<()> {
    let (a_read, a_write) = pipe()?;
    let (b_read, b_write) = pipe()?;
    let echo = thread::spawn(move || {
        let mut from = fs::File::from(a_read);
        let mut to = fs::File::from(b_write);
        let mut byte = [0u8; 1];
        while from.read_exact(&mut byte).is_ok() {
            if to.write_all(&byte).is_err() {
                break;
            }
        }
    });
    let mut to = fs::File::from(a_write);
    let mut from = fs::File::from(b_read);
    let t0 = Instant::now();
    let mut byte = [0u8; 1];
    while t0.elapsed() < d {
        to.write_all(&byte)?;
        from.read_exact(&mut byte)?;
    }
    drop(to);
    let _ = echo.join();
    Ok(())
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// One connection over loopback carrying 128-byte writes (no delay) for `d`, after `collect`
/// ran once the connection was up: a connection that lives across collections, as a database
/// client's does (a collection's iterator has seen it, so its bytes wait in the socket).
fn tcp_small_writes(d: Duration, collect: impl FnOnce() -> Result<()>) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sink = thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        let mut buf = [0u8; 4096];
        while s.read(&mut buf)? > 0 {}
        Ok(())
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let chunk = [0x5au8; 128];
    c.write_all(&chunk)?;
    collect()?;
    let t0 = Instant::now();
    while t0.elapsed() < d {
        c.write_all(&chunk)?;
    }
    drop(c);
    sink.join()
        .map_err(|_| anyhow::anyhow!("sink panicked"))??;
    Ok(())
}

/// `n` short connections to a listener, each exchanging a few bytes.
fn tcp_connections(n: usize) -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = thread::spawn(move || -> std::io::Result<()> {
        for _ in 0..n {
            let (mut s, _) = listener.accept()?;
            let mut buf = [0u8; 16];
            let k = s.read(&mut buf)?;
            s.write_all(&buf[..k])?;
        }
        Ok(())
    });
    for _ in 0..n {
        let mut c = TcpStream::connect(addr)?;
        c.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf)?;
    }
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server panicked"))??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_puts_kernels_side_by_side() {
        let t = table(&[
            ("6.18 (host)".into(), vec![("probe_a".into(), 10.0, 500.0)]),
            (
                "6.1 (qemu TCG)".into(),
                vec![
                    ("probe_a".into(), 4.0, 4000.0),
                    ("probe_b".into(), 2.0, 100.0),
                ],
            ),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(
            lines[1].contains("50.0 ns/run (10 runs)")
                && lines[1].contains("1000.0 ns/run (4 runs)"),
            "{t}"
        );
        assert!(
            lines[2].starts_with("  probe_b") && lines[2].contains(" -"),
            "{t}"
        );
    }
}
