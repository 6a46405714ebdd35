//! Parsing a rule file: TOML into [`Rules`], every error with its line and column; name
//! templates; expiry durations.

use std::{collections::HashSet, fmt, ops::Range, sync::Arc, time::Duration};

use regex::Regex;
use serde::Deserialize;

use super::{Piece, Rule, Rules, Var, DEFAULT_EXPIRE_AFTER, DEFAULT_MAX_INSTANCES};

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

pub(super) fn parse_template(t: &str) -> Result<Vec<Piece>, String> {
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
    use crate::args::{duration_in, DurationError};
    const UNITS: &[(&str, Duration)] = &[
        ("s", Duration::from_secs(1)),
        ("m", Duration::from_secs(60)),
        ("h", Duration::from_secs(3600)),
    ];
    let d = duration_in(s, UNITS).map_err(|e| match e {
        DurationError::Number => {
            format!("expire_after = {s:?}: not a duration like 90s, 10m or 2h")
        }
        DurationError::Unit => format!("expire_after = {s:?}: unit must be s, m or h"),
        DurationError::TooLong => format!("expire_after = {s:?}: too long"),
    })?;
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
