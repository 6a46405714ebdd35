//! The kernel matrix: the kernel tests that cover every collector against ground truth, run
//! on Debian's kernels in VMs (`cargo xtask test`, after the host's full suite), and the table
//! of the hook each collector uses on each tested kernel, built from what `probe check` said
//! on each of them.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    run::{probe_bin, root},
    vm::{self, Vm},
};

/// Debian's kernels the test command boots: Debian 12's own (6.1) and the 6.12 its
/// repositories also offer.
pub const KERNELS: &[&str] = &["6.1.0-57-amd64", "6.12.117+deb12-amd64"];

/// The matrix set, as (test file, test name): every collector on the hook the kernel offers,
/// each against ground truth, with the host's tolerances. The tests pick their expected hook
/// from the kernel's own tracepoints (tests/src/kernel.rs).
pub const TESTS: &[(&str, &str)] = &[
    // Every collector up, on its best hook here; reasons one line each.
    (
        "exposition",
        "every_collector_is_up_on_the_best_hook_of_this_kernel",
    ),
    // cpu (iter/task) vs schedstat; ports (iter/task_file) names the instance.
    ("cpu", "busy_thread_matches_schedstat"),
    // cpu_exit: threads and processes that exit between collections vs the CPU clock, rusage;
    // and on its sched_switch fallbacks (tp_btf, raw).
    ("cpu", "threads_exiting_halfway_are_still_counted"),
    ("cpu", "short_lived_processes_are_not_lost"),
    ("cpu", "sched_switch_fallback_counts_short_lived_processes"),
    (
        "cpu",
        "raw_tracepoint_fallback_counts_short_lived_processes",
    ),
    // runq: histogram sum and count vs schedstat run_delay and pcount, on both hooks; its
    // preallocated map full.
    ("instances", "run_queue_latency_histogram_matches_schedstat"),
    (
        "instances",
        "run_queue_latency_on_the_raw_tracepoint_fallback",
    ),
    ("cpu", "a_full_runqueue_map_is_reported_not_hidden"),
    // block: O_DIRECT bytes exactly on the VM's own disk, and on a loop device of the test's
    // own: bytes vs sectors, ops vs the kernel's completed requests, latency vs time_in_queue.
    (
        "block",
        "direct_write_is_charged_exactly_to_the_writers_instance",
    ),
    ("block", "latency_histogram_matches_the_kernels_disk_stats"),
    // block_dirty + writeback charged to the writer vs /proc/<pid>/io.
    (
        "block",
        "buffered_writes_are_charged_to_the_writer_not_to_kernel_threads",
    ),
    // The block_rq_* fallback, forced (the only path on 6.1).
    ("block", "fallback_hooks_charge_direct_io_exactly"),
    // tcp bytes both ways per process, tcp_state connections; 1,000 connections counted
    // exactly; the cgroup_skb fallback, forced (the path before 5.12), with RTT on sock_ops.
    ("tcp", "ipv4_bytes_are_exact_and_charged_to_each_side"),
    // tcp_rtt in the walk: each sample the connection's srtt in tcp_info, one per collection.
    (
        "tcp",
        "rtt_samples_are_the_connections_smoothed_rtt_at_each_collection",
    ),
    ("tcp", "a_thousand_short_connections_are_counted_exactly"),
    // A socket read inside connect(2), before snd_una is set (TCP Fast Open's deferred connect).
    (
        "tcp",
        "a_socket_read_inside_connect_counts_only_its_payload",
    ),
    // The daemon's own connections (not counted) told apart by port and network namespace.
    (
        "tcp",
        "the_daemons_port_number_in_another_namespace_is_counted",
    ),
    // bytes waiting in an open socket's entry: moved at every collection and at close.
    (
        "tcp",
        "an_open_connection_counts_at_every_collection_and_its_last_bytes_at_close",
    ),
    // ... and in the entry of a socket that reached TCP_CLOSE, read before it is freed.
    (
        "tcp",
        "bytes_that_arrived_before_the_socket_closed_count_once_read_or_not",
    ),
    // A connection older than the daemon, and one open across a SIGKILL and a SIGTERM restart
    // (the handover keeps the sockets' entries; after a graceful stop the next daemon empties
    // them).
    (
        "tcp",
        "a_connection_older_than_the_daemon_counts_from_the_first_collection",
    ),
    (
        "tcp",
        "an_open_connection_across_a_crash_and_a_graceful_restart_counts_exactly",
    ),
    ("tcp", "cgroup_skb_fallback_counts_bytes_per_port"),
    ("tcp", "fallback_counts_data_that_completes_the_handshake"),
    // tcp_retransmit vs the kernel's TcpRetransSegs.
    ("tcp", "retransmits_match_the_kernels_tcp_retrans_segs"),
    // Pinned maps and links, saved accounts: SIGKILL and restart mid-load lose nothing (CPU,
    // block, TCP vs ground truth; no counter goes backwards).
    ("restart", "sigkill_and_restart_lose_nothing"),
    // A recorded run (churn, exits, a reused port, a SIGHUP) replays to the live metrics
    // exactly: the Reading holds all the accounting needs, whatever hooks the kernel offers.
    ("instances", "a_recorded_run_replays_to_the_same_metrics"),
];

/// The matrix tests whose name contains `filter`, by test file.
pub fn selected(filter: Option<&str>) -> BTreeMap<&'static str, Vec<&'static str>> {
    let mut by_file: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (file, name) in TESTS {
        if filter.is_none_or(|f| name.contains(f)) {
            by_file.entry(file).or_default().push(name);
        }
    }
    by_file
}

/// The kernel test executables cargo built, by test file name (`cpu`, `block`, ...).
pub fn test_executables() -> Result<BTreeMap<String, PathBuf>> {
    let out = Command::new("cargo")
        .args([
            "test",
            "--release",
            "-p",
            "probe-tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root())
        .output()
        .context("cannot run cargo")?;
    if !out.status.success() {
        bail!(
            "building the kernel tests failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut found = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_test = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "test"));
        if let (true, Some(name), Some(exe)) = (
            is_test,
            msg["target"]["name"].as_str(),
            msg["executable"].as_str(),
        ) {
            found.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    Ok(found)
}

/// Where the guests leave what they report (`probe check --format json`), per kernel.
pub fn out_dir() -> PathBuf {
    root().join("target/vm/out")
}

/// How one kernel did.
pub struct KernelRun {
    pub kernel: String,
    pub expected: usize,
    pub passed: usize,
    pub failed: Vec<String>,
    pub elapsed: Duration,
    /// The guest did not boot or did not finish.
    pub error: Option<String>,
}

impl KernelRun {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.failed.is_empty() && self.passed == self.expected
    }
}

/// Boots `kernel` and runs the selected matrix tests in it.
pub fn run_on(
    kernel: &str,
    tests: &BTreeMap<&str, Vec<&str>>,
    exes: &BTreeMap<String, PathBuf>,
) -> Result<KernelRun> {
    let out = out_dir().join(kernel);
    if out.exists() {
        fs::remove_dir_all(&out)?;
    }
    fs::create_dir_all(&out)?;
    let mut script = GUEST_PRELUDE_TEMPLATE.replace("LIMIT", &TEST_FILE_LIMIT_SECS.to_string());
    let probe = probe_bin();
    script.push_str(&format!(
        "{} check --format json --runq.histograms >{} 2>{} || status=1\n",
        sh_quote(&probe),
        sh_quote(&out.join("check.json")),
        sh_quote(&out.join("check.log")),
    ));
    let mut expected = 0;
    for (file, names) in tests {
        let exe = exes
            .get(*file)
            .with_context(|| format!("no test executable for tests/{file}.rs"))?;
        script.push_str(&format!(
            "limited {} --exact --test-threads=1 --nocapture",
            sh_quote(exe)
        ));
        for n in names {
            script.push(' ');
            script.push_str(n);
        }
        script.push_str(" || status=1\n");
        expected += names.len();
    }
    script.push_str("exit $status\n");
    let vm = Vm {
        memory_mib: 2048,
        cpus: 2,
        timeout: Duration::from_secs(20 * 60),
        disk: Some((root().join("target/tmp"), 2048)),
        shares: vec![out_dir()],
        cwd: root().join("tests"),
        env: vec![(
            "PROBE_BIN".to_string(),
            probe.to_string_lossy().into_owned(),
        )],
        prefix: format!("[{kernel}] "),
        ..Vm::new(kernel)
    };
    println!(
        "\nxtask: kernel matrix on {kernel} (qemu): {expected} tests, output prefixed [{kernel}]"
    );
    match vm::run(&vm, &["sh".to_string(), "-c".to_string(), script]) {
        Ok(o) => {
            let (passed, failed) = results(&o.output);
            Ok(KernelRun {
                kernel: kernel.to_string(),
                expected,
                passed,
                failed,
                elapsed: o.elapsed,
                error: (o.status != 0 && passed == expected)
                    .then(|| format!("the guest command failed (status {})", o.status)),
            })
        }
        Err(e) => Ok(KernelRun {
            kernel: kernel.to_string(),
            expected,
            passed: 0,
            failed: Vec::new(),
            elapsed: Duration::ZERO,
            error: Some(format!("{e:#}")),
        }),
    }
}

/// Seconds one test executable may run in a guest before it is stopped.
const TEST_FILE_LIMIT_SECS: u32 = 600;

/// Start of the guest's script: `limited CMD...` runs a test executable with a time limit and,
/// if it hangs, shows what the guest was doing (processes, the kernel's blocked tasks and CPU
/// backtraces) and kills what it left behind, so the next file runs on a clean guest.
const GUEST_PRELUDE_TEMPLATE: &str = r#"status=0
limited() {
    timeout -k 10 LIMIT "$@"
    rc=$?
    if [ $rc = 124 ] || [ $rc = 137 ]; then
        echo "xtask: $1 did not finish within LIMIT s; processes, then the kernel's view:"
        ps -eo pid,ppid,stat,wchan:32,etime,time,args
        echo w >/proc/sysrq-trigger
        echo l >/proc/sysrq-trigger
        dmesg | tail -n 400
        pkill -KILL -f probe-workload
        pkill -KILL -x probe
    fi
    return $rc
}
"#;

/// Tests passed, and the names of the failed ones, from libtest's output.
fn results(output: &str) -> (usize, Vec<String>) {
    let mut passed = 0;
    let mut failed = Vec::new();
    let mut in_failures = false;
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("test result: ") {
            in_failures = false;
            passed += rest
                .split(';')
                .find_map(|f| f.trim().split_once(" passed"))
                .and_then(|(n, _)| n.rsplit(' ').next())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0);
        } else if line == "failures:" {
            in_failures = true;
        } else if in_failures {
            if let Some(name) = line.strip_prefix("    ") {
                if !name.contains(' ') && !failed.iter().any(|f| f == name) {
                    failed.push(name.to_string());
                }
            }
        }
    }
    (passed, failed)
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.to_string_lossy().replace('\'', r"'\''"))
}

/// `probe check --format json` on the host, next to the guests' reports.
pub fn host_check() -> Result<()> {
    let dir = out_dir().join("host");
    fs::create_dir_all(&dir)?;
    let out = Command::new(probe_bin())
        .args(["check", "--format", "json", "--runq.histograms"])
        .env("PROBE_LOG", "warn")
        .output()
        .context("cannot run probe check")?;
    fs::write(dir.join("check.json"), &out.stdout)?;
    Ok(())
}

/// The markdown table of hooks per collector and kernel, from the reports in [`out_dir`]
/// (host first, then [`KERNELS`]); None if no report is there.
pub fn hook_table() -> Option<String> {
    let mut columns = Vec::new();
    for (dir, label) in std::iter::once(("host", "this machine"))
        .chain(KERNELS.iter().map(|k| (*k, "Debian, in qemu")))
    {
        let Ok(text) = fs::read_to_string(out_dir().join(dir).join("check.json")) else {
            continue;
        };
        let Ok(report) = serde_json::from_str::<serde_json::Value>(&text) else {
            continue;
        };
        let release = report["kernel"]["release"]
            .as_str()
            .unwrap_or(dir)
            .to_string();
        let hooks: Vec<(String, String)> = report["collectors"]
            .as_array()
            .map(|cs| {
                cs.iter()
                    .map(|c| {
                        let name = c["name"].as_str().unwrap_or("?").to_string();
                        let hook = match (c["state"].as_str(), c["hook"].as_str()) {
                            (Some("up"), Some(h)) => format!("`{h}`"),
                            (Some(state), _) => format!("**{state}**"),
                            _ => "?".to_string(),
                        };
                        (name, hook)
                    })
                    .collect()
            })
            .unwrap_or_default();
        columns.push((format!("{release} ({label})"), hooks));
    }
    let first = columns.first()?;
    let mut t = String::from("| collector |");
    for (head, _) in &columns {
        t.push_str(&format!(" {head} |"));
    }
    t.push_str("\n|---|");
    t.push_str(&"---|".repeat(columns.len()));
    t.push('\n');
    for (name, _) in &first.1 {
        t.push_str(&format!("| `{name}` |"));
        for (_, hooks) in &columns {
            let cell = hooks
                .iter()
                .find(|(n, _)| n == name)
                .map_or("-", |(_, h)| h.as_str());
            t.push_str(&format!(" {cell} |"));
        }
        t.push('\n');
    }
    Some(t)
}

/// Markers around the generated table in README.md.
pub const README_BEGIN: &str = "<!-- kernel-matrix: generated by `cargo xtask test` -->";
pub const README_END: &str = "<!-- /kernel-matrix -->";

/// Whether README.md holds exactly this table between its markers.
pub fn readme_has(table: &str) -> bool {
    let Ok(readme) = fs::read_to_string(root().join("README.md")) else {
        return false;
    };
    let Some((_, rest)) = readme.split_once(README_BEGIN) else {
        return false;
    };
    let Some((current, _)) = rest.split_once(README_END) else {
        return false;
    };
    same_table(current, table)
}

/// Equal but for indentation and blank lines (the README indents the table: it sits in a list
/// item), and for the host's kernel release in the header: the same kernel version is built
/// anew for each machine (`6.18.44-fc-v669`, `6.18.44-fc-v1272`), and the hooks are what the
/// table is about.
fn same_table(a: &str, b: &str) -> bool {
    let lines = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| without_host_release(l.trim()))
            .filter(|l| !l.is_empty())
            .collect()
    };
    lines(a) == lines(b)
}

/// `line` with the release in its `| <release> (this machine) |` cell left out.
fn without_host_release(line: &str) -> String {
    let marker = " (this machine)";
    match line.find(marker) {
        Some(at) => {
            let cell = line[..at].rfind('|').map_or(0, |p| p + 1);
            format!("{} {}", &line[..cell], &line[at + 1..])
        }
        None => line.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_passes_and_names_failures() {
        let out = "\
running 2 tests
test a ... some output
ok
test b ... 
thread 'b' panicked at tests/x.rs:1:1:
boom

failures:
    b

test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 3 filtered out; finished in 1.0s

running 1 test
test c ... ok

test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s
";
        assert_eq!(results(out), (2, vec!["b".to_string()]));
        assert_eq!(results("Kernel panic\n"), (0, vec![]));
    }

    #[test]
    fn tables_compare_without_indentation() {
        let t = "| a | b |\n|---|---|\n| `cpu` | `iter/task` |\n";
        assert!(same_table(&format!("\n  {}", t.replace('\n', "\n  ")), t));
        assert!(!same_table(t, &t.replace("iter/task", "procfs")));
        let host = |release: &str| {
            format!(
                "| collector | {release} (this machine) | 6.1.0-57-amd64 (Debian, in qemu) |\n{t}"
            )
        };
        assert!(same_table(
            &host("6.18.44-fc-v669"),
            &host("6.18.44-fc-v1272")
        ));
        assert!(!same_table(
            &host("6.18.44-fc-v669"),
            &host("6.18.44-fc-v669").replace("6.1.0-57", "6.1.0-58")
        ));
        let readme = fs::read_to_string(root().join("README.md")).expect("README.md");
        assert!(
            readme.contains(README_BEGIN) && readme.contains(README_END),
            "README.md lost the markers of the generated kernel table"
        );
    }

    #[test]
    fn every_matrix_test_is_selected_without_a_filter() {
        let all: usize = selected(None).values().map(Vec::len).sum();
        assert_eq!(all, TESTS.len());
        assert_eq!(
            selected(Some("retransmits"))
                .values()
                .map(Vec::len)
                .sum::<usize>(),
            1
        );
        assert!(selected(Some("no such test")).is_empty());
    }
}
