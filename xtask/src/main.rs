//! Developer tasks: `cargo xtask setup | build | run | test | bench`.
//!
//! `run`, `test` and `bench` call `setup` first, so on a fresh machine each is one command.

mod bench;
mod run;
mod setup;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run, test and benchmark probe")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building the kernel programs needs (idempotent): Debian's LLVM matching the
    /// nightly toolchain, bpf-linker built against it, and rust-src.
    Setup,
    /// Build the `probe` binary (kernel programs embedded) into target/release/probe.
    Build,
    /// Build and start `probe serve` with its defaults (needs root). Extra arguments go to
    /// `probe`, e.g. `cargo xtask run -- check`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: unit tests, then the kernel tests in tests/ (needs root).
    Test {
        /// Only run the kernel tests whose name contains this.
        filter: Option<String>,
    },
    /// Measure probe's overhead and scrape cost against baselines, side by side.
    Bench {
        /// Extra sleeping processes for the scrape benchmark.
        #[arg(long, default_value_t = 5000)]
        processes: usize,
        /// Run one section only: sched, block, tcp or scrape.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(bench::SECTIONS))]
        only: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::toolchain(),
        Task::Build => setup::toolchain().and_then(|()| run::build()),
        Task::Run { args } => setup::toolchain()
            .and_then(|()| run::build())
            .and_then(|()| run::run(&args)),
        Task::Test { filter } => setup::toolchain()
            .and_then(|()| setup::packages(setup::TEST_PACKAGES))
            .and_then(|()| run::test(filter.as_deref())),
        Task::Bench { processes, only } => setup::toolchain()
            .and_then(|()| setup::packages(setup::BENCH_PACKAGES))
            .and_then(|()| run::build())
            .and_then(|()| bench::run(processes, only.as_deref())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
