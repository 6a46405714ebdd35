//! Block IO attribution against ground truth from the workload and the kernel
//! (/sys/block/<dev>/stat, /proc/<pid>/io). Run as root by `cargo xtask test`.
//!
//! Files live under cargo's per-target scratch directory, which is on the disk the repository is
//! on (not on tmpfs): block IO needs a real disk.
//!
//! Over 500 lines: one test file per collector, as for the others; each test stands alone.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use probe_tests::{
    check_close, cold_file, disk_of, disk_stat, idle_disk_stat, kernel, proc_write_bytes, sh,
    Daemon, Metrics, Workload,
};

const BYTES: &str = "probe_block_bytes_total";
const OPS: &str = "probe_block_ops_total";
const DIRTIED: &str = "probe_block_dirtied_bytes_total";
const LAT_SUM: &str = "probe_block_latency_seconds_sum";
const LAT_COUNT: &str = "probe_block_latency_seconds_count";
const MIB: u64 = 1 << 20;

/// A scratch file path for one test (removed on drop).
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("block");
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let p = dir.join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_file(&p);
        Self(p)
    }
    fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn io(m: &Metrics, name: &str, instance: &str, disk: &str, op: &str) -> f64 {
    m.sum(
        name,
        &[("service_instance", instance), ("device", disk), ("op", op)],
    )
}

/// Waits past a collection (1 s interval in tests), so a child that exited is folded in.
fn settle() {
    std::thread::sleep(Duration::from_millis(1500));
}

/// Runs `dd` with these operands as a workload's child (so it belongs to the workload's
/// instance), waits for it to succeed and for a collection to fold it in.
fn dd(operands: &[&str]) -> (Workload, Vec<(String, u64)>) {
    let mut args = vec!["run", "--", "dd"];
    args.extend_from_slice(operands);
    let mut w = Workload::start(&args);
    let done = w.wait_done();
    assert_eq!(
        done.first(),
        Some(&("status".into(), 0)),
        "dd {operands:?} failed"
    );
    settle();
    (w, done)
}

/// `dd oflag=direct` of 64 MiB into `f`.
fn dd_direct_64mib(f: &Scratch) -> Workload {
    let of = format!("of={}", f.path());
    dd(&["if=/dev/zero", &of, "bs=1M", "count=64", "oflag=direct"]).0
}

/// Requests probe reports it could not count whole (host-wide: an upper bound for one device).
fn uncounted(m: &Metrics) -> f64 {
    ["unmatched", "lost", "end_missed"]
        .iter()
        .map(|r| m.sum("probe_block_events_total", &[("result", r)]))
        .sum()
}

/// Scrapes until `bytes` reads `want` (within `tolerance`, a fraction of `want`), or falls
/// short by no more than that plus the requests probe reports it could not count whole (each at
/// most the disk's largest request). A request whose completion the kernel did not run probe's
/// program for (seen on this project's CI host, see README) is reported once its device is idle
/// at a collection or its slot is reused, so this waits up to 20 s for that. Returns the last
/// scrape, the bytes and the uncounted requests.
fn close_or_explained(
    daemon: &Daemon,
    disk: &str,
    want: u64,
    tolerance: f64,
    bytes: impl Fn(&Metrics) -> f64,
) -> (Metrics, f64, f64) {
    let max_request = std::fs::read_to_string(format!("/sys/block/{disk}/queue/max_sectors_kb"))
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok())
        .expect("max_sectors_kb")
        * 1024.0;
    let slack = tolerance * want as f64;
    let t0 = std::time::Instant::now();
    loop {
        let m = daemon.scrape();
        let (got, missed) = (bytes(&m), uncounted(&m));
        let short = want as f64 - got;
        assert!(
            short >= -slack,
            "{got} bytes counted, more than {want} (+{slack}):\n{}",
            m.lines_with(&["probe_block"])
        );
        if short <= slack || short <= slack + missed * max_request {
            return (m, got, missed);
        }
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(20),
            "{got} of {want} bytes counted (tolerance {slack}), {missed} requests reported \
             uncounted (each at most {max_request} bytes):\n{}",
            m.lines_with(&["probe_block", "probe_bpf_program_missed"])
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
}

/// Every latency histogram counts exactly the operations of its series.
fn assert_histograms_consistent(m: &Metrics) {
    for s in m.find(OPS, &[]) {
        let labels: Vec<(&str, &str)> = s
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            m.value(LAT_COUNT, &labels),
            Some(s.value),
            "histogram count != ops for {labels:?}"
        );
    }
}

/// `dd oflag=direct` of 64 MiB: exactly 67,108,864 bytes written on the file's disk, charged to
/// dd's instance (dd is the workload's child, so it belongs to the workload's instance).
#[test]
fn direct_write_is_charged_exactly_to_the_writers_instance() {
    let f = Scratch::new("direct");
    let disk = disk_of(f.0.parent().expect("dir"));
    let daemon = Daemon::start(&[]);
    let w = dd_direct_64mib(&f);
    let (m, got, missed) = close_or_explained(&daemon, &disk, 64 * MIB, 0.0, |m| {
        io(m, BYTES, &w.instance(), &disk, "write")
    });
    m.assert_hook("block", kernel::best_hook("block"));
    println!(
        "dd oflag=direct 64 MiB on {disk}: probe {got} bytes (want 67108864 exactly, or short by \
         requests whose end the kernel did not report: {missed})"
    );
    // At least one request per 1 MiB write, less those whose end the kernel did not report
    // (their ops are not counted either, as their bytes above).
    let ops = io(&m, OPS, &w.instance(), &disk, "write");
    assert!(
        ops + missed >= 64.0,
        "{ops} write ops (+ {missed} uncounted requests) for 64 writes"
    );
    assert_histograms_consistent(&m);
}

/// Reading a 128 MiB file that is not in the page cache: read bytes within 1% of what the
/// kernel says the reader submitted, short only by requests probe reports it could not count.
#[test]
fn cold_read_is_charged_to_the_reader() {
    let f = Scratch::new("cold");
    cold_file(&f.0, 128);
    let disk = disk_of(&f.0);
    let daemon = Daemon::start(&[]);
    let resident = probe_tests::resident_pages(&f.0);
    assert_eq!(resident, 0, "{resident} pages of the file are still cached");
    let (w, done) = dd(&[&format!("if={}", f.path()), "of=/dev/null", "bs=1M"]);
    let done = |key: &str| done.iter().find(|(k, _)| k == key).expect(key).1;
    // rusage's inblock is the kernel's own count of what a process submitted
    // (task_io_account_read at submit_bio). The instance is dd and the wrapper that runs it (which
    // may page its own binary in): probe must match both within 1%, short only by requests it
    // reports uncounted.
    let (inblock, wrapper) = (done("inblock_bytes"), done("self_inblock_bytes"));
    let (_, got, missed) = close_or_explained(&daemon, &disk, inblock + wrapper, 0.01, |m| {
        io(m, BYTES, &w.instance(), &disk, "read")
    });
    println!(
        "cold read of 128 MiB: probe {got} bytes vs read_bytes of dd {inblock} + its wrapper \
         {wrapper} (within 1%, or short by requests reported uncounted: {missed})"
    );
    check_close(
        "cold read, dd's read_bytes (rusage) vs file size",
        inblock as f64,
        (128 * MIB) as f64,
        0.01,
    );
}

/// A 256 MiB buffered write followed by sync(2), while another process writes with O_DIRECT on
/// the same disk: >= 95% of the writer's bytes reach the disk charged to its instance (not to
/// the kernel's flush threads), its dirtied bytes match the kernel's /proc/<pid>/io count, and
/// the other process gets what it wrote (within 1%, see below).
#[test]
fn buffered_writes_are_charged_to_the_writer_not_to_kernel_threads() {
    let f = Scratch::new("buffered");
    let g = Scratch::new("concurrent");
    let disk = disk_of(f.0.parent().expect("dir"));
    let daemon = Daemon::start(&[]);
    let mut other = Workload::start(&[
        "write",
        "--file",
        g.path(),
        "--mb",
        "32",
        "--direct",
        "--secs",
        "5",
    ]);
    let mut w = Workload::start(&["write", "--file", f.path(), "--mb", "256", "--sync"]);
    let done = w.wait_done();
    assert_eq!(done, vec![("bytes".into(), 256 * MIB)]);
    let kernel_dirtied = proc_write_bytes(w.pid);
    let other_done = other.wait_done();
    let other_bytes = other_done
        .iter()
        .find(|(k, _)| k == "bytes")
        .map(|(_, v)| *v)
        .expect("bytes");
    settle();
    let m = daemon.scrape();
    m.assert_hook("block_dirty", kernel::best_hook("block_dirty"));

    let written = io(&m, BYTES, &w.instance(), &disk, "write");
    let share = written / (256 * MIB) as f64;
    println!(
        "buffered 256 MiB + sync: {written} bytes written charged to the writer ({:.2}%), \
         writeback requests charged to writers {:?}, to kernel {:?}",
        share * 100.0,
        m.value(
            "probe_block_writeback_requests_total",
            &[("charged_to", "writer")]
        ),
        m.value(
            "probe_block_writeback_requests_total",
            &[("charged_to", "kernel")]
        ),
    );
    assert!(
        share >= 0.95,
        "only {:.2}% charged to the writer",
        share * 100.0
    );
    assert!(
        share <= 1.05,
        "{:.2}% charged to the writer: counted twice?",
        share * 100.0
    );

    let dirtied = m.sum(
        DIRTIED,
        &[("service_instance", &w.instance()), ("device", &disk)],
    );
    check_close(
        "dirtied bytes vs /proc/<pid>/io write_bytes",
        dirtied,
        kernel_dirtied as f64,
        0.001,
    );
    check_close(
        "dirtied bytes vs bytes written by the workload",
        dirtied,
        (256 * MIB) as f64,
        0.01,
    );

    // Measured here: 0.00-0.06% short of ~17 GB under this contention (exact when alone).
    // Requests are the unit of attribution, so a bio the IO scheduler merges into another
    // process's request is charged to that request's owner: the likely cause, not yet proven.
    let theirs = io(&m, BYTES, &other.instance(), &disk, "write");
    check_close(
        "concurrent O_DIRECT writer, bytes",
        theirs,
        other_bytes as f64,
        0.01,
    );
    assert_histograms_consistent(&m);
}

/// A loop device of our own, so that no other IO touches it; detached on drop. With direct IO
/// to its backing file: requests then complete in softirq context, as on a real disk, and the
/// kernel's own per-request times (time_in_queue) are not stretched by the loop worker being
/// preempted by the process its completion wakes (measured: up to 17% on Linux 6.1 under load).
struct Loop {
    dev: String,
    _backing: Scratch,
}

impl Loop {
    fn new(mb: u64) -> Self {
        let backing = Scratch::new("loop-backing");
        let f = std::fs::File::create(&backing.0).expect("backing file");
        f.set_len(mb * MIB).expect("size backing file");
        let dev = sh(
            "losetup",
            &["--find", "--show", "--direct-io=on", backing.path()],
        );
        assert!(dev.starts_with("/dev/loop"), "losetup said {dev:?}");
        let name = dev.trim_start_matches("/dev/");
        let dio =
            std::fs::read_to_string(format!("/sys/block/{name}/loop/dio")).unwrap_or_default();
        assert_eq!(
            dio.trim(),
            "1",
            "{dev}: direct IO to its backing file is off"
        );
        Self {
            dev,
            _backing: backing,
        }
    }
    fn name(&self) -> &str {
        self.dev.trim_start_matches("/dev/")
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("losetup")
            .args(["-d", &self.dev])
            .status();
    }
}

/// On a device nobody else uses: the latency histogram's count equals the requests the kernel
/// completed (/sys/block/<dev>/stat) and its sum agrees with time_in_queue within 5%, over the
/// same window. The device then vanishes: its series stay and nothing breaks.
#[test]
fn latency_histogram_matches_the_kernels_disk_stats() {
    let lo = Loop::new(128);
    let disk = lo.name().to_string();
    let daemon = Daemon::start(&[]);
    // The kernel reads a new device (partition scan) on its own: start from an idle device,
    // and make sure nothing ran while probe's counters were read.
    let before = idle_disk_stat(&disk);
    let m0 = daemon.scrape();
    assert_eq!(
        disk_stat(&disk).ios,
        before.ios,
        "IO on {disk} during the scrape"
    );
    let of = format!("of={}", lo.dev);
    let (w, _) = dd(&["if=/dev/zero", &of, "bs=64k", "count=1024", "oflag=direct"]);
    let (r, _) = dd(&[
        &format!("if={}", lo.dev),
        "of=/dev/null",
        "bs=64k",
        "iflag=direct",
    ]);
    let after = idle_disk_stat(&disk);
    let m1 = daemon.scrape();
    assert_eq!(
        disk_stat(&disk).ios,
        after.ios,
        "IO on {disk} during the scrape"
    );

    let on_disk = [("device", disk.as_str())];
    let count = m1.sum(LAT_COUNT, &on_disk) - m0.sum(LAT_COUNT, &on_disk);
    let sum = m1.sum(LAT_SUM, &on_disk) - m0.sum(LAT_SUM, &on_disk);
    let ios = after.ios - before.ios;
    let tiq = (after.time_in_queue_ms - before.time_in_queue_ms) as f64 / 1e3;
    // Completions probe could not time (their start entry was missing) are counted, not hidden.
    let untimed = |m: &probe_tests::Metrics| {
        ["unmatched", "lost", "end_missed"]
            .iter()
            .map(|r| m.sum("probe_block_events_total", &[("result", r)]))
            .sum::<f64>()
    };
    let untimed = untimed(&m1) - untimed(&m0);
    // So are the ends the kernel skipped: a program is not run again on a CPU where it is
    // running (an interrupt that completes another request while it runs), and the kernel
    // counts that. A skipped end loses the request's count and bytes.
    let ends = ["probe_block_io_done", "probe_block_rq_done"];
    let missed_ends = m1.missed_runs(&ends) - m0.missed_runs(&ends);
    let missed_bytes =
        m1.missed_runs(&["probe_block_rq_bytes"]) - m0.missed_runs(&["probe_block_rq_bytes"]);
    assert!(
        m1.find("probe_bpf_program_missed_runs_total", &[]).len() > 1,
        "no skipped-run counters (Linux 5.12+ reports them)"
    );
    println!(
        "{disk}: histogram count {count} (+ {untimed} requests counted as not timed, + {missed_ends} \
         ends the kernel skipped) vs completed requests {ios}; sum {sum:.4} s vs time_in_queue \
         {tiq:.3} s"
    );
    // On the CI machine's 6.18 kernel, block_io_done sometimes fires without running probe's
    // program (see README, `end_missed`): probe reports such a request once the device is idle
    // at a collection (it is, at m1) or its slot is reused. Nothing may be missing unreported.
    let unexplained = (ios as f64 - count - untimed - missed_ends).max(0.0);
    assert!(
        count <= ios as f64 && unexplained == 0.0,
        "histogram count {count} (+ {untimed} untimed, + {missed_ends} skipped ends) vs {ios} \
         requests in /sys/block/{disk}/stat"
    );
    // dd's requests are at most 64 KiB: what the missing ones can take away from the bytes.
    let bytes_slack = (untimed + missed_ends + missed_bytes + unexplained) * (64 * 1024) as f64;
    assert!(tiq > 0.05, "too little IO to compare ({tiq} s)");
    if kernel::best_hook("block") == "raw_tp/block_io_start" {
        // block_io_done fires where the kernel stops its own clock.
        check_close("latency sum vs time_in_queue (s)", sum, tiq, 0.05);
    } else {
        // The block_rq_* fallback (before 6.5) ends a request at block_rq_complete, which
        // fires before the block layer completes the request's bios (waking the waiting
        // process, an IPI to another CPU) and stops its own clock: probe reads short by that
        // work, never long. Measured on Linux 6.1 in qemu (TCG, where IPIs are slow): 0.939 and
        // 0.941 on a quiet host (~36 us per request); 0.83 with a buffered loop device while
        // the host was compiling. On hardware the work is a few microseconds per request.
        let ratio = sum / tiq;
        println!("latency sum vs time_in_queue (s), block_rq_* fallback: probe {sum:.4} vs {tiq:.4} (ratio {ratio:.4}, allowed 0.80..=1.01)");
        assert!(
            (0.80..=1.01).contains(&ratio),
            "fallback latency sum {sum} vs time_in_queue {tiq}"
        );
    }
    // Bytes on the device equal the sectors the kernel counted.
    let bytes = m1.sum(BYTES, &on_disk) - m0.sum(BYTES, &on_disk);
    let sectors =
        (after.read_sectors + after.write_sectors) - (before.read_sectors + before.write_sectors);
    let written = io(&m1, BYTES, &w.instance(), &disk, "write");
    let read = io(&m1, BYTES, &r.instance(), &disk, "read");
    println!(
        "{disk}: bytes {bytes} vs sectors x 512 {}; writer {written} of {}, reader {read} of {} \
         (up to {bytes_slack} missing with the requests above)",
        sectors * 512,
        64 * MIB,
        128 * MIB
    );
    let exact_or_short =
        |got: f64, want: u64| got <= want as f64 && got + bytes_slack >= want as f64;
    assert!(
        exact_or_short(bytes, sectors * 512),
        "bytes vs sectors on {disk}"
    );
    assert!(exact_or_short(written, 64 * MIB), "dd's writes");
    assert!(exact_or_short(read, 128 * MIB), "dd's reads");

    drop(lo);
    settle();
    let m2 = daemon.scrape();
    assert_eq!(
        m2.sum(BYTES, &on_disk),
        m1.sum(BYTES, &on_disk),
        "counters of a vanished device changed"
    );
    assert_eq!(
        m2.value("probe_collector_up", &[("collector", "block")]),
        Some(1.0)
    );
}

/// The block_rq_* fallback (kernels before 6.5): still exact for direct IO on a disk with a
/// scheduler, and the dirtied-bytes collector reports itself down when its hook is skipped.
#[test]
fn fallback_hooks_charge_direct_io_exactly() {
    let f = Scratch::new("fallback");
    let disk = disk_of(f.0.parent().expect("dir"));
    let daemon = Daemon::start(&[
        "--hooks.skip",
        "raw_tp/block_io_start,raw_tp/writeback_dirty_folio",
    ]);
    let w = dd_direct_64mib(&f);
    let m = daemon.scrape();
    m.assert_hook("block", "raw_tp/block_rq_issue");
    assert_eq!(
        m.value("probe_collector_up", &[("collector", "block_dirty")]),
        Some(0.0)
    );
    let got = io(&m, BYTES, &w.instance(), &disk, "write");
    println!("fallback: dd oflag=direct 64 MiB: probe {got} bytes");
    assert_eq!(got, (64 * MIB) as f64);
    assert_histograms_consistent(&m);
}

/// Requests in flight when the probe starts and stops: a daemon started in the middle of a
/// direct-IO load, and one stopped in the middle of it, never over-count and stay consistent.
#[test]
fn starting_and_stopping_under_load_keeps_counts_sane() {
    let g = Scratch::new("inflight");
    let disk = disk_of(g.0.parent().expect("dir"));
    let mut load = Workload::start(&[
        "write",
        "--file",
        g.path(),
        "--mb",
        "16",
        "--direct",
        "--secs",
        "4",
    ]);
    std::thread::sleep(Duration::from_millis(500));
    let early = Daemon::start(&[]);
    std::thread::sleep(Duration::from_millis(500));
    drop(early); // stopped mid-load
    let late = Daemon::start(&[]);
    let done = load.wait_done();
    let total = done.iter().find(|(k, _)| k == "bytes").expect("bytes").1;
    settle();
    let m = late.scrape();
    let got = io(&m, BYTES, &load.instance(), &disk, "write");
    println!("started mid-load: {got} of {total} bytes seen");
    assert!(got > 0.0 && got <= total as f64, "{got} of {total}");
    assert_histograms_consistent(&m);
    assert!(
        m.value("probe_block_events_total", &[("result", "unmatched")])
            .is_some(),
        "no unmatched-completion counter"
    );
}
