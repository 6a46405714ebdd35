//! `build`, `run` and `test`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::setup::{is_root, sh, sh_env};

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

pub fn test(filter: Option<&str>) -> Result<()> {
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
    build()?;
    println!("xtask: kernel tests (root, real kernel, ground truth from /proc and the workloads)");
    if !is_root() {
        bail!("the kernel tests load BPF programs and need root: run `sudo -E cargo xtask test`");
    }
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
    sh_env("cargo", &args, &[("PROBE_BIN", &bin)])
}
