//! Command line.

use std::{net::SocketAddr, time::Duration};

use clap::{Parser, Subcommand};

use crate::args::{parse_duration, Format, HookArgs};

/// Default port of the metrics endpoint. Prometheus' exporter range 9100-9999 is fully
/// allocated; this one is outside it and outside Linux's ephemeral range.
pub const DEFAULT_PORT: u16 = 19135;

/// probe: which service instance is eating the CPU or the disk? Kernel-level attribution with eBPF.
///
/// probe attributes on-CPU time, run-queue wait, block IO (bytes, operations, latency, and
/// page-cache bytes dirtied by buffered writes) and TCP traffic per port (payload bytes,
/// connections, retransmits, RTT) to service instances (e.g. each of several mariadbd on ports
/// 3306, 3307, 3308) and to the busiest processes, and serves them to Prometheus. Needs root, or
/// CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_PTRACE (plus CAP_SYS_ADMIN for the kernel's
/// BPF statistics), and a kernel with BTF (/sys/kernel/btf/vmlinux, Linux 5.8+).
/// `probe check` tells what works on this host.
#[derive(Debug, Parser)]
#[command(name = "probe", version, propagate_version = true)]
pub struct Cli {
    /// Log level: error, warn, info, debug or trace (or a RUST_LOG-style filter).
    #[arg(
        long = "log.level",
        default_value = "info",
        global = true,
        env = "PROBE_LOG"
    )]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the kernel programs and serve metrics on /metrics (Prometheus and OpenMetrics text).
    Serve(ServeArgs),
    /// Show which hook each collector uses on this kernel and why others were skipped (a
    /// verifier rejection in one line: its error, instruction and source line); exits non-zero
    /// if no kernel collector can run.
    Check(CheckArgs),
    /// Live view of the noisiest instances and processes (or one snapshot with --once), from a
    /// running daemon (--from) or standalone.
    Top(crate::top::TopArgs),
    /// Instance rule files: validate one, or print the built-in rules.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Detach the kernel programs `probe serve` left attached (after a crash or kill -9 they keep
    /// counting for the next start) and remove its pinned maps and saved accounts: the next start
    /// counts from zero. Run it after stopping probe for good; refused while a daemon runs.
    Unpin(PinArgs),
    /// Run a recording (`probe serve --record-readings FILE`) through the accounting again and
    /// print the metrics after its last reading (the accounts' families, not the daemon's
    /// own). Needs neither root nor the kernel the recording came from.
    Replay(ReplayArgs),
    /// Read the history `probe serve` records (--history.dir): what it holds, or a window of
    /// it exported for Prometheus (promtool), scripts or spreadsheets.
    #[command(subcommand)]
    History(HistoryCommand),
    /// Write man pages (probe.1 and one per subcommand) into a directory; the packages ship them.
    #[command(hide = true)]
    Man {
        /// Directory to write the pages into (created if missing).
        dir: std::path::PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a rule file: prints the rules in the order they are tried, or every error with
    /// its line and column (exit code 1).
    Check {
        /// The TOML rule file.
        file: std::path::PathBuf,
    },
    /// Print the built-in rules (a starting point for a file of your own).
    Defaults,
}

#[derive(Debug, Subcommand)]
pub enum HistoryCommand {
    /// What the store holds: frames, first and last frame, bytes.
    Info {
        /// The history directory (e.g. a copy from another host).
        #[arg(long = "history", value_name = "DIR", default_value = crate::history::DEFAULT_DIR)]
        dir: std::path::PathBuf,
    },
    /// Print a window of history: OpenMetrics with timestamps (backfill into Prometheus with
    /// `promtool tsdb create-blocks-from openmetrics FILE DIR`), JSON lines or CSV. Counters are
    /// cumulative as the daemon exported them (a daemon restart is a counter reset).
    Dump(DumpArgs),
    /// Write a synthetic host's history (cargo xtask bench --only history).
    #[command(hide = true)]
    Synth(crate::history::synth::SynthArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct DumpArgs {
    /// The history directory (e.g. a copy from another host).
    #[arg(long = "history", value_name = "DIR", default_value = crate::history::DEFAULT_DIR)]
    pub dir: std::path::PathBuf,
    /// Start of the window (TIME as for `probe top --begin`); default: the first frame.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub begin: Option<String>,
    /// End of the window; default: the last frame.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    pub end: Option<String>,
    #[arg(long, value_enum)]
    pub format: crate::history::dump::DumpFormat,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The recording.
    pub file: std::path::PathBuf,
    /// Compare, after every reading, the replayed metrics with the ones the recording daemon
    /// produced (recorded with --record-readings.expositions); exit code 1 if any differ.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Clone, Default, clap::Args)]
pub struct CheckArgs {
    /// Output: a table, or JSON (collector, state, hook, detail, reasons).
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,

    /// Also turn on the kernel's BPF run-time statistics, as `probe serve --bpf.stats` would
    /// (says whether the capabilities allow it).
    #[arg(long = "bpf.stats")]
    pub bpf_stats: bool,

    #[command(flatten)]
    pub hooks: HookArgs,
}

/// Where `probe serve` keeps what survives a restart.
#[derive(Debug, Clone, clap::Args)]
pub struct PinArgs {
    /// bpffs directory for the kernel maps that accumulate and the links that keep the programs
    /// attached: a restarted daemon (kill -9 included) reuses them and carries on, nothing
    /// counted is lost. A probe whose maps differ (upgrade, other map sizes) starts fresh and
    /// says so. Kept when probe stops, except the links on a graceful stop (SIGTERM).
    #[arg(long = "bpf.pin-path", value_name = "DIR", default_value = crate::pins::DEFAULT_ROOT)]
    pub pin_path: std::path::PathBuf,

    /// The daemon's own accounts (instance and process counters), written at every collection
    /// so that a restart continues them; best on tmpfs (cleared at reboot like the pins).
    #[arg(long = "state.file", value_name = "FILE", default_value = crate::state::DEFAULT_FILE)]
    pub state_file: std::path::PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to serve /metrics, /healthz and /readyz on; ":PORT" listens on all addresses.
    #[arg(long = "web.listen-address", default_value = ":19135", value_parser = parse_listen_address)]
    pub listen_address: SocketAddr,
    /// TLS and basic auth for the endpoint: a YAML file in the format of Prometheus'
    /// exporter-toolkit (tls_server_config: cert_file, key_file, optional client_ca_file and
    /// client_auth_type, min_version; basic_auth_users: user -> bcrypt hash). Reloaded on SIGHUP
    /// (a bad file is logged and the previous one stays). Without it: plain HTTP, no auth.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config: Option<std::path::PathBuf>,

    /// Processes exported one by one in probe_process_*: the busiest by recent CPU use, and
    /// separately the busiest by recent block IO; every process is always counted in its
    /// instance's totals.
    #[arg(long = "process.top-k", default_value_t = 20, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub top_k: u16,

    /// How often to collect between scrapes (so processes that exit are folded in even when
    /// nobody scrapes), e.g. 5s, 500ms, 1m. Scrapes always collect fresh data.
    #[arg(long = "collect.interval", default_value = "5s", value_parser = parse_duration)]
    pub collect_interval: Duration,

    /// Capacity of the kernel map that keeps the final CPU totals of exiting threads until the
    /// next collection: the number of distinct processes that may lose threads or exit between
    /// two collections. If it fills, probe_exited_threads_total{result="lost"} says so.
    #[arg(long = "cpu.exit-map-size", default_value_t = probe_common::cpu::DEAD_MAP_ENTRIES,
          value_parser = clap::value_parser!(u32).range(16..=4_194_304))]
    pub exit_map_size: u32,

    /// With --runq.histograms, capacity of the kernel map of run-queue latency per thread: the
    /// threads the host runs at once (preallocated, ~300 bytes each). If it fills, the waits of threads that found no
    /// room are not in the histograms and probe_runqueue_events_total{result="lost"} says so.
    #[arg(long = "runq.map-size", default_value_t = probe_common::runq::THREADS_MAP_ENTRIES,
          value_parser = clap::value_parser!(u32).range(64..=1_048_576))]
    pub runq_map_size: u32,

    /// Capacity of the kernel map of block IO per (process, disk, operation). Entries of exited
    /// processes are deleted once idle; if it fills, probe_block_events_total{result="lost"}
    /// says so.
    #[arg(long = "block.map-size", default_value_t = probe_common::block::IO_MAP_ENTRIES,
          value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub block_map_size: u32,

    /// Capacity of the kernel map of TCP traffic per (process, port, role). It grows with
    /// processes x listening ports, not with connections; entries of exited processes are
    /// deleted once idle. If it fills, probe_tcp_events_total{result="lost"} says so.
    #[arg(long = "tcp.map-size", default_value_t = probe_common::tcp::TRAFFIC_MAP_ENTRIES,
          value_parser = clap::value_parser!(u32).range(16..=1_048_576))]
    pub tcp_map_size: u32,

    /// Capacity of the kernel map of TCP connections (what was counted of each open one; ~100
    /// bytes each, allocated as they come). A connection that starts while it is full counts
    /// only from the next collection, and probe_tcp_events_total{result="lost"} says so.
    #[arg(long = "tcp.socket-map-size", default_value_t = probe_common::tcp::SOCKETS_MAP_ENTRIES,
          value_parser = clap::value_parser!(u32).range(16..=4_194_304))]
    pub tcp_socket_map_size: u32,

    /// Remote ports that outgoing connections keep as the `remote_port` label (e.g. 3306,443),
    /// so a client's traffic to them is told apart; traffic to any other remote port is folded
    /// into one series. Default: none. At most 64.
    #[arg(long = "tcp.remote-ports", value_delimiter = ',', value_parser = parse_remote_port)]
    pub tcp_remote_ports: Vec<u16>,

    /// Instance rules (TOML): which service_instance each process belongs to, the instance cap
    /// and expiry. Reloaded on SIGHUP (a file with errors is rejected and the rules in use stay).
    /// Default: the built-in rules (`probe config defaults` prints them).
    #[arg(long)]
    pub config: Option<std::path::PathBuf>,

    /// Turn on the kernel's BPF run-time statistics while probe runs, for
    /// probe_bpf_program_runs_total and probe_bpf_program_run_seconds_total (the cost of each of
    /// probe's programs per event). Off by default: the switch is host-wide, and every BPF
    /// program on the host then reads the clock twice per run (see the README's benchmark
    /// table for the price). Needs CAP_SYS_ADMIN; statistics turned on with sysctl
    /// kernel.bpf_stats_enabled=1 are exported without this flag.
    #[arg(long = "bpf.stats")]
    pub bpf_stats: bool,

    #[command(flatten)]
    pub pins: PinArgs,

    /// Pin nothing and save nothing: a restart starts every counter from zero, and the programs
    /// go with the daemon however it ends.
    #[arg(long = "bpf.no-pin")]
    pub no_pin: bool,

    #[command(flatten)]
    pub hooks: HookArgs,

    #[command(flatten)]
    pub history: HistoryArgs,

    /// Record what every collection reads (processes, their /proc facts, kernel counters) and
    /// every rule change into FILE, for `probe replay FILE` on another machine (e.g. attached to
    /// a bug report). Grows by about the size of one /metrics per collection: for debugging,
    /// not for running all the time.
    #[arg(long = "record-readings", value_name = "FILE")]
    pub record_readings: Option<std::path::PathBuf>,

    /// With --record-readings: also record the accounts' metrics after each reading, which
    /// `probe replay --check` compares with (tests).
    #[arg(
        long = "record-readings.expositions",
        hide = true,
        requires = "record_readings"
    )]
    pub record_expositions: bool,
}

/// History on the host: what `probe top --at/--begin` and `probe history` read.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// Directory of the history store: a frame of every instance's counters and the top
    /// processes at every collection (a few hundred bytes each), for `probe top --begin/--end`
    /// after the fact. A disk that is full or read-only stops recording (logged, and
    /// probe_history_recording 0), never serving.
    #[arg(long = "history.dir", value_name = "DIR", default_value = crate::history::DEFAULT_DIR)]
    pub dir: std::path::PathBuf,

    /// How long frames are kept, e.g. 7d, 12h, 90m (at least 1h); older ones are dropped at
    /// every frame.
    #[arg(long = "history.retention", value_name = "AGE", default_value = "7d", value_parser = parse_age)]
    pub retention: Duration,

    /// Most bytes the store may use, e.g. 512MiB, 2GiB; past it the oldest frames go first,
    /// at every frame (the file shrinks with them).
    #[arg(long = "history.max-size", value_name = "SIZE", default_value = "512MiB", value_parser = parse_size)]
    pub max_size: u64,

    /// Record no history.
    #[arg(long = "history.disable")]
    pub disable: bool,
}

/// "7d", "12h", "90m": from an hour (frames are read from a keyframe, one every 60 frames)
/// to ten years.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not an age like 7d, 12h or 90m");
    let i = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: u64 = s[..i].parse().map_err(|_| bad())?;
    let unit = match &s[i..] {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    let secs = n.checked_mul(unit).ok_or_else(bad)?;
    if !(3_600..=10 * 366 * 86_400).contains(&secs) {
        return Err(format!("{s:?} is out of range (1h to 10 years)"));
    }
    Ok(Duration::from_secs(secs))
}

/// "512MiB", "2GiB", "100MB", "1000000" (bytes): at least 1 MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a size like 512MiB, 2GiB or 100MB");
    let i = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..i].parse().map_err(|_| bad())?;
    let unit: u64 = match s[i..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = n.checked_mul(unit).ok_or_else(bad)?;
    if bytes < 1 << 20 {
        return Err(format!("{s:?} is too small (at least 1MiB)"));
    }
    Ok(bytes)
}

/// A TCP port number 1-65535.
pub fn parse_remote_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(format!("{s:?} is not a TCP port (1-65535)")),
    }
}

/// "HOST:PORT", "[v6]:PORT" or ":PORT" (all IPv4 addresses, like Go exporters).
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse().map_err(|_| {
        format!("{s:?} is not HOST:PORT (e.g. 127.0.0.1:{DEFAULT_PORT} or :{DEFAULT_PORT})")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_address(":19135").expect("ok"),
            "0.0.0.0:19135".parse().expect("addr")
        );
        assert_eq!(
            parse_listen_address("[::1]:80").expect("ok"),
            "[::1]:80".parse().expect("addr")
        );
        assert!(parse_listen_address("localhost").is_err());
        assert!(parse_listen_address("1.2.3.4:99999").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "5", "5h", "-1s", "10ms", "61m", "s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn ages_and_sizes() {
        assert_eq!(parse_age("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(14 * 86_400)));
        for bad in [
            "",
            "7",
            "d",
            "30s",
            "30m",
            "7y",
            "-1d",
            "99999999999999999999d",
        ] {
            assert!(parse_age(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("100MB"), Ok(100_000_000));
        assert_eq!(parse_size("2000000"), Ok(2_000_000));
        for bad in ["", "MiB", "1KiB", "12 parsecs", "-5MiB", "99999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["probe", "serve", "--process.top-k", "5"]).expect("parse");
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.top_k, 5);
        assert!(Cli::try_parse_from(["probe", "serve", "--process.top-k", "5000"]).is_err());
        let cli = Cli::try_parse_from(["probe", "serve", "--tcp.remote-ports", "3306,443"])
            .expect("parse");
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(args.tcp_remote_ports, vec![3306, 443]);
        for bad in ["0", "65536", "http", ""] {
            assert!(
                Cli::try_parse_from(["probe", "serve", "--tcp.remote-ports", bad]).is_err(),
                "{bad:?} accepted"
            );
        }
    }
}
