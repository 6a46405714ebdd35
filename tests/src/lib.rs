//! Helpers for the kernel tests: run the real daemon, scrape it, parse what it serves, start
//! workloads, and read ground truth from the kernel (/proc, CPU clocks).
//!
//! These tests need root and a BTF kernel; `cargo xtask test` runs them with PROBE_BIN set to
//! the daemon it just built. A test that cannot run fails with the reason; none is skipped.
//!
//! Over 500 lines: the one harness every kernel test file shares (the daemon, its metrics,
//! workloads, ground-truth readers, tolerance checks); each section is small and stands alone.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    time::{Duration, Instant},
};

pub mod kernel;
pub mod mariadb;
pub mod top;

/// Makes a child die with the thread that spawned it, so nothing outlives a test process that
/// is killed outright (no destructors run then).
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// The daemon binary under test.
pub fn probe_bin() -> PathBuf {
    let bin = std::env::var_os("PROBE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../target/release/probe"
            ))
        });
    assert!(
        bin.exists(),
        "{} not found: run the kernel tests with `cargo xtask test`",
        bin.display()
    );
    bin
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A running `probe serve`, killed on drop. Its log (stderr) goes to a file: see [`Daemon::log`].
pub struct Daemon {
    child: Child,
    pub port: u16,
    log: PathBuf,
    /// The command and arguments it was started with (for [`Daemon::restart`]).
    command: Vec<String>,
    /// Pins and saved accounts of its own (removed with `probe unpin` when dropped), when the
    /// program is probe itself.
    pins: Option<(String, String)>,
    /// Its history directory (removed when dropped), when the program is probe itself.
    history: Option<PathBuf>,
}

impl Daemon {
    /// Starts the daemon with a short collection interval and waits until /readyz says so.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_wrapped(&[], extra)
    }

    /// Like [`Daemon::start`], with the daemon run by a wrapper command (`wrapper` followed by
    /// the daemon's path and arguments), e.g. to change what it sees of the system.
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Self {
        let bin = probe_bin();
        let mut program = wrapper.to_vec();
        program.push(bin.to_str().expect("utf-8 path"));
        Self::start_program(&program, extra)
    }

    /// Like [`Daemon::start`], with `program` (a command and its arguments) in place of the
    /// probe binary, e.g. `podman run ... IMAGE`.
    pub fn start_program(program: &[&str], extra: &[&str]) -> Self {
        assert!(
            unsafe { libc::geteuid() } == 0,
            "kernel tests need root (they load BPF programs)"
        );
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let mut args = vec!["serve", "--web.listen-address", &addr];
        if !extra.contains(&"--collect.interval") {
            args.extend(["--collect.interval", "1s"]);
        }
        // Each daemon pins into a directory of its own (tests run one after another, and a
        // daemon must not carry on from the previous test's), removed when it is dropped.
        let own = program.last().is_some_and(|p| p.ends_with("/probe"))
            && !extra
                .iter()
                .any(|a| a.starts_with("--bpf.pin-path") || *a == "--bpf.no-pin");
        let pin_dir = format!("/sys/fs/bpf/probe-test-{}-{port}", std::process::id());
        let state = std::env::temp_dir()
            .join(format!("probe-test-{}-{port}.state", std::process::id()))
            .to_string_lossy()
            .into_owned();
        if own {
            args.extend(["--bpf.pin-path", &pin_dir, "--state.file", &state]);
        }
        // And records history into a directory of its own, not the host's /var/lib/probe.
        let history = (program.last().is_some_and(|p| p.ends_with("/probe"))
            && !extra
                .iter()
                .any(|a| a.starts_with("--history.dir") || *a == "--history.disable"))
        .then(|| {
            std::env::temp_dir().join(format!("probe-test-{}-{port}.history", std::process::id()))
        });
        let history_arg = history.as_ref().map(|h| h.to_string_lossy().into_owned());
        if let Some(h) = &history_arg {
            let _ = std::fs::remove_dir_all(h);
            args.extend(["--history.dir", h]);
        }
        args.extend_from_slice(extra);
        let log = std::env::temp_dir().join(format!("probe-test-{port}.log"));
        let mut command: Vec<String> = program.iter().map(|s| s.to_string()).collect();
        command.extend(args.iter().map(|s| s.to_string()));
        let mut d = Self {
            child: Self::spawn(&command, &log, false),
            port,
            log,
            command,
            pins: own.then(|| (pin_dir.clone(), state.clone())),
            history,
        };
        d.wait_ready();
        d
    }

    fn spawn(command: &[String], log: &Path, append: bool) -> Child {
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(log)
            .expect("daemon log file");
        let (first, rest) = command.split_first().expect("a program");
        let mut cmd = Command::new(first);
        cmd.args(rest);
        // A killed test process must not leave a daemon attached to the kernel (it would load
        // every later test and benchmark).
        die_with_parent(&mut cmd)
            .env("PROBE_LOG", "warn")
            .stdin(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawn probe serve")
    }

    /// SIGKILLs the daemon: nothing of it runs any more, only its pinned links stay.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the daemon again with the same arguments and port (after [`Daemon::kill`] or
    /// [`Daemon::terminate`]); returns when it is ready. Its log goes on in the same file.
    pub fn restart(&mut self) {
        self.child = Self::spawn(&self.command, &self.log, true);
        self.wait_ready();
    }

    /// How long the daemon may take to get ready: loading the programs takes a second here and
    /// tens of seconds under qemu's TCG with a load running beside it.
    const READY_WITHIN: Duration = Duration::from_secs(120);

    /// Sends SIGTERM and waits for the daemon to exit.
    pub fn terminate(&mut self) {
        // SAFETY: kill(2) with the pid of our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }

    fn wait_ready(&mut self) {
        let d = self;
        let t0 = Instant::now();
        while t0.elapsed() < Self::READY_WITHIN {
            if let Ok(Some(status)) = d.child.try_wait() {
                panic!(
                    "probe serve exited ({status}) before it was ready; its log:\n{}",
                    d.log()
                );
            }
            if d.get("/readyz").is_ok_and(|(status, _)| status == 200) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "probe serve did not become ready within {} s; its log:\n{}",
            Self::READY_WITHIN.as_secs(),
            d.log()
        );
    }

    /// The daemon's own pin directory and state file (see [`Daemon::start`]), if it has them.
    pub fn pins(&self) -> Option<(&str, &str)> {
        self.pins.as_ref().map(|(d, s)| (d.as_str(), s.as_str()))
    }

    /// Its history directory, if [`Daemon::start`] chose it.
    pub fn history_dir(&self) -> Option<&Path> {
        self.history.as_deref()
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A plain HTTP/1.0 GET; returns (status, body).
    pub fn get(&self, path: &str) -> std::io::Result<(u16, String)> {
        http_get(self.port, path, None)
    }

    /// Asserts that this restarted daemon carried on from its saved accounts
    /// (`probe_state_restored 1` in `m`, one of its scrapes); the failure shows its log.
    pub fn assert_restored(&self, m: &Metrics) {
        assert_eq!(
            m.value("probe_state_restored", &[]),
            Some(1.0),
            "the restarted daemon did not carry on from the saved accounts; its log:\n{}",
            self.log()
        );
    }

    /// Scrapes /metrics in the classic text format and parses it.
    pub fn scrape(&self) -> Metrics {
        let (status, body) = self.get("/metrics").expect("scrape");
        assert_eq!(status, 200, "scrape failed: {body}");
        Metrics::parse(&body)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
        if let Some(h) = &self.history {
            let _ = std::fs::remove_dir_all(h);
        }
        // A killed daemon leaves its links attached (that is the point of pinning): detach them.
        if let Some((dir, state)) = &self.pins {
            let (ok, out) = said(Command::new(probe_bin()).args([
                "unpin",
                "--bpf.pin-path",
                dir,
                "--state.file",
                state,
            ]));
            if !ok && !std::thread::panicking() {
                panic!("probe unpin failed: {out}");
            }
        }
    }
}

/// Lets this process open as many files as its hard limit allows (tests that hold a thousand
/// connections; a default soft limit is 1024).
pub fn raise_open_files_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

pub fn http_get(port: u16, path: &str, accept: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let accept = accept
        .map(|a| format!("Accept: {a}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n{accept}\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8(raw)
        .map_err(|e| std::io::Error::other(format!("response is not UTF-8: {e}")))?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_string()))
}

/// One sample of the classic text format.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    /// Parses the classic text format (label values unescaped). Panics on a malformed line:
    /// what the daemon serves must parse.
    pub fn parse(text: &str) -> Self {
        let samples = text
            .lines()
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| parse_line(l).unwrap_or_else(|| panic!("malformed exposition line: {l:?}")))
            .collect();
        Self {
            samples,
            text: text.to_string(),
        }
    }

    /// Samples of a metric whose labels include all of `want`.
    pub fn find(&self, name: &str, want: &[(&str, &str)]) -> Vec<&Sample> {
        self.samples
            .iter()
            .filter(|s| s.name == name && want.iter().all(|(k, v)| s.label(k) == Some(v)))
            .collect()
    }

    /// The sample lines that contain any of `needles` (without HELP/TYPE): what a failing
    /// assertion shows instead of the whole scrape, which can be too long to be printed in full.
    pub fn lines_with(&self, needles: &[&str]) -> String {
        self.text
            .lines()
            .filter(|l| !l.starts_with('#') && needles.iter().any(|n| l.contains(n)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Runs of these kernel programs the kernel skipped (it does not run a program again on a
    /// CPU where it is running: an interrupt that fires the same hook while it runs).
    pub fn missed_runs(&self, programs: &[&str]) -> f64 {
        programs
            .iter()
            .map(|p| self.sum("probe_bpf_program_missed_runs_total", &[("program", p)]))
            .sum()
    }

    /// Panics unless `collector` runs on `hook`.
    pub fn assert_hook(&self, collector: &str, hook: &str) {
        let want = [("collector", collector), ("hook", hook)];
        assert_eq!(
            self.value("probe_collector_hook_info", &want),
            Some(1.0),
            "{collector} does not use {hook}:\n{}",
            self.text
        );
    }

    /// Sum of the samples of `name` whose labels include all of `want` (0 if there are none).
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.find(name, want).iter().map(|s| s.value).sum()
    }

    /// The single sample of `name` with these labels.
    pub fn value(&self, name: &str, want: &[(&str, &str)]) -> Option<f64> {
        match self.find(name, want).as_slice() {
            [one] => Some(one.value),
            [] => None,
            many => panic!("{} samples of {name} with {want:?}: {many:?}", many.len()),
        }
    }
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(['{', ' '])?;
    let name = line[..name_end].to_string();
    let mut labels = Vec::new();
    let mut chars = line[name_end..].chars().peekable();
    if chars.peek() == Some(&'{') {
        chars.next();
        loop {
            match chars.peek()? {
                '}' => {
                    chars.next();
                    break;
                }
                ',' => {
                    chars.next();
                    continue;
                }
                _ => {}
            }
            let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
            if chars.next()? != '"' {
                return None;
            }
            let mut value = String::new();
            loop {
                match chars.next()? {
                    '\\' => match chars.next()? {
                        'n' => value.push('\n'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        _ => return None,
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((key, value));
        }
    }
    let rest: String = chars.collect();
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The workload binary, built by cargo next to the test executables (target/<profile>/).
pub fn workload_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("probe-workload");
    assert!(
        bin.exists(),
        "{} not built: run the kernel tests with `cargo xtask test`",
        bin.display()
    );
    bin
}

/// A workload process (tests/src/bin/probe-workload.rs), killed on drop.
pub struct Workload {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Option<BufReader<ChildStdout>>,
    pub pid: u32,
    pub port: u16,
}

impl Workload {
    pub fn start(args: &[&str]) -> Self {
        Self::start_wrapped(&[], args)
    }

    /// Starts the workload under a wrapper command, e.g. `ip netns exec NS`.
    pub fn start_wrapped(wrapper: &[&str], args: &[&str]) -> Self {
        let bin = workload_bin();
        let mut cmd = match wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let mut child = die_with_parent(&mut cmd)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn probe-workload");
        let stdin = child.stdin.take();
        let stdout = Some(BufReader::new(child.stdout.take().expect("stdout")));
        let mut w = Self {
            child,
            stdin,
            stdout,
            pid: 0,
            port: 0,
        };
        let ready = w.line();
        let field = |k: &str| -> u64 {
            ready
                .split_whitespace()
                .find_map(|f| f.strip_prefix(k))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("workload said {ready:?}"))
        };
        w.pid = field("pid=") as u32;
        w.port = field("port=") as u16;
        w
    }

    /// The next line the workload prints.
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        let n = self
            .stdout
            .as_mut()
            .expect("the workload's output was taken")
            .read_line(&mut line)
            .expect("read workload output");
        assert!(n > 0, "workload exited early");
        line.trim_end().to_string()
    }

    /// Tells a workload started with `--until-stop` to finish (it then prints `done`).
    pub fn stop(&mut self) {
        self.send_line("stop");
    }

    /// Sends a line to the workload's stdin (`step` for `--rounds`).
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .expect("write to the workload");
        stdin.flush().expect("flush");
    }

    /// The workload's output, for reading it on another thread (`line` panics afterwards).
    pub fn take_stdout(&mut self) -> BufReader<ChildStdout> {
        self.stdout.take().expect("the workload's output was taken")
    }

    /// Waits for `done` and returns its `key=value` fields.
    pub fn wait_done(&mut self) -> Vec<(String, u64)> {
        let line = self.line();
        assert!(line.starts_with("done"), "workload said {line:?}");
        line.split_whitespace()
            .filter_map(|f| {
                let (k, v) = f.split_once('=')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// Ground truth for a finished `burst`: the parent's CPU (its CPU clock, now) plus its reaped
    /// children's (their rusage, which the workload printed in `done`), in seconds.
    pub fn burst_cpu_truth(&self, done: &[(String, u64)]) -> (f64, f64) {
        let children = done
            .iter()
            .find(|(k, _)| k == "children_cpu_ns")
            .map(|(_, v)| *v as f64 / 1e9)
            .unwrap_or_else(|| panic!("burst printed no children_cpu_ns: {done:?}"));
        (process_cpu_ns(self.pid) as f64 / 1e9, children)
    }

    /// The instance probe should put this workload in (comm `probe-workload`, its port).
    pub fn instance(&self) -> String {
        format!("probe-workload:{}", self.port)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The kernel's warnings so far (`dmesg` lines of WARNING, BUG and refcount_t reports): a test
/// compares them before and after, so that a kernel fault its load provoked (probe's programs
/// and iterators run inside the kernel) fails it instead of passing unseen.
pub fn kernel_warnings() -> Vec<String> {
    try_kernel_warnings().unwrap_or_else(|e| panic!("{e}"))
}

/// [`kernel_warnings`], with dmesg's failure as an error (for use where a panic must not
/// happen, such as while unwinding).
pub fn try_kernel_warnings() -> Result<Vec<String>, String> {
    let out = Command::new("dmesg")
        .output()
        .map_err(|e| format!("run dmesg (util-linux): {e}"))?;
    if !out.status.success() {
        return Err(format!("dmesg failed: {out:?}"));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            ["WARNING:", "BUG:", "refcount_t:"]
                .iter()
                .any(|w| l.contains(w))
        })
        .map(String::from)
        .collect())
}

/// Resident memory of a process in KiB (VmRSS), or None if it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// /proc/<pid>/schedstat of the process's main thread: (on-CPU ns, run-queue wait ns).
pub fn schedstat(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat")).expect("schedstat");
    let mut f = s
        .split_whitespace()
        .map(|v| v.parse::<u64>().expect("schedstat field"));
    (f.next().expect("cpu"), f.next().expect("delay"))
}

/// The whole process's CPU time (all threads, including exited ones), from its CPU clock.
pub fn process_cpu_ns(pid: u32) -> u64 {
    let mut clock: libc::clockid_t = 0;
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    assert_eq!(rc, 0, "clock_getcpuclockid({pid})");
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    assert_eq!(
        unsafe { libc::clock_gettime(clock, &mut ts) },
        0,
        "clock_gettime"
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The whole disk a file lives on, as /sys/block names it: st_dev, then /sys/dev/block/M:m
/// (a partition's directory sits inside its disk's). Panics if the file is not on a block
/// device (e.g. tmpfs): block IO tests need a real disk.
pub fn disk_of(path: &std::path::Path) -> String {
    use std::os::unix::fs::MetadataExt as _;
    let dev = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let link = format!("/sys/dev/block/{major}:{minor}");
    let dir = std::fs::canonicalize(&link).unwrap_or_else(|e| {
        panic!(
            "{} is on device {major}:{minor}, which is not a block device ({link}: {e}); \
             the block IO tests need a directory on a disk",
            path.display()
        )
    });
    let disk = if dir.join("partition").exists() {
        dir.parent().expect("partition parent").to_path_buf()
    } else {
        dir
    };
    disk.file_name()
        .expect("disk name")
        .to_string_lossy()
        .into_owned()
}

/// /sys/block/<disk>/stat: the kernel's own counters for a disk (see Documentation/block/stat).
#[derive(Clone, Copy, Debug)]
pub struct DiskStat {
    /// Requests completed: reads + writes + discards + flushes.
    pub ios: u64,
    /// time_in_queue (ms): the sum of all requests' times from start to completion.
    pub time_in_queue_ms: u64,
    pub read_sectors: u64,
    pub write_sectors: u64,
    /// Requests in flight now.
    pub in_flight: u64,
}

/// [`disk_stat`] once the disk is idle: nothing in flight and no request completed for 300 ms.
/// Panics after 30 s.
pub fn idle_disk_stat(disk: &str) -> DiskStat {
    let t0 = Instant::now();
    let mut last = disk_stat(disk);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = disk_stat(disk);
        if now.in_flight == 0 && now.ios == last.ios {
            return now;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{disk} did not become idle within 30 s"
        );
        last = now;
    }
}

pub fn disk_stat(disk: &str) -> DiskStat {
    let text = std::fs::read_to_string(format!("/sys/block/{disk}/stat"))
        .unwrap_or_else(|e| panic!("/sys/block/{disk}/stat: {e}"));
    let f: Vec<u64> = text
        .split_whitespace()
        .map(|v| v.parse().expect("stat field"))
        .collect();
    assert!(
        f.len() >= 17,
        "/sys/block/{disk}/stat has {} fields",
        f.len()
    );
    DiskStat {
        ios: f[0] + f[4] + f[11] + f[15],
        time_in_queue_ms: f[10],
        read_sectors: f[2],
        write_sectors: f[6],
        in_flight: f[8],
    }
}

/// `write_bytes` of /proc/<pid>/io: bytes the process caused to be written to storage,
/// counted by the kernel when it dirties page-cache pages (and for direct IO when submitted).
pub fn proc_write_bytes(pid: u32) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/<pid>/io");
    text.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("write_bytes in /proc/<pid>/io")
}

/// Writes `mb` MiB to `path` with O_DIRECT-free buffered IO, makes it durable, and drops it from
/// the page cache, so the next read comes from the disk.
pub fn cold_file(path: &std::path::Path, mb: usize) {
    use std::os::fd::AsRawFd as _;
    let chunk = vec![0x5au8; 1 << 20];
    let mut f = std::fs::File::create(path).expect("create test file");
    for _ in 0..mb {
        f.write_all(&chunk).expect("write test file");
    }
    f.sync_all().expect("fsync test file");
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise(DONTNEED)");
    // DONTNEED is best effort (pages still in per-CPU LRU batches stay): then drop clean
    // caches, as the test needs a file that is not cached.
    if resident_pages(path) != 0 {
        std::fs::write("/proc/sys/vm/drop_caches", "1").expect("drop_caches");
    }
}

/// Pages of a file that are in the page cache (mincore(2) over a mapping of it).
pub fn resident_pages(path: &std::path::Path) -> usize {
    use std::os::fd::AsRawFd as _;
    let f = std::fs::File::open(path).expect("open");
    let len = f.metadata().expect("stat").len() as usize;
    if len == 0 {
        return 0;
    }
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    // SAFETY: a read-only shared mapping of an open file, unmapped below; mincore writes one
    // byte per page into a vector of that many bytes.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap");
        let mut vec = vec![0u8; len.div_ceil(page)];
        let rc = libc::mincore(addr, len, vec.as_mut_ptr());
        libc::munmap(addr, len);
        assert_eq!(rc, 0, "mincore");
        vec.iter().filter(|b| *b & 1 == 1).count()
    }
}

/// Runs a command to completion; returns whether it succeeded and what it printed (stdout, then
/// stderr). Panics only if it cannot be started.
pub fn said(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Runs a command to completion; panics with its output if it fails. Returns its stdout.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Relative difference, printed with the measurement so the test log shows the numbers.
pub fn check_close(what: &str, got: f64, want: f64, tolerance: f64) {
    let rel = (got - want).abs() / want.abs().max(f64::MIN_POSITIVE);
    println!(
        "{what}: probe {got:.6} vs ground truth {want:.6} (ratio {:.5}, tolerance {tolerance})",
        got / want
    );
    assert!(
        rel <= tolerance,
        "{what}: probe {got} vs {want}: off by {:.3}% (> {:.1}%)",
        rel * 100.0,
        tolerance * 100.0
    );
}

/// Ground truth read just before and just after the moment probe's value was taken brackets
/// it: prints the bracket and checks `got` against the nearest value in it.
pub fn check_bracketed(what: &str, got: f64, (lo, hi): (f64, f64), tolerance: f64) {
    println!(
        "{what}: ground truth between {lo:.6} and {hi:.6} (bracket {:.3}%)",
        (hi - lo) / hi.abs().max(f64::MIN_POSITIVE) * 100.0
    );
    check_close(what, got, got.clamp(lo, hi), tolerance);
}

/// `probe replay --check RECORDING`: Ok(readings compared) if, after every reading, the replay
/// produced exactly the metrics the recording daemon produced; Err(its report) otherwise.
pub fn replay_check(recording: &std::path::Path) -> Result<u32, String> {
    let out = Command::new(probe_bin())
        .args(["replay", "--check"])
        .arg(recording)
        .output()
        .map_err(|e| format!("run probe replay: {e}"))?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(format!("the replay differs:\n{report}"));
    }
    let counts = report
        .split_once(" readings replayed: ")
        .and_then(|(n, rest)| {
            let identical = rest.split_whitespace().next()?.parse::<u32>().ok()?;
            Some((n.trim().parse::<u32>().ok()?, identical))
        });
    match counts {
        Some((n, identical)) if n == identical => Ok(n),
        _ => Err(format!("unexpected report: {report}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_escaped_labels() {
        let m =
            Metrics::parse("# HELP x y\nx_total{a=\"q\\\"b\\\\c\\nd\",b=\"\"} 1.5\nup 1\nz{} 2\n");
        assert_eq!(m.samples.len(), 3);
        assert_eq!(m.samples[0].label("a"), Some("q\"b\\c\nd"));
        assert_eq!(m.samples[0].label("b"), Some(""));
        assert_eq!(m.value("up", &[]), Some(1.0));
        assert_eq!(m.value("z", &[]), Some(2.0));
    }
}
