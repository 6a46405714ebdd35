//! Instance rules (config file, SIGHUP), the run-queue latency histogram, and `probe top`, against
//! the real daemon and kernel.
//!
//! Over 500 lines: one test file per concern, as for the others; each test stands alone.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use probe_tests::{check_close, probe_bin, Daemon, Workload};

fn write_rules(path: &std::path::Path, text: &str) {
    std::fs::write(path, text).expect("write rule file");
}

fn temp_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("probe-test-{}-{name}", std::process::id()))
}

/// The sum of a metric for one instance, polled until `ok` holds or 10 s pass.
fn wait_for(
    d: &Daemon,
    what: &str,
    ok: impl Fn(&probe_tests::Metrics) -> bool,
) -> probe_tests::Metrics {
    let t0 = Instant::now();
    loop {
        let m = d.scrape();
        if ok(&m) {
            return m;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{what}: not seen within 10 s; daemon log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A rule naming processes started with `--tag NAME` by `template` (`{1}` is NAME).
fn tagged_rule(template: &str) -> String {
    format!("[[rule]]\nname = \"tagged\"\ncmdline = '--tag (\\w+)'\ninstance = \"{template}\"\n")
}

fn config_check(file: &std::path::Path) -> std::process::Output {
    Command::new(probe_bin())
        .args(["config", "check"])
        .arg(file)
        .output()
        .expect("run probe config check")
}

#[test]
fn config_check_reports_every_error_with_line_and_column() {
    let bad = temp_file("bad.toml");
    write_rules(
        &bad,
        "[[rule]]\nname = \"a\"\ncmdline = '--port=(\\d+'\ninstance = \"x-{1}\"\n\n[[rule]]\nname = \"a\"\ncomm = 'x'\ninstance = \"y\"\ncolor = 1\n",
    );
    let out = config_check(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert_eq!(out.status.code(), Some(1), "a bad file fails: {err}");
    // Unknown keys stop parsing before the rules are compiled (TOML error, with position).
    assert!(
        err.contains("line 10, column 1: unknown field `color`"),
        "{err}"
    );
    write_rules(
        &bad,
        "[[rule]]\nname = \"a\"\ncmdline = '--port=(\\d+'\ninstance = \"x-{1}\"\n\n[[rule]]\nname = \"a\"\ncomm = 'x'\ninstance = \"y\"\n",
    );
    let out = config_check(&bad);
    let err = String::from_utf8_lossy(&out.stderr);
    println!("{err}");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("line 3, column 11: rule \"a\": cmdline is not a valid regular expression"),
        "{err}"
    );
    assert!(
        err.contains("line 7, column 8: duplicate rule name \"a\""),
        "{err}"
    );

    let good = temp_file("good.toml");
    let defaults = Command::new(probe_bin())
        .args(["config", "defaults"])
        .output()
        .expect("probe config defaults");
    std::fs::write(&good, &defaults.stdout).expect("write defaults");
    let out = config_check(&good);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("process rules, in order: listener, mysql"),
        "{text}"
    );
    // The daemon refuses to start with a bad file.
    let out = Command::new(probe_bin())
        .args(["serve", "--web.listen-address", "127.0.0.1:1", "--config"])
        .arg(&bad)
        .output()
        .expect("run probe serve");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("duplicate rule name"));
    let _ = std::fs::remove_file(bad);
    let _ = std::fs::remove_file(good);
}

#[test]
fn sighup_applies_good_rules_keeps_counts_and_rejects_bad_ones() {
    let rules = temp_file("rules.toml");
    write_rules(&rules, &tagged_rule("first-{1}"));
    let path = rules.to_str().expect("utf-8 path").to_string();
    let d = Daemon::start(&["--config", &path]);
    let _w = Workload::start(&["spin", "--secs", "30", "--tag", "alpha"]);
    let cpu = |m: &probe_tests::Metrics, inst: &str| {
        m.sum("probe_cpu_seconds_total", &[("service_instance", inst)])
    };
    let m = wait_for(&d, "first-alpha", |m| cpu(m, "first-alpha") > 0.3);
    assert_eq!(
        m.value(
            "probe_instance_info",
            &[("service_instance", "first-alpha"), ("rule", "tagged")]
        ),
        Some(1.0)
    );
    let before = cpu(&m, "first-alpha");

    write_rules(&rules, &tagged_rule("second-{1}"));
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    let m = wait_for(&d, "second-alpha after SIGHUP", |m| {
        cpu(m, "second-alpha") > 0.3
    });
    // The old instance keeps what it had (it expires later), the new one counts from now.
    assert!(cpu(&m, "first-alpha") >= before);
    assert_eq!(
        m.value(
            "probe_config_reloads_total",
            &[("file", "rules"), ("result", "success")]
        ),
        Some(1.0)
    );

    // A bad file is rejected; the rules in use stay.
    write_rules(
        &rules,
        "[[rule]]\nname = \"tagged\"\ncmdline = '(('\ninstance = \"third\"\n",
    );
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    let m = wait_for(&d, "failed reload", |m| {
        m.value(
            "probe_config_reloads_total",
            &[("file", "rules"), ("result", "failure")],
        ) == Some(1.0)
    });
    assert_eq!(
        m.value("probe_config_last_reload_successful", &[("file", "rules")]),
        Some(0.0)
    );
    let s1 = cpu(&m, "second-alpha");
    std::thread::sleep(Duration::from_secs(2));
    let m = d.scrape();
    assert!(
        cpu(&m, "second-alpha") > s1 + 1.0,
        "still named by the previous rules"
    );
    assert!(d.log().contains("rules not reloaded"), "{}", d.log());
    let _ = std::fs::remove_file(rules);
}

#[test]
fn instances_beyond_the_cap_are_folded_into_other() {
    let rules = temp_file("cap.toml");
    write_rules(&rules, "[instances]\nmax = 2\n");
    let path = rules.to_str().expect("utf-8 path").to_string();
    let d = Daemon::start(&["--config", &path]);
    let workloads: Vec<Workload> = (0..4)
        .map(|_| Workload::start(&["spin", "--secs", "5"]))
        .collect();
    let m = wait_for(&d, "folded instances", |m| {
        m.value("probe_instances_folded", &[])
            .is_some_and(|v| v >= 1.0)
    });
    let exported = m.find("probe_cpu_seconds_total", &[]).len();
    assert!(exported <= 3, "2 instances + other, got {exported}");
    assert!(m
        .value("probe_cpu_seconds_total", &[("service_instance", "other")])
        .is_some());
    drop(workloads);
    let _ = std::fs::remove_file(rules);
}

/// Run-queue wait of all the process's threads (their /proc/<pid>/task/*/schedstat): (ns, waits).
fn threads_run_delay(pid: u32) -> (u64, u64) {
    let mut total = (0, 0);
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let t = t.expect("task entry").path();
        let Ok(s) = std::fs::read_to_string(t.join("schedstat")) else {
            continue;
        };
        let f: Vec<u64> = s
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        total.0 += f[1];
        total.1 += f[2];
    }
    total
}

#[test]
fn run_queue_latency_histogram_matches_schedstat() {
    run_queue_latency(&[], "tp_btf/sched_switch");
}

#[test]
fn run_queue_latency_on_the_raw_tracepoint_fallback() {
    run_queue_latency(
        &["--hooks.skip", "tp_btf/sched_switch"],
        "raw_tp/sched_switch",
    );
}

/// The waits of a process whose three threads share one CPU, against the kernel's own
/// per-thread totals (the scheduler's sched_info, which the programs read at switch-out). Each
/// wait is charged when the slice after it ends, so a window edge can shift one wait per thread
/// (a few ms out of seconds): tolerance 2%.
fn run_queue_latency(daemon_args: &[&str], hook: &str) {
    let d = Daemon::start(&[&["--runq.histograms"], daemon_args].concat());
    d.scrape().assert_hook("runq", hook);
    // Three threads pinned to one CPU: each waits for the other two.
    let w = Workload::start(&[
        "spin",
        "--secs",
        "8",
        "--threads",
        "2",
        "--thread-secs",
        "8",
        "--cpu",
        "0",
    ]);
    let inst = w.instance();
    std::thread::sleep(Duration::from_secs(1));
    let hist = |m: &probe_tests::Metrics, suffix: &str| {
        m.sum(
            &format!("probe_runqueue_latency_seconds_{suffix}"),
            &[("service_instance", &inst)],
        )
    };
    // The kernel's totals read before and after each scrape bracket the moment the daemon
    // collected (on a slow guest the two can be far apart).
    let before0 = threads_run_delay(w.pid);
    let m0 = d.scrape();
    let after0 = threads_run_delay(w.pid);
    std::thread::sleep(Duration::from_secs(4));
    let before1 = threads_run_delay(w.pid);
    let m1 = d.scrape();
    let after1 = threads_run_delay(w.pid);
    let got = hist(&m1, "sum") - hist(&m0, "sum");
    let secs = |a: u64, b: u64| (a - b) as f64 / 1e9;
    let want = (secs(before1.0, after0.0), secs(after1.0, before0.0));
    assert!(
        want.0 > 2.0,
        "the threads did not compete: {want:?} s waited"
    );
    probe_tests::check_bracketed(
        "run-queue wait (s), histogram sum vs schedstat run_delay",
        got,
        want,
        0.02,
    );
    let got_n = hist(&m1, "count") - hist(&m0, "count");
    probe_tests::check_bracketed(
        "run-queue waits, histogram count vs schedstat pcount",
        got_n,
        ((before1.1 - after0.1) as f64, (after1.1 - before0.1) as f64),
        0.02,
    );
    // Every wait is in a bucket, and the buckets are cumulative.
    let inf = m1.sum(
        "probe_runqueue_latency_seconds_bucket",
        &[("service_instance", &inst), ("le", "+Inf")],
    );
    assert_eq!(inf, hist(&m1, "count"));
    // The same wait, from the kernel's per-task total, is in probe_cpu_runqueue_wait.
    let total = |m: &probe_tests::Metrics| {
        m.sum(
            "probe_cpu_runqueue_wait_seconds_total",
            &[("service_instance", &inst)],
        )
    };
    check_close(
        "run-queue wait (s), histogram vs run_delay counter",
        got,
        total(&m1) - total(&m0),
        0.02,
    );
}

fn top_json(d: &Daemon, interval: &str) -> serde_json::Value {
    let out = Command::new(probe_bin())
        .args([
            "top",
            "--once",
            "--format",
            "json",
            "--interval",
            interval,
            "--from",
        ])
        .arg(format!("http://127.0.0.1:{}", d.port))
        .output()
        .expect("run probe top");
    assert!(
        out.status.success(),
        "probe top failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn top_once_ranks_the_busy_instance_first_with_its_cpu() {
    let d = Daemon::start(&[]);
    let w = Workload::start(&["spin", "--secs", "20"]);
    let inst = w.instance();
    std::thread::sleep(Duration::from_secs(1));
    let cpu0 = probe_tests::process_cpu_ns(w.pid);
    let t0 = Instant::now();
    let v = top_json(&d, "3s");
    let truth =
        (probe_tests::process_cpu_ns(w.pid) - cpu0) as f64 / 1e9 / t0.elapsed().as_secs_f64();
    assert_eq!(v["version"], 1);
    let instances = v["instances"].as_array().expect("instances");
    let busiest = instances
        .iter()
        .max_by(|a, b| {
            a["cpu_percent"]
                .as_f64()
                .unwrap_or(0.0)
                .total_cmp(&b["cpu_percent"].as_f64().unwrap_or(0.0))
        })
        .expect("some instance");
    assert_eq!(busiest["name"], inst.as_str(), "{v:#}");
    // The window of probe top and this measurement differ by the time to start and connect.
    check_close(
        "CPU share of the spinning workload (1 = one CPU)",
        busiest["cpu_percent"].as_f64().expect("cpu") / 100.0,
        truth,
        0.05,
    );
    for key in [
        "runqueue_wait_percent",
        "disk_read_bytes_per_second",
        "disk_write_bytes_per_second",
        "tcp_rx_bytes_per_second",
        "tcp_tx_bytes_per_second",
        "noisy",
        "suffering",
    ] {
        assert!(busiest.get(key).is_some(), "no {key} in {busiest:#}");
    }

    // Not a terminal (stdout is a pipe): probe top says so and prints one table.
    let out = Command::new(probe_bin())
        .args(["top", "--interval", "1s", "--from"])
        .arg(format!("http://127.0.0.1:{}", d.port))
        .output()
        .expect("run probe top");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a terminal"));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("INSTANCE") && table.contains(&inst),
        "{table}"
    );

    // A daemon that is not there: a clear error, not a hang.
    let out = Command::new(probe_bin())
        .args(["top", "--once", "--from", "http://127.0.0.1:1"])
        .output()
        .expect("run probe top");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("is `probe serve` running there?"));
}

/// Records a run with process churn, exits, a port reused by a new process and a SIGHUP rule
/// change (`--record-readings`), then replays it (`probe replay --check`): after every reading
/// the replay must produce exactly the metrics the live daemon produced. With
/// PROBE_WRITE_READINGS_FIXTURE=PATH the recording is kept there (the unit tests replay the one
/// committed in probe-user/src/testdata/).
#[test]
fn a_recorded_run_replays_to_the_same_metrics() {
    let rules = temp_file("record-rules.toml");
    write_rules(&rules, &tagged_rule("first-{1}"));
    let recording = temp_file("readings.bin");
    let d = Daemon::start(&[
        "--config",
        rules.to_str().expect("utf-8 path"),
        "--process.top-k",
        "3",
        "--record-readings",
        recording.to_str().expect("utf-8 path"),
        "--record-readings.expositions",
    ]);
    let cpu = |m: &probe_tests::Metrics, inst: &str| {
        m.sum("probe_cpu_seconds_total", &[("service_instance", inst)])
    };
    let rx = |m: &probe_tests::Metrics, inst: &str| {
        m.sum(
            "probe_tcp_bytes_total",
            &[("service_instance", inst), ("direction", "rx")],
        )
    };
    let _spin = Workload::start(&["spin", "--secs", "20", "--tag", "alpha"]);
    let mut churn = Workload::start(&[
        "churn",
        "--procs",
        "200",
        "--rate",
        "100",
        "--rotate-every",
        "50",
    ]);
    // A server that exits, then another process serving on the same port. Each stays until
    // a collection has seen its bytes, so they are in its instance (a process that exits
    // unseen is named without its ports).
    let instance = |port: u16| format!("probe-workload:{port}");
    let mut server = Workload::start(&["tcp-serve", "--conns", "3", "--recv", "100000"]);
    let port = server.port;
    let to = format!("127.0.0.1:{port}");
    let clients = |conns: &str| {
        let mut c = Workload::start(&[
            "tcp-client",
            "--to",
            &to,
            "--conns",
            conns,
            "--send",
            "100000",
        ]);
        c.wait_done();
    };
    clients("2");
    wait_for(&d, "the first server's bytes", |m| {
        rx(m, &instance(port)) >= 200_000.0
    });
    clients("1");
    // Its last bytes too: on the cgroup_skb fallback (6.1) bytes are counted per port and go
    // to the port's owner at the collection that reads them.
    wait_for(&d, "the first server's last bytes", |m| {
        rx(m, &instance(port)) >= 300_000.0
    });
    server.wait_done();
    drop(server);
    let bind = format!("127.0.0.1:{port}");
    let mut server = Workload::start(&[
        "tcp-serve",
        "--bind",
        &bind,
        "--conns",
        "3",
        "--recv",
        "100000",
    ]);
    clients("2");
    wait_for(&d, "the second server's bytes", |m| {
        rx(m, &instance(port)) >= 500_000.0
    });
    clients("1");
    server.wait_done();
    wait_for(&d, "first-alpha", |m| cpu(m, "first-alpha") > 0.5);

    write_rules(&rules, &tagged_rule("second-{1}"));
    // SAFETY: kill(2) with the pid of our own child.
    unsafe { libc::kill(d.pid() as i32, libc::SIGHUP) };
    let m = wait_for(&d, "second-alpha after SIGHUP", |m| {
        cpu(m, "second-alpha") > 0.3
    });
    assert!(cpu(&m, "first-alpha") > 0.5, "{}", m.lines_with(&["alpha"]));
    // `done`: all 200 processes made, connected and exited (after a line per port it left).
    while !churn.line().starts_with("done") {}
    std::thread::sleep(Duration::from_secs(2));
    let mut d = d;
    d.terminate();

    let readings = probe_tests::replay_check(&recording).unwrap_or_else(|e| panic!("{e}"));
    println!("{readings} readings replayed to the same metrics");
    assert!(readings >= 8, "{readings} readings recorded");
    if let Ok(path) = std::env::var("PROBE_WRITE_READINGS_FIXTURE") {
        std::fs::copy(&recording, &path).expect("keep the recording");
    }
    let _ = std::fs::remove_file(recording);
    let _ = std::fs::remove_file(rules);
}

/// A process seen before it execs (here a shell that sleeps, then execs the workload, as
/// wrapper scripts and container entrypoints do) is named by its new command line once it has
/// exec'd: /proc is read again when its comm changes. Its CPU after the exec is the instance's,
/// against the process's own rusage.
#[test]
fn a_process_that_execs_is_named_by_its_new_command_line() {
    let rules = temp_file("exec-rules.toml");
    write_rules(&rules, &tagged_rule("exec-{1}"));
    let d = Daemon::start(&["--config", rules.to_str().expect("utf-8 path")]);
    let workload = probe_tests::workload_bin();
    // The shell's own command line has no --tag: only the exec'd one does.
    let mut child = Command::new("sh")
        .args([
            "-c",
            "sleep 2; exec \"$0\" spin --secs 3 --tag \"$1\" > /dev/null",
        ])
        .arg(&workload)
        .arg("late")
        .spawn()
        .expect("spawn sh");
    let pid = child.id() as i32;
    // The daemon collects every second: it sees the shell first.
    std::thread::sleep(Duration::from_millis(1_500));
    let seen = d.scrape();
    assert_eq!(
        seen.sum(
            "probe_cpu_seconds_total",
            &[("service_instance", "exec-late")]
        ),
        0.0,
        "named before the exec"
    );
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: wait4 on our own child's pid, writing only the two locals passed.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4");
    let _ = child.try_wait();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let truth = tv(usage.ru_utime) + tv(usage.ru_stime);
    // Exited: folded in at the next collection.
    let t0 = Instant::now();
    let got = loop {
        std::thread::sleep(Duration::from_millis(1_200));
        let m = d.scrape();
        let got = m.sum(
            "probe_cpu_seconds_total",
            &[("service_instance", "exec-late")],
        );
        if got >= truth * 0.98 || t0.elapsed() > Duration::from_secs(10) {
            break got;
        }
    };
    // The shell's few ms before the exec stay where it was counted then.
    check_close("exec'd process CPU s vs its rusage", got, truth, 0.02);
    let _ = std::fs::remove_file(rules);
}
