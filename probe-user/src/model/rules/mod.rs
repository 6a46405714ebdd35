//! Instance rules: which `service_instance` a process belongs to, from a TOML file (or the
//! embedded defaults, `default-rules.toml`).
//!
//! A rule has a unique `name`, an `instance` name template and one or more matchers, all of
//! which must match:
//!
//! - `listening = true`: the process listens on a TCP port; `port = 3306` or `port = [3306,
//!   3307]`: it listens on one of these (`{port}` is then that port);
//! - `comm`, `cmdline`, `exe`, `cgroup`: regular expressions on the process name, its command
//!   line (arguments joined by spaces), its executable's path and its cgroup v2 path.
//!
//! Rules that look at the process (any matcher but `cgroup`) name the process and what it forks
//! in its own cgroup; rules that look only at the cgroup apply to processes no process rule
//! claims, directly or through an ancestor. Within each kind, the first rule that matches wins.
//!
//! Templates take `{comm}`, `{port}` (the matched or lowest listening port), `{exe}` (file
//! name), `{unit}` (systemd unit), `{container}` (container id, 12 characters), `{pod_uid}`,
//! `{1}`..`{9}` (capture groups, numbered across the rule's expressions in the order comm,
//! cmdline, exe, cgroup) and `{name}` for a named group `(?P<name>...)`. A rule whose template
//! refers to something the process does not have (no unit, a group that did not take part)
//! does not match, and the next rule is tried.

use std::{sync::Arc, time::Duration};

use regex::Regex;

use super::names::display_name;

/// The rules probe uses when no file is given (also the built-in rules a file extends).
pub const DEFAULT_RULES: &str = include_str!("../../default-rules.toml");

/// Defaults of the `[instances]` table.
pub const DEFAULT_MAX_INSTANCES: usize = 500;
pub const DEFAULT_EXPIRE_AFTER: Duration = Duration::from_secs(600);

/// A validated rule file.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Process rules, then cgroup rules, each in file order (user rules before built-in ones).
    pub process: Vec<Rule>,
    pub cgroup: Vec<Rule>,
    pub max_instances: usize,
    pub expire_after: Duration,
    /// The rule file's text (None: the built-in rules alone), so that a recording
    /// (`--record-readings`) can be replayed with the same rules.
    pub file: Option<Arc<str>>,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: Arc<str>,
    ports: Option<Vec<u16>>,
    listening: bool,
    comm: Option<Regex>,
    cmdline: Option<Regex>,
    exe: Option<Regex>,
    cgroup: Option<Regex>,
    template: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq)]
enum Piece {
    Text(String),
    Var(Var),
}

#[derive(Clone, Debug, PartialEq)]
enum Var {
    Comm,
    Port,
    Exe,
    Unit,
    Container,
    PodUid,
    Group(usize),
    Named(String),
}

/// What rules look at for one process. Strings are already safe to show ([`display_name`]).
#[derive(Clone, Debug, Default)]
pub struct Subject<'a> {
    pub comm: &'a str,
    /// Listening TCP ports, any order.
    pub ports: &'a [u16],
    /// Arguments joined by spaces.
    pub cmdline: Option<&'a str>,
    pub exe: Option<&'a str>,
    /// cgroup v2 path, without `..` components.
    pub cgroup: Option<&'a str>,
}

/// A rule's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Named {
    pub instance: String,
    pub rule: Arc<str>,
}

impl Rules {
    /// The embedded defaults.
    pub fn defaults() -> Self {
        match parse(DEFAULT_RULES, None) {
            Ok(r) => r,
            // The embedded file is checked by a unit test; this cannot happen in a release.
            Err(e) => panic!("embedded default rules are invalid: {e}"),
        }
    }

    /// The first process rule that names `s`.
    pub fn name_process(&self, s: &Subject<'_>) -> Option<Named> {
        self.process.iter().find_map(|r| r.apply(s))
    }

    /// The first cgroup rule that names `s`.
    pub fn name_by_cgroup(&self, s: &Subject<'_>) -> Option<Named> {
        self.cgroup.iter().find_map(|r| r.apply(s))
    }

    /// Every rule's name, in the order they are tried.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.process.iter().chain(&self.cgroup).map(|r| &*r.name)
    }
}

impl Rule {
    fn apply(&self, s: &Subject<'_>) -> Option<Named> {
        if self.listening && s.ports.is_empty() {
            return None;
        }
        let port = match &self.ports {
            Some(want) => Some(*want.iter().find(|p| s.ports.contains(p))?),
            None => s.ports.iter().copied().min(),
        };
        let mut groups: Vec<Option<String>> = Vec::new();
        let mut named: Vec<(String, String)> = Vec::new();
        for (re, text) in [
            (&self.comm, Some(s.comm)),
            (&self.cmdline, s.cmdline),
            (&self.exe, s.exe),
            (&self.cgroup, s.cgroup),
        ] {
            let Some(re) = re else { continue };
            let caps = re.captures(text?)?;
            for (i, name) in re.capture_names().enumerate().skip(1) {
                let v = caps.get(i).map(|m| m.as_str().to_string());
                if let (Some(n), Some(v)) = (name, &v) {
                    named.push((n.to_string(), v.clone()));
                }
                groups.push(v);
            }
        }
        let meta = s.cgroup.map(CgroupMeta::parse).unwrap_or_default();
        let mut out = String::new();
        for piece in &self.template {
            match piece {
                Piece::Text(t) => out.push_str(t),
                Piece::Var(v) => {
                    let value = match v {
                        Var::Comm => Some(s.comm.to_string()),
                        Var::Port => port.map(|p| p.to_string()),
                        Var::Exe => s.exe.map(|e| e.rsplit('/').next().unwrap_or(e).to_string()),
                        Var::Unit => meta.unit.clone(),
                        Var::Container => meta.container.clone(),
                        Var::PodUid => meta.pod_uid.clone(),
                        Var::Group(i) => groups.get(i - 1).cloned().flatten(),
                        Var::Named(n) => named.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone()),
                    };
                    out.push_str(&value.filter(|v| !v.is_empty())?);
                }
            }
        }
        if out.is_empty() {
            return None;
        }
        Some(Named {
            instance: out,
            rule: self.name.clone(),
        })
    }
}

/// What a cgroup v2 path tells about its systemd unit, container and Kubernetes pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CgroupMeta {
    /// The first `*.service` or `*.scope` component.
    pub unit: Option<String>,
    /// A 64-hex-digit container id (docker, containerd, CRI-O, podman), shortened to 12.
    pub container: Option<String>,
    /// The Kubernetes pod UID (dashes restored) from a `kubepods` path.
    pub pod_uid: Option<String>,
}

impl CgroupMeta {
    pub fn parse(path: &str) -> Self {
        let mut m = Self::default();
        for part in path.split('/').filter(|c| !c.is_empty() && *c != "..") {
            if m.unit.is_none() && (part.ends_with(".service") || part.ends_with(".scope")) {
                m.unit = Some(part.to_string());
            }
            if m.container.is_none() {
                m.container = container_id(part);
            }
            if m.pod_uid.is_none() && path.contains("kubepods") {
                m.pod_uid = pod_uid(part);
            }
        }
        m
    }
}

/// `docker-<id>.scope`, `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope`
/// or a bare `<id>` (cgroupfs driver): a 64-hex-digit run at the end of the component.
fn container_id(part: &str) -> Option<String> {
    let stem = part.strip_suffix(".scope").unwrap_or(part);
    let id = stem.rsplit(['-', ':']).next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id[..12].to_string())
}

/// `kubepods-burstable-pod<uid>.slice` (systemd driver: dashes become underscores) or
/// `pod<uid>` (cgroupfs driver).
fn pod_uid(part: &str) -> Option<String> {
    let stem = part.strip_suffix(".slice").unwrap_or(part);
    let at = stem.rfind("pod")?;
    let uid = stem[at + 3..].replace('_', "-");
    let ok = uid.len() == 36
        && uid
            .bytes()
            .enumerate()
            .all(|(i, b)| matches!(i, 8 | 13 | 18 | 23) && b == b'-' || b.is_ascii_hexdigit());
    ok.then_some(uid)
}

/// A command line as /proc/<pid>/cmdline holds it (NUL-separated arguments) as one line: each
/// argument made safe to show (see `display_name`), joined by spaces.
pub fn cmdline_text(raw: &[u8]) -> String {
    let args: Vec<String> = raw
        .strip_suffix(b"\0")
        .unwrap_or(raw)
        .split(|&b| b == 0)
        .map(display_name)
        .collect();
    args.join(" ")
}

/// A cgroup path without the `..` components a cgroup namespace adds.
pub fn clean_cgroup(path: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|c| !c.is_empty() && *c != "..")
        .collect();
    format!("/{}", parts.join("/"))
}

mod parse;
#[cfg(test)]
mod tests;

pub use parse::{parse, ConfigError, ConfigErrors};
