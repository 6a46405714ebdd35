//! CPU attribution against the kernel's own ground truth. Run as root by `cargo xtask test`.

use probe_tests::{check_close, process_cpu_ns, schedstat, Daemon, Workload};

const CPU: &str = "probe_cpu_seconds_total";
/// A main thread spinning 2 s with 3 workers that spin 1 s and exit.
const THREADS_EXIT_HALFWAY: &[&str] = &[
    "spin",
    "--secs",
    "2",
    "--threads",
    "3",
    "--thread-secs",
    "1",
];
const RUNQ: &str = "probe_cpu_runqueue_wait_seconds_total";

fn instance_value(m: &probe_tests::Metrics, name: &str, w: &Workload) -> f64 {
    let inst = w.instance();
    m.value(name, &[("service_instance", &inst)])
        .unwrap_or_else(|| panic!("no {name}{{service_instance={inst:?}}} in:\n{}", m.text))
}

/// One never-sleeping thread for 3 s: its instance's CPU within 1% of /proc/<pid>/schedstat.
#[test]
fn busy_thread_matches_schedstat() {
    let daemon = Daemon::start(&[]);
    let mut w = Workload::start(&["spin", "--secs", "3"]);
    w.wait_done();
    let m = daemon.scrape();
    let (truth_ns, _) = schedstat(w.pid);
    let got = instance_value(&m, CPU, &w);
    check_close(
        "busy thread, instance CPU s",
        got,
        truth_ns as f64 / 1e9,
        0.01,
    );
    // It spun for 3 s of wall time; on a loaded host it gets less CPU than that (the comparison
    // with schedstat above is the check), but not nothing.
    assert!(got > 1.5, "the thread spun 3 s, probe says {got}");
    // It is one of the busiest processes, so it is exported on its own too.
    let pid = w.pid.to_string();
    let per_process = m
        .value("probe_process_cpu_seconds_total", &[("pid", &pid)])
        .unwrap_or_else(|| panic!("pid {pid} not among the top processes:\n{}", m.text));
    check_close(
        "busy thread, process CPU s",
        per_process,
        truth_ns as f64 / 1e9,
        0.01,
    );
    // The daemon never reports itself.
    let own = daemon.pid().to_string();
    assert!(
        m.find("probe_process_cpu_seconds_total", &[("pid", &own)])
            .is_empty(),
        "daemon counted itself"
    );
}

/// Worker threads that exit halfway: the process total (its CPU clock, which includes exited
/// threads) is still matched within 1%.
#[test]
fn threads_exiting_halfway_are_still_counted() {
    let daemon = Daemon::start(&[]);
    let mut w = Workload::start(THREADS_EXIT_HALFWAY);
    w.wait_done();
    // Let a timer collection happen after the threads died, as in production.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let m = daemon.scrape();
    let truth = process_cpu_ns(w.pid) as f64 / 1e9;
    let (main_only, _) = schedstat(w.pid);
    assert!(
        truth > main_only as f64 / 1e9 + 1.0,
        "workers did not run: {truth} s in all"
    );
    check_close(
        "threads exited halfway, instance CPU s",
        instance_value(&m, CPU, &w),
        truth,
        0.01,
    );
}

/// 1,000 processes that each burn ~5 ms of CPU and exit between collections: at least 99% of
/// their CPU (by their rusage, as the parent reaped them) lands in their instance.
#[test]
fn short_lived_processes_are_not_lost() {
    let daemon = Daemon::start(&[]);
    let mut w = Workload::start(&["burst", "--count", "1000", "--ms", "5"]);
    let done = w.wait_done();
    // Collections run every second; make sure the last children were folded in (two rounds).
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let m = daemon.scrape();
    let (parent, children) = w.burst_cpu_truth(&done);
    let got = instance_value(&m, CPU, &w);
    let attributed = (got - parent) / children;
    println!("short-lived: instance {got:.4} s = parent {parent:.4} s + {:.4} s of children's {children:.4} s", got - parent);
    assert!(children > 4.5, "children burnt only {children} s");
    assert!(
        attributed >= 0.99,
        "only {:.2}% of the children's CPU attributed",
        attributed * 100.0
    );
    check_close("short-lived, instance CPU s", got, parent + children, 0.01);
    let exits = m
        .value("probe_exited_threads_total", &[("result", "lost")])
        .expect("lost counter");
    assert_eq!(exits, 0.0, "the dead-thread map overflowed");
}

/// Two busy processes pinned to one CPU wait for each other: each one's run-queue wait within
/// 2% of /proc/<pid>/schedstat field 2.
#[test]
fn runqueue_wait_of_two_pinned_processes() {
    let daemon = Daemon::start(&[]);
    let mut a = Workload::start(&["spin", "--secs", "3", "--cpu", "0"]);
    let mut b = Workload::start(&["spin", "--secs", "3", "--cpu", "0"]);
    a.wait_done();
    b.wait_done();
    let m = daemon.scrape();
    for w in [&a, &b] {
        let (cpu_ns, delay_ns) = schedstat(w.pid);
        assert!(
            delay_ns > 500_000_000,
            "pinned spinners waited only {delay_ns} ns"
        );
        check_close(
            "pinned, run-queue wait s",
            instance_value(&m, RUNQ, w),
            delay_ns as f64 / 1e9,
            0.02,
        );
        check_close(
            "pinned, CPU s",
            instance_value(&m, CPU, w),
            cpu_ns as f64 / 1e9,
            0.01,
        );
    }
}

/// A full dead-thread map loses exits visibly, never silently: the loss is counted in
/// probe_exited_threads_total{result="lost"} and the kernel program's warning reaches the
/// daemon's log (aya-log). A map of 16 entries and no timer collection forces it.
#[test]
fn a_full_exit_map_is_reported_not_hidden() {
    let daemon = Daemon::start(&["--cpu.exit-map-size", "16", "--collect.interval", "60m"]);
    let mut w = Workload::start(&["burst", "--count", "200", "--ms", "1"]);
    w.wait_done();
    std::thread::sleep(std::time::Duration::from_millis(500)); // let the log reach the daemon
    let m = daemon.scrape();
    let lost = m
        .value("probe_exited_threads_total", &[("result", "lost")])
        .expect("lost counter");
    println!("exit map of 16 entries, 200 exits between collections: {lost} lost");
    assert!(
        lost >= 150.0,
        "expected most of 200 exits lost with 16 entries, counter says {lost}"
    );
    let log = daemon.log();
    assert!(
        log.contains("dead-thread map full"),
        "the kernel's warning did not reach the log:\n{log}"
    );
}

/// A full run-queue thread map (preallocated: the scheduler writes it) loses threads visibly:
/// 200 short-lived processes need 200 entries, a map of 64 that the host's own threads already
/// use holds at most 64, so at least 136 switch-outs (one per thread without an entry, at
/// least) are counted in probe_runqueue_events_total{result="lost"}, and the collector stays up.
#[test]
fn a_full_runqueue_map_is_reported_not_hidden() {
    let daemon = Daemon::start(&[
        "--runq.histograms",
        "--runq.map-size",
        "64",
        "--collect.interval",
        "60m",
    ]);
    let mut w = Workload::start(&["burst", "--count", "200", "--ms", "1"]);
    w.wait_done();
    let m = daemon.scrape();
    let lost = m
        .value("probe_runqueue_events_total", &[("result", "lost")])
        .expect("lost counter");
    println!("run-queue map of 64 entries, 200 new processes: {lost} threads lost");
    assert!(
        lost >= 136.0,
        "expected at least 136 lost, counter says {lost}"
    );
    assert_eq!(
        m.value("probe_collector_up", &[("collector", "runq")]),
        Some(1.0)
    );
}

/// The exit hook on sched_switch (where BPF trampolines are not allowed, as on this project's
/// test host, which uses it by default) counts short-lived processes and exiting threads as well
/// as the release hook: forced here with --hooks.skip.
#[test]
fn sched_switch_fallback_counts_short_lived_processes() {
    exit_fallback("fentry/cgroup_release", "tp_btf/sched_switch");
}

/// The last fallback exit hook (raw tracepoint), as on a kernel where tp_btf does not load.
#[test]
fn raw_tracepoint_fallback_counts_short_lived_processes() {
    exit_fallback(
        "fentry/cgroup_release,tp_btf/sched_switch",
        "raw_tp/sched_switch",
    );
}

fn exit_fallback(skip: &str, hook: &str) {
    let daemon = Daemon::start(&["--hooks.skip", skip]);
    let m = daemon.scrape();
    m.assert_hook("cpu_exit", hook);
    // One after the other, as in the other tests here. Started at once, the burst's instance
    // once came out 4.6% short on 6.1 in qemu, in 1 of 6 runs (the rest within 0.4%); the cause
    // is not found (each workload burns CPU before the daemon has seen the listening port that
    // names its instance: a suspect).
    let mut w = Workload::start(&["burst", "--count", "300", "--ms", "5"]);
    let done = w.wait_done();
    let mut threads = Workload::start(THREADS_EXIT_HALFWAY);
    threads.wait_done();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let m = daemon.scrape();
    let (parent, children) = w.burst_cpu_truth(&done);
    check_close(
        &format!("{hook}, short-lived, instance CPU s"),
        instance_value(&m, CPU, &w),
        parent + children,
        0.01,
    );
    check_close(
        &format!("{hook}, threads exited halfway, instance CPU s"),
        instance_value(&m, CPU, &threads),
        process_cpu_ns(threads.pid) as f64 / 1e9,
        0.01,
    );
}

/// Without the task iterator (kernels before 5.8, or no BTF), live threads are read from /proc
/// instead: still within 1% of the process CPU clock, exited threads and short-lived processes
/// included (the exit hook's keys are matched to /proc's tick-resolution start times).
#[test]
fn procfs_task_fallback_matches_ground_truth() {
    let daemon = Daemon::start(&["--hooks.skip", "iter/task"]);
    let m = daemon.scrape();
    m.assert_hook("cpu", "procfs");

    let mut threads = Workload::start(THREADS_EXIT_HALFWAY);
    threads.wait_done();
    let mut burst = Workload::start(&["burst", "--count", "300", "--ms", "5"]);
    let done = burst.wait_done();
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let m = daemon.scrape();
    let truth = process_cpu_ns(threads.pid) as f64 / 1e9;
    check_close(
        "procfs fallback, threads exited halfway, CPU s",
        instance_value(&m, CPU, &threads),
        truth,
        0.01,
    );
    let (parent, children) = burst.burst_cpu_truth(&done);
    check_close(
        "procfs fallback, short-lived, CPU s",
        instance_value(&m, CPU, &burst),
        parent + children,
        0.01,
    );
}

/// No kernel BTF (hidden here by mounting /dev/null over it in a private mount namespace): the
/// kernel collectors are down with the reason, and the daemon still serves CPU from /proc.
#[test]
fn without_btf_the_daemon_still_serves_from_proc() {
    let hide_btf = [
        "unshare",
        "-m",
        "--",
        "sh",
        "-c",
        "mount --bind /dev/null /sys/kernel/btf/vmlinux && exec \"$0\" \"$@\"",
    ];
    let daemon = Daemon::start_wrapped(&hide_btf, &[]);
    let mut w = Workload::start(&["spin", "--secs", "2"]);
    w.wait_done();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let m = daemon.scrape();
    assert_eq!(
        m.value("probe_collector_up", &[("collector", "cpu_exit")]),
        Some(0.0)
    );
    assert_eq!(
        m.value(
            "probe_collector_hook_info",
            &[("collector", "cpu"), ("hook", "procfs")]
        ),
        Some(1.0)
    );
    let (truth_ns, _) = schedstat(w.pid);
    check_close(
        "no BTF, busy thread via /proc, CPU s",
        instance_value(&m, CPU, &w),
        truth_ns as f64 / 1e9,
        0.01,
    );
    let log = daemon.log();
    assert!(
        log.contains("cannot read kernel BTF"),
        "the reason is not in the log:\n{log}"
    );
}
