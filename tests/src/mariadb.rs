//! Real MariaDB servers for the kernel tests: independent `mariadbd` instances on loopback ports,
//! each with its own data directory on a disk, killed and deleted on drop (also when a test
//! panics); clients that keep one connection open; the kernel's per-connection TCP counters.
//!
//! Needs the Debian packages mariadb-server, mariadb-client and sysbench (`cargo xtask test`
//! installs them). Servers are started directly (no systemd, no mysqld_safe), as root, with
//! `--no-defaults`, so nothing of a system-wide MariaDB configuration or server is used.
//!
//! Over 500 lines: the servers, their clients and the kernel's per-connection counters are used
//! together.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{die_with_parent, free_port, sh};

/// How long a server may take to accept its first query.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Panics with a clear message unless `tool` runs.
fn require(tool: &str, package: &str) {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} not found: install the Debian package {package} (`cargo xtask test` does)"
    );
}

/// A directory deleted (recursively) on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child killed and reaped on drop.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Deletes data directories that killed test processes left behind (`mariadb-<pid>-<name>`
/// whose pid is gone).
fn remove_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix("mariadb-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A running `mariadbd` on 127.0.0.1:`port`, killed (SIGKILL) and its directory deleted on drop.
pub struct MariaDb {
    child: Child,
    /// A short name for messages ("A", "B", ...).
    pub name: String,
    pub port: u16,
    pub pid: u32,
    socket: PathBuf,
    dir: TempDir,
}

impl MariaDb {
    /// Starts one server per name, each with a fresh data directory under `base` (which must be
    /// on a disk for block IO to be seen), and waits until every one answers a query.
    pub fn start_many(base: &Path, names: &[&str]) -> Vec<MariaDb> {
        require("mariadbd", "mariadb-server");
        require("mariadb-install-db", "mariadb-server");
        require("mariadb", "mariadb-client");
        std::fs::create_dir_all(base).unwrap_or_else(|e| panic!("{}: {e}", base.display()));
        remove_stale(base);

        // Data directories, initialised in parallel (a few seconds each).
        let dirs: Vec<TempDir> = names
            .iter()
            .map(|n| {
                let d = base.join(format!("mariadb-{}-{n}", std::process::id()));
                let _ = std::fs::remove_dir_all(&d);
                std::fs::create_dir_all(d.join("tmp"))
                    .unwrap_or_else(|e| panic!("{}: {e}", d.display()));
                TempDir(d)
            })
            .collect();
        let mut installs: Vec<KillOnDrop> = dirs
            .iter()
            .map(|d| {
                let log = std::fs::File::create(d.0.join("install.log")).expect("install log");
                let log2 = log.try_clone().expect("install log");
                Command::new("mariadb-install-db")
                    .arg("--no-defaults")
                    .arg(format!("--datadir={}", d.0.join("data").display()))
                    // Passed on to the bootstrap server: parallel bootstraps sharing /tmp
                    // delete each other's temporary tables.
                    .arg(format!("--tmpdir={}", d.0.join("tmp").display()))
                    .args([
                        "--user=root",
                        // root@127.0.0.1 without a password, as in older releases.
                        "--auth-root-authentication-method=normal",
                        "--skip-test-db",
                        "--skip-name-resolve",
                    ])
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(log2)
                    .spawn()
                    .map(KillOnDrop)
                    .expect("spawn mariadb-install-db")
            })
            .collect();
        for (child, d) in installs.iter_mut().zip(&dirs) {
            let status = child.0.wait().expect("wait for mariadb-install-db");
            assert!(
                status.success(),
                "mariadb-install-db for {} failed ({status}):\n{}",
                d.0.display(),
                std::fs::read_to_string(d.0.join("install.log")).unwrap_or_default()
            );
        }

        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < names.len() {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let mut servers: Vec<MariaDb> = names
            .iter()
            .zip(dirs)
            .zip(ports)
            .map(|((name, dir), port)| Self::spawn(name, dir, port))
            .collect();
        for s in &mut servers {
            s.wait_ready();
        }
        servers
    }

    fn spawn(name: &str, dir: TempDir, port: u16) -> Self {
        let d = &dir.0;
        // Unix socket paths are limited to 107 bytes: keep it short, in the temporary directory.
        let socket =
            std::env::temp_dir().join(format!("probe-mariadb-{}-{port}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--tmpdir={}", d.join("tmp").display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", d.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
                "--innodb-flush-method=O_DIRECT",
            ])
            // No systemd: mariadbd would notify it only if this were set.
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = die_with_parent(&mut cmd).spawn().expect("spawn mariadbd");
        let pid = child.id();
        Self {
            child,
            name: name.to_string(),
            port,
            pid,
            socket,
            dir,
        }
    }

    fn wait_ready(&mut self) {
        let t0 = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "mariadbd {} (port {}) exited ({status}) while starting; its log:\n{}",
                    self.name,
                    self.port,
                    self.error_log()
                );
            }
            let out = self.client_command(&["-e", "SELECT 1"]).output();
            if out.is_ok_and(|o| o.status.success()) {
                return;
            }
            assert!(
                t0.elapsed() < START_TIMEOUT,
                "mariadbd {} (port {}) did not accept queries within {START_TIMEOUT:?}; its log:\n{}",
                self.name,
                self.port,
                self.error_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The instance probe should put this server in (`<comm>:<lowest listening port>`).
    pub fn instance(&self) -> String {
        format!("mariadbd:{}", self.port)
    }

    /// The directory that holds the data directory (`data/`), `tmp/` and the logs.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    /// What the server logged so far.
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("error.log")).unwrap_or_default()
    }

    /// `mariadb` connected over TCP as root, batch mode, no column names.
    fn client_command(&self, extra: &[&str]) -> Command {
        let mut cmd = Command::new("mariadb");
        cmd.args(["--no-defaults", "-h", "127.0.0.1", "-u", "root", "-N", "-B"])
            .arg(format!("--port={}", self.port))
            .args(extra)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs SQL on a connection of its own; panics if it fails. Returns the output.
    pub fn sql(&self, sql: &str) -> String {
        let out = self
            .client_command(&["-e", sql])
            .output()
            .expect("run mariadb");
        assert!(
            out.status.success(),
            "mariadb {} (port {}): {sql:?} failed: {}",
            self.name,
            self.port,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A client with one connection that stays open, on database `db`.
    pub fn session(&self, db: &str) -> Session {
        let mut cmd = self.client_command(&["--unbuffered", "-D", db]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = die_with_parent(&mut cmd)
            .spawn()
            .expect("spawn mariadb client");
        let stdin = child.stdin.take().expect("client stdin");
        let stdout = BufReader::new(child.stdout.take().expect("client stdout"));
        Session {
            child,
            stdin,
            stdout,
            what: format!("{} (port {})", self.name, self.port),
        }
    }

    /// Options that point sysbench at this server.
    pub fn sysbench_args(&self, db: &str) -> Vec<String> {
        vec![
            "--mysql-host=127.0.0.1".into(),
            format!("--mysql-port={}", self.port),
            "--mysql-user=root".into(),
            format!("--mysql-db={db}"),
        ]
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
        // `dir` is deleted when the field drops, after the server is gone.
    }
}

/// One client connection (the `mariadb` command-line client reading statements from a pipe).
pub struct Session {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    what: String,
}

impl Session {
    /// Runs `sql`, which must print exactly one line (end an INSERT with `SELECT ROW_COUNT();`),
    /// and returns that line.
    pub fn query(&mut self, sql: &str) -> Result<String, String> {
        writeln!(self.stdin, "{sql}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("{}: write {sql:?}: {e}", self.what))?;
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(n) if n > 0 => Ok(line.trim_end().to_string()),
            r => {
                let mut err = String::new();
                if let Some(e) = self.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                Err(format!(
                    "{}: no answer to {sql:?} ({r:?}): {}",
                    self.what,
                    err.trim()
                ))
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A statement run again and again on one connection in a thread, until stopped.
pub struct QueryLoop {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<u64, String>>>,
}

impl QueryLoop {
    pub fn start(mut session: Session, sql: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let sql = sql.to_string();
        let handle = std::thread::spawn(move || {
            let mut runs = 0;
            while !flag.load(Ordering::Relaxed) {
                session.query(&sql)?;
                runs += 1;
            }
            Ok(runs)
        });
        Self {
            stop,
            handle: Some(handle),
        }
    }

    /// Panics, with the reason, if the loop stopped on its own (the statement failed).
    pub fn assert_running(&mut self) {
        if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
            let why = match self.handle.take().map(JoinHandle::join) {
                Some(Ok(Err(e))) => e,
                other => format!("{other:?}"),
            };
            panic!("the query loop stopped early: {why}");
        }
    }

    /// Stops after the statement running now; returns how many times it ran, or panics with why
    /// it failed.
    pub fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let h = self.handle.take().expect("running");
        match h.join() {
            Ok(Ok(runs)) => runs,
            Ok(Err(e)) => panic!("query loop failed: {e}"),
            Err(_) => panic!("query loop panicked"),
        }
    }
}

impl Drop for QueryLoop {
    fn drop(&mut self) {
        // Not joined: after a failure the thread ends when its client does (the servers are
        // killed on drop), and waiting for it could block a test that is already failing.
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A background command (e.g. sysbench), output to a log file, killed on drop.
pub struct Background {
    child: Child,
    log: PathBuf,
    what: String,
}

impl Background {
    pub fn spawn(cmd: &str, args: &[String], log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let mut c = Command::new(cmd);
        c.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        let child = die_with_parent(&mut c)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd}: {e}"));
        Self {
            child,
            log,
            what: format!("{cmd} {}", args.join(" ")),
        }
    }

    /// Panics (with its output) if the command has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{} exited early ({status}):\n{}",
                self.what,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sysbench` to completion (e.g. `prepare`); panics with its output if it fails.
pub fn sysbench(args: &[String]) -> String {
    require("sysbench", "sysbench");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    sh("sysbench", &args)
}

/// The kernel's payload counters of one TCP connection (`ss -ti`, from tcp_info), in the
/// application's terms: bytes it has read (`bytes_received` minus the unread Recv-Q) and bytes
/// it has written (`bytes_acked` plus Send-Q, which holds what is queued but not yet acked).
/// These are what `recv`/`send` returned, so they are what probe's socket tracepoints count.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TcpConn {
    pub rx: u64,
    pub tx: u64,
}

/// Established TCP connections whose local port is `port` (the server side of a listener on
/// it), keyed by "local peer" address, from `ss -tinH`.
pub fn tcp_conns(port: u16) -> BTreeMap<String, TcpConn> {
    let filter = format!("sport = :{port}");
    let out = sh("ss", &["-tinH", "state", "established", &filter]);
    parse_ss(&out)
}

fn parse_ss(out: &str) -> BTreeMap<String, TcpConn> {
    let mut conns = BTreeMap::new();
    let mut current: Option<(String, u64, u64)> = None;
    for line in out.lines() {
        if !line.starts_with([' ', '\t']) {
            // Recv-Q Send-Q Local Peer (no State column with a state filter).
            let f: Vec<&str> = line.split_whitespace().collect();
            assert!(f.len() >= 4, "unexpected ss line: {line:?}");
            let q = |s: &str| -> u64 {
                s.parse()
                    .unwrap_or_else(|_| panic!("bad queue in ss line {line:?}"))
            };
            current = Some((format!("{} {}", f[2], f[3]), q(f[0]), q(f[1])));
            continue;
        }
        let (key, recv_q, send_q) = current
            .take()
            .unwrap_or_else(|| panic!("ss info line without a socket line: {line:?}"));
        // ss prints a counter only when it is not zero.
        let field = |name: &str| -> u64 {
            line.split_whitespace()
                .find_map(|t| t.strip_prefix(name))
                .map_or(0, |v| {
                    v.parse()
                        .unwrap_or_else(|_| panic!("bad {name} in {line:?}"))
                })
        };
        let received = field("bytes_received:");
        let acked = field("bytes_acked:");
        conns.insert(
            key,
            TcpConn {
                rx: received.saturating_sub(recv_q),
                tx: acked + send_q,
            },
        );
    }
    assert!(current.is_none(), "ss printed no info line (-i) in:\n{out}");
    conns
}

/// `write_bytes` and `cancelled_write_bytes` of /proc/<pid>/io.
pub fn proc_io_writes(pid: u32) -> (u64, u64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/io: {e}"));
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/io"))
    };
    (field("write_bytes:"), field("cancelled_write_bytes:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_info() {
        let out = "24     0      127.0.0.1:33061 127.0.0.1:60912\n\t bbr wscale:10,10 \
                   bytes_sent:3256 bytes_acked:3200 bytes_received:660739 segs_out:16510\n\
                   0 7 127.0.0.1:33061 127.0.0.1:60936\n\t cubic rto:204\n";
        let c = parse_ss(out);
        assert_eq!(
            c["127.0.0.1:33061 127.0.0.1:60912"],
            TcpConn {
                rx: 660_715,
                tx: 3200
            }
        );
        assert_eq!(
            c["127.0.0.1:33061 127.0.0.1:60936"],
            TcpConn { rx: 0, tx: 7 }
        );
    }
}
