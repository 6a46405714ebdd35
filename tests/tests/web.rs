//! The endpoint behind `--web.config.file` (exporter-toolkit format), checked with real curl
//! and certificates made by openssl: TLS is real (the CA verifies it, plain HTTP to the port
//! fails), basic auth rejects wrong and missing credentials, client certificates are required
//! when asked for, a bad file stops the start and is rejected on SIGHUP while the previous one
//! stays, and a good one takes effect on SIGHUP.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use probe_tests::{die_with_parent, free_port, probe_bin, Metrics};

/// A directory of test files (deleted on drop).
struct Dir(PathBuf);

impl Dir {
    fn new() -> Self {
        let d = std::env::temp_dir().join(format!("probe-web-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        Self(d)
    }
    fn path(&self, name: &str) -> String {
        self.0.join(name).to_string_lossy().into_owned()
    }
    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.0.join(name), text).expect("write test file");
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &str, args: &[&str], dir: &Path) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, signed by it (P-256).
fn certificates(d: &Dir) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=probe test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    run("openssl", &ca, &d.0);
    d.write("server.ext", "subjectAltName=IP:127.0.0.1\n");
    d.write("client.ext", "extendedKeyUsage=clientAuth\n");
    for (name, cn) in [("server", "127.0.0.1"), ("client", "prometheus")] {
        let subj = format!("/CN={cn}");
        let (key, csr, crt, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.crt"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req", "-subj", &subj, "-keyout", &key, "-out", &csr];
        req.extend(ec);
        run("openssl", &req, &d.0);
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &ext,
                "-out",
                &crt,
            ],
            &d.0,
        );
    }
}

/// A bcrypt hash made by the system's libxcrypt (through Python's crypt), not by probe's
/// library: cost 10, as exporter-toolkit recommends.
fn bcrypt(password: &str) -> String {
    let out = run(
        "/usr/bin/python3",
        &[
            "-W",
            "ignore",
            "-c",
            "import crypt, sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1024)))",
            password,
        ],
        Path::new("/"),
    );
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(hash.starts_with("$2b$10$"), "not a bcrypt hash: {hash:?}");
    hash
}

/// curl's exit status and the HTTP status it saw (0 if none).
fn curl(args: &[&str]) -> (i32, u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

struct Serve {
    child: Child,
    url: String,
}

impl Serve {
    fn start(config: &str, log: &str) -> Self {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let child = die_with_parent(&mut Command::new(probe_bin()))
            .args([
                "serve",
                "--web.listen-address",
                &addr,
                "--web.config.file",
                config,
                "--collect.interval",
                "1s",
                "--bpf.no-pin",
            ])
            .env("PROBE_LOG", "info")
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("spawn probe serve");
        Self {
            child,
            url: format!("https://127.0.0.1:{port}"),
        }
    }

    fn hup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) },
            0
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tls_basic_auth_client_certificates_and_reloads() {
    let d = Dir::new();
    certificates(&d);
    let hash = bcrypt("first secret");
    // Relative paths: taken from the config file's directory, as the toolkit does.
    let tls = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";
    d.write(
        "web.yml",
        &format!("{tls}basic_auth_users:\n  prometheus: '{hash}'\n"),
    );
    let log = d.path("probe.log");
    let serve = Serve::start(&d.path("web.yml"), &log);
    let ca = d.path("ca.crt");
    let metrics = format!("{}/metrics", serve.url);
    let t0 = Instant::now();
    loop {
        let (_, code, _) = curl(&[
            "--cacert",
            &ca,
            "-u",
            "prometheus:first secret",
            &format!("{}/readyz", serve.url),
        ]);
        if code == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "not ready over TLS within 30 s; log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let (rc, code, body) = curl(&["--cacert", &ca, "-u", "prometheus:first secret", &metrics]);
    println!("TLS + right password: curl {rc}, HTTP {code}");
    assert_eq!((rc, code), (0, 200), "{body}");
    let m = Metrics::parse(&body);
    assert_eq!(m.value("probe_build_info", &[]).map(|_| ()), Some(()));

    for (what, args) in [
        ("wrong password", vec!["-u", "prometheus:second secret"]),
        ("unknown user", vec!["-u", "nobody:first secret"]),
        ("no credentials", vec![]),
    ] {
        let mut a = vec!["--cacert", ca.as_str()];
        a.extend(args);
        a.push(&metrics);
        let (rc, code, body) = curl(&a);
        println!("TLS + {what}: curl {rc}, HTTP {code}");
        assert_eq!(code, 401, "{what}: {body}");
        assert!(!body.contains("probe_build_info"), "{what} got metrics");
    }
    // Without the CA, curl cannot verify the server: the certificate is the one configured.
    let (rc, code, _) = curl(&["-u", "prometheus:first secret", &metrics]);
    println!("TLS without the CA: curl {rc}, HTTP {code}");
    assert!(
        rc != 0 && code == 0,
        "curl trusted the server without its CA"
    );
    // Plain HTTP to the TLS port gets no response.
    let plain = metrics.replacen("https://", "http://", 1);
    let (rc, code, _) = curl(&["-u", "prometheus:first secret", &plain]);
    println!("plain HTTP to the TLS port: curl {rc}, HTTP {code}");
    assert!(rc != 0 && code != 200, "plain HTTP was served");

    // A broken file on SIGHUP: rejected, the previous config stays and says so.
    d.write("web.yml", "tls_server_config:\n  cert_file: server.crt\n");
    serve.hup();
    let (rc, code, body) = curl(&["--cacert", &ca, "-u", "prometheus:first secret", &metrics]);
    assert_eq!((rc, code), (0, 200), "after a rejected reload: {body}");
    let m = Metrics::parse(&body);
    assert_eq!(
        m.value("probe_config_last_reload_successful", &[("file", "web")]),
        Some(0.0)
    );
    assert_eq!(
        m.value(
            "probe_config_reloads_total",
            &[("file", "web"), ("result", "failure")]
        ),
        Some(1.0)
    );
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        logged.contains("web config not reloaded") && logged.contains("key_file"),
        "the rejected reload was not explained:\n{logged}"
    );

    // A new password and client certificates on SIGHUP.
    let hash2 = bcrypt("second secret");
    d.write(
        "web.yml",
        &format!(
            "{tls}  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n\
             basic_auth_users:\n  prometheus: '{hash2}'\n"
        ),
    );
    serve.hup();
    let client = [
        "--cert",
        &d.path("client.crt"),
        "--key",
        &d.path("client.key"),
    ];
    let with_cert = |password: &str| {
        let user = format!("prometheus:{password}");
        let mut a = vec!["--cacert", ca.as_str(), "-u", user.as_str()];
        a.extend(client);
        a.push(&metrics);
        curl(&a)
    };
    let (rc, code, body) = with_cert("second secret");
    println!("client certificate + new password: curl {rc}, HTTP {code}");
    assert_eq!((rc, code), (0, 200), "{body}");
    let m = Metrics::parse(&body);
    assert_eq!(
        m.value("probe_config_last_reload_successful", &[("file", "web")]),
        Some(1.0)
    );
    let (_, code, _) = with_cert("first secret");
    assert_eq!(code, 401, "the old password still works after the reload");
    let (rc, code, _) = curl(&["--cacert", &ca, "-u", "prometheus:second secret", &metrics]);
    println!("no client certificate: curl {rc}, HTTP {code}");
    assert!(rc != 0 && code == 0, "served without a client certificate");
}

#[test]
fn a_bad_web_config_stops_the_start_with_the_reason() {
    let d = Dir::new();
    for (file, says) in [
        (
            "basic_auth_users:\n  prometheus: hunter2\n",
            "not a bcrypt hash",
        ),
        (
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
            "nope.crt",
        ),
        ("tls_config:\n  cert_file: a\n", "tls_config"),
    ] {
        d.write("bad.yml", file);
        let out = Command::new(probe_bin())
            .args([
                "serve",
                "--web.listen-address",
                &format!("127.0.0.1:{}", free_port()),
                "--web.config.file",
                &d.path("bad.yml"),
            ])
            .output()
            .expect("run probe serve");
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{file:?} -> {}", err.trim());
        assert!(!out.status.success(), "started with {file:?}");
        assert!(
            err.contains("bad.yml") && err.contains(says),
            "{file:?}: the error does not name the file and the problem: {err}"
        );
    }
}
