//! `probe top`: the noisiest instances and processes, live in the terminal, or one snapshot for
//! scripts (`--once --format json`).
//!
//! [`crate::api`] is what the daemon serves and what a standalone `probe top` builds itself;
//! [`view`] turns two samples into rates, rankings and marks (pure); [`tui`] draws them.

pub mod past;
pub mod source;
pub mod tui;
pub mod view;

use std::{io::IsTerminal as _, path::PathBuf, time::Duration};

use self::{
    source::Source,
    view::{sort, InstanceView, SortBy, View},
};
use crate::{
    args::{parse_duration, Format, HookArgs},
    daemon::{Daemon, Options},
    loader,
};

#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Read a running daemon (`probe serve`) instead of loading the kernel programs here, e.g.
    /// http://127.0.0.1:19135 (needs no privileges).
    #[arg(long)]
    pub from: Option<String>,

    /// Time between refreshes; with --once, how long to measure before printing.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub interval: Duration,

    /// Print one snapshot after one interval and exit (also what happens when standard output
    /// is not a terminal).
    #[arg(long)]
    pub once: bool,

    /// Output of --once: an aligned table, or JSON (schema in the README).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,

    /// Column to sort instances and processes by (names ascending, the rest descending).
    #[arg(long, value_enum, default_value = "cpu")]
    pub sort: SortBy,

    /// Instance rules (standalone only; a daemon uses its own). Default: the built-in rules.
    #[arg(long)]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub hooks: HookArgs,

    /// Show a past window from the history `probe serve` records, instead of now: rates over
    /// --begin to --end (default: the last frame), with the same ranking and marks as live.
    /// TIME: 2026-12-05T03:10:00Z (RFC 3339), 2026-12-05 03:10 or 03:10 (today) in local
    /// time, -15m / -2h / -1d ago, or @UNIX_SECONDS. Prints once (table or --format json).
    #[arg(
        long,
        value_name = "TIME",
        conflicts_with = "from",
        allow_hyphen_values = true
    )]
    pub begin: Option<String>,

    /// End of the past window (with --begin); default: the last frame recorded.
    #[arg(
        long,
        value_name = "TIME",
        requires = "begin",
        allow_hyphen_values = true
    )]
    pub end: Option<String>,

    /// The history directory to read (e.g. a copy from another host).
    #[arg(long = "history", value_name = "DIR", default_value = crate::history::DEFAULT_DIR)]
    pub history_dir: PathBuf,
}

pub fn run(args: TopArgs) -> anyhow::Result<()> {
    if let Some(begin) = &args.begin {
        let mut view = past_view(&args.history_dir, begin, args.end.as_deref())?;
        sort(&mut view, args.sort, false);
        print!("{}", render(&view, args.format)?);
        return Ok(());
    }
    let mut source = match &args.from {
        Some(url) => Source::remote(url)?,
        None => Source::local(standalone(&args)?),
    };
    let tty = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if args.once || !tty {
        if !args.once {
            eprintln!(
                "probe top: standard output is not a terminal; printing one snapshot (--once)"
            );
        }
        let view = once(&mut source, args.interval, args.sort)?;
        print!("{}", render(&view, args.format)?);
        return Ok(());
    }
    tui::run(source, args.interval, args.sort)
}

fn render(view: &View, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(view)? + "\n",
        Format::Table => table(view),
    })
}

/// The view of a past window read from the history in `dir`.
pub fn past_view(dir: &std::path::Path, begin: &str, end: Option<&str>) -> anyhow::Result<View> {
    use crate::history::{read::History, time};
    let history = History::open(dir)?;
    let begin_ms = time::parse_now(begin).map_err(|e| anyhow::anyhow!("--begin {e}"))?;
    let end_ms = match end {
        Some(end) => time::parse_now(end).map_err(|e| anyhow::anyhow!("--end {e}"))?,
        None => history.range()?.1,
    };
    let window = history.window(begin_ms, end_ms)?;
    let (a, b) = past::window_samples(&window.frames).ok_or_else(|| {
        anyhow::anyhow!(
            "only {} frame(s) recorded between {} and {}: a rate needs two; widen the window \
             (frames are one collection apart, 5s by default)",
            window.frames.len(),
            time::show_local(begin_ms),
            time::show_local(end_ms)
        )
    })?;
    if window.damaged > 0 {
        eprintln!(
            "probe top: {} damaged frame(s) in the window were left out",
            window.damaged
        );
    }
    let mut view = view::compute(&a, &b);
    // A window sees every process that was in a top-K list at any of its frames: only those
    // that used something in it are shown.
    view.processes.retain(|p| {
        [
            p.cpu_percent,
            p.runqueue_wait_percent,
            p.disk_read_bytes_per_second,
            p.disk_write_bytes_per_second,
            p.tcp_rx_bytes_per_second,
            p.tcp_tx_bytes_per_second,
        ]
        .iter()
        .any(|r| r.is_some_and(|r| r > 0.0))
    });
    let (first, last) = (
        window.frames.first().map_or(0, |f| f.t_ms),
        window.frames.last().map_or(0, |f| f.t_ms),
    );
    view.history = Some(view::HistoryWindow {
        begin: time::rfc3339(first),
        end: time::rfc3339(last),
        frames: window.frames.len(),
        damaged_frames: window.damaged,
    });
    Ok(view)
}

/// Two samples `interval` apart, as a view.
pub fn once(source: &mut Source, interval: Duration, by: SortBy) -> anyhow::Result<View> {
    let first = source.sample()?;
    std::thread::sleep(interval);
    let second = source.sample()?;
    let mut view = view::compute(&first, &second);
    sort(&mut view, by, false);
    Ok(view)
}

/// Loads the kernel programs for a standalone `probe top`.
fn standalone(args: &TopArgs) -> anyhow::Result<Daemon> {
    let rules = match &args.config {
        Some(path) => crate::config::load(path)?,
        None => crate::model::rules::Rules::defaults(),
    };
    let kernel = loader::load(&loader::LoadOptions {
        skip_hooks: args.hooks.skip.clone(),
        cgroup_path: args.hooks.cgroup.clone(),
        ..loader::LoadOptions::default()
    });
    if kernel
        .status(loader::names::CPU_EXIT)
        .is_none_or(|s| !s.up())
    {
        let why = kernel
            .status(loader::names::CPU_EXIT)
            .map(|s| {
                s.notes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        anyhow::bail!(
            "cannot load the kernel programs ({why}).\nprobe top needs root (or CAP_BPF, CAP_PERFMON, \
             CAP_NET_ADMIN, CAP_SYS_PTRACE) to run standalone; to read a running daemon instead, \
             use --from http://HOST:19135"
        );
    }
    let opts = Options {
        rules: std::sync::Arc::new(rules),
        ..Options::default()
    };
    let mut daemon = Daemon::new(kernel, opts);
    // The first collection brings every process's whole past; the view starts after it.
    daemon.collect();
    Ok(daemon)
}

/// Human-readable bytes per second.
pub fn bytes_rate(v: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = v.max(0.0);
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}{}/s", UNITS[u])
    } else {
        format!("{v:.1}{}/s", UNITS[u])
    }
}

/// Human-readable duration, or "-" when there is none.
pub fn secs(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(s) if s.is_infinite() => ">16s".into(),
        Some(s) if s < 1e-3 => format!("{:.0}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.2}s"),
    }
}

/// The marks column: `!cpu` / `!disk` for a noisy instance, `~` for one that suffers.
pub fn marks(i: &InstanceView) -> String {
    if !i.noisy.is_empty() {
        format!("!{}", i.noisy.join(","))
    } else if !i.suffering.is_empty() {
        "~".into()
    } else {
        String::new()
    }
}

/// Instance table columns: header and cell text.
pub const INSTANCE_COLUMNS: [&str; 12] = [
    "MARK", "INSTANCE", "PROCS", "CPU%", "RUNQ%", "RQ-P99", "READ/s", "WRITE/s", "IO-AVG", "RX/s",
    "TX/s", "PORTS",
];

pub fn instance_cells(i: &InstanceView) -> Vec<String> {
    let ports: Vec<String> = i
        .ports
        .iter()
        .filter(|p| p.rx_bytes_per_second + p.tx_bytes_per_second > 0.0)
        .map(|p| p.port.clone())
        .collect();
    vec![
        marks(i),
        i.name.clone(),
        i.processes.to_string(),
        format!("{:.1}", i.cpu_percent),
        format!("{:.1}", i.runqueue_wait_percent),
        secs(i.runqueue_latency_p99_seconds),
        bytes_rate(i.disk_read_bytes_per_second),
        bytes_rate(i.disk_write_bytes_per_second),
        secs(i.disk_latency_avg_seconds),
        bytes_rate(i.tcp_rx_bytes_per_second),
        bytes_rate(i.tcp_tx_bytes_per_second),
        ports.join(","),
    ]
}

pub const PROCESS_COLUMNS: [&str; 9] = [
    "PID", "COMM", "INSTANCE", "CPU%", "RUNQ%", "READ/s", "WRITE/s", "RX/s", "TX/s",
];

pub fn process_cells(p: &view::ProcessView) -> Vec<String> {
    let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
    let rate = |v: Option<f64>| v.map_or("-".into(), bytes_rate);
    vec![
        p.pid.to_string(),
        p.comm.clone(),
        p.instance.clone(),
        pct(p.cpu_percent),
        pct(p.runqueue_wait_percent),
        rate(p.disk_read_bytes_per_second),
        rate(p.disk_write_bytes_per_second),
        rate(p.tcp_rx_bytes_per_second),
        rate(p.tcp_tx_bytes_per_second),
    ]
}

/// The view as aligned plain text (for --once and pipes).
pub fn table(view: &View) -> String {
    let mut out = String::new();
    if let Some(h) = &view.history {
        out.push_str(&format!(
            "history: {} to {} ({} frames)\n",
            h.begin, h.end, h.frames
        ));
    }
    out.push_str(&format!(
        "probe top: {} instances over {:.1}s (! noisy: dominates a resource while another instance's latency rises; ~ suffering)\n",
        view.instances.len(),
        view.interval_seconds
    ));
    let rows: Vec<Vec<String>> = view.instances.iter().map(instance_cells).collect();
    out.push_str(&align(&INSTANCE_COLUMNS, &rows));
    if !view.processes.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = view.processes.iter().map(process_cells).collect();
        out.push_str(&align(&PROCESS_COLUMNS, &rows));
    }
    out
}

fn align(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i > 0 {
                l.push_str("  ");
            }
            l.push_str(&format!("{c:<w$}"));
        }
        l.trim_end().to_string() + "\n"
    };
    let mut out = line(header.to_vec());
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(bytes_rate(0.0), "0B/s");
        assert_eq!(bytes_rate(1536.0), "1.5KiB/s");
        assert_eq!(bytes_rate(3.0 * 1024.0 * 1024.0), "3.0MiB/s");
        assert_eq!(secs(None), "-");
        assert_eq!(secs(Some(16e-6)), "16us");
        assert_eq!(secs(Some(0.0042)), "4.2ms");
        assert_eq!(secs(Some(f64::INFINITY)), ">16s");
    }

    #[test]
    fn table_is_aligned() {
        let view = View {
            instances: vec![InstanceView {
                name: "mariadbd:3306".into(),
                cpu_percent: 99.5,
                noisy: vec!["cpu".into()],
                ..InstanceView::default()
            }],
            ..View::default()
        };
        let t = table(&view);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[1].starts_with("MARK  INSTANCE"), "{t}");
        assert!(lines[2].starts_with("!cpu  mariadbd:3306"), "{t}");
    }
}
