//! Restarts without gaps: a daemon killed with SIGKILL in the middle of a CPU, block and TCP
//! load and started again carries on from its pinned maps, pinned links and saved accounts, so
//! over the whole window each instance's counters match the workloads' ground truth and never
//! go backwards.

use std::{path::PathBuf, process::Command, time::Duration};

use probe_tests::{check_close, disk_of, kernel, probe_bin, said, Daemon, Metrics, Workload};

const MIB: u64 = 1 << 20;
const CLIENTS: usize = 24;
const SEND: u64 = 2 * MIB;

fn cpu(m: &Metrics, w: &Workload) -> f64 {
    m.sum(
        "probe_cpu_seconds_total",
        &[("service_instance", &w.instance())],
    )
}

fn written(m: &Metrics, w: &Workload, disk: &str) -> f64 {
    m.sum(
        "probe_block_bytes_total",
        &[
            ("service_instance", &w.instance()),
            ("device", disk),
            ("op", "write"),
        ],
    )
}

fn received(m: &Metrics, w: &Workload) -> f64 {
    m.sum(
        "probe_tcp_bytes_total",
        &[("service_instance", &w.instance()), ("direction", "rx")],
    )
}

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// SIGKILL while short-lived children burn 10 ms of CPU each one after another, a writer
/// rewrites a file with O_DIRECT and clients send 2 MiB each to a server; restart after 8 more
/// clients and 1.5 s (more children, writes and clients in the gap); all of it goes on past the
/// restart. Afterwards: the burst's instance CPU within 1% of its
/// parent's CPU clock plus its children's rusage (children that exited before the kill and in
/// the gap included), the writer's instance within 1% of the bytes it wrote, the server's
/// received bytes exact; every counter at least what it was before the kill; the new daemon
/// says it carried on.
#[test]
fn sigkill_and_restart_lose_nothing() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("restart");
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let file = Scratch(dir.join(format!("direct-{}", std::process::id())));
    let disk = disk_of(&dir);
    let mut daemon = Daemon::start(&["--log.level", "info"]);
    // Both go on until told to stop, whatever the machine's speed (qemu's TCG included).
    let mut burst = Workload::start(&["burst", "--until-stop", "--ms", "10", "--pause-ms", "10"]);
    let mut writer = Workload::start(&[
        "write",
        "--file",
        file.0.to_str().expect("utf-8"),
        "--mb",
        "16",
        "--direct",
        "--until-stop",
    ]);
    let mut server = Workload::start(&[
        "tcp-serve",
        "--conns",
        &CLIENTS.to_string(),
        "--recv",
        &SEND.to_string(),
        "--send",
        "0",
    ]);
    let to = format!("127.0.0.1:{}", server.port);
    let client = || {
        let mut c = Workload::start(&[
            "tcp-client",
            "--to",
            &to,
            "--conns",
            "1",
            "--send",
            &SEND.to_string(),
        ]);
        c.wait_done();
    };
    let phase = |n: usize| {
        for _ in 0..n {
            client();
        }
        std::thread::sleep(Duration::from_millis(1500));
    };

    phase(CLIENTS / 3);
    std::thread::sleep(Duration::from_millis(1100)); // a collection after the last client
    let before = daemon.scrape();
    daemon.kill();
    phase(CLIENTS / 3); // while no daemon runs: only the pinned programs count
    let t0 = std::time::Instant::now();
    daemon.restart();
    println!("restarted and ready in {:.1} s", t0.elapsed().as_secs_f64());
    let after = daemon.scrape();
    // The handover left one generation of links attached: the new daemon's.
    let (dir, _) = daemon.pins().expect("pins");
    let layouts: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("pin dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(layouts.len(), 1, "{layouts:?}");
    let generations = std::fs::read_dir(layouts[0].join("links"))
        .expect("links")
        .count();
    assert_eq!(
        generations, 1,
        "the previous daemon's links are still pinned"
    );
    phase(CLIENTS - 2 * (CLIENTS / 3));

    burst.stop();
    writer.stop();
    let done = burst.wait_done();
    let wrote = writer.wait_done();
    server.wait_done();
    std::thread::sleep(Duration::from_millis(2500)); // two collections: exits folded in
    let end = daemon.scrape();
    end.assert_hook("block", kernel::best_hook("block"));
    end.assert_hook("tcp", kernel::best_hook("tcp"));
    daemon.assert_restored(&end);

    for (what, f) in [
        (
            "CPU s",
            &(|m: &Metrics| cpu(m, &burst)) as &dyn Fn(&Metrics) -> f64,
        ),
        ("block write bytes", &|m: &Metrics| {
            written(m, &writer, &disk)
        }),
        ("TCP rx bytes", &|m: &Metrics| received(m, &server)),
    ] {
        let (b, a, e) = (f(&before), f(&after), f(&end));
        println!("{what}: before the kill {b}, after the restart {a}, at the end {e}");
        assert!(b > 0.0, "{what}: nothing counted before the kill");
        assert!(b <= a && a <= e, "{what} went backwards: {b} -> {a} -> {e}");
    }
    for (what, a, e) in [
        ("burst", cpu(&after, &burst), cpu(&end, &burst)),
        (
            "writer",
            written(&after, &writer, &disk),
            written(&end, &writer, &disk),
        ),
    ] {
        assert!(
            a < e,
            "the {what} stopped before the restart: the test proves nothing"
        );
    }

    println!(
        "block events: {}\nmissed runs: {}",
        end.lines_with(&["probe_block_events_total"]),
        end.lines_with(&["probe_bpf_program_missed_runs_total"])
    );
    let (parent, children) = burst.burst_cpu_truth(&done);
    check_close(
        "burst instance CPU s",
        cpu(&end, &burst),
        parent + children,
        0.01,
    );
    let bytes = wrote.iter().find(|(k, _)| k == "bytes").expect("bytes").1;
    check_close(
        "writer's block write bytes",
        written(&end, &writer, &disk),
        bytes as f64,
        0.01,
    );
    check_close(
        "server's received TCP bytes",
        received(&end, &server),
        (CLIENTS as u64 * SEND) as f64,
        0.0,
    );
}

/// One daemon per pin directory: a second `probe serve` on the same pins is refused with a
/// clear error (it would take over the first one's programs and accounts), and `probe unpin`
/// refuses while the first runs.
#[test]
fn a_second_daemon_on_the_same_pins_is_refused() {
    let daemon = Daemon::start(&[]);
    let (dir, state) = daemon
        .pins()
        .expect("the harness gives each daemon its pins");
    // Bounded: if the lock failed, the second daemon would run (and take over the first's
    // programs) instead of exiting.
    let (ok, out) = said(Command::new("timeout").arg("60").arg(probe_bin()).args([
        "serve",
        "--web.listen-address",
        "127.0.0.1:0",
        "--bpf.pin-path",
        dir,
        "--state.file",
        state,
    ]));
    println!("second daemon: {}", out.trim());
    assert!(
        !ok && out.contains("another probe serve uses the pins"),
        "{out}"
    );
    let (ok, out) = said(Command::new(probe_bin()).args(["unpin", "--bpf.pin-path", dir]));
    assert!(!ok && out.contains("stop it first"), "{out}");
    assert_eq!(
        daemon
            .scrape()
            .value("probe_collector_up", &[("collector", "cpu")]),
        Some(1.0)
    );
}

/// Pinned maps of another layout (here: another --block.map-size, as after an upgrade that
/// changed a map) are not reused: the new daemon removes them, says so and counts from zero;
/// with the same layout, a graceful restart (SIGTERM) carries on.
#[test]
fn another_map_layout_starts_fresh_and_says_so() {
    let mut daemon = Daemon::start(&["--log.level", "info"]);
    let mut w = Workload::start(&["spin", "--secs", "0.5"]);
    w.wait_done();
    std::thread::sleep(Duration::from_millis(1500));
    let spun = |m: &Metrics| {
        m.sum(
            "probe_cpu_seconds_total",
            &[("service_instance", &w.instance())],
        )
    };
    // Ground truth: the workload's own CPU (it stays alive, idle). On a loaded machine half a
    // second of spinning can be well under half a second of CPU.
    let truth = probe_tests::process_cpu_ns(w.pid) as f64 / 1e9;
    let before = spun(&daemon.scrape());
    daemon.terminate();
    daemon.restart();
    let after = daemon.scrape();
    daemon.assert_restored(&after);
    println!(
        "spin's instance CPU: {before} s before SIGTERM, {} s after the restart",
        spun(&after)
    );
    assert!(
        before >= truth * 0.99 && spun(&after) >= before,
        "the counter did not carry on (the workload's CPU: {truth} s)"
    );
    let (other, dir, state) = successor(&mut daemon, &["--block.map-size", "4096"]);
    let log = other.log();
    assert!(
        log.contains("have another layout") && log.contains("counting from zero"),
        "the new layout was not announced:\n{log}"
    );
    assert_eq!(other.scrape().value("probe_state_restored", &[]), Some(0.0));
    drop(w);
    drop(other);
    unpin(&dir, &state);
}

/// Stops `daemon` (SIGTERM) and starts another on its pins and state file with `extra`
/// arguments; returns it with the pin directory and state file, which nobody removes: see
/// [`unpin`].
fn successor(daemon: &mut Daemon, extra: &[&str]) -> (Daemon, String, String) {
    let (dir, state) = daemon.pins().expect("pins");
    let (dir, state) = (dir.to_string(), state.to_string());
    daemon.terminate();
    let mut args = vec![
        "--log.level",
        "info",
        "--bpf.pin-path",
        &dir,
        "--state.file",
        &state,
    ];
    args.extend_from_slice(extra);
    let next = Daemon::start(&args);
    (next, dir, state)
}

/// `probe unpin` of a [`successor`]'s pins and state file, once it is dropped.
fn unpin(dir: &str, state: &str) {
    let (ok, out) = said(Command::new(probe_bin()).args([
        "unpin",
        "--bpf.pin-path",
        dir,
        "--state.file",
        state,
    ]));
    assert!(ok, "{out}");
}

/// Turning the opt-in run-queue histograms on in a restart is another map layout: the thread
/// map is created at its full size, not reused from the daemon before, which made it with one
/// entry (the histograms were off). With one entry, the threads of 200 new processes would
/// find it full and be counted as lost.
#[test]
fn turning_the_runqueue_histograms_on_in_a_restart_gets_a_full_size_map() {
    let mut daemon = Daemon::start(&["--log.level", "info"]);
    assert_eq!(
        daemon
            .scrape()
            .value("probe_collector_up", &[("collector", "runq")]),
        None,
        "the run-queue histograms are off by default"
    );
    let (on, dir, state) = successor(&mut daemon, &["--runq.histograms"]);
    let log = on.log();
    assert!(
        log.contains("have another layout"),
        "turning the histograms on kept the layout:\n{log}"
    );
    let mut w = Workload::start(&["burst", "--count", "200", "--ms", "1"]);
    w.wait_done();
    let m = on.scrape();
    assert_eq!(
        m.value("probe_collector_up", &[("collector", "runq")]),
        Some(1.0)
    );
    let lost = m.value("probe_runqueue_events_total", &[("result", "lost")]);
    let waits = m.sum("probe_runqueue_latency_seconds_count", &[]);
    println!("after the restart with --runq.histograms: {waits} waits counted, {lost:?} lost");
    assert_eq!(lost, Some(0.0), "threads found the run-queue map full");
    assert!(
        waits >= 200.0,
        "200 new processes waited at least once each: {waits}"
    );
    drop(w);
    drop(on);
    unpin(&dir, &state);
}
