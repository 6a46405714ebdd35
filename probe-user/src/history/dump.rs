//! `probe history dump`: a window of history as OpenMetrics with timestamps (what
//! `promtool tsdb create-blocks-from openmetrics` backfills into Prometheus), as JSON lines (one
//! `/api/v1/top` sample per frame), or as CSV (one row per frame and instance). Counters are
//! cumulative, as the daemon exported them: a daemon restart is a counter reset, which
//! Prometheus' rate() handles.

use std::{
    collections::BTreeMap,
    io::{Seek as _, Write},
};

use serde::Serialize;

use super::{time, Frame};
use crate::api::Sample;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DumpFormat {
    /// OpenMetrics text with a timestamp on every sample, for
    /// `promtool tsdb create-blocks-from openmetrics`.
    Openmetrics,
    /// One JSON object per frame and line: `time`, `daemon_started`, `restored`, `collectors`
    /// and `sample` (the schema of /api/v1/top: cumulative counters).
    Json,
    /// One row per frame and instance, cumulative counters.
    Csv,
}

/// Frames in, one format out. OpenMetrics is written at the end: a metric family may appear
/// only once in it, so every frame's samples are grouped by family and series first.
pub enum Dumper<W: Write> {
    OpenMetrics { out: W, doc: OpenMetrics },
    Json { out: W },
    Csv { out: Box<csv::Writer<W>> },
}

impl<W: Write> Dumper<W> {
    pub fn new(format: DumpFormat, out: W) -> anyhow::Result<Self> {
        Ok(match format {
            DumpFormat::Openmetrics => Self::OpenMetrics {
                out,
                doc: OpenMetrics::default(),
            },
            DumpFormat::Json => Self::Json { out },
            DumpFormat::Csv => {
                let mut out = Box::new(csv::Writer::from_writer(out));
                out.write_record(CSV_COLUMNS)?;
                Self::Csv { out }
            }
        })
    }

    pub fn frame(&mut self, frame: Frame) -> anyhow::Result<()> {
        match self {
            Self::OpenMetrics { doc, .. } => doc.add(frame)?,
            Self::Json { out } => {
                serde_json::to_writer(&mut *out, &JsonFrame::new(&frame))?;
                out.write_all(b"\n")?;
            }
            Self::Csv { out } => {
                let time = time::rfc3339(frame.t_ms);
                let sample = Sample::from_snapshot(&frame.snapshot, frame.t_ms as f64 / 1e3);
                for i in &sample.instances {
                    let tcp = |f: fn(&crate::api::PortSample) -> u64| -> u64 {
                        i.tcp.iter().map(f).sum()
                    };
                    out.write_record([
                        time.clone(),
                        // Escaped as everywhere probe prints names: CSV quoting does not stop
                        // a terminal escape.
                        crate::top::view::safe(&i.name),
                        i.processes.to_string(),
                        secs(i.cpu_ns),
                        secs(i.runqueue_wait_ns),
                        i.disk_read_bytes.to_string(),
                        i.disk_write_bytes.to_string(),
                        tcp(|p| p.rx_bytes).to_string(),
                        tcp(|p| p.tx_bytes).to_string(),
                    ])?;
                }
            }
        }
        Ok(())
    }

    pub fn finish(self) -> anyhow::Result<()> {
        match self {
            Self::OpenMetrics { mut out, mut doc } => {
                doc.write(&mut out)?;
                out.flush()?;
            }
            Self::Json { mut out } => out.flush()?,
            Self::Csv { mut out } => out.flush()?,
        }
        Ok(())
    }
}

const CSV_COLUMNS: [&str; 9] = [
    "time",
    "instance",
    "processes",
    "cpu_seconds",
    "runqueue_wait_seconds",
    "disk_read_bytes",
    "disk_write_bytes",
    "tcp_rx_bytes",
    "tcp_tx_bytes",
];

fn secs(ns: u64) -> String {
    format!("{}.{:09}", ns / 1_000_000_000, ns % 1_000_000_000)
}

#[derive(Serialize)]
struct JsonFrame {
    time: String,
    daemon_started: String,
    restored: bool,
    collectors: BTreeMap<String, bool>,
    sample: Sample,
}

impl JsonFrame {
    fn new(f: &Frame) -> Self {
        Self {
            time: time::rfc3339(f.t_ms),
            daemon_started: time::rfc3339(f.daemon_started_ms),
            restored: f.restored,
            collectors: f.collectors.iter().cloned().collect(),
            sample: Sample::from_snapshot(&f.snapshot, f.t_ms as f64 / 1e3),
        }
    }
}

/// The accounts' exposition of every frame, regrouped: each family once (its HELP, TYPE and
/// UNIT from its first frame), its samples in time order. A metric family may appear only once
/// in the text, so each family's lines wait in a temporary file of their own, unlinked as soon
/// as it is created (nothing is left behind however the dump ends): a dump of days is not held
/// in memory. Within a family the series are interleaved frame by frame, each in time order,
/// which `promtool tsdb create-blocks-from openmetrics` reads.
#[derive(Default)]
pub struct OpenMetrics {
    families: Vec<Family>,
    index: BTreeMap<String, usize>,
    frames: usize,
}

struct Family {
    headers: Vec<String>,
    first_frame: usize,
    lines: std::io::BufWriter<std::fs::File>,
}

/// A file nobody else can open: created, then unlinked at once.
fn anonymous_file() -> std::io::Result<std::fs::File> {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "probe-dump-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

impl OpenMetrics {
    pub fn add(&mut self, frame: Frame) -> anyhow::Result<()> {
        let text = crate::exporter::metrics::encode_accounts(frame.snapshot)
            .map_err(|_| anyhow::anyhow!("cannot encode a frame's metrics"))?;
        let ts = format!(
            "{}.{:03}",
            frame.t_ms.div_euclid(1000),
            frame.t_ms.rem_euclid(1000)
        );
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if line == "# EOF" || line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# ") {
                let name = rest.split(' ').nth(1).unwrap_or_default();
                let i = match self.index.get(name) {
                    Some(&i) => i,
                    None => {
                        self.families.push(Family {
                            headers: Vec::new(),
                            first_frame: self.frames,
                            lines: std::io::BufWriter::new(anonymous_file()?),
                        });
                        self.index.insert(name.to_string(), self.families.len() - 1);
                        self.families.len() - 1
                    }
                };
                let f = &mut self.families[i];
                if f.first_frame == self.frames {
                    f.headers.push(line.to_string());
                }
                current = Some(i);
                continue;
            }
            let (Some(i), Some((series, value))) = (current, line.rsplit_once(' ')) else {
                anyhow::bail!("unexpected line in a frame's metrics: {line:?}");
            };
            writeln!(self.families[i].lines, "{series} {value} {ts}")?;
        }
        self.frames += 1;
        Ok(())
    }

    pub fn write(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        for f in &mut self.families {
            for h in &f.headers {
                writeln!(out, "{h}")?;
            }
            f.lines.flush()?;
            let file = f.lines.get_mut();
            file.seek(std::io::SeekFrom::Start(0))?;
            std::io::copy(file, out)?;
        }
        writeln!(out, "# EOF")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{daemon::Snapshot, model::accounts::InstanceTotals};

    fn frame(t_ms: i64, name: &str, cpu_ns: u64) -> Frame {
        Frame {
            t_ms,
            daemon_started_ms: 0,
            restored: false,
            snapshot: Snapshot {
                instances: vec![(
                    Arc::from(name),
                    InstanceTotals {
                        cpu_ns,
                        ..InstanceTotals::default()
                    },
                )],
                ..Snapshot::default()
            },
            collectors: vec![("cpu".into(), true)],
        }
    }

    #[test]
    fn openmetrics_has_each_family_once_and_each_series_in_time_order() {
        let mut d = Dumper::new(DumpFormat::Openmetrics, Vec::new()).expect("dumper");
        d.frame(frame(1_000, "a", 1_500_000_000)).expect("frame");
        d.frame(frame(2_500, "a", 2_000_000_000)).expect("frame");
        let Dumper::OpenMetrics { mut doc, .. } = d else {
            panic!("format")
        };
        let mut out = Vec::new();
        doc.write(&mut out).expect("write");
        let text = String::from_utf8(out).expect("utf-8");
        assert_eq!(
            text.matches("# TYPE probe_cpu_seconds counter").count(),
            1,
            "{text}"
        );
        let cpu: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("probe_cpu_seconds_total{service_instance=\"a\""))
            .collect();
        assert_eq!(cpu.len(), 2, "{text}");
        assert!(cpu[0].ends_with(" 1.5 1.000"), "{}", cpu[0]);
        assert!(cpu[1].ends_with(" 2.0 2.500"), "{}", cpu[1]);
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn csv_quotes_hostile_names_and_json_is_one_line_per_frame() {
        let mut out = Vec::new();
        let mut d = Dumper::new(DumpFormat::Csv, &mut out).expect("dumper");
        d.frame(frame(1_000, "evil,\"name\"\n", 3_000_000_001))
            .expect("frame");
        d.finish().expect("finish");
        let text = String::from_utf8(out).expect("utf-8");
        let mut r = csv::Reader::from_reader(text.as_bytes());
        let row = r.records().next().expect("a row").expect("valid csv");
        // Commas and quotes survive CSV quoting; control characters are escaped.
        assert_eq!(&row[1], "evil,\"name\"\\x0a");
        assert_eq!(&row[3], "3.000000001");

        let mut out = Vec::new();
        let mut d = Dumper::new(DumpFormat::Json, &mut out).expect("dumper");
        d.frame(frame(1_000, "a", 1)).expect("frame");
        d.frame(frame(2_000, "a", 2)).expect("frame");
        d.finish().expect("finish");
        let text = String::from_utf8(out).expect("utf-8");
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["time"], "1970-01-01T00:00:02Z");
        assert_eq!(lines[1]["sample"]["instances"][0]["cpu_ns"], 2);
        assert_eq!(lines[1]["collectors"]["cpu"], true);
    }
}
