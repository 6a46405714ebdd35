//! Which service instance a process belongs to (zero-config rules).
//!
//! 1. A process that listens on TCP is the instance `<comm>:<lowest listening port>`
//!    (`mariadbd:3307`). mysqld and mariadbd are recognised this way even before their socket
//!    is open, from `--port` on their command line.
//! 2. Otherwise, a process belongs to the instance of its nearest ancestor that is one, as long
//!    as every process on the way stays in the same cgroup: a worker forked by a server belongs
//!    to it, a login session that sshd starts in its own session scope does not.
//! 3. Otherwise, its systemd unit (the first `*.service` or `*.scope` in its cgroup path), or
//!    its top-level cgroup.
//! 4. Otherwise (root cgroup, kernel threads): [`OTHER`].

use std::{collections::HashMap, sync::Arc};

use super::names::display_name;
use crate::model::process::Identity;

/// The instance of everything no rule claims.
pub const OTHER: &str = "other";

/// Longest ancestor chain followed (pid namespaces nest, but not this deep).
const MAX_ANCESTORS: usize = 64;

/// What resolution looks at for one process.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    pub identity: Identity,
    /// TCP ports the process listens on (any order, duplicates allowed).
    pub ports: Vec<u16>,
    /// The process's command line, NUL-separated as in /proc/<pid>/cmdline, if known.
    pub cmdline: Option<Arc<[u8]>>,
}

/// Resolves instances against one collection's view of the live processes.
pub struct Resolver<'a> {
    /// Live processes by tgid.
    pub live: &'a HashMap<u32, Facts>,
    /// cgroup v2 paths (relative to the cgroup2 mount, starting with `/`) by cgroup id.
    pub cgroup_paths: &'a dyn Fn(u64) -> Option<String>,
}

impl Resolver<'_> {
    pub fn resolve(&self, p: &Facts) -> String {
        if p.identity.kthread {
            return OTHER.to_string();
        }
        if let Some(name) = own_instance(p) {
            return name;
        }
        let mut cur = p;
        for _ in 0..MAX_ANCESTORS {
            let Some(parent) = self.live.get(&cur.identity.ppid) else {
                break;
            };
            if cur.identity.ppid == 0
                || parent.identity.kthread
                || parent.identity.cgroup_id != p.identity.cgroup_id
            {
                break;
            }
            if let Some(name) = own_instance(parent) {
                return name;
            }
            cur = parent;
        }
        (self.cgroup_paths)(p.identity.cgroup_id)
            .and_then(|path| cgroup_instance(&path))
            .unwrap_or_else(|| OTHER.to_string())
    }
}

/// Rule 1: the instance a process is by itself, if it is one. Allocates only when it is (this
/// runs for every ancestor of every process on every collection).
fn own_instance(p: &Facts) -> Option<String> {
    let port = p.ports.iter().copied().min().or_else(|| {
        if is_mysql(&p.identity.comm) {
            p.cmdline.as_deref().and_then(mysql_port_arg)
        } else {
            None
        }
    })?;
    Some(format!("{}:{port}", display_name(&p.identity.comm)))
}

fn is_mysql(comm: &[u8]) -> bool {
    let name = comm.split(|&b| b == 0).next().unwrap_or_default();
    name == b"mysqld" || name == b"mariadbd"
}

/// `--port=N` or `--port N` (also `-P N` / `-PN`) from a NUL-separated command line.
fn mysql_port_arg(cmdline: &[u8]) -> Option<u16> {
    let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
    let parse = |v: &[u8]| {
        std::str::from_utf8(v)
            .ok()?
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
    };
    let mut found = None;
    for (i, a) in args.iter().enumerate() {
        let next = args.get(i + 1).copied();
        if let Some(v) = a.strip_prefix(b"--port=") {
            found = parse(v).or(found);
        } else if *a == b"--port" || *a == b"-P" {
            found = next.and_then(parse).or(found);
        } else if let Some(v) = a.strip_prefix(b"-P").filter(|v| !v.is_empty()) {
            found = parse(v).or(found);
        }
    }
    found
}

/// Rule 3: the systemd unit or top-level cgroup of a cgroup path.
pub fn cgroup_instance(path: &str) -> Option<String> {
    // Inside a cgroup namespace (a container with hostPID), other processes' paths start with
    // "/../..": those components are not names.
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != "..")
        .collect();
    let unit = parts
        .iter()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"));
    let name = unit.or(parts.first())?;
    Some(display_name(name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn comm(s: &str) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn facts(name: &str, ppid: u32, cgroup_id: u64, ports: &[u16]) -> Facts {
        Facts {
            identity: Identity {
                ppid,
                comm: comm(name),
                cgroup_id,
                kthread: false,
            },
            ports: ports.to_vec(),
            cmdline: None,
        }
    }

    fn paths(id: u64) -> Option<String> {
        match id {
            1 => Some("/".into()),
            2 => Some("/system.slice/mariadb@3307.service".into()),
            3 => Some("/user.slice/user-0.slice/session-4.scope".into()),
            4 => Some("/machine/qemu-1".into()),
            5 => Some("/../../system.slice/cron.service".into()),
            _ => None,
        }
    }

    fn resolver(live: &HashMap<u32, Facts>) -> Resolver<'_> {
        Resolver {
            live,
            cgroup_paths: &paths,
        }
    }

    #[test]
    fn a_listener_is_named_by_comm_and_lowest_port() {
        let live = HashMap::new();
        let p = facts("mariadbd", 1, 1, &[33060, 3307, 3307]);
        assert_eq!(resolver(&live).resolve(&p), "mariadbd:3307");
    }

    #[test]
    fn mysql_without_a_socket_yet_is_named_from_its_command_line() {
        let live = HashMap::new();
        let mut p = facts("mysqld", 1, 1, &[]);
        p.cmdline = Some(Arc::from(
            &b"/usr/sbin/mysqld\0--datadir=/d\0--port=3308\0"[..],
        ));
        assert_eq!(resolver(&live).resolve(&p), "mysqld:3308");
        p.cmdline = Some(Arc::from(&b"mysqld\0--port\x003309\0"[..]));
        assert_eq!(resolver(&live).resolve(&p), "mysqld:3309");
        p.cmdline = Some(Arc::from(&b"mysqld\0-P3310\0"[..]));
        assert_eq!(resolver(&live).resolve(&p), "mysqld:3310");
        // Not MySQL: a --port argument alone makes no instance.
        let mut q = facts("nginx", 1, 1, &[]);
        q.cmdline = Some(Arc::from(&b"nginx\0--port=80\0"[..]));
        assert_eq!(resolver(&live).resolve(&q), OTHER);
    }

    #[test]
    fn forked_workers_in_the_same_cgroup_belong_to_their_server() {
        let mut live = HashMap::new();
        live.insert(100, facts("postgres", 1, 2, &[5432]));
        live.insert(101, facts("postgres", 100, 2, &[]));
        let grandchild = facts("sh", 101, 2, &[]);
        assert_eq!(resolver(&live).resolve(&live[&101]), "postgres:5432");
        assert_eq!(resolver(&live).resolve(&grandchild), "postgres:5432");
    }

    #[test]
    fn a_child_in_another_cgroup_does_not() {
        let mut live = HashMap::new();
        live.insert(200, facts("sshd", 1, 2, &[22]));
        let session = facts("bash", 200, 3, &[]);
        assert_eq!(resolver(&live).resolve(&session), "session-4.scope");
    }

    #[test]
    fn falls_back_to_unit_then_top_level_cgroup_then_other() {
        let live = HashMap::new();
        assert_eq!(
            resolver(&live).resolve(&facts("cron", 1, 2, &[])),
            "mariadb@3307.service"
        );
        assert_eq!(
            resolver(&live).resolve(&facts("qemu", 1, 4, &[])),
            "machine"
        );
        assert_eq!(
            resolver(&live).resolve(&facts("cron", 1, 5, &[])),
            "cron.service"
        );
        assert_eq!(resolver(&live).resolve(&facts("init", 0, 1, &[])), OTHER);
        assert_eq!(resolver(&live).resolve(&facts("ghost", 0, 99, &[])), OTHER);
    }

    #[test]
    fn kernel_threads_are_other_even_with_a_parent() {
        let mut live = HashMap::new();
        live.insert(2, facts("kthreadd", 0, 1, &[]));
        let mut k = facts("kworker/0:1", 2, 1, &[]);
        k.identity.kthread = true;
        assert_eq!(resolver(&live).resolve(&k), OTHER);
    }

    #[test]
    fn parent_loops_terminate() {
        let mut live = HashMap::new();
        live.insert(5, facts("a", 6, 1, &[]));
        live.insert(6, facts("b", 5, 1, &[]));
        assert_eq!(resolver(&live).resolve(&live[&5]), OTHER);
    }

    #[test]
    fn hostile_names_are_escaped_in_instance_names() {
        let live = HashMap::new();
        let mut p = facts("x", 1, 1, &[9999]);
        p.identity.comm = *b"a\"b\\c\nd\xff\0\0\0\0\0\0\0\0";
        assert_eq!(resolver(&live).resolve(&p), "a\"b\\\\c\\x0ad\\xff:9999");
    }
}
