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
    /// work around a kernel bug, or to try the fallback): iter/task, fentry/cgroup_release,
    /// tp_btf/sched_switch, raw_tp/sched_switch, iter/task_file, raw_tp/block_io_start, raw_tp/block_rq_issue,
    /// raw_tp/writeback_dirty_folio, raw_tp/writeback_dirty_page, iter/task_file/tcp,
    /// cgroup_skb, tp_btf/inet_sock_set_state, tp_btf/tcp_retransmit_skb, sock_ops; runq
    /// (the run-queue histograms, even with --runq.histograms); and rtt_walk (RTT from the TCP
    /// walk: RTT falls back to sock_ops). Repeat or separate with commas.
    #[arg(long = "hooks.skip", value_delimiter = ',', value_parser = hook_names())]
    pub skip: Vec<String>,

    /// Keep run-queue latency histograms per instance (probe_runqueue_latency_seconds: each
    /// wait for a CPU, for p99 panels and the InstanceRunQueueLatencyHigh alert). Off by
    /// default: it is a program at every context switch on the host. Where the exit hook is
    /// fentry/cgroup_release (most kernels; see `probe check`), that is the whole program, which
    /// the host does not run otherwise; where the exit hook is on sched_switch already, 45-90 ns
    /// more a switch (sched pipe on one CPU: 1.06-1.07x instead of 1.03-1.05x). The total wait
    /// per instance (probe_cpu_runqueue_wait_seconds_total) is kept either way, at no cost per
    /// switch.
    #[arg(long = "runq.histograms")]
    pub runq_histograms: bool,

    /// The host's cgroup filesystem as mounted in a container (e.g. the host's /sys/fs/cgroup at
    /// /host/sys/fs/cgroup): the socket programs (the RTT and per-port byte fallbacks) attach to
    /// the cgroup2 root there, or in its unified/ on hybrid hosts. Default: the host's through
    /// /proc/1/root (with hostPID), else this process's own cgroup2 mount.
    #[arg(long = "path.cgroup", value_name = "DIR")]
    pub cgroup: Option<std::path::PathBuf>,
}

/// "250ms", "5s", "2m"; between 100 ms and 1 hour.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &[(&str, Duration)] = &[
        ("ms", Duration::from_millis(1)),
        ("s", Duration::from_secs(1)),
        ("m", Duration::from_secs(60)),
    ];
    let d = duration_in(s, UNITS).map_err(|e| match e {
        DurationError::Number => format!("{s:?} is not a duration like 5s, 500ms or 1m"),
        DurationError::Unit => format!("{s:?}: unit must be ms, s or m"),
        // A number of minutes past what a Duration holds is out of range, not a wrap.
        DurationError::TooLong => format!("{s:?} is out of range (100ms to 60m)"),
    })?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!("{s:?} is out of range (100ms to 60m)"));
    }
    Ok(d)
}

/// Why [`duration_in`] refused a text.
#[derive(Debug, PartialEq, Eq)]
pub enum DurationError {
    /// It does not start with a whole number (or has a fraction).
    Number,
    /// What follows the number is not one of the units.
    Unit,
    /// More than a `Duration` holds.
    TooLong,
}

/// A whole number followed by one of `units` (its suffix and length), as in "90s"; shared by
/// the flags' and the rule file's durations, which take different units and ranges.
pub fn duration_in(s: &str, units: &[(&str, Duration)]) -> Result<Duration, DurationError> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u32 = num.parse().map_err(|e: std::num::ParseIntError| {
        if num.is_empty() || !matches!(e.kind(), std::num::IntErrorKind::PosOverflow) {
            DurationError::Number
        } else {
            DurationError::TooLong
        }
    })?;
    if unit.starts_with(['.', ',']) {
        return Err(DurationError::Number); // a fraction: whole numbers only
    }
    let per = units
        .iter()
        .find(|(name, _)| *name == unit)
        .map(|(_, per)| *per)
        .ok_or(DurationError::Unit)?;
    per.checked_mul(n).ok_or(DurationError::TooLong)
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
    fn duration_in_says_what_is_wrong() {
        use std::time::Duration;

        use super::{duration_in, DurationError};
        let units = &[
            ("s", Duration::from_secs(1)),
            ("h", Duration::from_secs(3600)),
        ];
        assert_eq!(duration_in("90s", units), Ok(Duration::from_secs(90)));
        assert_eq!(duration_in("2h", units), Ok(Duration::from_secs(7200)));
        assert_eq!(duration_in("0s", units), Ok(Duration::ZERO));
        for bad in ["", "s", "-1s", "1.5s", " 1s"] {
            assert_eq!(
                duration_in(bad, units),
                Err(DurationError::Number),
                "{bad:?}"
            );
        }
        for bad in ["1", "1m", "1S", "1s ", "1hs"] {
            assert_eq!(duration_in(bad, units), Err(DurationError::Unit), "{bad:?}");
        }
        assert_eq!(
            duration_in("99999999999999999999s", units),
            Err(DurationError::TooLong)
        );
        // Numbers are u32 (what Duration::checked_mul takes): u32::MAX hours fits, one more not.
        assert!(duration_in("4294967295h", units).is_ok());
        assert_eq!(
            duration_in("4294967296h", units),
            Err(DurationError::TooLong)
        );
    }

    #[test]
    fn hooks_skip_takes_current_and_earlier_names_and_refuses_others() {
        let cli = Cli::try_parse_from([
            "probe",
            "--hooks.skip",
            "iter/task_file/tcp,raw_tp/inet_sock_set_state",
            "--hooks.skip=raw_tp/tcp_retransmit_skb",
        ])
        .expect("parses");
        assert_eq!(
            cli.hooks.skip,
            [
                "iter/task_file/tcp",
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
