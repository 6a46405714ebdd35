//! Developer tasks: `cargo xtask setup | build | run | dist | test | fuzz | bench | vm`.
//!
//! `run`, `test` and `bench` call `setup` first, so on a fresh machine each is one command.

mod bench;
mod dist;
mod fuzz;
mod matrix;
mod run;
mod setup;
mod vm;

use std::{path::PathBuf, process::ExitCode, time::Duration};

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
    /// Build what users install into target/dist/: the static binary (musl, no debug info), its
    /// man pages, a .deb and an .rpm (cargo-deb and cargo-generate-rpm, installed if missing).
    Dist {
        /// Also lint (hadolint) and build the container image localhost/probe:<version> with
        /// podman (FROM scratch, nothing pulled) and save it as target/dist/probe-image.tar.
        #[arg(long)]
        image: bool,
    },
    /// Run every test: unit tests, a bounded fuzz run (see `fuzz`; skipped with a filter), the
    /// packages (see `dist`) and the kernel tests in tests/ on this machine's kernel (needs
    /// root), then the kernel-matrix set in a VM per Debian kernel (qemu; see `vm`).
    Test {
        /// Only run the kernel tests whose name contains this.
        filter: Option<String>,
        /// Kernels to test on: `host` (this machine's, the whole suite) and Debian kernel
        /// releases booted in qemu (the matrix set, tests/ files listed in xtask/src/matrix.rs).
        #[arg(long, value_delimiter = ',', default_values_t = default_kernels())]
        kernels: Vec<String>,
    },
    /// Measure probe's overhead and scrape cost against baselines, side by side.
    Bench {
        /// Extra sleeping processes for the scrape benchmark.
        #[arg(long, default_value_t = 5000)]
        processes: usize,
        /// Run one section only: oltp, sched, block, tcp, programs, scrape or history.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(bench::SECTIONS))]
        only: Option<String>,
        /// Where the `programs` section measures: `host` and Debian kernel releases booted in
        /// qemu (their ns are printed in their own column: emulation is not comparable).
        #[arg(long, value_delimiter = ',', default_values_t = ["host".to_string(), matrix::KERNELS[0].to_string()])]
        kernels: Vec<String>,
        /// Rounds of the oltp section (every variant once per round, medians over rounds).
        #[arg(long = "oltp.rounds", default_value_t = 10)]
        oltp_rounds: usize,
        /// Seconds of each sysbench run in the oltp section.
        #[arg(long = "oltp.seconds", default_value_t = 8)]
        oltp_seconds: u32,
        /// Also run the oltp workloads with each hot-path collector skipped in turn.
        #[arg(long = "oltp.skips")]
        oltp_skips: bool,
        /// Another probe binary (e.g. a build of an earlier commit) to compare this build's scrape
        /// cost and RSS with, in alternating rounds.
        #[arg(long = "scrape.baseline", value_name = "PROBE")]
        scrape_baseline: Option<std::path::PathBuf>,
        /// Another probe binary to compare this build's programs with on this machine (ns per
        /// run, medians of alternating rounds, ratios); the VM columns are measured as usual.
        #[arg(long = "programs.baseline", value_name = "PROBE")]
        programs_baseline: Option<std::path::PathBuf>,
    },
    /// (Inside a VM, for `bench`.) Run the programs section's workload on this kernel and
    /// write the programs' costs as JSON.
    /// Fuzz the parsers and encoders (cargo-fuzz, nightly): replay saved crashes, run each
    /// target for a bounded time, parse the exposition corpus with Python's prometheus_client.
    /// `cargo xtask test` runs it with 45 s per target.
    Fuzz {
        /// Seconds of fuzzing per target.
        #[arg(long, default_value_t = 300)]
        seconds: u32,
    },
    #[command(hide = true)]
    ProgramCosts {
        #[arg(long)]
        out: PathBuf,
    },
    /// Boot a Debian kernel package under qemu and run a command in it, with this machine's root
    /// filesystem (read-only, writes go to a throwaway overlay), e.g.
    /// `cargo xtask vm --kernel 6.1.0-57-amd64 -- target/release/probe check`. Exits with the
    /// command's status. The kernel is fetched from the configured apt repositories on first use
    /// (nothing is installed) and cached under target/vm/kernels.
    Vm(VmArgs),
}

#[derive(clap::Args)]
struct VmArgs {
    /// Debian kernel release (ABI name), e.g. 6.1.0-57-amd64 or 6.12.117+deb12-amd64.
    #[arg(long)]
    kernel: String,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(256..=65536))]
    memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    cpus: u32,
    /// Give up (and fail) after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout: u64,
    /// Mount a fresh ext4 disk (virtio-blk, 2 GiB, sparse) at this path in the guest.
    #[arg(long)]
    disk: Option<PathBuf>,
    /// Share this host directory read-write at the same path in the guest (repeatable).
    #[arg(long)]
    share: Vec<PathBuf>,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    cmd: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Setup => setup::toolchain(),
        Task::Build => setup::toolchain().and_then(|()| run::build()),
        Task::Run { args } => setup::toolchain()
            .and_then(|()| run::build())
            .and_then(|()| run::run(&args)),
        Task::Dist { image } => setup::toolchain().and_then(|()| dist::run(image)),
        Task::Fuzz { seconds } => setup::toolchain().and_then(|()| fuzz::run(seconds)),
        Task::Test { filter, kernels } => setup::toolchain()
            .and_then(|()| setup::packages(setup::TEST_PACKAGES))
            .and_then(|()| setup::python_tools())
            .and_then(|()| run::test(filter.as_deref(), &kernels)),
        Task::Bench {
            processes,
            only,
            kernels,
            oltp_rounds,
            oltp_seconds,
            oltp_skips,
            scrape_baseline,
            programs_baseline,
        } => setup::toolchain()
            .and_then(|()| setup::packages(setup::BENCH_PACKAGES))
            .and_then(|()| setup::packages(setup::TEST_PACKAGES))
            .and_then(|()| run::build())
            .and_then(|()| dist::run(false))
            .and_then(|()| {
                let oltp = bench::oltp::Options {
                    rounds: oltp_rounds,
                    seconds: oltp_seconds,
                    skips: oltp_skips,
                };
                bench::run(
                    processes,
                    only.as_deref(),
                    &kernels,
                    &oltp,
                    scrape_baseline.as_deref(),
                    programs_baseline.as_deref(),
                )
            }),
        Task::ProgramCosts { out } => bench::programs::guest_main(&out),
        Task::Vm(args) => {
            return match vm_task(args) {
                Ok(status) => ExitCode::from(u8::try_from(status).unwrap_or(1)),
                Err(e) => {
                    eprintln!("xtask vm: error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the command in the guest; returns its exit status.
fn vm_task(args: VmArgs) -> anyhow::Result<i32> {
    let cwd = std::env::current_dir().unwrap_or_else(|_| run::root());
    let vm = vm::Vm {
        memory_mib: args.memory,
        cpus: args.cpus,
        timeout: Duration::from_secs(args.timeout),
        disk: args.disk.map(|d| (absolute(&cwd, d), 2048)),
        shares: args.share.into_iter().map(|s| absolute(&cwd, s)).collect(),
        cwd,
        ..vm::Vm::new(&args.kernel)
    };
    let out = vm::run(&vm, &args.cmd)?;
    eprintln!(
        "xtask vm: {}: exit status {} after {:.1} s",
        args.kernel,
        out.status,
        out.elapsed.as_secs_f64()
    );
    Ok(out.status)
}

fn default_kernels() -> Vec<String> {
    std::iter::once("host")
        .chain(matrix::KERNELS.iter().copied())
        .map(String::from)
        .collect()
}

fn absolute(cwd: &std::path::Path, p: PathBuf) -> PathBuf {
    if p.is_absolute() {
        p
    } else {
        cwd.join(p)
    }
}
