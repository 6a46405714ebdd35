//! Alerts that reach a person, and the dashboard proven against a real Prometheus.
//!
//! Two MariaDB instances: B runs four CPU-bound queries at once (more threads than this
//! machine's CPUs), A answers a short query every few milliseconds, so its threads wake often and
//! wait for a CPU. probe is scraped every second by a real Prometheus (Debian's) that evaluates
//! deploy/prometheus/alerts.yml and sends to a real Alertmanager (Debian's), which routes to a
//! webhook this test serves, as it would to a chat webhook. The rules are the shipped ones with
//! one change: every `for:` is cut to 5 s (promtool's unit tests in alerts_test.yml check the
//! real durations). Checked: NoisyNeighbourCPU arrives for A, naming B as the noisy instance; every panel query of deploy/grafana and every alert expression runs on that
//! Prometheus, and the panels return data; ProbeDown arrives once probe is stopped.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use probe_tests::{
    die_with_parent, free_port,
    mariadb::{MariaDb, QueryLoop},
    Daemon,
};

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";
const PROMETHEUS: &str = "/usr/bin/prometheus";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One alert in a notification: its status (firing, resolved) and labels.
type Received = (String, BTreeMap<String, String>);

/// Alert notifications as Alertmanager posts them: every alert received.
#[derive(Clone, Default)]
struct Webhook {
    port: u16,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Webhook {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind webhook");
        let hook = Self {
            port: listener.local_addr().expect("addr").port(),
            ..Self::default()
        };
        let received = hook.received.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let mut reader = BufReader::new(conn);
                let mut length = 0;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                }
                let mut body = vec![0; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let _ = reader.get_mut().write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
                let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
                    continue;
                };
                let mut got = received.lock().expect("webhook lock");
                for a in v["alerts"].as_array().into_iter().flatten() {
                    let labels = a["labels"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect();
                    got.push((a["status"].as_str().unwrap_or_default().to_string(), labels));
                }
            }
        });
        hook
    }

    /// Waits for a firing alert named `name` whose labels include `want`.
    fn wait_for(
        &self,
        name: &str,
        want: &[(&str, &str)],
        limit: Duration,
        why: impl Fn() -> String,
    ) {
        let t0 = Instant::now();
        loop {
            let got = self.received.lock().expect("webhook lock").clone();
            if let Some((_, labels)) = got.iter().find(|(status, l)| {
                status == "firing"
                    && l.get("alertname").map(String::as_str) == Some(name)
                    && want
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            }) {
                println!(
                    "webhook: {name} arrived after {:.0} s: {labels:?}",
                    t0.elapsed().as_secs_f64()
                );
                return;
            }
            assert!(
                t0.elapsed() < limit,
                "no {name} with {want:?} at the webhook within {limit:?}; it received {got:?}\n{}",
                why()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// A child process killed on drop, with its output in a log file.
struct Service {
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(bin: &str, args: &[String], log: PathBuf) -> Self {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: `cargo xtask test` installs it (Debian package)"
        );
        let out = std::fs::File::create(&log).expect("log file");
        let child = die_with_parent(&mut Command::new(bin))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log file"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin}: {e}"));
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path_and_query: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path_and_query} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.").then(|| body.to_string())
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query: (status, number of series in the result).
fn query(port: u16, expr: &str) -> (String, usize, String) {
    let body =
        http_get(port, &format!("/api/v1/query?query={}", urlencode(expr))).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let n = v["data"]["result"].as_array().map_or(0, Vec::len);
    (
        v["status"].as_str().unwrap_or("no answer").to_string(),
        n,
        body,
    )
}

/// The shipped rules with every `for:` cut to 5 s.
fn fast_rules(dir: &Path) -> PathBuf {
    let text =
        std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let fast: String = text
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for:") {
            Some(_) => format!("{}for: 5s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(fast, text.trim_end(), "no `for:` in alerts.yml?");
    let path = dir.join("alerts.yml");
    std::fs::write(&path, fast + "\n").expect("write rules");
    path
}

/// Every PromQL expression of the dashboard, with Grafana's variables filled in.
fn dashboard_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo().join("deploy/grafana/probe-overview.json"))
        .expect("dashboard");
    let v: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    for panel in v["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?").to_string();
        for t in panel["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let expr = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$host", ".+")
                    .replace("$service_instance", ".+");
                out.push((title.clone(), expr));
            }
        }
    }
    out
}

/// Every alert expression of alerts.yml.
fn alert_expressions() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(repo().join("deploy/prometheus/alerts.yml")).expect("alerts.yml");
    let mut out = Vec::new();
    let mut lines = text.lines().peekable();
    let mut name = String::new();
    while let Some(l) = lines.next() {
        let t = l.trim_start();
        if let Some(n) = t.strip_prefix("- alert:") {
            name = n.trim().to_string();
        } else if let Some(e) = t.strip_prefix("expr:") {
            let e = e.trim();
            if e == "|" {
                let indent = lines.peek().map_or(0, |n| n.len() - n.trim_start().len());
                let mut block = Vec::new();
                while let Some(n) = lines.peek() {
                    if n.trim().is_empty() || n.len() - n.trim_start().len() < indent {
                        break;
                    }
                    block.push(n.trim().to_string());
                    lines.next();
                }
                out.push((name.clone(), block.join(" ")));
            } else {
                out.push((name.clone(), e.to_string()));
            }
        }
    }
    out
}

/// Alert expressions that return nothing on a healthy host under this test's load, and why.
const QUIET_ALERTS: &[(&str, &str)] = &[
    ("ProbeCollectorDown", "every collector is up"),
    ("ProbeExitedThreadsLost", "no map is full"),
    ("ProbeBlockEventsLost", "no map is full"),
    ("ProbeTcpEventsLost", "no map is full"),
    ("ProbeRunQueueLost", "no map is full"),
    ("ProbeInstancesFolded", "two instances, far below the cap"),
    ("ProbeRuleReloadFailed", "no reload was asked for"),
    ("ProbeDown", "probe is up while the queries run"),
    ("InstanceSlowDisk", "the load is CPU only"),
    ("NoisyNeighbourDisk", "the load is CPU only"),
    ("InstanceTcpRetransmits", "loopback does not lose packets"),
    (
        "InstanceWaitingForCPU",
        "needs half a second of waiting per second for 5 minutes of rate window; may or may not fire",
    ),
    (
        "InstanceRunQueueLatencyHigh",
        "p99 above 2 ms: may or may not be reached here",
    ),
];

#[test]
fn noisy_neighbour_reaches_a_webhook_dashboard_queries_answer_and_probe_down_follows() {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR")).join("alerting");
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).expect("scratch dir");
    let dbs = MariaDb::start_many(&base, &["A", "B"]);
    let (victim, noisy) = (&dbs[0], &dbs[1]);

    let hook = Webhook::start();
    // --bpf.stats: the dashboard's "cost per event" panel reads the kernel's statistics;
    // --runq.histograms: its run-queue p99 panel and InstanceRunQueueLatencyHigh need them.
    let daemon = Daemon::start(&["--bpf.stats", "--runq.histograms"]);
    let am_port = free_port();
    let am_config = base.join("alertmanager.yml");
    std::fs::write(
        &am_config,
        format!(
            "route:\n  receiver: chat\n  group_by: [alertname, instance]\n  group_wait: 1s\n  \
             group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: chat\n    \
             webhook_configs:\n      - url: http://127.0.0.1:{}/hook\n",
            hook.port
        ),
    )
    .expect("alertmanager config");
    let am = Service::start(
        ALERTMANAGER,
        &[
            format!("--config.file={}", am_config.display()),
            format!("--storage.path={}", base.join("am-data").display()),
            format!("--web.listen-address=127.0.0.1:{am_port}"),
            "--cluster.listen-address=".to_string(),
        ],
        base.join("alertmanager.log"),
    );
    let rules = fast_rules(&base);
    let prom_port = free_port();
    let prom_config = base.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{}]\n\
             alerting:\n  alertmanagers:\n    - static_configs: [{{targets: ['127.0.0.1:{am_port}']}}]\n\
             scrape_configs:\n  - job_name: probe\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
            rules.display(),
            daemon.port
        ),
    )
    .expect("prometheus config");
    let prom = Service::start(
        PROMETHEUS,
        &[
            format!("--config.file={}", prom_config.display()),
            format!("--storage.tsdb.path={}", base.join("prom-data").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        base.join("prometheus.log"),
    );

    // The load: four CPU-bound queries on B, a short query every few ms on A.
    let mut loads: Vec<QueryLoop> = (0..4)
        .map(|_| {
            QueryLoop::start(
                noisy.session("mysql"),
                "SELECT BENCHMARK(1000000, SHA2(RAND(), 512));",
            )
        })
        .collect();
    loads.push(QueryLoop::start(
        victim.session("mysql"),
        "SELECT SLEEP(0.002);",
    ));

    let why = || {
        let mut s = String::new();
        for e in [
            "ALERTS",
            "topk by (instance) (3, sum by (instance, service_instance) (rate(probe_cpu_seconds_total{service_instance!=\"other\"}[5m])))",
            "sum by (instance, service_instance) (rate(probe_cpu_runqueue_wait_seconds_total{service_instance!=\"other\"}[5m]))",
            "histogram_quantile(0.99, sum by (instance, service_instance, le) (rate(probe_runqueue_latency_seconds_bucket{service_instance!=\"other\"}[5m])))",
        ] {
            s += &format!("{e}:\n  {}\n", query(prom_port, e).2);
        }
        format!(
            "{s}Prometheus log tail:\n{}\nAlertmanager log tail:\n{}",
            tail(&prom.log(), 20),
            tail(&am.log(), 20)
        )
    };
    hook.wait_for(
        "NoisyNeighbourCPU",
        &[
            ("service_instance", &victim.instance()),
            ("noisy", &noisy.instance()),
        ],
        Duration::from_secs(300),
        why,
    );
    for l in &mut loads {
        l.assert_running();
    }

    // The dashboard's panels and the alert expressions, on the data of this run.
    let mut empty = Vec::new();
    for (panel, expr) in dashboard_queries() {
        let (status, n, body) = query(prom_port, &expr);
        assert_eq!(status, "success", "panel {panel:?}: {expr}\n{body}");
        println!("panel {panel:?}: {n} series");
        if n == 0 {
            empty.push(format!("panel {panel:?}: {expr}"));
        }
    }
    for (alert, expr) in alert_expressions() {
        let (status, n, body) = query(prom_port, &expr);
        assert_eq!(status, "success", "alert {alert}: {expr}\n{body}");
        let quiet = QUIET_ALERTS.iter().find(|(a, _)| *a == alert);
        println!(
            "alert {alert}: {n} series{}",
            quiet.map_or(String::new(), |(_, why)| format!(" (may be empty: {why})"))
        );
        if n == 0 && quiet.is_none() {
            empty.push(format!("alert {alert}: {expr}"));
        }
    }
    assert!(
        empty.is_empty(),
        "queries that returned nothing:\n{}",
        empty.join("\n")
    );
    for l in loads {
        l.stop();
    }

    // probe stops: ProbeDown follows.
    drop(daemon);
    hook.wait_for(
        "ProbeDown",
        &[("job", "probe")],
        Duration::from_secs(60),
        || tail(&prom.log(), 20),
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
