//! Per-process samples, aggregated from what the kernel reports per thread.

use std::collections::HashMap;

use probe_common::{
    cpu::{DeadKey, DeadTotals, TaskRecord},
    COMM_LEN,
};
use serde::{Deserialize, Serialize};

/// A process, named so that a reused pid is a different process: the thread group id plus
/// the group leader's start time (ns since boot).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProcessKey {
    pub tgid: u32,
    pub start_ns: u64,
}

impl From<DeadKey> for ProcessKey {
    fn from(k: DeadKey) -> Self {
        Self {
            tgid: k.tgid,
            start_ns: k.start_ns,
        }
    }
}

impl From<ProcessKey> for DeadKey {
    fn from(k: ProcessKey) -> Self {
        Self {
            tgid: k.tgid,
            _pad: 0,
            start_ns: k.start_ns,
        }
    }
}

/// Who a process is, as far as grouping it into an instance needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub ppid: u32,
    pub comm: [u8; COMM_LEN],
    /// cgroup v2 id (inode number of the cgroup directory); 0 if unknown.
    pub cgroup_id: u64,
    pub kthread: bool,
}

/// One live process in one collection.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSample {
    pub identity: Identity,
    /// Sum over the live threads of their on-CPU time (ns).
    pub cpu_ns: u64,
    /// Sum over the live threads of their run-queue wait (ns).
    pub run_delay_ns: u64,
    pub rss_pages: u64,
    pub threads: u32,
}

/// Groups thread records by process. Process-wide fields come from the group leader's record;
/// a process whose leader record is missing keeps defaults for them.
pub fn aggregate(
    records: impl IntoIterator<Item = TaskRecord>,
) -> HashMap<ProcessKey, ProcessSample> {
    let mut out: HashMap<ProcessKey, ProcessSample> = HashMap::new();
    for r in records {
        let s = out
            .entry(ProcessKey {
                tgid: r.tgid,
                start_ns: r.start_ns,
            })
            .or_default();
        s.cpu_ns = s.cpu_ns.saturating_add(r.cpu_ns);
        s.run_delay_ns = s.run_delay_ns.saturating_add(r.run_delay_ns);
        s.threads += 1;
        if r.is_kthread != 0 {
            s.identity.kthread = true;
        }
        if r.is_leader != 0 {
            s.identity.ppid = r.ppid;
            s.identity.comm = r.comm;
            s.identity.cgroup_id = r.cgroup_id;
            s.rss_pages = r.rss_pages;
        }
    }
    out
}

/// The final totals of a process's threads that died, as the exit hook recorded them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadSample {
    pub identity: Identity,
    pub cpu_ns: u64,
    pub run_delay_ns: u64,
    pub threads: u64,
}

impl From<&DeadTotals> for DeadSample {
    fn from(d: &DeadTotals) -> Self {
        Self {
            identity: Identity {
                ppid: d.ppid,
                comm: d.comm,
                cgroup_id: d.cgroup_id,
                kthread: false,
            },
            cpu_ns: d.cpu_ns,
            run_delay_ns: d.run_delay_ns,
            threads: d.threads,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pid: u32, tgid: u32, cpu: u64, leader: bool) -> TaskRecord {
        TaskRecord {
            pid,
            tgid,
            start_ns: 1000 + u64::from(tgid),
            cpu_ns: cpu,
            run_delay_ns: cpu / 10,
            is_leader: u32::from(leader),
            ppid: if leader { 1 } else { 0 },
            cgroup_id: if leader { 77 } else { 0 },
            rss_pages: if leader { 5 } else { 0 },
            comm: *b"worker\0\0\0\0\0\0\0\0\0\0",
            ..TaskRecord::default()
        }
    }

    #[test]
    fn sums_threads_and_takes_identity_from_the_leader() {
        let procs = aggregate([
            rec(10, 10, 100, true),
            rec(11, 10, 50, false),
            rec(20, 20, 7, true),
        ]);
        let p = &procs[&ProcessKey {
            tgid: 10,
            start_ns: 1010,
        }];
        assert_eq!((p.cpu_ns, p.run_delay_ns, p.threads), (150, 15, 2));
        assert_eq!(
            (p.identity.ppid, p.identity.cgroup_id, p.rss_pages),
            (1, 77, 5)
        );
        assert_eq!(procs.len(), 2);
    }

    #[test]
    fn a_reused_pid_is_another_process() {
        let mut a = rec(10, 10, 1, true);
        let mut b = a;
        b.start_ns = a.start_ns + 1;
        a.cpu_ns = 5;
        assert_eq!(aggregate([a, b]).len(), 2);
    }
}
