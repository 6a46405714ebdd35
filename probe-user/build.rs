//! Builds the kernel programs (probe-ebpf) for bpfel-unknown-none and leaves the object in
//! OUT_DIR, where src/loader/mod.rs embeds it. Needs bpf-linker and the nightly toolchain's
//! rust-src: `cargo xtask setup` installs both.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../probe-ebpf");
    println!("cargo:rerun-if-changed={root_dir}/src");
    println!("cargo:rerun-if-changed={root_dir}/../probe-common/src");
    println!("cargo:rerun-if-env-changed=PROBE_EBPF_TOOLCHAIN");
    // Fuzz builds (cargo fuzz passes `--cfg fuzzing`) exercise the pure parts only, with
    // sanitizer flags the BPF target does not take: they embed an empty object instead.
    if std::env::var_os("CARGO_CFG_FUZZING").is_some() {
        let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
        std::fs::write(out.join("probe"), b"").context("writing the empty kernel object")?;
        return Ok(());
    }
    let toolchain = std::env::var("PROBE_EBPF_TOOLCHAIN").ok();
    let toolchain = match toolchain.as_deref() {
        Some(name) => aya_build::Toolchain::Custom(name),
        None => aya_build::Toolchain::Nightly,
    };
    aya_build::build_ebpf(
        [aya_build::Package { name: "probe-ebpf", root_dir, ..Default::default() }],
        toolchain,
    )
    .context("building the kernel programs (probe-ebpf) failed; `cargo xtask setup` installs bpf-linker and rust-src")
}
