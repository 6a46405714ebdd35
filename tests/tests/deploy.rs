//! What deploy/ ships is checked against the real thing: the capability sets in the systemd unit
//! and the DaemonSet are enough for every collector, the alert rules pass promtool (syntax and
//! unit tests), and the dashboard and rules only use metrics the daemon exports.

use std::{path::PathBuf, process::Command};

use probe_tests::{probe_bin, said, Daemon};

fn deploy(path: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// Runs `probe check` with only `caps` (e.g. ["bpf", "perfmon"]) in the bounding set, with
/// every collector turned on (the run-queue histograms too).
fn check_with_caps(caps: &[String], extra: &[&str]) -> (bool, String) {
    let bounding: String = std::iter::once("-all".to_string())
        .chain(caps.iter().map(|c| format!("+{c}")))
        .collect::<Vec<_>>()
        .join(",");
    let out = Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--ambient-caps=-all",
            &format!("--bounding-set={bounding}"),
            "--",
        ])
        .arg(probe_bin())
        .args(["check", "--runq.histograms"])
        .args(extra)
        .output()
        .expect("setpriv (util-linux)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn all_kernel_collectors_up(report: &str) -> bool {
    probe_tests::kernel::COLLECTORS
        .iter()
        .filter(|c| **c != "process_table")
        .all(|c| {
            report.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 3 && f[0] == *c && f[1] == "up" && f[2] != "procfs"
            })
        })
}

#[test]
fn daemonset_capabilities_suffice() {
    let yaml = read("kubernetes/daemonset.yaml");
    let add = yaml
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: ["))
        .and_then(|l| l.strip_suffix(']'))
        .expect("capabilities.add in the DaemonSet");
    let caps: Vec<String> = add.split(',').map(|c| c.trim().to_lowercase()).collect();
    assert!(
        !yaml.lines().any(|l| l.trim() == "privileged: true"),
        "the DaemonSet must not be privileged"
    );
    let (ok, report) = check_with_caps(&caps, &[]);
    println!("DaemonSet capabilities {caps:?}:\n{report}");
    assert!(
        ok && all_kernel_collectors_up(&report),
        "not enough with {caps:?}:\n{report}"
    );

    // The control: without them, nothing kernel-side runs and check says so.
    let (ok, report) = check_with_caps(&[], &[]);
    assert!(
        !ok && !all_kernel_collectors_up(&report),
        "probe check passed without capabilities:\n{report}"
    );
    assert!(
        report.contains("eBPF needs root"),
        "no hint about privileges:\n{report}"
    );
}

#[test]
fn systemd_unit_capabilities_suffice() {
    let unit = read("systemd/probe.service");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet in the unit")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    // SYS_ADMIN in the unit is for `--bpf.stats` (and mounts): check that it is enough.
    let (ok, report) = check_with_caps(&caps, &["--bpf.stats"]);
    println!("systemd unit capabilities {caps:?}:\n{report}");
    assert!(
        ok && all_kernel_collectors_up(&report),
        "not enough with {caps:?}:\n{report}"
    );
    assert!(
        !report.contains("statistics unavailable"),
        "the unit grants SYS_ADMIN for BPF statistics:\n{report}"
    );
    // The control: without SYS_ADMIN, check says statistics cannot be turned on.
    let fewer: Vec<String> = caps.iter().filter(|c| *c != "sys_admin").cloned().collect();
    let (_, report) = check_with_caps(&fewer, &["--bpf.stats"]);
    assert!(
        report.contains("statistics unavailable"),
        "check did not say that statistics need SYS_ADMIN:\n{report}"
    );
}

#[test]
fn alert_rules_pass_promtool() {
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
    ] {
        let (ok, said) = said(
            Command::new("promtool")
                .args(&args)
                .current_dir(deploy("prometheus")),
        );
        println!("promtool {}: {said}", args.join(" "));
        assert!(ok, "promtool {} failed:\n{said}", args.join(" "));
    }
}

/// Every `probe_*` metric the dashboard and the rules mention is one the daemon exports.
#[test]
fn dashboard_and_rules_use_exported_metrics() {
    let daemon = Daemon::start(&[]);
    let exported = daemon.scrape();
    for file in ["grafana/probe-overview.json", "prometheus/alerts.yml"] {
        let text = read(file);
        let mut names: Vec<&str> = text
            .match_indices("probe_")
            .map(|(i, _)| {
                let rest = &text[i..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .filter(|n| !n.starts_with("probe_collector_up_") && n.len() > "probe_".len())
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(!names.is_empty(), "{file} mentions no probe metric");
        for name in names {
            // A histogram's series exist only once something was observed; its TYPE always.
            let histogram = ["_sum", "_count", "_bucket"].iter().any(|suffix| {
                name.strip_suffix(suffix)
                    .is_some_and(|base| exported.text.contains(&format!("# TYPE {base} histogram")))
            });
            assert!(
                histogram
                    || exported.samples.iter().any(|s| s.name == name)
                    || exported.text.contains(&format!("# TYPE {name} ")),
                "{file} uses {name}, which the daemon does not export"
            );
        }
    }
}

/// The rule file the DaemonSet ships in its ConfigMap is one `probe config check` accepts.
#[test]
fn daemonset_rules_are_valid() {
    let yaml = read("kubernetes/configmap.yaml");
    let mut lines = yaml
        .lines()
        .skip_while(|l| l.trim() != "rules.toml: |")
        .skip(1);
    let mut rules = String::new();
    for l in lines.by_ref() {
        let Some(body) = l.strip_prefix("    ") else {
            break;
        };
        rules.push_str(body);
        rules.push('\n');
    }
    assert!(
        rules.contains("[instances]"),
        "no rules.toml in the ConfigMap:\n{yaml}"
    );
    let path = std::env::temp_dir().join(format!("probe-deploy-rules-{}.toml", std::process::id()));
    std::fs::write(&path, &rules).expect("write rules");
    let out = std::process::Command::new(probe_tests::probe_bin())
        .args(["config", "check"])
        .arg(&path)
        .output()
        .expect("probe config check");
    let _ = std::fs::remove_file(&path);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // And the DaemonSet passes that file to the daemon.
    assert!(read("kubernetes/daemonset.yaml").contains("--config=/etc/probe/rules.toml"));
}

/// Python tools pinned from PyPI (kubernetes-validate, hadolint), in the venv `cargo xtask test`
/// makes (target/py).
fn py_tool(name: &str) -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/py/bin")).join(name);
    assert!(
        p.exists(),
        "{} missing: `cargo xtask test` installs it",
        p.display()
    );
    p
}

/// Kubernetes versions the manifests are validated against: the oldest with recursive
/// read-only mounts (the DaemonSet's cgroup volume) and the newest kubernetes-validate knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

/// deploy/kubernetes renders as a kustomization (kubectl is not here: tests/scripts/
/// kustomize_render.py applies what the base uses and checks that the resources exist, parse and
/// select each other), and every rendered resource passes kubernetes-validate --strict against
/// the Kubernetes schema, offline. The PodMonitor is a CRD the schema does not have: the script
/// checks its selector and port instead.
#[test]
fn kubernetes_manifests_render_and_validate() {
    let tag = format!("newTag: \"{}\"", env!("CARGO_PKG_VERSION"));
    assert!(
        read("kubernetes/kustomization.yaml").contains(&tag),
        "kustomization.yaml's image tag is not this version ({tag})"
    );
    let rendered = std::env::temp_dir().join(format!("probe-k8s-{}.yaml", std::process::id()));
    let (ok, out) = said(
        Command::new(py_tool("python"))
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/scripts/kustomize_render.py"
            ))
            .arg(deploy("kubernetes"))
            .arg(&rendered),
    );
    println!("{out}");
    assert!(ok, "the kustomization does not render:\n{out}");
    let resources = [
        "namespace/probe",
        "serviceaccount/probe",
        "configmap/probe-rules",
        "daemonset/probe",
        "service/probe",
    ];
    for version in KUBERNETES_VERSIONS {
        let (ok, said) = said(
            Command::new(py_tool("kubernetes-validate"))
                .args(["--strict", "-k", version])
                .arg(&rendered),
        );
        println!("kubernetes-validate --strict -k {version}:\n{said}");
        for line in said.lines() {
            let fine = (line.starts_with("INFO") && line.contains(" passed for resource "))
                || (line.starts_with("WARN")
                    && line.contains("Couldn't find schema for kind PodMonitor"));
            assert!(fine, "Kubernetes {version}: {line}");
        }
        for r in resources {
            assert!(
                said.contains(&format!("passed for resource {r} ")),
                "Kubernetes {version}: {r} not validated:\n{said}"
            );
        }
        assert!(ok, "kubernetes-validate failed:\n{said}");
    }
    let _ = std::fs::remove_file(&rendered);
}

/// Both scrape configs pass promtool. Debian's Prometheus is built without Kubernetes service
/// discovery, so for scrape-kubernetes.yml promtool checks everything but the discovery block
/// (swapped for a static target); that the block is the pod role in the probe namespace is
/// checked here by reading it.
#[test]
fn scrape_configs_pass_promtool() {
    let k8s = read("prometheus/scrape-kubernetes.yml");
    assert!(
        k8s.contains(
            "kubernetes_sd_configs:\n      - role: pod\n        namespaces: {names: [probe]}\n"
        ),
        "scrape-kubernetes.yml: not the pod role in namespace probe"
    );
    assert!(k8s.contains("target_label: node"), "no node label");
    let swapped = k8s.replace(
        "kubernetes_sd_configs:\n      - role: pod\n        namespaces: {names: [probe]}\n",
        "static_configs:\n      - targets: [\"node1:19135\"]\n",
    );
    let tmp = std::env::temp_dir().join(format!("probe-scrape-k8s-{}.yml", std::process::id()));
    std::fs::write(&tmp, swapped).expect("write");
    for file in [deploy("prometheus/scrape.yml"), tmp.clone()] {
        let (ok, said) = said(
            Command::new("promtool")
                .args(["check", "config"])
                .arg(&file),
        );
        println!("promtool check config {}: {said}", file.display());
        assert!(ok && said.contains("SUCCESS"), "{said}");
    }
    let _ = std::fs::remove_file(&tmp);
}
