//! `probe top --once --format json`: the daemon's view of the busiest instances over an
//! interval, as one JSON object:
//!
//! ```text
//! {"version": 1, "interval_seconds": 5.0,
//!  "instances": [{"name": "mariadbd:3307", "cpu_percent": ..., "runqueue_wait_percent": ...,
//!                 "disk_read_bytes_per_second": ..., "disk_write_bytes_per_second": ...,
//!                 "tcp_rx_bytes_per_second": ..., "tcp_tx_bytes_per_second": ..., ...}],
//!  "processes": [...]}
//! ```
//!
//! Tests rank instances by a field themselves rather than trusting the order of the array.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::probe_bin;

/// A `probe top --once` running in the background (it takes its interval to answer).
pub struct TopRun {
    child: Option<Child>,
    cmd: String,
    interval_secs: f64,
}

impl TopRun {
    /// Starts `probe top --once --format json --from http://127.0.0.1:<port> --interval <secs>s`.
    pub fn spawn(daemon_port: u16, interval_secs: u32) -> Self {
        let from = format!("http://127.0.0.1:{daemon_port}");
        let interval = format!("{interval_secs}s");
        let args = [
            "top",
            "--once",
            "--format",
            "json",
            "--from",
            &from,
            "--interval",
            &interval,
        ];
        let cmd = format!("probe {}", args.join(" "));
        let child = Command::new(probe_bin())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok();
        Self {
            child,
            cmd,
            interval_secs: interval_secs.into(),
        }
    }

    /// Waits for it (at most its interval + 30 s) and parses what it printed.
    pub fn finish(mut self) -> Result<TopReport, String> {
        let cmd = self.cmd.clone();
        let mut child = self
            .child
            .take()
            .ok_or_else(|| format!("`{cmd}` did not start"))?;
        let deadline = Instant::now() + Duration::from_secs_f64(self.interval_secs + 30.0);
        while child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("`{cmd}` did not finish in time"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!(
                "`{cmd}` failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            ));
        }
        TopReport::parse(&stdout, self.interval_secs).map_err(|e| format!("`{cmd}`: {e}"))
    }
}

impl Drop for TopRun {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `probe top --format json --history DIR --begin @BEGIN --end @END` (unix seconds): the view
/// of a past window from the history a daemon recorded; its interval is the frames' span.
pub fn from_history(dir: &std::path::Path, begin_s: f64, end_s: f64) -> Result<TopReport, String> {
    history_view(
        &["--history", dir.to_str().unwrap_or_default()],
        begin_s,
        end_s,
    )
}

/// The same view from a running daemon's /api/v1/history (`probe top --from URL --begin`).
pub fn from_daemon_history(port: u16, begin_s: f64, end_s: f64) -> Result<TopReport, String> {
    history_view(
        &["--from", &format!("http://127.0.0.1:{port}")],
        begin_s,
        end_s,
    )
}

fn history_view(source: &[&str], begin_s: f64, end_s: f64) -> Result<TopReport, String> {
    let (begin, end) = (format!("@{begin_s:.3}"), format!("@{end_s:.3}"));
    let mut args = vec!["top", "--format", "json"];
    args.extend_from_slice(source);
    args.extend(["--begin", &begin, "--end", &end]);
    let cmd = format!("probe {}", args.join(" "));
    let out = Command::new(probe_bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("`{cmd}`: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "`{cmd}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let json: Value = serde_json::from_str(stdout.trim())
        .map_err(|e| format!("`{cmd}`: output is not one JSON object ({e}): {stdout}"))?;
    let interval = json["interval_seconds"].as_f64().unwrap_or(-1.0);
    TopReport::parse(&stdout, interval).map_err(|e| format!("`{cmd}`: {e}"))
}

/// What `probe top --once --format json` printed.
#[derive(Debug)]
pub struct TopReport {
    pub json: Value,
}

impl TopReport {
    /// Parses the output and checks its envelope (version 1, the interval asked for).
    pub fn parse(text: &str, interval_secs: f64) -> Result<Self, String> {
        let json: Value = serde_json::from_str(text.trim())
            .map_err(|e| format!("output is not one JSON object ({e}): {text}"))?;
        if json["version"] != 1 {
            return Err(format!("version is {}, not 1: {text}", json["version"]));
        }
        let got = json["interval_seconds"].as_f64();
        if got.is_none_or(|s| (s - interval_secs).abs() > 0.5) {
            return Err(format!(
                "interval_seconds is {got:?}, asked for {interval_secs}: {text}"
            ));
        }
        if !json["instances"].is_array() {
            return Err(format!("no instances array: {text}"));
        }
        Ok(Self { json })
    }

    /// The instances among `among` that top lists, with the sum of `fields` (e.g. rx + tx),
    /// busiest first. An instance of `among` that top does not list is left out.
    pub fn ranking(&self, fields: &[&str], among: &[String]) -> Result<Vec<(String, f64)>, String> {
        let mut rows = Vec::new();
        for inst in self.json["instances"].as_array().into_iter().flatten() {
            let Some(name) = inst["name"].as_str() else {
                return Err(format!("an instance without a name: {inst}"));
            };
            if !among.iter().any(|a| a == name) {
                continue;
            }
            let mut total = 0.0;
            for f in fields {
                total += inst[*f]
                    .as_f64()
                    .ok_or_else(|| format!("{name} has no number {f}: {inst}"))?;
            }
            rows.push((name.to_string(), total));
        }
        rows.sort_by(|a, b| b.1.total_cmp(&a.1));
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_by_summed_fields_not_by_array_order() {
        let text = r#"{"version":1,"interval_seconds":5.0,"instances":[
            {"name":"mariadbd:1","tcp_rx_bytes_per_second":10.0,"tcp_tx_bytes_per_second":1.0},
            {"name":"other","tcp_rx_bytes_per_second":99.0,"tcp_tx_bytes_per_second":99.0},
            {"name":"mariadbd:2","tcp_rx_bytes_per_second":2.0,"tcp_tx_bytes_per_second":20.0}],
            "processes":[]}"#;
        let r = TopReport::parse(text, 5.0).expect("parse");
        let among = ["mariadbd:1".to_string(), "mariadbd:2".to_string()];
        let rank = r
            .ranking(
                &["tcp_rx_bytes_per_second", "tcp_tx_bytes_per_second"],
                &among,
            )
            .expect("rank");
        assert_eq!(
            rank,
            vec![("mariadbd:2".into(), 22.0), ("mariadbd:1".into(), 11.0)]
        );
        assert!(TopReport::parse(text, 2.0).is_err());
    }
}
