//! The instance rule file: loading it, `probe config check`, `probe config defaults`.

use std::path::Path;

use crate::model::rules::{self, ConfigErrors, Rules, DEFAULT_RULES};

/// Reads and validates a rule file (the built-in rules follow its own, see [`rules::parse`]).
pub fn load(path: &Path) -> anyhow::Result<Rules> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read rule file {}: {e}", path.display()))?;
    rules::parse(&text, Some(DEFAULT_RULES)).map_err(|e| invalid(path, &e))
}

fn invalid(path: &Path, e: &ConfigErrors) -> anyhow::Error {
    let lines: Vec<String> =
        e.0.iter()
            .map(|err| format!("{}: {err}", path.display()))
            .collect();
    anyhow::anyhow!("invalid rule file:\n{}", lines.join("\n"))
}

/// `probe config check FILE`: prints the rules in the order they are tried, or every error with
/// its line and column. Exit code 0 if valid, 1 if not.
pub fn check(path: &Path) -> std::process::ExitCode {
    match load(path) {
        Ok(r) => {
            println!("{}: valid", path.display());
            println!(
                "  instances: at most {}, expire after {}s without processes or activity",
                r.max_instances,
                r.expire_after.as_secs()
            );
            println!("  process rules, in order: {}", names(&r.process));
            println!("  cgroup rules, in order:  {}", names(&r.cgroup));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn names(rules: &[rules::Rule]) -> String {
    if rules.is_empty() {
        return "(none)".into();
    }
    rules
        .iter()
        .map(|r| r.name.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
