//! The task iterator's fallback: the same per-thread records, read from /proc.
//!
//! Used where the task iterator cannot load (kernels before 5.8, no BTF, or `--hooks.skip
//! iter/task`). The kernel exposes the same totals there: per thread, on-CPU time and run-queue
//! wait in /proc/<pid>/task/<tid>/schedstat. It costs far more per collection (several files per
//! process instead of one read), which `probe check` says.

use std::{
    collections::HashMap,
    io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use probe_common::{
    cpu::{TaskRecord, PF_KTHREAD},
    COMM_LEN,
};

pub struct ProcTasks {
    /// Nanoseconds per clock tick (/proc/<pid>/stat times are in ticks).
    tick_ns: u64,
    cgroup2: Option<PathBuf>,
    own_tgid: u32,
    /// cgroup path -> cgroup id (the directory's inode), so each is stat'ed once.
    cgroup_ids: HashMap<String, u64>,
}

impl ProcTasks {
    pub fn new(ticks_per_sec: u64, cgroup2: Option<PathBuf>) -> Self {
        Self {
            tick_ns: 1_000_000_000 / ticks_per_sec.max(1),
            cgroup2,
            own_tgid: std::process::id(),
            cgroup_ids: HashMap::new(),
        }
    }

    /// Start times from /proc have tick resolution; keys from the kernel programs (the
    /// dead-thread map) are rounded down to it so both name a process the same way.
    pub fn start_granularity_ns(&self) -> u64 {
        self.tick_ns
    }

    /// One record per live thread. Processes that exit while being read are skipped.
    pub fn read(&mut self) -> io::Result<Vec<TaskRecord>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc")?.flatten() {
            let Some(tgid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if tgid == self.own_tgid {
                continue;
            }
            // A process that vanished mid-read yields what was read or nothing.
            let _ = self.read_process(tgid, &entry.path(), &mut out);
        }
        Ok(out)
    }

    fn read_process(&mut self, tgid: u32, dir: &Path, out: &mut Vec<TaskRecord>) -> io::Result<()> {
        let stat = parse_stat(&std::fs::read(dir.join("stat"))?)
            .ok_or_else(|| io::Error::other("bad stat"))?;
        let rss_pages = std::fs::read_to_string(dir.join("statm"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        let cgroup_id = self.cgroup_id(dir);
        let leader = TaskRecord {
            pid: tgid,
            tgid,
            start_ns: stat.start_ticks * self.tick_ns,
            rss_pages,
            cgroup_id,
            ppid: stat.ppid,
            is_leader: 1,
            is_kthread: u32::from(stat.flags & PF_KTHREAD != 0),
            comm: stat.comm,
            ..TaskRecord::default()
        };
        let mut threads = Vec::new();
        for t in std::fs::read_dir(dir.join("task"))?.flatten() {
            let Some(tid) = t.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(schedstat) = std::fs::read_to_string(t.path().join("schedstat")) else {
                continue;
            };
            let mut f = schedstat
                .split_whitespace()
                .map(|v| v.parse::<u64>().unwrap_or(0));
            let (cpu_ns, run_delay_ns) = (f.next().unwrap_or(0), f.next().unwrap_or(0));
            let mut rec = if tid == tgid {
                leader
            } else {
                TaskRecord {
                    pid: tid,
                    tgid,
                    start_ns: leader.start_ns,
                    is_kthread: leader.is_kthread,
                    ..TaskRecord::default()
                }
            };
            // A zombie leader's final totals are the exit hook's (as in the iterator).
            if !(tid == tgid && stat.zombie) {
                rec.cpu_ns = cpu_ns;
                rec.run_delay_ns = run_delay_ns;
            }
            threads.push(rec);
        }
        if !threads.iter().any(|r| r.is_leader == 1) {
            threads.push(leader);
        }
        out.extend(threads);
        Ok(())
    }

    fn cgroup_id(&mut self, dir: &Path) -> u64 {
        let Some(mount) = &self.cgroup2 else { return 0 };
        let Ok(text) = std::fs::read_to_string(dir.join("cgroup")) else {
            return 0;
        };
        let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
            return 0;
        };
        if let Some(&id) = self.cgroup_ids.get(path) {
            return id;
        }
        let id = std::fs::metadata(mount.join(path.trim_start_matches('/'))).map_or(0, |m| m.ino());
        if id != 0 {
            self.cgroup_ids.insert(path.to_string(), id);
        }
        id
    }
}

/// The fields of /proc/<pid>/stat this needs.
#[derive(Debug, PartialEq)]
struct Stat {
    comm: [u8; COMM_LEN],
    zombie: bool,
    ppid: u32,
    flags: u32,
    start_ticks: u64,
}

/// Parses /proc/<pid>/stat. comm is between the first '(' and the *last* ')': it may itself
/// contain parentheses, spaces or any other byte.
fn parse_stat(raw: &[u8]) -> Option<Stat> {
    let open = raw.iter().position(|&b| b == b'(')?;
    let close = raw.iter().rposition(|&b| b == b')')?;
    let name = raw.get(open + 1..close)?;
    let mut comm = [0u8; COMM_LEN];
    let n = name.len().min(COMM_LEN - 1);
    comm[..n].copy_from_slice(&name[..n]);
    let rest = std::str::from_utf8(raw.get(close + 1..)?).ok()?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        comm,
        zombie: matches!(f.first().copied(), Some("Z" | "X")),
        ppid: f.get(1)?.parse().ok()?,
        flags: f.get(6)?.parse().ok()?,
        start_ticks: f.get(19)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_a_hostile_comm() {
        let raw =
            b"4242 (a) b\n(c) R 1 4242 4242 0 -1 4194560 93 0 0 0 1 2 0 0 20 0 1 0 12345 4096 100";
        let s = parse_stat(raw).expect("parse");
        assert_eq!(&s.comm[..9], b"a) b\n(c\0\0" as &[u8; 9]);
        assert_eq!(
            (s.ppid, s.flags, s.start_ticks, s.zombie),
            (1, 4194560, 12345, false)
        );
        assert!(parse_stat(b"1 (x) Z 0").is_none());
        assert!(parse_stat(b"garbage").is_none());
    }

    // Runs without root: a process may read its own /proc entries.
    #[test]
    fn reads_our_own_threads_like_schedstat() {
        let mut r = ProcTasks::new(procfs::ticks_per_second(), crate::sys::cgroup2_mount());
        r.own_tgid = 0; // this test reads itself
        let me = std::process::id();
        let mut out = Vec::new();
        r.read_process(me, Path::new(&format!("/proc/{me}")), &mut out)
            .expect("own /proc");
        let leader = out
            .iter()
            .find(|t| t.is_leader == 1)
            .expect("leader record");
        assert_eq!(leader.tgid, me);
        assert!(leader.rss_pages > 0 && leader.cpu_ns > 0);
        assert!(out
            .iter()
            .all(|t| t.tgid == me && t.start_ns == leader.start_ns));
    }
}
