use std::{process::ExitCode, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Parser as _;
use probe_user::{
    check,
    cli::{Cli, Command, ServeArgs},
    daemon::{Daemon, Options},
    exporter::http::{self, App},
    loader,
};
use tracing::{error, info};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    match cli.command {
        Command::Check(hooks) => check::run(hooks.skip),
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
        let mut kernel = loader::load(&loader::LoadOptions {
            dead_map_entries: args.exit_map_size,
            block_map_entries: args.block_map_size,
            tcp_map_entries: args.tcp_map_size,
            tcp_remote_ports: args.tcp_remote_ports,
            skip_hooks: args.hooks.skip,
        });
        if let Some(logger) = kernel.logger.take() {
            loader::spawn_log_drain(logger);
        }
        let opts = Options { top_k: usize::from(args.top_k), ..Options::default() };
        let app = Arc::new(App::new(Daemon::new(kernel, opts)));
        {
            let app = app.clone();
            tokio::task::spawn_blocking(move || app.collect()).await.context("first collection")?;
        }
        info!(address = %args.listen_address, "serving /metrics");
        tokio::spawn(collect_periodically(app.clone(), args.collect_interval));
        tokio::select! {
            () = http::serve(listener, app) => {}
            () = shutdown_signal() => info!("shutting down; kernel programs are detached on exit"),
        }
        Ok(())
    })
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
