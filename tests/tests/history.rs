//! History on the host (`--history.dir`), end to end with a real daemon: what `probe top
//! --begin --end` reads back after a `kill -9` and a restart must match the workload's CPU
//! clock, readers run while the daemon writes, and a full disk stops recording, not serving.
//! Run as root by `cargo xtask test`.

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use probe_tests::{process_cpu_ns, said, top::from_history, Daemon, Workload};

const CPU_TOLERANCE: f64 = 0.02;

fn unix_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

/// A scrape (so a frame is written) bracketed by the workload's CPU clock and wall time.
struct Mark {
    cpu: (f64, f64),
    wall: (f64, f64),
}

fn mark(daemon: &Daemon, pid: u32) -> Mark {
    let cpu0 = process_cpu_ns(pid) as f64 / 1e9;
    let wall0 = unix_secs();
    daemon.scrape();
    let wall1 = unix_secs();
    Mark {
        cpu: (cpu0, process_cpu_ns(pid) as f64 / 1e9),
        wall: (wall0, wall1),
    }
}

/// CPU seconds of `instance` in a history view (its rate times the frames' span).
fn cpu_secs(report: &probe_tests::top::TopReport, instance: &str) -> f64 {
    let interval = report.json["interval_seconds"].as_f64().unwrap_or(0.0);
    report
        .ranking(&["cpu_percent"], &[instance.to_string()])
        .expect("ranking")
        .first()
        .map_or(0.0, |r| r.1 / 100.0 * interval)
}

fn metric(daemon: &Daemon, name: &str) -> f64 {
    daemon
        .scrape()
        .value(name, &[])
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn history_survives_kill_9_and_matches_the_cpu_clock_across_it() {
    let mut daemon = Daemon::start(&[]);
    let dir = daemon.history_dir().expect("history dir").to_owned();
    let spin = Workload::start(&["spin", "--secs", "60"]);
    let instance = spin.instance();
    std::thread::sleep(Duration::from_secs(3));
    let begin = mark(&daemon, spin.pid);

    // Two readers while the daemon writes.
    std::thread::sleep(Duration::from_secs(2));
    let now = unix_secs();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || from_history(&dir, begin.wall.0, now))
        })
        .collect();
    for r in readers {
        let report = r
            .join()
            .expect("reader thread")
            .expect("read while writing");
        assert!(
            cpu_secs(&report, &instance) > 0.5,
            "{instance} missing from {}",
            report.json
        );
    }

    // Every frame counted as written before the kill is in the store after it.
    let written = metric(&daemon, "probe_history_frames_written_total");
    daemon.kill();
    let killed = unix_secs();
    std::thread::sleep(Duration::from_secs(2));
    let report = from_history(&dir, 1.0, killed).expect("history after kill -9");
    let frames = report.json["history"]["frames"].as_f64().unwrap_or(0.0);
    println!("frames written before kill -9: {written}; in the store: {frames}");
    assert!(
        frames >= written,
        "{frames} frames kept of {written} written"
    );

    // The restarted daemon carries on (pinned maps, saved accounts): over the whole window,
    // history has all the CPU the workload's clock counted, the gap included.
    daemon.restart();
    std::thread::sleep(Duration::from_secs(3));
    let end = mark(&daemon, spin.pid);
    // The writer is a thread of its own: wait until the mark's frame is in the store (frames
    // are written in order, so one offered after it being written is enough).
    let written = metric(&daemon, "probe_history_frames_written_total");
    wait_for("the mark's frame", Duration::from_secs(10), || {
        metric(&daemon, "probe_history_frames_written_total") > written
    });
    let report = from_history(&dir, begin.wall.0, end.wall.1).expect("history across restart");
    let got = cpu_secs(&report, &instance);
    let (lo, hi) = (end.cpu.0 - begin.cpu.1, end.cpu.1 - begin.cpu.0);
    println!(
        "{instance}: {got:.4} CPU s in history over {} frames, its CPU clock {lo:.4}..{hi:.4} s",
        report.json["history"]["frames"]
    );
    assert!(
        got >= lo * (1.0 - CPU_TOLERANCE) && got <= hi * (1.0 + CPU_TOLERANCE),
        "{instance}: {got} CPU s in history, its clock {lo}..{hi} (tolerance {CPU_TOLERANCE})"
    );
    // The same window over HTTP from the running daemon (`probe top --from URL --begin`).
    let remote = probe_tests::top::from_daemon_history(daemon.port, begin.wall.0, end.wall.1)
        .expect("history over HTTP");
    let over_http = cpu_secs(&remote, &instance);
    assert!(
        (over_http - got).abs() <= got * 1e-9,
        "the daemon's /api/v1/history ({over_http}) and the store read directly ({got}) differ"
    );
    drop(spin);
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(name: &str, size: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mount point");
        let (ok, out) = said(Command::new("mount").args([
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size}"),
            "tmpfs",
            dir.to_str().expect("utf-8"),
        ]));
        assert!(ok, "mount tmpfs: {out}");
        Self(dir)
    }

    /// Fills the file system to the last byte.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let block = vec![0u8; 4096];
        while f.write_all(&block).is_ok() {}
        while f.write_all(&block[..1]).is_ok() {}
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = said(Command::new("umount").arg(&self.0));
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn wait_for(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_full_disk_stops_recording_not_serving_and_recording_resumes() {
    let fs = Tmpfs::mount("probe-history-full", "16m");
    let filler = fs.fill();
    let dir = fs.0.join("history");
    let daemon = Daemon::start(&["--history.dir", dir.to_str().expect("utf-8")]);
    // (The writer is a thread of its own: the first frame may be a moment behind readiness.)
    wait_for("a write error", Duration::from_secs(10), || {
        metric(&daemon, "probe_history_write_errors_total") >= 1.0
    });
    let m = daemon.scrape();
    assert_eq!(
        m.value("probe_history_recording", &[]),
        Some(0.0),
        "{}",
        m.lines_with(&["probe_history"])
    );
    assert!(
        !m.find("probe_cpu_seconds_total", &[]).is_empty(),
        "serving goes on with the accounts"
    );
    let log = daemon.log();
    assert!(
        log.contains("history: recording stopped, serving goes on"),
        "the log says why: {log}"
    );

    // Room again: recording resumes within the retry period, and what it writes reads back.
    std::fs::remove_file(&filler).expect("remove filler");
    let t_free = unix_secs();
    wait_for("recording again", Duration::from_secs(30), || {
        daemon.scrape().value("probe_history_recording", &[]) == Some(1.0)
    });
    wait_for("three frames", Duration::from_secs(30), || {
        metric(&daemon, "probe_history_frames_written_total") >= 3.0
    });
    let report = from_history(&dir, t_free, unix_secs()).expect("history after the disk had room");
    assert!(report.json["history"]["frames"].as_f64().unwrap_or(0.0) >= 2.0);
    drop(daemon);
}

/// `probe history dump --format openmetrics` backfilled with the real promtool: the blocks it
/// creates hold the instance's CPU counter, equal to the workload's CPU clock.
#[test]
fn a_dump_backfills_into_prometheus_blocks_with_promtool() {
    let mut daemon = Daemon::start(&[]);
    let dir = daemon.history_dir().expect("history dir").to_owned();
    let mut spin = Workload::start(&["spin", "--secs", "2"]);
    let instance = spin.instance();
    spin.wait_done();
    let truth = process_cpu_ns(spin.pid) as f64 / 1e9;
    // Frames after the spin, the last one from this scrape.
    std::thread::sleep(Duration::from_secs(2));
    let written = metric(&daemon, "probe_history_frames_written_total");
    wait_for("the scrape's frame", Duration::from_secs(10), || {
        metric(&daemon, "probe_history_frames_written_total") > written
    });
    daemon.terminate();

    let work = std::env::temp_dir().join(format!("probe-backfill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("work dir");
    let out = Command::new(probe_tests::probe_bin())
        .args(["history", "dump", "--format", "openmetrics", "--history"])
        .arg(&dir)
        .output()
        .expect("probe history dump");
    assert!(
        out.status.success(),
        "probe history dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let file = work.join("dump.om");
    std::fs::write(&file, &out.stdout).expect("write dump");
    let blocks = work.join("blocks");
    let (ok, said_) = said(
        Command::new("promtool")
            .args(["tsdb", "create-blocks-from", "openmetrics"])
            .arg(&file)
            .arg(&blocks),
    );
    assert!(ok, "promtool tsdb create-blocks-from openmetrics: {said_}");
    // promtool 2.42's dump reads a WAL too; backfilled blocks have none.
    std::fs::create_dir_all(blocks.join("wal")).expect("wal dir");
    let dump = Command::new("promtool")
        .args(["tsdb", "dump", "--match", "probe_cpu_seconds_total"])
        .arg(&blocks)
        .output()
        .expect("promtool tsdb dump");
    let text =
        String::from_utf8_lossy(&dump.stdout).into_owned() + &String::from_utf8_lossy(&dump.stderr);
    let want = format!("service_instance=\"{instance}\"");
    let values: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("__name__=\"probe_cpu_seconds_total\"") && l.contains(&want))
        .filter_map(|l| l.split_whitespace().rev().nth(1)?.parse().ok())
        .collect();
    let got = values.iter().copied().fold(0.0, f64::max);
    println!(
        "{instance}: {} points in the backfilled blocks, last CPU {got:.4} s, its CPU clock {truth:.4} s",
        values.len()
    );
    assert!(values.len() >= 2, "too few points:\n{text}");
    probe_tests::check_close("backfilled CPU s", got, truth, 0.01);
    let _ = std::fs::remove_dir_all(&work);
}
