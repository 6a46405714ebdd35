//! The image `cargo xtask dist --image` builds, run with podman exactly as
//! deploy/kubernetes/daemonset.yaml runs it: its arguments, only its capabilities (all others
//! dropped), host PID and network namespaces, its volumes (the host's cgroup filesystem
//! read-only, the rules ConfigMap, the host's bpffs and /run/probe for what survives a
//! restart, /var/lib/probe for history), a read-only root, no privilege escalation, and the
//! seccomp profile it names. Every collector must come up on this kernel's best hook and count
//! a busy thread's CPU time as the kernel does (schedstat), and history must be recorded.
//!
//! What podman needs on this machine and Kubernetes does not (measured): runc (crun 1.8 rejects
//! this hybrid cgroup layout) and explicit ulimits (root lacks CAP_SYS_RESOURCE here, so podman
//! cannot raise them to its defaults). Podman 4.3 has no recursive read-only mounts: for a
//! volume the DaemonSet mounts with `recursiveReadOnly`, the test mounts the host's cgroup2
//! mount itself (no submounts, so plain read-only is read-only all the way down).

use std::{path::PathBuf, process::Command};

use probe_tests::{check_close, kernel, schedstat, Daemon, Workload};
use serde_json::Value;

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).join(path)
}

/// The DaemonSet, parsed (PyYAML from the pinned venv: the tests crate has no YAML parser).
fn daemonset() -> Value {
    let py = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/py/bin/python"
    ));
    assert!(
        py.exists(),
        "{} missing: `cargo xtask test` makes it",
        py.display()
    );
    let out = Command::new(py)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(deploy("kubernetes/daemonset.yaml"))
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    docs.into_iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet in daemonset.yaml")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes the container when the test ends, whatever happens, what it pinned on the host (the
/// DaemonSet's default pins and saved state), and the history it recorded in the host's
/// /var/lib/probe unless a history was there before.
struct Container(String, bool);
impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["rm", "-f", "-t", "2", &self.0])
            .output();
        let _ = Command::new(probe_tests::probe_bin()).arg("unpin").output();
        if !self.1 {
            for f in [
                "history.db",
                "history.db-wal",
                "history.db-shm",
                "history.lock",
            ] {
                let _ = std::fs::remove_file(std::path::Path::new(HISTORY).join(f));
            }
        }
    }
}

const HISTORY: &str = "/var/lib/probe";

#[test]
fn image_runs_as_the_daemonset_does_with_every_collector_up_and_counting() {
    let ds = daemonset();
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["hostPID"], true);
    assert_eq!(pod["hostNetwork"], true);
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let caps = strings(&sc["capabilities"]["add"]).join(",");
    let seccomp = &pod["securityContext"]["seccompProfile"];
    assert_eq!(
        seccomp["type"], "Localhost",
        "the test runs the profile the DaemonSet names"
    );
    let profile =
        deploy("kubernetes/seccomp").join(seccomp["localhostProfile"].as_str().expect("profile"));
    assert!(profile.exists(), "{} missing", profile.display());

    // Volumes: hostPath ones from the host, the rules ConfigMap from its file here.
    let mut mounts = Vec::new();
    for m in c["volumeMounts"].as_array().expect("volumeMounts") {
        let name = m["name"].as_str().expect("name");
        let vol = pod["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == name))
            .unwrap_or_else(|| panic!("volume {name}"));
        let source = if let Some(p) = vol["hostPath"]["path"].as_str() {
            if vol["hostPath"]["type"] == "DirectoryOrCreate" {
                std::fs::create_dir_all(p).expect("hostPath DirectoryOrCreate");
            }
            if m["recursiveReadOnly"].is_string() {
                assert_eq!(p, "/sys/fs/cgroup", "the only recursive read-only volume");
                cgroup2_mount()
            } else {
                p.to_string()
            }
        } else if vol["configMap"].is_object() {
            let rules =
                std::env::temp_dir().join(format!("probe-container-rules-{}", std::process::id()));
            std::fs::create_dir_all(&rules).expect("dir");
            std::fs::write(rules.join("rules.toml"), configmap_rules()).expect("rules");
            rules.to_string_lossy().into_owned()
        } else {
            panic!("volume {name}: neither hostPath nor configMap");
        };
        let ro = if m["readOnly"] == true { "ro" } else { "rw" };
        mounts.push(format!(
            "{source}:{}:{ro}",
            m["mountPath"].as_str().expect("mountPath")
        ));
    }

    // The DaemonSet's arguments; the listening address is the test's (a free port, hostNetwork).
    let args = strings(&c["args"]);
    assert_eq!(args.first().map(String::as_str), Some("serve"));

    let name = format!("probe-test-{}", std::process::id());
    let _ = Command::new("podman").args(["rm", "-f", &name]).output();
    let _container = Container(
        name.clone(),
        std::path::Path::new(HISTORY).join("history.db").exists(),
    );
    let image = format!("localhost/probe:{}", env!("CARGO_PKG_VERSION"));
    let seccomp_opt = format!("seccomp={}", profile.display());
    let mut program: Vec<String> = [
        "podman",
        "run",
        "--rm",
        "--name",
        &name,
        "--runtime",
        "runc",
        "--pull=never",
        "--cap-drop=ALL",
        "--cap-add",
        &caps,
        "--pid=host",
        "--network=host",
        "--read-only",
        "--security-opt",
        "no-new-privileges",
        "--security-opt",
        &seccomp_opt,
        "--ulimit",
        "nofile=20000:20000",
        "--ulimit",
        "nproc=32768:32768",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for m in &mounts {
        program.extend(["-v".to_string(), m.clone()]);
    }
    program.push(image);
    let program: Vec<&str> = program.iter().map(String::as_str).collect();
    // Daemon::start_program adds `serve --web.listen-address` and the collection interval.
    let extra: Vec<&str> = args[1..]
        .iter()
        .map(String::as_str)
        .filter(|a| !a.starts_with("--web.listen-address"))
        .collect();
    println!("{} serve ... {}", program.join(" "), extra.join(" "));
    let daemon = Daemon::start_program(&program, &extra);

    let m = daemon.scrape();
    for collector in kernel::COLLECTORS {
        if *collector == "runq" {
            // Off unless --runq.histograms (the DaemonSet does not ask): off is not down, so
            // there is no series for ProbeCollectorDown to fire on.
            assert_eq!(
                m.value("probe_collector_up", &[("collector", collector)]),
                None
            );
            continue;
        }
        assert_eq!(
            m.value("probe_collector_up", &[("collector", collector)]),
            Some(1.0),
            "{collector} is not up in the container; its log:\n{}",
            daemon.log()
        );
        m.assert_hook(collector, kernel::best_hook(collector));
    }

    // What survives a restart went to the host: pinned maps and links on its bpffs, the
    // accounts in its /run/probe.
    let pinned = std::fs::read_dir("/sys/fs/bpf/probe")
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(
        pinned == 1 && std::path::Path::new("/run/probe/state").exists(),
        "the container pinned nothing in the host's /sys/fs/bpf/probe or saved no /run/probe/state; its log:\n{}",
        daemon.log()
    );

    // History goes to the host's disk (through the seccomp profile: SQLite's system calls).
    // (The writer is a thread of its own: its first frame may be a moment behind readiness.)
    let t0 = std::time::Instant::now();
    while daemon.scrape().value("probe_history_recording", &[]) != Some(1.0) {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "no history recorded in the container; its log:\n{}",
            daemon.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(std::path::Path::new(HISTORY).join("history.db").exists());

    // Counting: a busy thread's CPU time as the kernel accounts it.
    let mut w = Workload::start(&["spin", "--secs", "2"]);
    w.wait_done();
    let m = daemon.scrape();
    let (truth_ns, _) = schedstat(w.pid);
    let got = m.sum(
        "probe_cpu_seconds_total",
        &[("service_instance", &w.instance())],
    );
    check_close(
        "in the container, busy thread CPU s",
        got,
        truth_ns as f64 / 1e9,
        0.01,
    );
}

/// The rules.toml of the ConfigMap in deploy/kubernetes/configmap.yaml.
fn configmap_rules() -> String {
    let yaml = std::fs::read_to_string(deploy("kubernetes/configmap.yaml")).expect("configmap");
    yaml.lines()
        .skip_while(|l| l.trim() != "rules.toml: |")
        .skip(1)
        .map_while(|l| l.strip_prefix("    "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The host's cgroup2 mount point (/sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts).
fn cgroup2_mount() -> String {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next() == Some("cgroup2"))
                .then(|| pre.split_whitespace().nth(4).map(String::from))
                .flatten()
        })
        .expect("a cgroup2 mount")
}
