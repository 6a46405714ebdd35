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
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub begin: Option<String>,

    /// Open at a moment of the history instead of now: Left/Right step one frame, [ and ]
    /// one minute, g jumps to a TIME; rates at a moment are over --interval before it, or
    /// the gap since the frame before, whichever is longer. With --once (or no terminal):
    /// that moment's view, printed. TIME as for --begin.
    #[arg(
        long,
        value_name = "TIME",
        conflicts_with = "begin",
        allow_hyphen_values = true
    )]
    pub at: Option<String>,

    /// End of the past window (with --begin); default: the last frame recorded.
    #[arg(
        long,
        value_name = "TIME",
        requires = "begin",
        allow_hyphen_values = true
    )]
    pub end: Option<String>,

    /// The history directory to read (e.g. a copy from another host); with --from, the
    /// daemon's own history is read over HTTP instead.
    #[arg(long = "history", value_name = "DIR", default_value = crate::history::DEFAULT_DIR)]
    pub history_dir: PathBuf,
}

pub fn run(args: TopArgs) -> anyhow::Result<()> {
    if let Some(begin) = &args.begin {
        let mut view = match &args.from {
            Some(url) => remote_past_view(url, begin, args.end.as_deref())?,
            None => past_view(&args.history_dir, begin, args.end.as_deref())?,
        };
        sort(&mut view, args.sort, false);
        print!("{}", render(&view, args.format)?);
        return Ok(());
    }
    let tty = std::io::stdout().is_terminal() && std::io::stdin().is_terminal();
    if let Some(at) = &args.at {
        let t = crate::history::time::parse_now(at).map_err(|e| anyhow::anyhow!("--at {e}"))?;
        let cursor = match &args.from {
            Some(url) => past::Cursor::remote(&source::authority(url)?, t, args.interval)?,
            None => {
                let history = crate::history::read::History::open(&args.history_dir)?;
                past::Cursor::new(history, t, args.interval)?
            }
        };
        if args.once || !tty {
            let mut view = cursor.view()?;
            sort(&mut view, args.sort, false);
            print!("{}", render(&view, args.format)?);
            return Ok(());
        }
        return tui::run(tui::Feed::Past(cursor), args.interval, args.sort);
    }
    let mut source = match &args.from {
        Some(url) => Source::remote(url)?,
        None => Source::local(standalone(&args)?),
    };
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
    tui::run(tui::Feed::Live(source), args.interval, args.sort)
}

fn render(view: &View, format: Format) -> anyhow::Result<String> {
    Ok(match format {
        Format::Json => serde_json::to_string_pretty(view)? + "\n",
        Format::Table => table(view),
    })
}

/// The view of a past window from the history of the daemon at `url`.
fn remote_past_view(url: &str, begin: &str, end: Option<&str>) -> anyhow::Result<View> {
    use crate::history::time;
    let authority = source::authority(url)?;
    let begin_ms = time::parse_now(begin).map_err(|e| anyhow::anyhow!("--begin {e}"))?;
    let mut path = format!("{}?begin={begin_ms}", crate::api::HISTORY_PATH);
    if let Some(end) = end {
        let end_ms = time::parse_now(end).map_err(|e| anyhow::anyhow!("--end {e}"))?;
        path.push_str(&format!("&end={end_ms}"));
    }
    let raw = source::get(&authority, &path)?;
    source::parse_history_response(&authority, &raw)
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
    let view = past::window_view(&history, begin_ms, end_ms)?;
    if let Some(h) = view.history.as_ref().filter(|h| h.damaged_frames > 0) {
        eprintln!(
            "probe top: {} damaged frame(s) in the window were left out",
            h.damaged_frames
        );
    }
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
        runq_histograms: args.hooks.runq_histograms,
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

    /// A store written by history format 1 (commit 76dea64; the README's "After the fact"
    /// incident: two CPU-bound query loops on mariadbd:3307 from 02:41:14 to 02:42:14 UTC on
    /// a 2-CPU VM, sysbench at 200 tps against 3306) must keep reading as what happened.
    #[test]
    fn a_store_of_format_1_still_reads_as_the_incident_it_recorded() {
        let d = std::env::temp_dir().join(format!("probe-history-v1-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(
            d.join(crate::history::store::FILE),
            include_bytes!("../testdata/history-v1.db"),
        )
        .expect("copy");
        let during = past_view(&d, "2026-12-05T02:41:29Z", Some("2026-12-05T02:42:09Z"))
            .expect("the incident's window");
        let i = &during.instances[0];
        assert_eq!(i.name, "mariadbd:3307", "{during:?}");
        assert!((150.0..=200.0).contains(&i.cpu_percent), "{i:?}");
        assert_eq!(i.noisy, ["cpu"]);
        let victim = during
            .instances
            .iter()
            .find(|i| i.name == "mariadbd:3306")
            .expect("3306");
        assert!(
            victim.suffering.contains(&"runqueue".to_string()),
            "{victim:?}"
        );
        let before = past_view(&d, "2026-12-05T02:40:00Z", Some("2026-12-05T02:41:10Z"))
            .expect("the window before");
        let quiet = before
            .instances
            .iter()
            .find(|i| i.name == "mariadbd:3307")
            .expect("3307");
        assert!(quiet.cpu_percent < 1.0, "{quiet:?}");
        assert!(before.instances.iter().all(|i| i.noisy.is_empty()));
        let _ = std::fs::remove_dir_all(d);
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
