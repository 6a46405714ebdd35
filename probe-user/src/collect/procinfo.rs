//! What /proc knows about a process that the kernel programs do not report: its command line,
//! executable and cgroup path. Read once per process (processes are keyed by pid *and* start
//! time, so a reused pid is read again).

use std::sync::Arc;

use crate::model::process::ProcessKey;

/// /proc facts about one process. Fields are `None` when /proc did not say (the process exited,
/// is a kernel thread, or access was denied): callers treat them as unknown.
#[derive(Clone, Debug, Default)]
pub struct ProcInfo {
    /// Raw /proc/<pid>/cmdline: NUL-separated, untrusted bytes.
    pub cmdline: Option<Arc<[u8]>>,
    pub exe: Option<String>,
    /// cgroup v2 path ("0::" line of /proc/<pid>/cgroup).
    pub cgroup: Option<String>,
}

/// Reads /proc/<pid> for `key`, unless the pid now belongs to a different process (start time
/// differs), in which case nothing is returned.
pub fn read(key: ProcessKey, ticks_per_sec: u64) -> Option<ProcInfo> {
    let process = procfs::process::Process::new(i32::try_from(key.tgid).ok()?).ok()?;
    let stat = process.stat().ok()?;
    if !same_start(stat.starttime, key.start_ns, ticks_per_sec) {
        return None;
    }
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", key.tgid))
        .ok()
        .map(Arc::from);
    let exe = process.exe().ok().map(|p| p.to_string_lossy().into_owned());
    let cgroup = process.cgroups().ok().and_then(|cgs| {
        cgs.into_iter()
            .find(|c| c.hierarchy == 0)
            .map(|c| c.pathname)
    });
    Some(ProcInfo {
        cmdline,
        exe,
        cgroup,
    })
}

/// /proc/<pid>/stat field 22 is start_boottime in clock ticks.
fn same_start(start_ticks: u64, start_ns: u64, ticks_per_sec: u64) -> bool {
    if ticks_per_sec == 0 {
        return true;
    }
    start_ticks == start_ns / (1_000_000_000 / ticks_per_sec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_in_ticks_matches_nanoseconds() {
        assert!(same_start(1234, 12_345_678_901, 100));
        assert!(!same_start(1235, 12_345_678_901, 100));
    }

    #[test]
    fn reads_our_own_process_and_refuses_a_wrong_start_time() {
        let pid = std::process::id();
        let tps = procfs::ticks_per_second();
        let stat = procfs::process::Process::myself()
            .expect("self")
            .stat()
            .expect("stat");
        let start_ns = stat.starttime * (1_000_000_000 / tps);
        let info = read(
            ProcessKey {
                tgid: pid,
                start_ns,
            },
            tps,
        )
        .expect("own /proc entry");
        assert!(info.cmdline.is_some_and(|c| !c.is_empty()));
        assert!(info.cgroup.is_some_and(|c| c.starts_with('/')));
        assert!(read(
            ProcessKey {
                tgid: pid,
                start_ns: start_ns + 10_000_000_000
            },
            tps
        )
        .is_none());
    }
}
