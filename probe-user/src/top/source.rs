//! Where `probe top` gets its samples: a running daemon's `/api/v1/top`, or kernel programs it
//! loads itself.

use std::{
    io::{Read as _, Write as _},
    net::{TcpStream, ToSocketAddrs as _},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use crate::{
    api::{Sample, API_PATH, FORMAT_VERSION},
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
        Ok(Self::Remote {
            authority: authority.to_string(),
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

fn fetch(authority: &str) -> anyhow::Result<Sample> {
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
        "GET {API_PATH} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    conn.take(MAX_BODY)
        .read_to_end(&mut raw)
        .with_context(|| format!("reading from {authority}"))?;
    parse_response(authority, &raw)
}

/// A daemon's HTTP answer to GET /api/v1/top, as read from the socket: a 200 with a sample, or
/// a clear error. Never panics, whatever the bytes (fuzzed: fuzz/fuzz_targets/top_json.rs).
pub fn parse_response(authority: &str, raw: &[u8]) -> anyhow::Result<Sample> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .with_context(|| format!("{authority} sent no HTTP response"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        let first = head.lines().next().unwrap_or_default();
        bail!("{authority}{API_PATH} answered {first:?} (is it a probe daemon of this version?)");
    }
    let body = &raw[split + 4..];
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
}
