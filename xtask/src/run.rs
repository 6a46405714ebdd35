//! `build`, `run` and `test`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::{
    matrix,
    setup::{is_root, sh, sh_env},
};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn probe_bin() -> PathBuf {
    root().join("target/release/probe")
}

pub fn build() -> Result<()> {
    println!("xtask: building probe (kernel programs included)");
    sh("cargo", &["build", "--release", "-p", "probe-user"])
}

pub fn run(args: &[String]) -> Result<()> {
    let bin = probe_bin();
    let mut argv: Vec<&str> = args.iter().map(String::as_str).collect();
    if argv.is_empty() {
        argv.push("serve");
    }
    if !is_root() {
        println!(
            "xtask: warning: not root; loading the kernel programs will fail (see `probe check`)"
        );
    }
    let bin = bin.to_string_lossy();
    sh(&bin, &argv)
}

/// Unit tests, then the kernel tests: the whole suite on the host's kernel (`host` in
/// `kernels`), then the matrix set in a VM per Debian kernel named in `kernels`.
/// Seconds each fuzz target runs in `cargo xtask test` (`cargo xtask fuzz` for longer runs).
const FUZZ_SECONDS_IN_TEST: u32 = 45;

pub fn test(filter: Option<&str>, kernels: &[String]) -> Result<()> {
    println!("xtask: unit tests (no root needed)");
    sh(
        "cargo",
        &[
            "test",
            "--release",
            "-p",
            "probe-common",
            "-p",
            "probe-user",
            "-p",
            "xtask",
        ],
    )?;
    kernel_clippy()?;
    if filter.is_none() {
        crate::fuzz::run(FUZZ_SECONDS_IN_TEST)?;
    }
    build()?;
    if !is_root() {
        bail!("the kernel tests load BPF programs and need root: run `sudo -E cargo xtask test`");
    }
    remove_stale_test_pins();
    let mut failures = Vec::new();
    if kernels.iter().any(|k| k == "host") {
        println!(
            "xtask: kernel tests on this machine's kernel (root, ground truth from /proc and the workloads)"
        );
        // What users install: tests/tests/packages.rs installs the packages, container.rs runs
        // the image as the DaemonSet would.
        crate::dist::run(true)?;
        let dist = crate::dist::dir();
        let bin = probe_bin();
        let bin = bin.to_string_lossy();
        let mut args = vec![
            "test",
            "--release",
            "-p",
            "probe-tests",
            "--",
            "--test-threads=1",
            "--nocapture",
        ];
        if let Some(f) = filter {
            args.push(f);
        }
        if let Err(e) = sh_env(
            "cargo",
            &args,
            &[("PROBE_BIN", &bin), ("PROBE_DIST", &dist.to_string_lossy())],
        ) {
            failures.push(format!("host kernel tests: {e:#}"));
        }
        matrix::host_check()?;
    }
    let vms: Vec<&str> = kernels
        .iter()
        .map(String::as_str)
        .filter(|k| *k != "host")
        .collect();
    let mut runs = Vec::new();
    if !vms.is_empty() {
        let tests = matrix::selected(filter);
        if tests.is_empty() {
            println!(
                "xtask: no kernel-matrix test matches {filter:?}; no VM booted ({})",
                vms.join(", ")
            );
        } else {
            crate::setup::packages(crate::vm::PACKAGES)?;
            let exes = matrix::test_executables()?;
            for kernel in vms {
                runs.push(matrix::run_on(kernel, &tests, &exes)?);
            }
        }
    }
    if !runs.is_empty() {
        println!("\nxtask: kernel matrix");
    }
    for r in &runs {
        let verdict = if r.ok() { "ok" } else { "FAILED" };
        println!(
            "  {:<24} {verdict}: {} of {} passed in {:.0} s{}{}",
            r.kernel,
            r.passed,
            r.expected,
            r.elapsed.as_secs_f64(),
            if r.failed.is_empty() {
                String::new()
            } else {
                format!("; failed: {}", r.failed.join(", "))
            },
            r.error
                .as_ref()
                .map(|e| format!("; {e}"))
                .unwrap_or_default(),
        );
        if !r.ok() {
            failures.push(format!("kernel matrix on {}", r.kernel));
        }
    }
    if let Some(table) = matrix::hook_table() {
        println!("\nHooks per collector and kernel (probe check on each):\n{table}");
        let path = root().join("target/kernel-matrix.md");
        std::fs::write(&path, &table)?;
        let complete = filter.is_none() && runs.len() == matrix::KERNELS.len();
        if complete && !matrix::readme_has(&table) {
            println!(
                "xtask: note: README.md's kernel table differs from this run's; the table is in {}",
                path.display()
            );
        }
    }
    if !failures.is_empty() {
        bail!("failed: {}", failures.join("; "));
    }
    Ok(())
}

/// Clippy on the kernel crate (nightly, for bpfel-unknown-none): every `unsafe` block must say
/// why it is sound (`// SAFETY:`, denied in probe-ebpf/src/main.rs); other lints only warn, so
/// a new nightly cannot fail the run.
fn kernel_clippy() -> Result<()> {
    use crate::setup::EBPF_TOOLCHAIN;
    println!("xtask: clippy on the kernel programs (every unsafe block has a SAFETY comment)");
    let installed = crate::setup::nightly_components()?;
    if !installed.lines().any(|l| l.starts_with("clippy")) {
        sh(
            "rustup",
            &["component", "add", "clippy", "--toolchain", EBPF_TOOLCHAIN],
        )?;
    }
    let toolchain = format!("+{EBPF_TOOLCHAIN}");
    let target_dir = root().join("target/ebpf-clippy");
    sh(
        "cargo",
        &[
            &toolchain,
            "clippy",
            "-p",
            "probe-ebpf",
            "--release",
            "--target",
            "bpfel-unknown-none",
            "-Z",
            "build-std=core",
            "--target-dir",
            &target_dir.to_string_lossy(),
        ],
    )
}

/// A test or benchmark process killed outright leaves its daemon's pins (and so its programs,
/// attached and counting) in /sys/fs/bpf/probe-test-* or probe-bench-*: removing a pin
/// directory detaches them, so no earlier run loads this one.
pub fn remove_stale_test_pins() {
    let Ok(dir) = std::fs::read_dir("/sys/fs/bpf") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("probe-test-") || name.starts_with("probe-bench-") {
            match std::fs::remove_dir_all(e.path()) {
                Ok(()) => println!("xtask: removed stale pins {}", e.path().display()),
                Err(err) => println!(
                    "xtask: cannot remove stale pins {}: {err}",
                    e.path().display()
                ),
            }
        }
    }
}
