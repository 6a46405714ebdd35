//! `cargo xtask fuzz`: the cargo-fuzz targets in fuzz/ (rule files and templates; hostile names
//! through naming into both exposition formats and /api/v1/top; the `probe top --from` reader).
//!
//! For each target: every saved crash in fuzz/regressions/<target>/ is replayed (a regression
//! test), then libFuzzer runs for a bounded time from fuzz/seeds/<target>/ plus the corpus it
//! grew before (target/fuzz/corpus/<target>). The exposition target's corpus is then replayed
//! with PROBE_FUZZ_DUMP set and every output goes through the Python prometheus_client parsers
//! (classic text and OpenMetrics). A crash fails the task and names the file to keep.

use std::{fs, path::Path, time::Instant};

use anyhow::{bail, Context as _, Result};

use crate::{
    run::root,
    setup::{packages, sh, sh_env, EBPF_TOOLCHAIN},
};

pub const TARGETS: &[&str] = &["rules", "exposition", "top_json"];

/// Debian's prometheus_client for Python, the reference parsers of both text formats.
const PACKAGES: &[&str] = &["python3-prometheus-client"];
const CARGO_FUZZ_VERSION: &str = "0.13.1";

pub fn run(seconds: u32) -> Result<()> {
    println!("xtask: fuzzing {} for {seconds} s each", TARGETS.join(", "));
    packages(PACKAGES)?;
    crate::setup::cargo_tool("fuzz", "cargo-fuzz", CARGO_FUZZ_VERSION)?;
    let root = root();
    let target_dir = root.join("target/fuzz");
    let target_dir = target_dir.to_string_lossy();
    // `--sanitizer none`: the fuzzed code is safe Rust, so AddressSanitizer would only slow the
    // build and the runs; panics and failed assertions are what these targets look for.
    let common = [
        "--fuzz-dir",
        "fuzz",
        "--target-dir",
        &*target_dir,
        "--sanitizer",
        "none",
    ];
    let nightly = format!("+{EBPF_TOOLCHAIN}");
    // Every target first: one that no longer compiles fails the run now, not after the others
    // have fuzzed.
    let mut build = vec![nightly.as_str(), "fuzz", "build"];
    build.extend(common);
    sh_in(&root, "cargo", &build, &[])?;
    for t in TARGETS {
        let t0 = Instant::now();
        let regressions = root.join("fuzz/regressions").join(t);
        let saved = files(&regressions)?;
        if saved.is_empty() {
            println!("  {t}: no saved crashes to replay");
        } else {
            println!("  {t}: replaying {} saved crash(es)", saved.len());
            let mut args = fuzz_run(&nightly, &common, t);
            args.push("--");
            let paths: Vec<String> = saved.iter().map(|p| p.to_string_lossy().into()).collect();
            args.extend(paths.iter().map(String::as_str));
            sh_in(&root, "cargo", &args, &[])
                .with_context(|| format!("a saved crash of {t} fails again"))?;
        }
        let corpus = root.join("target/fuzz/corpus").join(t);
        fs::create_dir_all(&corpus)?;
        let corpus_s = corpus.to_string_lossy().into_owned();
        let seeds = format!("fuzz/seeds/{t}");
        let time = format!("-max_total_time={seconds}");
        let artifacts = format!(
            "-artifact_prefix={}/",
            root.join("fuzz/artifacts").join(t).display()
        );
        fs::create_dir_all(root.join("fuzz/artifacts").join(t))?;
        let mut args = fuzz_run(&nightly, &common, t);
        args.extend([
            corpus_s.as_str(),
            seeds.as_str(),
            "--",
            &time,
            &artifacts,
            "-rss_limit_mb=2048",
            "-max_len=8192",
        ]);
        if let Err(e) = sh_in(&root, "cargo", &args, &[]) {
            bail!(
                "fuzzing {t} found a crash ({e:#}): the input is in fuzz/artifacts/{t}/; fix it and \
                 keep the input in fuzz/regressions/{t}/ as a regression test"
            );
        }
        println!(
            "  {t}: {} inputs in the corpus, {:.0} s",
            files(&corpus)?.len(),
            t0.elapsed().as_secs_f64()
        );
    }
    python_parses_expositions(&nightly, &common)
}

fn fuzz_run<'a>(nightly: &'a str, common: &[&'a str], t: &'a str) -> Vec<&'a str> {
    let mut args = vec![nightly, "fuzz", "run"];
    args.extend(common);
    args.push(t);
    args
}

/// Replays the exposition corpus, dumping each input's output, and parses every dump with the
/// Python reference parsers.
fn python_parses_expositions(nightly: &str, common: &[&str]) -> Result<()> {
    let root = root();
    let dump = root.join("target/fuzz/dump");
    if dump.exists() {
        fs::remove_dir_all(&dump)?;
    }
    fs::create_dir_all(&dump)?;
    let corpus = root.join("target/fuzz/corpus/exposition");
    let corpus = corpus.to_string_lossy();
    let mut args = fuzz_run(nightly, common, "exposition");
    args.extend([&*corpus, "fuzz/seeds/exposition", "--", "-runs=0"]);
    sh_in(
        &root,
        "cargo",
        &args,
        &[("PROBE_FUZZ_DUMP", &dump.to_string_lossy())],
    )?;
    let n = files(&dump)?.len();
    if n == 0 {
        bail!(
            "the exposition corpus replay wrote nothing to {}",
            dump.display()
        );
    }
    println!("  python prometheus_client: parsing {n} expositions");
    sh(
        "/usr/bin/python3",
        &[
            &root.join("fuzz/check_exposition.py").to_string_lossy(),
            &dump.to_string_lossy(),
        ],
    )
}

fn files(dir: &Path) -> Result<Vec<std::path::PathBuf>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out: Vec<_> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    out.sort();
    Ok(out)
}

fn sh_in(dir: &Path, cmd: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cwd = std::env::current_dir()?;
    std::env::set_current_dir(dir)?;
    let r = sh_env(cmd, args, env);
    std::env::set_current_dir(cwd)?;
    r
}
