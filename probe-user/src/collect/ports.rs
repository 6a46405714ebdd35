//! Listening TCP ports per process: the task_file iterator where the kernel has it (5.11+),
//! /proc otherwise.

use std::collections::{HashMap, HashSet};

use probe_common::ports::ListenRecord;

use super::decode;
use crate::sys::IterLink;

#[derive(Debug, thiserror::Error)]
pub enum PortsError {
    #[error("reading the task_file iterator: {0}")]
    Iter(#[from] std::io::Error),
    #[error(transparent)]
    Decode(#[from] super::DecodeError),
    #[error("reading /proc: {0}")]
    Proc(#[from] procfs::ProcError),
}

/// Listening TCP ports by tgid, sorted and without duplicates.
pub type Listeners = HashMap<u32, Vec<u16>>;

/// From the task_file iterator: one record per (process, fd) that is a listening TCP socket.
pub fn from_iter(link: &IterLink, buf: &mut Vec<u8>) -> Result<Listeners, PortsError> {
    link.read_all(buf)?;
    let records: Vec<ListenRecord> = decode(buf)?;
    Ok(group(records.iter().map(|r| (r.tgid, r.port))))
}

/// From /proc: listening sockets in /proc/net/tcp{,6}, matched to processes by socket inode
/// through /proc/<pid>/fd. Processes that exit or deny access mid-walk are skipped, and so is
/// `skip_tgid` (the daemon itself).
pub fn from_procfs(skip_tgid: u32) -> Result<Listeners, PortsError> {
    let mut by_inode: HashMap<u64, u16> = HashMap::new();
    for entry in procfs::net::tcp()?
        .into_iter()
        .chain(procfs::net::tcp6().unwrap_or_default())
    {
        if entry.state == procfs::net::TcpState::Listen {
            by_inode.insert(entry.inode, entry.local_address.port());
        }
    }
    let mut pairs = Vec::new();
    if by_inode.is_empty() {
        return Ok(HashMap::new());
    }
    for process in procfs::process::all_processes()?.flatten() {
        let Ok(tgid) = u32::try_from(process.pid) else {
            continue;
        };
        if tgid == skip_tgid {
            continue;
        }
        let Ok(fds) = process.fd() else { continue };
        for fd in fds.flatten() {
            if let procfs::process::FDTarget::Socket(inode) = fd.target {
                if let Some(&port) = by_inode.get(&inode) {
                    pairs.push((tgid, port));
                }
            }
        }
    }
    Ok(group(pairs))
}

fn group(pairs: impl IntoIterator<Item = (u32, u16)>) -> Listeners {
    let mut seen: HashSet<(u32, u16)> = HashSet::new();
    let mut out: Listeners = HashMap::new();
    for (tgid, port) in pairs {
        if seen.insert((tgid, port)) {
            out.entry(tgid).or_default().push(port);
        }
    }
    for ports in out.values_mut() {
        ports.sort_unstable();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_ports_per_process_without_duplicates() {
        // IPv4 and IPv6 sockets on the same port, and a dup'ed fd, count once.
        let l = group([(7, 3307), (7, 3306), (7, 3307), (9, 80)]);
        assert_eq!(l[&7], vec![3306, 3307]);
        assert_eq!(l[&9], vec![80]);
    }

    // Runs without root: every process may read /proc/net/tcp, and its own /proc/<pid>/fd.
    #[test]
    fn procfs_fallback_finds_our_own_listener() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let me = std::process::id();
        let found = from_procfs(0).expect("walk /proc");
        assert!(
            found.get(&me).is_some_and(|p| p.contains(&port)),
            "port {port} of pid {me} not found: {found:?}"
        );
        // The daemon leaves itself out.
        assert!(!from_procfs(me).expect("walk /proc").contains_key(&me));
    }
}
