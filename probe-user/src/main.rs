use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use probe_user::{
    check,
    cli::{Cli, Command, ConfigCommand, ServeArgs},
    config,
    daemon::{Daemon, Options},
    exporter::http,
    loader,
    service::App,
    webconfig::WebConfig,
};
use tracing::{debug, error, info, warn};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // probe top draws on the terminal: only warnings and errors go to stderr unless asked.
    let level = match (&cli.command, cli.log_level.as_str()) {
        (Command::Top(_), "info") => "warn",
        (_, l) => l,
    };
    init_logging(level);
    match cli.command {
        Command::Check(args) => check::run(args.hooks, args.bpf_stats, args.format),
        Command::Config(ConfigCommand::Check { file }) => config::check(&file),
        Command::Unpin(args) => {
            match probe_user::pins::unpin(&args.pin_path, Some(&args.state_file)) {
                Ok(removed) if removed.is_empty() => {
                    println!(
                        "nothing to remove: no pins in {} and no {}",
                        args.pin_path.display(),
                        args.state_file.display()
                    );
                    ExitCode::SUCCESS
                }
                Ok(removed) => {
                    for p in removed {
                        println!("removed {}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("probe unpin: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Config(ConfigCommand::Defaults) => {
            print!("{}", probe_user::model::rules::DEFAULT_RULES);
            ExitCode::SUCCESS
        }
        Command::Man { dir } => match man_pages(&dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("probe man: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Replay(args) => probe_user::record::run(&args),
        Command::History(cmd) => match probe_user::history::command(cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("probe history: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Top(args) => match probe_user::top::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("probe top: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e:#}");
                eprintln!("probe: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// The man pages come from the same definitions as `--help` (clap_mangen), so they cannot
/// drift from it.
fn man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = <Cli as clap::CommandFactory>::command();
    clap_mangen::generate_to(cmd, dir).with_context(|| format!("writing into {}", dir.display()))
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level).unwrap_or_else(|e| {
        eprintln!("probe: bad --log.level {level:?} ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    // Also installs the `log` bridge, so aya and aya-log records land here.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let max = probe_common::tcp::REMOTE_PORTS_MAX as usize;
    if args.tcp_remote_ports.len() > max {
        anyhow::bail!(
            "--tcp.remote-ports names {} ports; at most {max} are kept apart",
            args.tcp_remote_ports.len()
        );
    }
    raise_open_files_limit();
    // A rule file with errors is a reason not to start (unlike on reload, there is nothing to
    // keep).
    let rules = match &args.config {
        Some(path) => config::load(path)?,
        None => probe_user::model::rules::Rules::defaults(),
    };
    // So is a web config with errors: serving in the clear what was meant to be protected is
    // worse than not serving.
    let web = match &args.web_config {
        Some(path) => WebConfig::load(path)?,
        None => WebConfig::default(),
    };
    let tls = web.tls.is_some();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        // Bind first: a port in use is a reason not to start at all.
        let listener = tokio::net::TcpListener::bind(args.listen_address).await.with_context(|| {
            format!(
                "cannot listen on {} (another probe or exporter may be using it; choose another with --web.listen-address)",
                args.listen_address
            )
        })?;
        let load_opts = loader::LoadOptions {
            dead_map_entries: args.exit_map_size,
            block_map_entries: args.block_map_size,
            runq_map_entries: args.runq_map_size,
            tcp_map_entries: args.tcp_map_size,
            tcp_socket_map_entries: args.tcp_socket_map_size,
            tcp_remote_ports: args.tcp_remote_ports,
            skip_hooks: args.hooks.skip,
            runq_histograms: args.hooks.runq_histograms,
            cgroup_path: args.hooks.cgroup,
            bpf_stats: args.bpf_stats,
            self_port: listener.local_addr().map_or(0, |a| a.port()),
        };
        let pins = if args.no_pin { None } else { open_pins(&load_opts, &args.pins.pin_path)? };
        let mut kernel = loader::load_pinned(&load_opts, pins);
        if let Some(logger) = kernel.logger.take() {
            loader::spawn_log_drain(logger);
        }
        let opts = Options {
            top_k: usize::from(args.top_k),
            rules: Arc::new(rules),
            state_file: (!args.no_pin).then(|| args.pins.state_file.clone()),
            ..Options::default()
        };
        let mut daemon = Daemon::new(kernel, opts);
        if let Some(path) = &args.record_readings {
            let recorder = probe_user::record::Recorder::create(path, args.record_expositions)
                .with_context(|| format!("cannot record readings to {}", path.display()))?;
            daemon.record(recorder);
        }
        if !args.history.disable {
            let recorder = probe_user::history::writer::Recorder::start(
                probe_user::history::writer::Settings {
                    dir: args.history.dir.clone(),
                    retention: probe_user::history::store::Retention {
                        max_age: args.history.retention,
                        max_bytes: args.history.max_size,
                    },
                },
            )
            .context("starting the history writer")?;
            info!(dir = %args.history.dir.display(), "recording history");
            daemon.record_history(recorder);
        }
        let app = Arc::new(App::new(daemon, web));
        {
            let app = app.clone();
            tokio::task::spawn_blocking(move || app.collect()).await.context("first collection")?;
        }
        info!(address = %args.listen_address, tls, "serving /metrics");
        tokio::spawn(collect_periodically(app.clone(), args.collect_interval));
        tokio::spawn(reload_on_sighup(app.clone(), args.config.clone(), args.web_config.clone()));
        tokio::select! {
            () = http::serve(listener, app.clone()) => {}
            () = shutdown_signal() => {
                let daemon = app.daemon();
                if let Some(pins) = &daemon.kernel().pins {
                    pins.detach_all();
                    // The programs are detached (a run in flight on another CPU may still add
                    // a few bytes): what open sockets carried since the last collection goes to
                    // the pinned totals now, for the next daemon; a socket that closes before it
                    // starts would take it with it.
                    if let Err(e) = daemon.kernel().walk_tcp() {
                        warn!(error = %e, "TCP sockets' counters could not be read; what they carried counts when the next daemon's collections see them, unless they close first");
                    }
                    info!(pins = %pins.root().display(), "shutting down; kernel programs detached, maps and accounts kept for the next start (probe unpin removes them)");
                } else {
                    info!("shutting down; kernel programs are detached on exit");
                }
            }
        }
        Ok(())
    })
}

/// Pins for `probe serve`: another daemon on the same pins is a reason not to start; a host
/// where nothing can be pinned (no bpffs) is not, it runs without (and says so).
fn open_pins(
    opts: &loader::LoadOptions,
    root: &std::path::Path,
) -> anyhow::Result<Option<probe_user::pins::Pins>> {
    let layout = match loader::pinned_shapes(opts) {
        Ok(shapes) => probe_user::pins::layout_name(&shapes),
        Err(e) => {
            tracing::warn!("nothing pinned, a restart will count from zero: {e}");
            return Ok(None);
        }
    };
    // bpffs may not be mounted yet (the loader would mount it; pins need it first).
    let _ = probe_user::sys::ensure_mounted("bpf", std::path::Path::new("/sys/fs/bpf"));
    match probe_user::pins::Pins::open(root, &layout) {
        Ok(p) => Ok(Some(p)),
        Err(probe_user::pins::OpenError::Busy(e)) => anyhow::bail!(e),
        Err(probe_user::pins::OpenError::Other(e)) => {
            tracing::warn!("nothing pinned, a restart will count from zero: {e}");
            Ok(None)
        }
    }
}

/// Lets the soft limit of open files reach the hard one (as Go's runtime does): the endpoint
/// accepts every connection at once (see exporter::http), each taking a descriptor, and 1024
/// would otherwise be reached by a burst of scrapers.
fn raise_open_files_limit() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only the struct passed by pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &r) != 0 {
                debug!("could not raise the open-files limit");
            }
        }
    }
}

async fn collect_periodically(app: Arc<App>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let app = app.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || app.collect()).await {
            error!(error = %e, "collection task failed");
        }
    }
}

/// SIGHUP: reads the rule file and the web config again. A file with errors is rejected
/// (logged, counted in probe_config_reloads_total{result="failure"}); the one in use stays.
async fn reload_on_sighup(
    app: Arc<App>,
    path: Option<std::path::PathBuf>,
    web: Option<std::path::PathBuf>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        return;
    };
    while hup.recv().await.is_some() {
        if let Some(web) = &web {
            let loaded = {
                let web = web.clone();
                tokio::task::spawn_blocking(move || WebConfig::load(&web)).await
            };
            let ok = match loaded {
                Ok(Ok(config)) => {
                    info!(file = %web.display(), tls = config.tls.is_some(), "SIGHUP: web config reloaded");
                    app.set_web(config);
                    true
                }
                Ok(Err(e)) => {
                    error!("SIGHUP: web config not reloaded, the previous one stays: {e:#}");
                    false
                }
                Err(e) => {
                    error!(error = %e, "SIGHUP: reload task failed; the previous web config stays");
                    false
                }
            };
            app.daemon().web_reloaded(ok);
        }
        let Some(path) = &path else {
            info!("SIGHUP: no --config file; the built-in rules stay");
            continue;
        };
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || config::load(&path)).await
        };
        let mut daemon = app.daemon();
        match loaded {
            Ok(Ok(rules)) => {
                info!(file = %path.display(), rules = rules.names().count(), "SIGHUP: rules reloaded");
                daemon.set_rules(Arc::new(rules));
                daemon.reloaded(true);
            }
            Ok(Err(e)) => {
                error!(file = %path.display(), "SIGHUP: rules not reloaded, the previous rules stay: {e:#}");
                daemon.reloaded(false);
            }
            Err(e) => {
                error!(error = %e, "SIGHUP: reload task failed; the previous rules stay");
                daemon.reloaded(false);
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (terminate) still applies.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
