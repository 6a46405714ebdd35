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

use std::{collections::HashSet, fmt, ops::Range, sync::Arc, time::Duration};

use regex::Regex;
use serde::Deserialize;

use super::names::display_name;

/// The rules probe uses when no file is given (also the built-in rules a file extends).
pub const DEFAULT_RULES: &str = include_str!("../default-rules.toml");

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

// ---- parsing ----------------------------------------------------------------------------------

/// A problem in a rule file, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// 1-based line and column, when known.
    pub at: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some((line, col)) => write!(f, "line {line}, column {col}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Errors of one file (all of them, not only the first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    instances: Option<InstancesTable>,
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InstancesTable {
    max: Option<toml::Spanned<i64>>,
    expire_after: Option<toml::Spanned<String>>,
    builtin_rules: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: toml::Spanned<String>,
    instance: toml::Spanned<String>,
    listening: Option<bool>,
    port: Option<toml::Spanned<PortSpec>>,
    comm: Option<toml::Spanned<String>>,
    cmdline: Option<toml::Spanned<String>>,
    exe: Option<toml::Spanned<String>>,
    cgroup: Option<toml::Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortSpec {
    One(i64),
    Many(Vec<i64>),
}

/// Parses and validates a rule file. `builtin` is the text of the built-in rules appended after
/// the file's own (unless the file says `builtin_rules = false`); None for the built-in text
/// itself.
pub fn parse(text: &str, builtin: Option<&str>) -> Result<Rules, ConfigErrors> {
    let at = |span: Range<usize>| Some(line_col(text, span.start));
    let file: File = toml::from_str(text).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            at: e.span().map(|s| line_col(text, s.start)),
            message: e.message().trim().to_string(),
        }])
    })?;
    let mut errors = Vec::new();
    let mut rules = Rules {
        process: Vec::new(),
        cgroup: Vec::new(),
        max_instances: DEFAULT_MAX_INSTANCES,
        expire_after: DEFAULT_EXPIRE_AFTER,
        file: builtin.map(|_| Arc::from(text)),
    };
    let mut with_builtin = true;
    if let Some(t) = &file.instances {
        if let Some(max) = &t.max {
            match usize::try_from(*max.get_ref()) {
                Ok(m) if (1..=100_000).contains(&m) => rules.max_instances = m,
                _ => errors.push(ConfigError {
                    at: at(max.span()),
                    message: format!("max = {}: must be 1 to 100000", max.get_ref()),
                }),
            }
        }
        if let Some(e) = &t.expire_after {
            match parse_expiry(e.get_ref()) {
                Ok(d) => rules.expire_after = d,
                Err(msg) => errors.push(ConfigError {
                    at: at(e.span()),
                    message: msg,
                }),
            }
        }
        with_builtin = t.builtin_rules.unwrap_or(true);
    }
    let mut seen: HashSet<String> = HashSet::new();
    for raw in &file.rule {
        let name = raw.get_ref().name.get_ref().trim();
        if !seen.insert(name.to_string()) {
            errors.push(ConfigError {
                at: at(raw.get_ref().name.span()),
                message: format!("duplicate rule name {name:?}"),
            });
            continue;
        }
        match compile(raw.get_ref(), text) {
            Ok(rule) => {
                if rule.is_cgroup_only() {
                    rules.cgroup.push(rule);
                } else {
                    rules.process.push(rule);
                }
            }
            Err(e) => errors.extend(e),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    if let (Some(b), true) = (builtin, with_builtin) {
        let base = parse(b, None)?;
        for r in base.process.into_iter().chain(base.cgroup) {
            // A user rule of the same name replaces the built-in one.
            if seen.contains(&*r.name) {
                continue;
            }
            if r.is_cgroup_only() {
                rules.cgroup.push(r);
            } else {
                rules.process.push(r);
            }
        }
    }
    Ok(rules)
}

impl Rule {
    fn is_cgroup_only(&self) -> bool {
        self.cgroup.is_some()
            && !self.listening
            && self.ports.is_none()
            && self.comm.is_none()
            && self.cmdline.is_none()
            && self.exe.is_none()
    }
}

fn compile(raw: &RawRule, text: &str) -> Result<Rule, Vec<ConfigError>> {
    let at = |span: Range<usize>| Some(line_col(text, span.start));
    let mut errors = Vec::new();
    let name = raw.name.get_ref().trim();
    if name.is_empty() {
        errors.push(ConfigError {
            at: at(raw.name.span()),
            message: "rule name is empty".into(),
        });
    }
    let mut regex = |field: &str, v: &Option<toml::Spanned<String>>| -> Option<Regex> {
        let v = v.as_ref()?;
        match regex::RegexBuilder::new(v.get_ref())
            .size_limit(1 << 20)
            .build()
        {
            Ok(re) => Some(re),
            Err(e) => {
                // The regex crate's message spans several lines (pattern, caret, reason).
                let why = e.to_string();
                let last = why.lines().last().unwrap_or(&why).trim();
                let reason = last.strip_prefix("error: ").unwrap_or(last).to_string();
                errors.push(ConfigError {
                    at: at(v.span()),
                    message: format!(
                        "rule {name:?}: {field} is not a valid regular expression: {reason}"
                    ),
                });
                None
            }
        }
    };
    let comm = regex("comm", &raw.comm);
    let cmdline = regex("cmdline", &raw.cmdline);
    let exe = regex("exe", &raw.exe);
    let cgroup = regex("cgroup", &raw.cgroup);
    let ports = raw.port.as_ref().and_then(|p| {
        let list = match p.get_ref() {
            PortSpec::One(n) => vec![*n],
            PortSpec::Many(v) => v.clone(),
        };
        let ok: Vec<u16> = list
            .iter()
            .filter_map(|&n| u16::try_from(n).ok().filter(|&p| p != 0))
            .collect();
        if ok.len() != list.len() || ok.is_empty() {
            errors.push(ConfigError {
                at: at(p.span()),
                message: format!(
                    "rule {name:?}: port must be a TCP port (1-65535) or a list of them"
                ),
            });
            return None;
        }
        Some(ok)
    });
    let listening = raw.listening.unwrap_or(false);
    if !listening
        && raw.port.is_none()
        && raw.comm.is_none()
        && raw.cmdline.is_none()
        && raw.exe.is_none()
        && raw.cgroup.is_none()
    {
        errors.push(ConfigError {
            at: at(raw.name.span()),
            message: format!(
                "rule {name:?} matches nothing: give at least one of listening, port, comm, cmdline, exe, cgroup"
            ),
        });
    }
    // Capture groups the template may use, in the order they are numbered.
    let mut groups = 0usize;
    let mut group_names = Vec::new();
    for re in [&comm, &cmdline, &exe, &cgroup].into_iter().flatten() {
        groups += re.captures_len() - 1;
        group_names.extend(re.capture_names().flatten().map(str::to_string));
    }
    let regexes_ok = (raw.comm.is_none() || comm.is_some())
        && (raw.cmdline.is_none() || cmdline.is_some())
        && (raw.exe.is_none() || exe.is_some())
        && (raw.cgroup.is_none() || cgroup.is_some());
    let template = match parse_template(raw.instance.get_ref()) {
        Ok(t) => {
            for p in &t {
                let bad = match p {
                    Piece::Var(Var::Group(i)) if regexes_ok && *i > groups => Some(format!(
                        "{{{i}}}: the rule's expressions have {groups} capture group(s)"
                    )),
                    Piece::Var(Var::Named(n)) if regexes_ok && !group_names.contains(n) => {
                        Some(format!("{{{n}}}: no such variable or named capture group"))
                    }
                    _ => None,
                };
                if let Some(msg) = bad {
                    errors.push(ConfigError {
                        at: at(raw.instance.span()),
                        message: format!("rule {name:?}: instance template {msg}"),
                    });
                }
            }
            t
        }
        Err(msg) => {
            errors.push(ConfigError {
                at: at(raw.instance.span()),
                message: format!("rule {name:?}: instance template: {msg}"),
            });
            Vec::new()
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Rule {
        name: Arc::from(name),
        ports,
        listening,
        comm,
        cmdline,
        exe,
        cgroup,
        template,
    })
}

fn parse_template(t: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut text = String::new();
    let mut chars = t.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => name.push(c),
                        None => return Err(format!("unclosed {{ in {t:?}")),
                    }
                }
                if !text.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut text)));
                }
                out.push(Piece::Var(match name.as_str() {
                    "comm" => Var::Comm,
                    "port" => Var::Port,
                    "exe" => Var::Exe,
                    "unit" => Var::Unit,
                    "container" => Var::Container,
                    "pod_uid" => Var::PodUid,
                    n if n.parse::<usize>().is_ok_and(|i| (1..=9).contains(&i)) => {
                        Var::Group(n.parse().unwrap_or(1))
                    }
                    n if !n.is_empty()
                        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                    {
                        Var::Named(n.to_string())
                    }
                    n => return Err(format!("{{{n}}} is not a variable")),
                }));
            }
            '}' => {
                return Err(format!(
                    "unmatched }} in {t:?} (write }}}} for a literal one)"
                ))
            }
            c if c.is_control() => return Err("control characters are not allowed".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        out.push(Piece::Text(text));
    }
    if out.is_empty() {
        return Err("empty".into());
    }
    Ok(out)
}

/// "90s", "10m", "2h"; at least 10 s.
fn parse_expiry(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expire_after = {s:?}: not a duration like 90s, 10m or 2h"))?;
    let d = match unit {
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("expire_after = {s:?}: unit must be s, m or h")),
    };
    if d < Duration::from_secs(10) {
        return Err(format!("expire_after = {s:?}: at least 10s"));
    }
    Ok(d)
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject<'a>(comm: &'a str, ports: &'a [u16], cmdline: Option<&'a str>) -> Subject<'a> {
        Subject {
            comm,
            ports,
            cmdline,
            exe: None,
            cgroup: None,
        }
    }

    #[test]
    fn defaults_parse_and_name_listeners_and_mysql() {
        let r = Rules::defaults();
        assert_eq!(
            r.names().collect::<Vec<_>>(),
            vec!["listener", "mysql", "systemd-unit", "top-cgroup"]
        );
        let name = |s: &Subject<'_>| r.name_process(s).map(|n| n.instance);
        assert_eq!(
            name(&subject("mariadbd", &[33060, 3307], None)).as_deref(),
            Some("mariadbd:3307")
        );
        for (cmd, want) in [
            ("/usr/sbin/mysqld --datadir=/d --port=3308", "mysqld:3308"),
            ("mysqld --port 3309", "mysqld:3309"),
            ("mysqld -P3310", "mysqld:3310"),
            ("mysqld -P 3311 --port=3312", "mysqld:3312"),
        ] {
            assert_eq!(
                name(&subject("mysqld", &[], Some(cmd))).as_deref(),
                Some(want),
                "{cmd}"
            );
        }
        assert_eq!(name(&subject("nginx", &[], Some("nginx --port=80"))), None);
        assert_eq!(name(&subject("mysqld", &[], Some("mysqld --port=x"))), None);
    }

    #[test]
    fn cgroup_rules_name_units_then_top_level() {
        let r = Rules::defaults();
        let name = |path: &str| {
            let p = clean_cgroup(path);
            r.name_by_cgroup(&Subject {
                cgroup: Some(&p),
                ..Subject::default()
            })
            .map(|n| n.instance)
        };
        assert_eq!(
            name("/system.slice/mariadb@3307.service").as_deref(),
            Some("mariadb@3307.service")
        );
        assert_eq!(name("/machine/qemu-1").as_deref(), Some("machine"));
        assert_eq!(
            name("/../../system.slice/cron.service").as_deref(),
            Some("cron.service")
        );
        assert_eq!(name("/"), None);
    }

    #[test]
    fn user_rules_with_captures_come_before_builtin_ones() {
        let text = r#"
[[rule]]
name = "app"
cmdline = 'app --shard=(\d+)'
exe = '/opt/(?P<tier>\w+)/'
instance = "app-{tier}-{1}"
"#;
        let r = parse(text, Some(DEFAULT_RULES)).expect("valid");
        let s = Subject {
            comm: "app",
            ports: &[8080],
            cmdline: Some("app --shard=7"),
            exe: Some("/opt/gold/bin/app"),
            cgroup: None,
        };
        let n = r.name_process(&s).expect("named");
        assert_eq!(n.instance, "app-gold-7");
        assert_eq!(&*n.rule, "app");
        // Without the exe the rule does not match; the built-in listener rule does.
        let s = Subject { exe: None, ..s };
        assert_eq!(r.name_process(&s).expect("named").instance, "app:8080");
    }

    #[test]
    fn port_lists_and_missing_variables() {
        let text = r#"
[[rule]]
name = "pg"
port = [5432, 5433]
instance = "pg-{port}-{unit}"
"#;
        let r = parse(text, None).expect("valid");
        let with_unit = Subject {
            comm: "postgres",
            ports: &[9, 5433],
            cgroup: Some("/system.slice/postgresql@15-main.service"),
            ..Subject::default()
        };
        assert_eq!(
            r.name_process(&with_unit).expect("named").instance,
            "pg-5433-postgresql@15-main.service"
        );
        // No unit to fill in: no match.
        let no_unit = Subject {
            cgroup: Some("/"),
            ..with_unit
        };
        assert_eq!(r.name_process(&no_unit), None);
    }

    #[test]
    fn container_and_pod_are_parsed_from_cgroup_paths() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        let k8s = format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_0000_4111_8222_123456789abc.slice/cri-containerd-{id}.scope"
        );
        let m = CgroupMeta::parse(&k8s);
        assert_eq!(m.container.as_deref(), Some("0123456789ab"));
        assert_eq!(
            m.pod_uid.as_deref(),
            Some("1b2c3d4e-0000-4111-8222-123456789abc")
        );
        assert_eq!(
            m.unit.as_deref(),
            Some(&*format!("cri-containerd-{id}.scope"))
        );
        let m = CgroupMeta::parse(&format!(
            "/kubepods/besteffort/pod1b2c3d4e-0000-4111-8222-123456789abc/{id}"
        ));
        assert_eq!(m.container.as_deref(), Some("0123456789ab"));
        assert!(m.pod_uid.is_some());
        let m = CgroupMeta::parse(&format!("/system.slice/docker-{id}.scope"));
        assert_eq!(m.container.as_deref(), Some("0123456789ab"));
        assert_eq!(m.pod_uid, None);
        assert_eq!(
            CgroupMeta::parse("/user.slice/pod.slice"),
            CgroupMeta::default()
        );
    }

    fn errors(text: &str) -> Vec<String> {
        match parse(text, None) {
            Ok(_) => panic!("accepted:\n{text}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn bad_files_are_rejected_with_line_and_column() {
        let e = errors("[[rule]]\nname = \"a\"\ncomm = '(unclosed'\ninstance = \"x\"\n");
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with(
                "line 3, column 8: rule \"a\": comm is not a valid regular expression"
            ),
            "{e:?}"
        );
        let e = errors("[[rule]]\nname = \"a\"\ncomm = 'x'\ninstance = \"x\"\ncolour = 1\n");
        assert!(
            e[0].starts_with("line 5, column 1: unknown field `colour`"),
            "{e:?}"
        );
        let e = errors(
            "[[rule]]\nname = \"a\"\ncomm = 'x'\ninstance = \"x\"\n[[rule]]\nname = \"a\"\ncomm = 'y'\ninstance = \"y\"\n",
        );
        assert_eq!(e, vec!["line 6, column 8: duplicate rule name \"a\""]);
        let e = errors("[[rule]]\nname = \"a\"\ncomm = 'x(\\d)'\ninstance = \"{2}-{nope}-{}\"\n");
        assert!(e[0].contains("{} is not a variable"), "{e:?}");
        let e = errors("[[rule]]\nname = \"a\"\ncomm = 'x(\\d)'\ninstance = \"{2}\"\n");
        assert!(
            e[0].contains("{2}: the rule's expressions have 1 capture group(s)"),
            "{e:?}"
        );
        let e = errors("[[rule]]\nname = \"a\"\ninstance = \"x\"\n");
        assert!(e[0].contains("matches nothing"), "{e:?}");
        let e = errors("[[rule]]\nname = \"a\"\nport = 70000\ninstance = \"x\"\n");
        assert!(e[0].starts_with("line 3, column 8:"), "{e:?}");
        let e = errors("[instances]\nmax = 0\nexpire_after = \"5\"\n");
        assert_eq!(e.len(), 2, "{e:?}");
        let e = errors("not toml at all");
        assert!(e[0].starts_with("line 1, column"), "{e:?}");
        // Every error of a file, not only the first.
        let e = errors(
            "[[rule]]\nname = \"a\"\ncomm = '['\ninstance = \"x\"\n[[rule]]\nname = \"b\"\nexe = '('\ninstance = \"y\"\n",
        );
        assert_eq!(e.len(), 2, "{e:?}");
    }

    #[test]
    fn instances_table_and_builtin_switch() {
        let r = parse(
            "[instances]\nmax = 3\nexpire_after = \"2m\"\nbuiltin_rules = false\n",
            Some(DEFAULT_RULES),
        )
        .expect("valid");
        assert_eq!(
            (r.max_instances, r.expire_after),
            (3, Duration::from_secs(120))
        );
        assert_eq!(r.names().count(), 0);
        let r = parse("", Some(DEFAULT_RULES)).expect("empty file");
        assert_eq!(r.names().count(), 4);
    }

    #[test]
    fn templates_escape_braces_and_hostile_text_stays_text() {
        assert_eq!(
            parse_template("a{{b}}").expect("ok"),
            vec![Piece::Text("a{b}".into())]
        );
        assert!(parse_template("a}b").is_err());
        assert!(parse_template("{comm").is_err());
        assert_eq!(cmdline_text(b"mysqld\0--port=1\0"), "mysqld --port=1");
        assert_eq!(cmdline_text(b"x\x1b[2J\0y"), "x\\x1b[2J y");
    }
}
