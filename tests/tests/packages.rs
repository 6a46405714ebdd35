//! The packages `cargo xtask dist` builds (target/dist, or $PROBE_DIST), checked the way a user
//! meets them: the .deb installed on this machine with dpkg (its unit verified by systemd, its
//! binary run, an edited rule file kept across a reinstall, everything gone after a purge), the
//! .rpm read with Debian's rpm (file list, config files, digests). Needs root (dpkg).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn dist() -> PathBuf {
    std::env::var_os("PROBE_DIST").map_or_else(
        || PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target/dist")),
        PathBuf::from,
    )
}

/// The one file in the dist directory with this suffix; fails saying how to build it.
fn artifact(suffix: &str) -> PathBuf {
    let dir = dist();
    let found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    match found.as_slice() {
        [one] => one.clone(),
        [] => panic!(
            "no *{suffix} in {}: `cargo xtask dist` builds the packages (`cargo xtask test` does it first)",
            dir.display()
        ),
        many => panic!("several *{suffix} in {}: {many:?}", dir.display()),
    }
}

/// Runs a command; returns whether it succeeded and what it printed (stdout and stderr).
fn run(cmd: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> (bool, String) {
    probe_tests::said(Command::new(cmd).args(args))
}

fn must(cmd: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let name = cmd.as_ref().to_string_lossy().into_owned();
    let (ok, said) = run(cmd, args);
    assert!(ok, "{name} {} failed:\n{said}", args.join(" "));
    said
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "probe"])
        .1
        .contains("install ok installed")
}

/// Purges the package when the test ends, passed or not, so a failure leaves nothing behind.
struct Purge;
impl Drop for Purge {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "probe"]);
    }
}

/// What both packages must install.
const FILES: &[&str] = &[
    "/usr/bin/probe",
    "/usr/lib/systemd/system/probe.service",
    "/etc/probe/rules.toml",
];

#[test]
fn deb_installs_runs_keeps_edited_rules_and_purges_cleanly() {
    let deb = artifact(".deb");
    let deb = deb.to_str().expect("utf-8 path");
    assert!(
        !installed() && !Path::new("/usr/bin/probe").exists(),
        "a probe package or /usr/bin/probe is already on this machine; the test installs and \
         purges its own: remove it first (dpkg --purge probe)"
    );
    let _purge = Purge;
    println!("{}", must("dpkg", &["-i", deb]));
    assert!(installed(), "dpkg -i did not leave probe installed");

    let listed = must("dpkg", &["-L", "probe"]);
    for f in FILES {
        assert!(
            listed.lines().any(|l| l == *f),
            "{f} not in the package:\n{listed}"
        );
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    for page in [
        "probe",
        "probe-serve",
        "probe-top",
        "probe-check",
        "probe-config-check",
    ] {
        let path = format!("/usr/share/man/man1/{page}.1.gz");
        let text = must("zcat", &[&path]);
        assert!(
            text.contains(&format!(".TH {page} 1")),
            "{path} is not the man page of {page}:\n{}",
            &text[..text.len().min(300)]
        );
    }
    let conffiles = must("dpkg-query", &["-W", "-f=${Conffiles}", "probe"]);
    assert!(
        conffiles.contains("/etc/probe/rules.toml"),
        "the rule file is not a conffile: {conffiles:?}"
    );

    // The unit as shipped, and as systemd reads it. systemd-analyze exits 0 on unknown keys and
    // only warns: any output is a failure.
    let unit = "/usr/lib/systemd/system/probe.service";
    assert_eq!(
        std::fs::read_to_string(unit).expect("unit"),
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/systemd/probe.service"
        ))
        .expect("deploy/systemd/probe.service"),
        "the installed unit is not deploy/systemd/probe.service"
    );
    let (ok, said) = run("systemd-analyze", &["verify", unit]);
    println!("systemd-analyze verify {unit}: {ok} {said:?}");
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify {unit}:\n{said}"
    );

    // The installed binary: static, this version, reads the shipped rules, loads every kernel
    // collector on this kernel.
    let (_, ldd) = run("ldd", &["/usr/bin/probe"]);
    assert!(
        ldd.contains("statically linked") || ldd.contains("not a dynamic executable"),
        "/usr/bin/probe is not static:\n{ldd}"
    );
    assert_eq!(
        must("/usr/bin/probe", &["--version"]).trim(),
        format!("probe {VERSION}")
    );
    must(
        "/usr/bin/probe",
        &["config", "check", "/etc/probe/rules.toml"],
    );
    let report = must("/usr/bin/probe", &["check"]);
    println!("installed /usr/bin/probe check:\n{report}");
    for c in probe_tests::kernel::COLLECTORS {
        // Off unless --runq.histograms, as shipped.
        let (state, hook) = match *c {
            "runq" => ("off", "-"),
            _ => ("up", probe_tests::kernel::best_hook(c)),
        };
        assert!(
            report.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.len() >= 3 && f[0] == *c && f[1] == state && f[2] == hook
            }),
            "{c} is not {state} on {hook} with the installed binary:\n{report}"
        );
    }

    // A user's edit to the rule file survives a reinstall (an upgrade keeps conffiles too).
    let rules = "/etc/probe/rules.toml";
    let edited = format!(
        "{}\n# edited by the package test\n",
        std::fs::read_to_string(rules).expect("rules")
    );
    std::fs::write(rules, &edited).expect("edit rules");
    must("dpkg", &["-i", deb]);
    assert_eq!(
        std::fs::read_to_string(rules).expect("rules"),
        edited,
        "reinstalling the package overwrote the user's rule file"
    );

    // A daemon killed outright leaves its programs attached and its maps pinned (the next
    // start carries on from them); removing the package detaches and removes them.
    let pins = Path::new("/sys/fs/bpf/probe");
    {
        let mut daemon = probe_tests::Daemon::start_program(
            &["/usr/bin/probe"],
            &["--bpf.pin-path", "/sys/fs/bpf/probe"],
        );
        std::thread::sleep(std::time::Duration::from_millis(1500)); // a collection saves state
        daemon.kill();
    }
    assert!(
        pins.exists() && Path::new("/run/probe/state").exists(),
        "the killed daemon left no pins or no saved state"
    );

    // Remove keeps the conffile; purge takes everything.
    must("dpkg", &["-r", "probe"]);
    assert!(
        !pins.exists() && !Path::new("/run/probe/state").exists(),
        "dpkg -r left probe's pins in the kernel ({}) or its saved state",
        pins.display()
    );
    assert!(
        !Path::new("/usr/bin/probe").exists(),
        "dpkg -r left /usr/bin/probe"
    );
    assert!(!Path::new(unit).exists(), "dpkg -r left the unit");
    assert!(
        Path::new(rules).exists(),
        "dpkg -r removed the user's rule file"
    );
    must("dpkg", &["--purge", "probe"]);
    assert!(
        !Path::new("/etc/probe").exists(),
        "dpkg --purge left /etc/probe"
    );
    let wants = "/etc/systemd/system/multi-user.target.wants/probe.service";
    assert!(
        std::fs::symlink_metadata(wants).is_err(),
        "dpkg --purge left the unit enabled ({wants})"
    );
    assert!(!installed(), "probe still installed after purge");
}

#[test]
fn rpm_lists_the_files_marks_the_rules_as_config_and_checks() {
    let rpm = artifact(".rpm");
    let rpm = rpm.to_str().expect("utf-8 path");
    let listed = must("rpm", &["-qlp", rpm]);
    println!("rpm -qlp:\n{listed}");
    for f in FILES.iter().chain(&[
        "/usr/share/man/man1/probe.1",
        "/usr/share/man/man1/probe-serve.1",
    ]) {
        assert!(
            listed.lines().any(|l| l == *f),
            "{f} not in the .rpm:\n{listed}"
        );
    }
    let config = must("rpm", &["-qcp", rpm]);
    assert_eq!(
        config.trim(),
        "/etc/probe/rules.toml",
        "config files of the .rpm"
    );
    let scripts = must("rpm", &["-qp", "--scripts", rpm]);
    for want in [
        "postinstall scriptlet",
        "systemctl daemon-reload",
        "preuninstall scriptlet",
        "disable --now probe.service",
        "/usr/bin/probe unpin",
        "postuninstall scriptlet",
        "try-restart probe.service",
    ] {
        assert!(
            scripts.contains(want),
            "the .rpm's scriptlets lack {want:?}:\n{scripts}"
        );
    }
    let info = must("rpm", &["-qp", "--qf", "%{NAME} %{VERSION} %{ARCH}", rpm]);
    assert_eq!(info.trim(), format!("probe {VERSION} x86_64"));
    // Unsigned (nothing here holds a key): -K checks the header and payload digests.
    let (ok, said) = run("rpm", &["-K", rpm]);
    println!("rpm -K: {said}");
    assert!(ok && said.contains("digests OK"), "rpm -K {rpm}:\n{said}");
}
