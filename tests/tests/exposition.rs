//! What /metrics serves, checked by the real promtool, with hostile process names.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use probe_tests::{http_get, raise_open_files_limit, Daemon, Metrics, Workload};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn promtool_check(body: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask test` installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{said}\n--- exposition ---\n{body}"
    );
    said
}

/// Processes named with quotes, backslashes, newlines, escape sequences and invalid UTF-8:
/// promtool accepts the whole output, and each name reads back as its documented rendering
/// (control bytes and invalid UTF-8 as \xNN, a backslash doubled).
#[test]
fn promtool_accepts_output_with_hostile_process_names() {
    let daemon = Daemon::start(&[]);
    let names: [(&[u8], &str); 5] = [
        (b"qu\"ote", "qu\"ote"),
        (b"back\\slash", "back\\\\slash"),
        (b"new\nline", "new\\x0aline"),
        (b"bad\xff\xfeutf8", "bad\\xff\\xfeutf8"),
        (b"\x1b[31mred", "\\x1b[31mred"),
    ];
    let mut workloads: Vec<(Workload, &str)> = names
        .iter()
        .map(|(raw, shown)| {
            (
                Workload::start(&["name", "--hex", &hex(raw), "--ms", "300"]),
                *shown,
            )
        })
        .collect();
    for (w, _) in &mut workloads {
        w.wait_done();
    }
    let (status, body) = daemon.get("/metrics").expect("scrape");
    assert_eq!(status, 200);
    let said = promtool_check(&body);
    println!("promtool check metrics: ok ({} bytes) {said}", body.len());
    let m = probe_tests::Metrics::parse(&body);
    for (w, shown) in &workloads {
        let pid = w.pid.to_string();
        let instance = format!("{shown}:{}", w.port);
        let s = m.find("probe_process_cpu_seconds_total", &[("pid", &pid)]);
        assert_eq!(s.len(), 1, "pid {pid} ({shown}) not exported:\n{body}");
        assert_eq!(s[0].label("comm"), Some(*shown), "comm label of pid {pid}");
        assert_eq!(s[0].label("service_instance"), Some(instance.as_str()));
        assert!(m
            .value(
                "probe_cpu_seconds_total",
                &[("service_instance", &instance)]
            )
            .is_some_and(|v| v > 0.25));
    }
}

/// OpenMetrics for clients that ask for it; the classic format otherwise.
#[test]
fn content_negotiation() {
    let daemon = Daemon::start(&[]);
    let (_, om) = http_get(
        daemon.port,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0"),
    )
    .expect("om");
    assert!(
        om.ends_with("# EOF\n"),
        "OpenMetrics output must end with # EOF"
    );
    assert!(om.contains("# TYPE probe_cpu_seconds counter"));
    let (_, classic) = http_get(daemon.port, "/metrics", None).expect("classic");
    assert!(!classic.contains("# EOF"));
    assert!(classic.contains("# TYPE probe_cpu_seconds_total counter"));
    promtool_check(&classic);
}

/// A client that connects and hangs up mid-request, or sends garbage, does not hurt the daemon.
#[test]
fn crashed_scrape_clients_do_not_stop_the_endpoint() {
    let daemon = Daemon::start(&[]);
    for junk in [&b"GET /metr"[..], b"\x00\x01\x02 garbage\r\n\r\n", b""] {
        let mut s = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
        let _ = s.write_all(junk);
        drop(s);
    }
    // A client that reads only the first bytes of a scrape and closes.
    let mut s = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("send");
    let mut first = [0u8; 16];
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let _ = s.read(&mut first);
    drop(s);
    let (status, _) = daemon.get("/metrics").expect("scrape after bad clients");
    assert_eq!(status, 200);
    assert_eq!(daemon.get("/healthz").expect("healthz").0, 200);
    assert_eq!(daemon.get("/nope").expect("404").0, 404);
}

/// Idle connections the endpoint keeps before closing the oldest (exporter/http.rs).
const MAX_IDLE_CONNECTIONS: usize = 512;

/// Clients that connect and send half a request header (slowloris) cannot keep a scraper
/// out: past the cap the oldest of them are closed, and a scrape is answered at once (before,
/// 100 of them made a scrape wait for the 10 s header timeout).
#[test]
fn stalled_clients_cannot_keep_a_scrape_out() {
    raise_open_files_limit();
    let daemon = Daemon::start(&[]);
    let reference = {
        let t0 = Instant::now();
        daemon.scrape();
        t0.elapsed()
    };
    let stalled_n = MAX_IDLE_CONNECTIONS + 88;
    let stalled: Vec<TcpStream> = (0..stalled_n)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", daemon.port)).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                .expect("half a header");
            s
        })
        .collect();
    let t0 = Instant::now();
    let (status, body) = daemon
        .get("/metrics")
        .expect("scrape among stalled clients");
    let took = t0.elapsed();
    assert_eq!(status, 200, "{body}");
    println!("scrape with {stalled_n} stalled clients: {took:?} (alone: {reference:?})");
    assert!(
        took < Duration::from_secs(1) + reference,
        "a scrape waited {took:?} behind {stalled_n} stalled clients"
    );
    // The oldest stalled clients were closed by the daemon (EOF), the newest are still open.
    let closed = |mut s: &TcpStream| {
        s.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        match s.read(&mut [0u8; 64]) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        }
    };
    let evicted = stalled_n - MAX_IDLE_CONNECTIONS;
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut first_closed = 0;
    while Instant::now() < deadline {
        first_closed = stalled[..evicted].iter().filter(|s| closed(s)).count();
        if first_closed == evicted {
            break;
        }
    }
    let last_open = stalled[stalled_n - 100..]
        .iter()
        .filter(|s| !closed(s))
        .count();
    println!("oldest {evicted}: {first_closed} closed; newest 100: {last_open} open");
    assert_eq!(
        first_closed, evicted,
        "the oldest stalled clients were not closed"
    );
    assert_eq!(last_open, 100, "recent stalled clients were closed too");
}

/// 1,000 concurrent scrapes are all answered, with data collected after each was asked, and
/// share a few collections instead of running one each.
#[test]
fn concurrent_scrapes_share_collections() {
    raise_open_files_limit();
    // No timer collections during the test: every collection is a scrape's.
    let daemon = Daemon::start(&["--collect.interval", "10m"]);
    let collections = |m: &Metrics| {
        m.value("probe_collections_total", &[])
            .expect("probe_collections_total")
    };
    let before = collections(&daemon.scrape());
    const THREADS: usize = 50;
    const EACH: usize = 20;
    let port = daemon.port;
    let seen: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(move || {
                    // Every request sent before any response is read.
                    let mut conns: Vec<TcpStream> = (0..EACH)
                        .map(|_| {
                            let mut c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
                            c.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
                                .expect("request");
                            c
                        })
                        .collect();
                    conns
                        .iter_mut()
                        .map(|c| {
                            c.set_read_timeout(Some(Duration::from_secs(60)))
                                .expect("timeout");
                            let mut text = String::new();
                            c.read_to_string(&mut text).expect("response");
                            let (head, body) = text.split_once("\r\n\r\n").expect("HTTP");
                            assert!(head.starts_with("HTTP/1.0 200"), "{head}");
                            collections(&Metrics::parse(body))
                        })
                        .collect::<Vec<f64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("scraper thread"))
            .collect()
    });
    let after = collections(&daemon.scrape());
    let used = after - before - 1.0;
    println!(
        "{} concurrent scrapes: {used} collections (probe_collections_total {before} -> {after})",
        seen.len()
    );
    assert_eq!(seen.len(), THREADS * EACH);
    // Each answer comes from a collection that started after the request was sent.
    assert!(
        seen.iter().all(|&c| c > before && c < after),
        "a scrape was answered from a collection older than the request: {seen:?}"
    );
    // Without sharing there would be 1,000. Collections run one at a time and an answer must
    // be collected after its request arrived, so the requests that arrive during one share the
    // next: about (spread of the arrivals) / (one collection's time), ~30 here.
    assert!(
        (1.0..=100.0).contains(&used),
        "{used} collections for {} scrapes",
        seen.len()
    );
}

/// A port already in use is a clear startup error, not a daemon that serves nothing.
#[test]
fn port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let out = Command::new(probe_tests::probe_bin())
        .args(["serve", "--web.listen-address", &addr])
        .output()
        .expect("run probe");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "probe started on a taken port");
    assert!(
        stderr.contains("cannot listen on") && stderr.contains(&addr),
        "unclear error: {stderr}"
    );
}

/// `probe check --format json --runq.histograms`: every collector up, each on the best hook
/// this kernel has (a collector that fell back here, a verifier rejection say, fails), and
/// every reason one readable line. The table format says the same. Without the flag, the
/// run-queue histograms are `off`, naming it, and the rest is the same.
#[test]
fn every_collector_is_up_on_the_best_hook_of_this_kernel() {
    let check = |args: &[&str]| {
        let out = Command::new(probe_tests::probe_bin())
            .arg("check")
            .args(args)
            .output()
            .expect("run probe check");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (ok, stdout) = check(&["--format", "json"]);
    assert!(ok, "probe check failed:\n{stdout}");
    let defaults: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("probe check --format json is not JSON ({e}):\n{stdout}"));
    for c in defaults["collectors"].as_array().expect("collectors") {
        if c["name"] == "runq" {
            assert_eq!(c["state"], "off", "{c:#}");
            assert_eq!(c["reasons"][0], "--runq.histograms turns it on", "{c:#}");
        } else {
            assert_eq!(c["state"], "up", "{c:#}");
        }
    }
    let out = Command::new(probe_tests::probe_bin())
        .args(["check", "--format", "json", "--runq.histograms"])
        .output()
        .expect("run probe check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "probe check failed:\n{stdout}");
    let report: serde_json::Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("probe check --format json is not JSON ({e}):\n{stdout}"));
    assert_eq!(
        report["kernel"]["release"],
        probe_tests::kernel::release().as_str()
    );
    let collectors = report["collectors"].as_array().expect("collectors");
    let names: Vec<&str> = collectors
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, probe_tests::kernel::COLLECTORS, "collectors");
    for c in collectors {
        let name = c["name"].as_str().expect("name");
        let want = probe_tests::kernel::best_hook(name);
        println!("{name:<14} {} {} (want {want})", c["state"], c["hook"]);
        assert_eq!(c["state"], "up", "{name} is not up:\n{c:#}");
        assert_eq!(
            c["hook"], want,
            "{name} is not on its best hook here:\n{c:#}"
        );
        for r in c["reasons"].as_array().expect("reasons") {
            let r = r.as_str().expect("reason");
            assert!(!r.contains('\n') && r.len() < 400, "unreadable reason: {r}");
        }
    }
    let (_, table) = check(&["--runq.histograms"]);
    for c in collectors {
        let (name, hook) = (
            c["name"].as_str().unwrap_or(""),
            c["hook"].as_str().unwrap_or(""),
        );
        assert!(
            table
                .lines()
                .any(|l| l.split_whitespace().take(3).eq([name, "up", hook])),
            "{name} not up with {hook} in the table:\n{table}"
        );
    }
}

/// Without the task_file iterator (kernels before 5.11), listening ports come from /proc and
/// a listener is still its own instance.
#[test]
fn procfs_fallback_for_listening_ports() {
    let daemon = Daemon::start(&["--hooks.skip", "iter/task_file"]);
    let mut w = Workload::start(&["name", "--hex", &hex(b"fallback"), "--ms", "300"]);
    w.wait_done();
    std::thread::sleep(Duration::from_millis(1500)); // a timer collection after the bind
    let m = daemon.scrape();
    let hook = [("collector", "ports"), ("hook", "procfs")];
    assert_eq!(
        m.value("probe_collector_hook_info", &hook),
        Some(1.0),
        "procfs fallback not in use:\n{}",
        m.text
    );
    let instance = format!("fallback:{}", w.port);
    let cpu = m.value(
        "probe_cpu_seconds_total",
        &[("service_instance", &instance)],
    );
    assert!(
        cpu.is_some_and(|v| v > 0.25),
        "no instance {instance} (cpu {cpu:?}):\n{}",
        m.text
    );
}
