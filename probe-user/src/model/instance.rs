//! Which service instance a process belongs to, by the instance rules ([`super::rules`]):
//!
//! 1. The first process rule that matches the process itself (built-in: a process that listens
//!    on TCP is `<comm>:<lowest listening port>`; mysqld/mariadbd also by `--port`).
//! 2. Otherwise, the instance of its nearest ancestor a process rule matches, as long as every
//!    process on the way stays in the same cgroup: a worker forked by a server belongs to it, a
//!    login session that sshd starts in its own session scope does not.
//! 3. Otherwise, the first cgroup rule that matches its cgroup path (built-in: its systemd
//!    unit, else its top-level cgroup).
//! 4. Otherwise (root cgroup, kernel threads): [`OTHER`].

use std::{collections::HashMap, sync::Arc};

use serde::{Deserialize, Serialize};

use super::rules::{clean_cgroup, cmdline_text, Named, Rules, Subject};
use crate::model::process::Identity;

/// The instance of everything no rule claims.
pub const OTHER: &str = "other";

/// Longest ancestor chain followed (pid namespaces nest, but not this deep).
const MAX_ANCESTORS: usize = 64;

/// What resolution looks at for one process.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Facts {
    pub identity: Identity,
    /// TCP ports the process listens on (any order, duplicates allowed).
    pub ports: Vec<u16>,
    /// The process's command line as rules see it (arguments joined by spaces), if known.
    pub cmdline: Option<Arc<str>>,
    /// Path of the executable, if known.
    pub exe: Option<Arc<str>>,
}

impl Facts {
    /// The command line as rules see it, from /proc/<pid>/cmdline's NUL-separated bytes.
    pub fn cmdline_from_raw(raw: &[u8]) -> Arc<str> {
        Arc::from(cmdline_text(raw))
    }
}

/// Resolves instances against one collection's view of the live processes.
pub struct Resolver<'a> {
    pub rules: &'a Rules,
    /// Live processes by tgid.
    pub live: &'a HashMap<u32, Facts>,
    /// cgroup v2 paths (relative to the cgroup2 mount, starting with `/`) by cgroup id.
    pub cgroup_paths: &'a dyn Fn(u64) -> Option<String>,
}

impl Resolver<'_> {
    /// The instance of `p` and the rule that named it (an empty rule name for [`OTHER`]).
    pub fn resolve(&self, p: &Facts) -> Named {
        let other = || Named {
            instance: OTHER.to_string(),
            rule: Arc::from(""),
        };
        if p.identity.kthread {
            return other();
        }
        let path = (self.cgroup_paths)(p.identity.cgroup_id).map(|c| clean_cgroup(&c));
        if let Some(n) = self.own(p, path.as_deref()) {
            return n;
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
            if let Some(n) = self.own(parent, path.as_deref()) {
                return n;
            }
            cur = parent;
        }
        let by_cgroup = path.as_deref().and_then(|c| {
            self.rules.name_by_cgroup(&Subject {
                cgroup: Some(c),
                ..Subject::default()
            })
        });
        by_cgroup.unwrap_or_else(other)
    }

    /// Rule 1: the instance a process is by itself, if a process rule names it.
    fn own(&self, p: &Facts, cgroup: Option<&str>) -> Option<Named> {
        let comm = super::names::display_name(&p.identity.comm);
        self.rules.name_process(&Subject {
            comm: &comm,
            ports: &p.ports,
            cmdline: p.cmdline.as_deref(),
            exe: p.exe.as_deref(),
            cgroup,
        })
    }
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
            exe: None,
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

    fn resolver<'a>(live: &'a HashMap<u32, Facts>, rules: &'a Rules) -> Resolver<'a> {
        Resolver {
            rules,
            live,
            cgroup_paths: &paths,
        }
    }

    fn name(live: &HashMap<u32, Facts>, p: &Facts) -> String {
        resolver(live, &Rules::defaults()).resolve(p).instance
    }

    #[test]
    fn a_listener_is_named_by_comm_and_lowest_port() {
        let live = HashMap::new();
        let p = facts("mariadbd", 1, 1, &[33060, 3307, 3307]);
        assert_eq!(name(&live, &p), "mariadbd:3307");
    }

    #[test]
    fn mysql_without_a_socket_yet_is_named_from_its_command_line() {
        let live = HashMap::new();
        let mut p = facts("mysqld", 1, 1, &[]);
        p.cmdline = Some(Facts::cmdline_from_raw(
            b"/usr/sbin/mysqld\0--datadir=/d\0--port=3308\0",
        ));
        assert_eq!(name(&live, &p), "mysqld:3308");
        p.cmdline = Some(Facts::cmdline_from_raw(b"mysqld\0--port\x003309\0"));
        assert_eq!(name(&live, &p), "mysqld:3309");
        p.cmdline = Some(Facts::cmdline_from_raw(b"mysqld\0-P3310\0"));
        assert_eq!(name(&live, &p), "mysqld:3310");
        // Not MySQL: a --port argument alone makes no instance.
        let mut q = facts("nginx", 1, 1, &[]);
        q.cmdline = Some(Facts::cmdline_from_raw(b"nginx\0--port=80\0"));
        assert_eq!(name(&live, &q), OTHER);
    }

    #[test]
    fn forked_workers_in_the_same_cgroup_belong_to_their_server() {
        let mut live = HashMap::new();
        live.insert(100, facts("postgres", 1, 2, &[5432]));
        live.insert(101, facts("postgres", 100, 2, &[]));
        let grandchild = facts("sh", 101, 2, &[]);
        assert_eq!(name(&live, &live[&101]), "postgres:5432");
        assert_eq!(name(&live, &grandchild), "postgres:5432");
    }

    #[test]
    fn a_child_in_another_cgroup_does_not() {
        let mut live = HashMap::new();
        live.insert(200, facts("sshd", 1, 2, &[22]));
        let session = facts("bash", 200, 3, &[]);
        assert_eq!(name(&live, &session), "session-4.scope");
    }

    #[test]
    fn falls_back_to_unit_then_top_level_cgroup_then_other() {
        let live = HashMap::new();
        assert_eq!(
            name(&live, &facts("cron", 1, 2, &[])),
            "mariadb@3307.service"
        );
        assert_eq!(name(&live, &facts("qemu", 1, 4, &[])), "machine");
        assert_eq!(name(&live, &facts("cron", 1, 5, &[])), "cron.service");
        assert_eq!(name(&live, &facts("init", 0, 1, &[])), OTHER);
        assert_eq!(name(&live, &facts("ghost", 0, 99, &[])), OTHER);
    }

    #[test]
    fn kernel_threads_are_other_even_with_a_parent() {
        let mut live = HashMap::new();
        live.insert(2, facts("kthreadd", 0, 1, &[]));
        let mut k = facts("kworker/0:1", 2, 1, &[]);
        k.identity.kthread = true;
        assert_eq!(name(&live, &k), OTHER);
    }

    #[test]
    fn parent_loops_terminate() {
        let mut live = HashMap::new();
        live.insert(5, facts("a", 6, 1, &[]));
        live.insert(6, facts("b", 5, 1, &[]));
        assert_eq!(name(&live, &live[&5]), OTHER);
    }

    #[test]
    fn hostile_names_are_escaped_in_instance_names() {
        let live = HashMap::new();
        let mut p = facts("x", 1, 1, &[9999]);
        p.identity.comm = *b"a\"b\\c\nd\xff\0\0\0\0\0\0\0\0";
        assert_eq!(name(&live, &p), "a\"b\\\\c\\x0ad\\xff:9999");
    }
}
