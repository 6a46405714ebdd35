//! Where `probe top` gets its samples: a running daemon's `/api/v1/top`, or kernel programs it
//! loads itself.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::view::View;
use crate::{
    api::{Sample, API_PATH, FORMAT_VERSION, HISTORY_PATH},
    daemon::Daemon,
};

/// Largest response accepted (a daemon with thousands of instances sends a few MiB).
const MAX_BODY: u64 = 64 << 20;
const TIMEOUT: Duration = Duration::from_secs(10);

pub enum Source {
    Remote {
        authority: String,
    },
    Local {
        daemon: Box<Daemon>,
        started: Instant,
    },
}

impl Source {
    /// `http://host:port` (a path, if any, is ignored: the API path is fixed).
    pub fn remote(url: &str) -> anyhow::Result<Self> {
        Ok(Self::Remote {
            authority: authority(url)?,
        })
    }

    pub fn local(daemon: Daemon) -> Self {
        Self::Local {
            daemon: Box::new(daemon),
            started: Instant::now(),
        }
    }

    /// Where the samples come from, for the header line.
    pub fn describe(&self) -> String {
        match self {
            Self::Remote { authority } => format!("http://{authority}"),
            Self::Local { .. } => "this host (standalone)".into(),
        }
    }

    pub fn sample(&mut self) -> anyhow::Result<Sample> {
        match self {
            Self::Remote { authority } => fetch(authority),
            Self::Local { daemon, started } => {
                daemon.collect();
                Ok(Sample::from_snapshot(
                    &daemon.snapshot(),
                    started.elapsed().as_secs_f64(),
                ))
            }
        }
    }
}

/// HOST:PORT of `http://host:port[/path]` (--from).
pub fn authority(url: &str) -> anyhow::Result<String> {
    let rest = match url.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            bail!("--from {url:?}: {scheme}:// is not supported, only http://")
        }
        None => url,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() || !authority.contains(':') {
        bail!("--from {url:?}: expected http://HOST:PORT, e.g. http://127.0.0.1:19135");
    }
    Ok(authority.to_string())
}

fn fetch(authority: &str) -> anyhow::Result<Sample> {
    let raw = get(authority, API_PATH)?;
    parse_response(authority, &raw)
}

/// GET `path` (with its query) from the daemon: the raw response.
pub fn get(authority: &str, path: &str) -> anyhow::Result<Vec<u8>> {
    let addr = authority
        .to_socket_addrs()
        .with_context(|| format!("resolving {authority}"))?
        .next()
        .with_context(|| format!("{authority} has no address"))?;
    let mut conn = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| {
        format!("connecting to the daemon at {authority} (is `probe serve` running there?)")
    })?;
    conn.set_read_timeout(Some(TIMEOUT))?;
    conn.set_write_timeout(Some(TIMEOUT))?;
    write!(
        conn,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    conn.take(MAX_BODY)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading from {authority}"))?;
    Ok(raw)
}

/// An HTTP response's head, status code and body.
fn split_response<'a>(
    authority: &str,
    raw: &'a [u8],
) -> anyhow::Result<(String, String, &'a [u8])> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("{authority} sent no HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap_or("?").to_string();
    Ok((head, status, &raw[split + 4..]))
}

/// A daemon's answer to GET /api/v1/history: a view of the past, or its error message.
pub fn parse_history_response(authority: &str, raw: &[u8]) -> anyhow::Result<View> {
    let (head, status, body) = split_response(authority, raw)?;
    match status.as_str() {
        "200" => {
            let mut view: View = serde_json::from_slice(body).with_context(|| {
                format!("{authority}{HISTORY_PATH} did not send a view of the past")
            })?;
            if view.version != FORMAT_VERSION {
                bail!(
                    "{authority} speaks format version {}, this probe {FORMAT_VERSION}: use the same probe version on both sides",
                    view.version
                );
            }
            view.sanitize();
            Ok(view)
        }
        // The daemon's own message (a window outside the history, no history there).
        "400" | "404" | "422" => bail!(
            "{authority}: {}",
            super::view::safe(String::from_utf8_lossy(body).trim())
        ),
        _ => {
            let first = head.lines().next().unwrap_or_default();
            bail!(
                "{authority}{HISTORY_PATH} answered {first:?} (is it a probe daemon of this version, recording history?)"
            )
        }
    }
}

/// A daemon's HTTP answer to GET /api/v1/top, as read from the socket: a 200 with a sample, or
/// a clear error. Never panics, whatever the bytes (fuzzed: fuzz/fuzz_targets/top_json.rs).
pub fn parse_response(authority: &str, raw: &[u8]) -> anyhow::Result<Sample> {
    let (head, status, body) = split_response(authority, raw)?;
    if status != "200" {
        let first = head.lines().next().unwrap_or_default();
        bail!("{authority}{API_PATH} answered {first:?} (is it a probe daemon of this version?)");
    }
    let sample: Sample = serde_json::from_slice(body)
        .with_context(|| format!("{authority}{API_PATH} did not send a probe sample"))?;
    if sample.version != FORMAT_VERSION {
        bail!(
            "{authority} speaks format version {}, this probe {FORMAT_VERSION}: use the same probe version on both sides",
            sample.version
        );
    }
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        for ok in [
            "http://127.0.0.1:19135",
            "127.0.0.1:19135",
            "http://h:1/metrics",
        ] {
            assert!(Source::remote(ok).is_ok(), "{ok}");
        }
        for bad in ["https://h:1", "http://", "http://host", ""] {
            assert!(Source::remote(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_history_answer_is_a_clean_view_or_the_daemons_message() {
        let body = r#"{"version":1,"interval_seconds":5.0,"instances":[{"name":"evil\u001b]0;x\u0007",
            "rule":"","container":null,"pod_uid":null,"processes":1,"cpu_percent":1.0,
            "runqueue_wait_percent":0.0,"runqueue_latency_avg_seconds":null,
            "runqueue_latency_p99_seconds":null,"disk_read_bytes_per_second":0.0,
            "disk_write_bytes_per_second":0.0,"disk_latency_avg_seconds":null,
            "disk_latency_p99_seconds":null,"tcp_rx_bytes_per_second":0.0,
            "tcp_tx_bytes_per_second":0.0,"ports":[],"noisy":[],"suffering":[]}],"processes":[]}"#;
        let ok = format!("HTTP/1.1 200 OK\r\n\r\n{body}");
        let view = parse_history_response("h:1", ok.as_bytes()).expect("a view");
        assert_eq!(view.instances[0].name, "evil\\x1b]0;x\\x07");
        let e = parse_history_response(
            "h:1",
            b"HTTP/1.1 404 Not Found\r\n\r\nnothing recorded\x1b[2J\n",
        )
        .expect_err("an error");
        assert_eq!(e.to_string(), "h:1: nothing recorded\\x1b[2J");
        let e = parse_history_response("h:1", b"HTTP/1.1 500 Oops\r\n\r\n").expect_err("an error");
        assert!(e.to_string().contains("500 Oops"), "{e}");
    }
}
