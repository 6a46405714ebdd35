//! `cargo xtask dist`: what a user installs, built into target/dist/.
//!
//! - `probe`: static (x86_64-unknown-linux-musl, kernel object embedded), profile `shipping`
//!   (release without debug info), so one file runs on any distribution.
//! - `man/`: the man pages, from the same clap definitions as `--help` (`probe man`).
//! - `probe_<version>-1_amd64.deb` (cargo-deb) and `probe-<version>-1.x86_64.rpm`
//!   (cargo-generate-rpm): the binary, the systemd unit, /etc/probe/rules.toml as a conffile, the
//!   man pages. What goes in is `[package.metadata.deb]` / `generate-rpm` in probe-user/Cargo.toml.
//! - With `--image`: the container image (deploy/container/Containerfile, FROM scratch) as
//!   localhost/probe:<version>, and `probe-image.tar` (OCI archive).

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

use crate::{
    run::root,
    setup::{cargo_tool, output, packages, sh},
};

pub const TARGET: &str = "x86_64-unknown-linux-musl";
const PROFILE: &str = "shipping";
const CARGO_DEB_VERSION: &str = "3.8.0";
const CARGO_GENERATE_RPM_VERSION: &str = "0.21.0";
/// musl-gcc for the crates that compile C (ring); rpm checks the .rpm in the tests.
pub const PACKAGES: &[&str] = &["musl-tools", "rpm"];
/// podman builds and runs the image; runc runs it (crun 1.8 rejects hybrid cgroup layouts).
const IMAGE_PACKAGES: &[&str] = &["podman", "buildah", "runc"];

pub fn dir() -> PathBuf {
    root().join("target/dist")
}

/// The image `cargo xtask dist --image` builds (podman, FROM scratch, nothing pulled).
pub fn image_name() -> String {
    format!("localhost/probe:{}", env!("CARGO_PKG_VERSION"))
}

pub fn run(image: bool) -> Result<()> {
    packages(PACKAGES)?;
    let installed = output("rustup", &["target", "list", "--installed"])
        .context("rustup is needed for the musl target")?;
    if installed.lines().any(|l| l.trim() == TARGET) {
        println!("  rust-std for {TARGET}: present");
    } else {
        sh("rustup", &["target", "add", TARGET])?;
    }
    cargo_tool("deb", "cargo-deb", CARGO_DEB_VERSION)?;
    cargo_tool(
        "generate-rpm",
        "cargo-generate-rpm",
        CARGO_GENERATE_RPM_VERSION,
    )?;

    println!("xtask: building the static binary ({TARGET}, profile {PROFILE})");
    sh(
        "cargo",
        &[
            "build",
            "-p",
            "probe-user",
            "--target",
            TARGET,
            "--profile",
            PROFILE,
        ],
    )?;
    let out = dir();
    fs::create_dir_all(&out)?;
    // Packages of an earlier version would sit next to the new ones.
    for e in fs::read_dir(&out)?.filter_map(Result::ok) {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".deb") || name.ends_with(".rpm") || name == "probe-image.tar" {
            fs::remove_file(e.path())?;
        }
    }
    let built = root()
        .join("target")
        .join(TARGET)
        .join(PROFILE)
        .join("probe");
    let bin = out.join("probe");
    fs::copy(&built, &bin).with_context(|| format!("copying {}", built.display()))?;
    let man = out.join("man");
    let _ = fs::remove_dir_all(&man);
    sh(&bin.to_string_lossy(), &["man", &man.to_string_lossy()])?;

    let out_s = out.to_string_lossy();
    let common = ["-p", "probe-user", "--target", TARGET, "--profile", PROFILE];
    // --no-strip: the .deb ships the very binary the .rpm, the image and the tests use (its
    // symbols kept, for readable backtraces).
    let mut deb = vec!["deb", "--no-build", "--no-strip", "-o", &out_s];
    deb.extend(common);
    sh("cargo", &deb)?;
    let mut rpm = vec!["generate-rpm", "-o", &out_s];
    rpm.extend(common);
    sh("cargo", &rpm)?;

    if image {
        build_image(&out)?;
    }

    println!("\nxtask: in {}:", out.display());
    let mut entries: Vec<_> = fs::read_dir(&out)?.filter_map(Result::ok).collect();
    entries.sort_by_key(fs::DirEntry::file_name);
    for e in entries {
        let md = e.metadata()?;
        if md.is_file() {
            println!(
                "  {:<32} {:>6.1} MiB",
                e.file_name().to_string_lossy(),
                md.len() as f64 / (1024.0 * 1024.0)
            );
        }
    }
    Ok(())
}

/// The container image from deploy/container/Containerfile, linted with hadolint first; also
/// saved as an OCI archive (target/dist/probe-image.tar) to load where no registry is at hand.
fn build_image(out: &Path) -> Result<()> {
    packages(IMAGE_PACKAGES)?;
    crate::setup::python_tools()?;
    let containerfile = root().join("deploy/container/Containerfile");
    let containerfile = containerfile.to_string_lossy();
    sh(
        &root().join("target/py/bin/hadolint").to_string_lossy(),
        &[&containerfile],
    )
    .context("hadolint rejects deploy/container/Containerfile")?;
    // The build context holds the binary only.
    let context = root().join("target/image-context");
    let _ = fs::remove_dir_all(&context);
    fs::create_dir_all(&context)?;
    fs::copy(out.join("probe"), context.join("probe"))?;
    let name = image_name();
    let version = format!("VERSION={}", env!("CARGO_PKG_VERSION"));
    sh(
        "podman",
        &[
            "build",
            "--pull=never",
            "--build-arg",
            &version,
            "-f",
            &containerfile,
            "-t",
            &name,
            &context.to_string_lossy(),
        ],
    )?;
    let archive = out.join("probe-image.tar");
    let _ = fs::remove_file(&archive);
    sh(
        "podman",
        &[
            "save",
            "--format",
            "oci-archive",
            "-o",
            &archive.to_string_lossy(),
            &name,
        ],
    )
}
