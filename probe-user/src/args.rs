//! Argument groups more than one command takes (`check`, `serve`, `top`), apart from the command
//! line itself so that the commands' modules need not import each other.

use std::time::Duration;

/// How a one-shot command prints its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    #[default]
    Table,
    /// One JSON object (schema in the README).
    Json,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct HookArgs {
    /// Do not use these hooks even if they work here, so their collector falls back (e.g. to
    /// work around a kernel bug, or to try the fallback): iter/task, tp_btf/sched_switch,
    /// raw_tp/sched_switch, iter/task_file, raw_tp/block_io_start, raw_tp/block_rq_issue,
    /// raw_tp/writeback_dirty_folio, raw_tp/writeback_dirty_page, tp_btf/sock_send_length,
    /// cgroup_skb, tp_btf/inet_sock_set_state, tp_btf/tcp_retransmit_skb, sock_ops; and runq
    /// (no run-queue latency histograms: saves ~50 ns per context switch). Repeat or separate
    /// with commas.
    #[arg(long = "hooks.skip", value_delimiter = ',', value_parser = hook_names())]
    pub skip: Vec<String>,

    /// The host's cgroup filesystem as mounted in a container (e.g. the host's /sys/fs/cgroup at
    /// /host/sys/fs/cgroup): the socket programs (TCP RTT, the per-port byte fallback) attach to
    /// the cgroup2 root there, or in its unified/ on hybrid hosts. Default: the host's through
    /// /proc/1/root (with hostPID), else this process's own cgroup2 mount.
    #[arg(long = "path.cgroup", value_name = "DIR")]
    pub cgroup: Option<std::path::PathBuf>,
}

/// "250ms", "5s", "2m"; between 100 ms and 1 hour.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 5s, 500ms or 1m"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        // Saturating: a number of minutes past u64 seconds is out of range below, not a wrap.
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("{s:?}: unit must be ms, s or m")),
    };
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{s:?} is out of range (100ms to 60m)"));
    }
    Ok(d)
}

/// `--hooks.skip` values: the hooks' names, and (hidden) the names earlier releases used, taken as
/// the new ones.
fn hook_names() -> impl clap::builder::TypedValueParser<Value = String> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser as _};

    use crate::loader::hooks;
    let current = hooks::ALL.iter().map(|h| PossibleValue::new(*h));
    let old = hooks::RENAMED
        .iter()
        .map(|(old, _)| PossibleValue::new(*old).hide(true));
    PossibleValuesParser::new(current.chain(old).collect::<Vec<_>>()).map(|name| {
        hooks::RENAMED
            .iter()
            .find(|(old, _)| *old == name)
            .map_or(name, |(_, new)| (*new).to_string())
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::HookArgs;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        hooks: HookArgs,
    }

    #[test]
    fn durations_in_range_parse_and_others_are_refused_not_wrapped() {
        use std::time::Duration;
        assert_eq!(
            super::parse_duration("250ms"),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(super::parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["50ms", "61m", "5h", "x", "", "307445734561825861m"] {
            assert!(super::parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hooks_skip_takes_current_and_earlier_names_and_refuses_others() {
        let cli = Cli::try_parse_from([
            "probe",
            "--hooks.skip",
            "tp_btf/sock_send_length,raw_tp/inet_sock_set_state",
            "--hooks.skip=raw_tp/tcp_retransmit_skb",
        ])
        .expect("parses");
        assert_eq!(
            cli.hooks.skip,
            [
                "tp_btf/sock_send_length",
                "tp_btf/inet_sock_set_state",
                "tp_btf/tcp_retransmit_skb"
            ]
        );
        let err = Cli::try_parse_from(["probe", "--hooks.skip", "raw_tp/nope"])
            .err()
            .expect("refused");
        assert!(err.to_string().contains("raw_tp/nope"), "{err}");
        // Earlier names are accepted but not offered.
        assert!(
            !err.to_string().contains("raw_tp/sock_send_length"),
            "{err}"
        );
    }
}
