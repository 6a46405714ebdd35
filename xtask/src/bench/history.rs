//! `cargo xtask bench --only history`: what recording history costs and what reading it takes.
//!
//! - Bytes per frame and per day (at the default 5 s) of the real daemon on this host, and of
//!   synthetic hosts (`probe history synth`) of 3 instances / 100 processes and 50 instances /
//!   5,000 processes, with 3 instances running queries and the others idle, and with all 50
//!   busy at every frame (the worst case for compression). Goals: <= 10 MB/day for 3
//!   instances, <= 50 MB/day for 50.
//! - CPU per frame written (encode + insert + retention, the writer thread's clock): <= 1 ms.
//! - The daemon with and without recording (`--history.disable`), alternating rounds, medians:
//!   CPU per scrape and RSS. Goal: <= 8 MiB more RSS.
//! - Query time of `probe top --begin --end` (the whole command) over a 5-minute and a 1-hour
//!   window of a 7-day store. Goals: <= 50 ms and <= 200 ms.

use std::{path::Path, process::Command, time::Instant};

use anyhow::{bail, Context as _, Result};

use super::{measure, Measured, Server};
use crate::run::probe_bin;

const DAY_FRAMES: f64 = 86_400.0 / 5.0;
const ROUNDS: usize = 3;
const QUERIES: usize = 7;

pub fn section() -> Result<()> {
    println!("\n== history: frame size, CPU per frame, daemon cost, window queries");
    let work = std::env::temp_dir().join(format!("probe-bench-history-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let result = run(&work);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn run(work: &Path) -> Result<()> {
    // The daemon with and without recording, alternating; the recording one's store is kept
    // for the real frame sizes.
    let (mut on, mut off) = (Vec::new(), Vec::new());
    let mut real_store = None;
    for round in 0..ROUNDS {
        let dir = work.join(format!("daemon-{round}"));
        let dir_s = dir.to_string_lossy().into_owned();
        let with = Server::probe_with(&["--history.dir", &dir_s])?;
        on.push(measure(&with)?);
        drop(with);
        real_store = Some(dir);
        off.push(measure(&Server::probe_with(&["--history.disable"])?)?);
    }
    let (on, off) = (Measured::median(&mut on), Measured::median(&mut off));
    println!(
        "  {:<38} {:>12} {:>14} {:>10}",
        "daemon", "ms/scrape", "CPU ms/scrape", "RSS MiB"
    );
    for (name, m) in [
        ("recording history (default)", &on),
        ("--history.disable", &off),
    ] {
        println!(
            "  {name:<38} {:>12.2} {:>14.2} {:>10.1}",
            m.wall_ms, m.cpu_ms, m.rss_mib
        );
    }
    println!(
        "  recording vs not: {:.2}x CPU per scrape, {:+.2} MiB RSS (medians of {ROUNDS} alternating rounds; goal <= 8 MiB)",
        on.cpu_ms / off.cpu_ms,
        on.rss_mib - off.rss_mib
    );
    if let Some(dir) = real_store {
        let (frames, bytes) = stored(&dir)?;
        println!(
            "  this host (real daemon, {frames} frames): {:.0} B/frame, {:.1} MB/day at 5 s",
            bytes / frames,
            bytes / frames * DAY_FRAMES / 1e6
        );
    }

    println!(
        "  {:<42} {:>10} {:>10} {:>16} {:>14}",
        "synthetic host (1 h of frames)", "B/frame", "MB/day", "CPU us/frame p50", "p99"
    );
    // All instances busy at every frame (the worst case for compression), and a database host
    // as they are: 3 instances with queries running, the others idle.
    for (instances, processes, busy, goal) in [
        (3, 100, 3, 10.0),
        (50, 5_000, 3, 50.0),
        (50, 5_000, 50, 50.0),
    ] {
        let dir = work.join(format!("synth-{instances}-{busy}"));
        let s = synth(&dir, instances, processes, busy, "1h")?;
        let per_frame = s["bytes_per_frame"].as_f64().unwrap_or(0.0);
        println!(
            "  {:<42} {:>10.0} {:>10.1} {:>16.0} {:>14.0}   (goals: <= {goal} MB/day, <= 1000 us)",
            format!("{instances} instances ({busy} busy), {processes} processes"),
            per_frame,
            per_frame * DAY_FRAMES / 1e6,
            s["cpu_us_per_frame_median"].as_f64().unwrap_or(0.0),
            s["cpu_us_per_frame_p99"].as_f64().unwrap_or(0.0),
        );
    }

    // Window queries in a 7-day store (3 instances: a 7-day store of 50 busy ones is above the
    // default --history.max-size).
    let dir = work.join("synth-7d");
    let t0 = Instant::now();
    let s = synth(&dir, 3, 100, 3, "7d")?;
    let last_s = s["last_ms"].as_f64().unwrap_or(0.0) / 1e3;
    println!(
        "  7-day store: {} frames, {:.1} MiB, written in {:.1} s",
        s["frames"],
        s["file_bytes"].as_f64().unwrap_or(0.0) / (1 << 20) as f64,
        t0.elapsed().as_secs_f64()
    );
    for (name, secs, goal) in [("5-minute", 300.0, 50.0), ("1-hour", 3_600.0, 200.0)] {
        // In the middle of the store, not at its ends.
        let end = last_s - 3.5 * 86_400.0;
        let mut times = Vec::new();
        for _ in 0..QUERIES {
            let t = Instant::now();
            let out = Command::new(probe_bin())
                .args(["top", "--format", "json", "--history"])
                .arg(&dir)
                .args(["--begin", &format!("@{:.3}", end - secs)])
                .args(["--end", &format!("@{end:.3}")])
                .output()
                .context("probe top --begin")?;
            times.push(t.elapsed().as_secs_f64() * 1e3);
            if !out.status.success() {
                bail!(
                    "probe top --begin failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        times.sort_by(f64::total_cmp);
        println!(
            "  probe top --begin/--end, {name} window of the 7-day store: {:.1} ms (median of {QUERIES}; goal <= {goal} ms)",
            times[QUERIES / 2]
        );
    }
    Ok(())
}

fn synth(
    dir: &Path,
    instances: usize,
    processes: usize,
    busy: usize,
    span: &str,
) -> Result<serde_json::Value> {
    let out = Command::new(probe_bin())
        .args(["history", "synth", "--dir"])
        .arg(dir)
        .args(["--instances", &instances.to_string()])
        .args(["--processes", &processes.to_string()])
        .args(["--busy", &busy.to_string()])
        .args(["--span", span])
        .output()
        .context("probe history synth")?;
    if !out.status.success() {
        bail!(
            "probe history synth: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Frames and the bytes of their data in a store (`probe history dump --format json` would
/// decode them; the sizes are in the database: sqlite3's CLI is not assumed, so count the
/// frames with `probe history info` and take the file size).
fn stored(dir: &Path) -> Result<(f64, f64)> {
    let out = Command::new(probe_bin())
        .args(["history", "info", "--history"])
        .arg(dir)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let frames: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("frames:"))
        .and_then(|v| v.trim().parse().ok())
        .context("probe history info: no frames line")?;
    let bytes: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("data:"))
        .and_then(|v| v.trim().split(' ').next()?.parse().ok())
        .context("probe history info: no data line")?;
    Ok((frames.max(1.0), bytes))
}
