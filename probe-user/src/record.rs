//! Recorded runs: `probe serve --record-readings FILE` writes what every collection read
//! ([`Reading`]) and the rules in force; `probe replay FILE` runs them through the same
//! accounting ([`Ledger`]) on any machine, without root or a kernel. A bug report can carry a
//! recording, and the golden tests replay committed ones.
//!
//! File: 8 bytes of magic, the format (u32 LE), then one record per frame: its length and the
//! CRC-32 of its bytes (u32 LE each), then the frame (postcard). Each frame is written whole and
//! flushed, so a daemon killed mid-write leaves at most a torn last frame, which a reader
//! reports and stops at.

use std::{
    fs::File,
    io::{BufWriter, Read, Write},
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::{
    cli::ReplayArgs,
    collect::reading::Reading,
    daemon::{limits, Ledger},
    model::rules::{self, Rules, DEFAULT_RULES},
};

/// Version of the frames' layout; a recording of another version is refused, not misread.
pub const FORMAT: u32 = 1;
const MAGIC: &[u8; 8] = b"PROBERD1";
/// Largest frame a reader accepts (a damaged length must not allocate gigabytes).
const MAX_FRAME: usize = 256 << 20;

/// One record of a recording.
#[derive(Debug, Serialize, Deserialize)]
pub enum Frame {
    /// Where the recording starts: the daemon's settings, its rules (the rule file's text; None:
    /// the built-in rules) and the accounts it had (restored from a previous daemon, or empty).
    Start {
        top_k: u64,
        rank_tau_secs: f64,
        rules: Option<String>,
        /// Boxed, as `reading` below: large, and a replay holds every frame (a box is
        /// serialised as what it holds).
        ledger: Box<Ledger>,
    },
    /// The rules were replaced (SIGHUP).
    Rules { rules: Option<String> },
    /// One collection. `exposition`: the accounts' families as the live daemon encoded them
    /// after this reading (tests compare a replay with it).
    Reading {
        reading: Box<Reading>,
        exposition: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read {0}: {1}")]
    Io(PathBuf, std::io::Error),
    #[error("{0}: not a probe recording")]
    Magic(PathBuf),
    #[error(
        "{path}: recorded by another probe (recording format {found}, this one reads {FORMAT})"
    )]
    Format { path: PathBuf, found: u32 },
    #[error("{0}: the recording does not start with its settings (a Start frame)")]
    NoStart(PathBuf),
    #[error("the rules recorded in frame {frame} do not parse: {error}")]
    Rules { frame: usize, error: String },
}

/// Writes frames; the first write error stops the recording (logged once), serving goes on.
pub struct Recorder {
    out: Option<BufWriter<File>>,
    path: PathBuf,
    /// Whether each reading is followed by the accounts' exposition (tests).
    pub expositions: bool,
}

impl Recorder {
    /// Creates (or truncates) `path` and writes the header.
    pub fn create(path: &Path, expositions: bool) -> std::io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        out.write_all(MAGIC)?;
        out.write_all(&FORMAT.to_le_bytes())?;
        out.flush()?;
        Ok(Self {
            out: Some(out),
            path: path.to_owned(),
            expositions,
        })
    }

    /// Whether frames are still being written.
    pub fn active(&self) -> bool {
        self.out.is_some()
    }

    pub fn write(&mut self, frame: &Frame) {
        let Some(out) = &mut self.out else { return };
        let written = postcard::to_stdvec(frame)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                if bytes.len() > MAX_FRAME {
                    return Err(std::io::Error::other(format!(
                        "a frame of {} bytes (at most {MAX_FRAME} are read back)",
                        bytes.len()
                    )));
                }
                let len = u32::try_from(bytes.len()).map_err(std::io::Error::other)?;
                out.write_all(&len.to_le_bytes())?;
                out.write_all(&crc32fast::hash(&bytes).to_le_bytes())?;
                out.write_all(&bytes)?;
                out.flush()
            });
        if let Err(e) = written {
            warn!(file = %self.path.display(), error = %e, "recording stopped: cannot write a reading");
            self.out = None;
        }
    }
}

/// A recording read back: its whole frames, and why reading stopped early, if it did (a torn
/// or damaged frame: the frames before it are intact).
#[derive(Debug)]
pub struct Recording {
    pub frames: Vec<Frame>,
    pub damaged: Option<String>,
}

pub fn read(path: &Path) -> Result<Recording, RecordError> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| RecordError::Io(path.to_owned(), e))?;
    decode(path, &bytes)
}

fn decode(path: &Path, bytes: &[u8]) -> Result<Recording, RecordError> {
    if bytes.len() < 12 || &bytes[..8] != MAGIC {
        return Err(RecordError::Magic(path.to_owned()));
    }
    let found = u32::from_le_bytes(bytes[8..12].try_into().unwrap_or_default());
    if found != FORMAT {
        return Err(RecordError::Format {
            path: path.to_owned(),
            found,
        });
    }
    let mut rest = &bytes[12..];
    let mut frames = Vec::new();
    let mut damaged = None;
    while !rest.is_empty() {
        let n = frames.len();
        let Some((head, body)) = rest.split_first_chunk::<8>() else {
            damaged = Some(format!("frame {n}: torn header ({} bytes)", rest.len()));
            break;
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len > MAX_FRAME || len > body.len() {
            damaged = Some(format!(
                "frame {n}: torn ({len} bytes announced, {} there)",
                body.len()
            ));
            break;
        }
        let (frame, next) = body.split_at(len);
        if crc32fast::hash(frame) != crc {
            damaged = Some(format!("frame {n}: checksum mismatch"));
            break;
        }
        match postcard::from_bytes(frame) {
            Ok(f) => frames.push(f),
            Err(e) => {
                damaged = Some(format!("frame {n}: cannot decode: {e}"));
                break;
            }
        }
        rest = next;
    }
    if !matches!(frames.first(), Some(Frame::Start { .. })) {
        return Err(RecordError::NoStart(path.to_owned()));
    }
    Ok(Recording { frames, damaged })
}

/// The rules a recording names: the rule file's text with the built-in rules after it, or the
/// built-in rules alone.
fn rules_of(text: Option<&str>, frame: usize) -> Result<Rules, RecordError> {
    match text {
        Some(t) => rules::parse(t, Some(DEFAULT_RULES)).map_err(|e| RecordError::Rules {
            frame,
            error: e.to_string(),
        }),
        None => Ok(Rules::defaults()),
    }
}

/// Replays a recording frame by frame. `each` sees every reading's frame index, the ledger
/// after it, and the exposition the live daemon recorded for it.
pub fn replay(
    frames: Vec<Frame>,
    mut each: impl FnMut(usize, &Ledger, Option<&str>),
) -> Result<(), RecordError> {
    let mut top_k = 0;
    let mut rules = Arc::new(Rules::defaults());
    let mut ledger = None::<Ledger>;
    for (i, frame) in frames.into_iter().enumerate() {
        match frame {
            Frame::Start {
                top_k: k,
                rank_tau_secs,
                rules: text,
                ledger: mut l,
            } => {
                top_k = usize::try_from(k).unwrap_or(usize::MAX);
                rules = Arc::new(rules_of(text.as_deref(), i)?);
                l.accounts.set_tau(rank_tau_secs);
                l.accounts.set_limits(limits(top_k, &rules));
                ledger = Some(*l);
            }
            Frame::Rules { rules: text } => {
                rules = Arc::new(rules_of(text.as_deref(), i)?);
                if let Some(l) = &mut ledger {
                    l.accounts.set_limits(limits(top_k, &rules));
                }
            }
            Frame::Reading {
                reading,
                exposition,
            } => {
                // decode() makes sure a Start frame comes first.
                let Some(l) = &mut ledger else { continue };
                l.account(&reading, &rules);
                each(i, l, exposition.as_deref());
            }
        }
    }
    Ok(())
}

/// `probe replay FILE [--check]`.
pub fn run(args: &ReplayArgs) -> ExitCode {
    let recording = match read(&args.file) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("probe replay: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(why) = &recording.damaged {
        eprintln!(
            "probe replay: {}: the recording ends early ({why}); the frames before it are replayed",
            args.file.display()
        );
    }
    let (mut readings, mut same, mut differ) = (0, 0, 0);
    let mut last = None;
    let replayed = replay(recording.frames, |i, ledger, recorded| {
        readings += 1;
        let text = crate::exporter::metrics::encode_accounts(ledger.snapshot()).unwrap_or_default();
        if args.check {
            match recorded {
                Some(want) if want == text => same += 1,
                Some(want) => {
                    differ += 1;
                    eprintln!("frame {i}: the replay differs from the recording:");
                    for line in diff_lines(want, &text).iter().take(20) {
                        eprintln!("  {line}");
                    }
                }
                None => {}
            }
        }
        last = Some(text);
    });
    if let Err(e) = replayed {
        eprintln!("probe replay: {e}");
        return ExitCode::FAILURE;
    }
    if args.check {
        println!(
            "{readings} readings replayed: {same} identical to the recording, {differ} differ"
        );
        if same == 0 && differ == 0 {
            eprintln!(
                "probe replay: nothing to compare (record with --record-readings.expositions)"
            );
            return ExitCode::FAILURE;
        }
        return if differ == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        };
    }
    match last {
        Some(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        None => {
            eprintln!("probe replay: {}: no reading recorded", args.file.display());
            ExitCode::FAILURE
        }
    }
}

/// Lines only in `want` (`-`) or only in `got` (`+`), in order.
pub fn diff_lines(want: &str, got: &str) -> Vec<String> {
    let theirs: std::collections::HashSet<&str> = got.lines().collect();
    let ours: std::collections::HashSet<&str> = want.lines().collect();
    want.lines()
        .filter(|l| !theirs.contains(l))
        .map(|l| format!("- {l}"))
        .chain(
            got.lines()
                .filter(|l| !ours.contains(l))
                .map(|l| format!("+ {l}")),
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run recorded on a real kernel by the kernel test
    /// `a_recorded_run_replays_to_the_same_metrics` (tests/tests/instances.rs; regenerate with
    /// PROBE_WRITE_READINGS_FIXTURE=$PWD/probe-user/src/testdata/readings.bin): a busy process
    /// named by a rule that a SIGHUP changed (first-alpha, then second-alpha), 200 short-lived
    /// processes connecting to a parent that moves to a new port every 50, and a server that
    /// received 3 x 100,000 bytes on a port, exited, and a new process that did the same on
    /// that port. `--process.top-k 3`.
    const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/testdata/readings.bin");

    fn fixture() -> Vec<u8> {
        std::fs::read(FIXTURE).expect("testdata/readings.bin")
    }

    fn value(exposition: &str, series: &str) -> Option<f64> {
        exposition
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn the_recorded_run_replays_to_the_live_metrics_exactly() {
        let rec = decode(Path::new(FIXTURE), &fixture()).expect("fixture decodes");
        assert!(rec.damaged.is_none(), "{:?}", rec.damaged);
        let rules_frame = rec
            .frames
            .iter()
            .position(|f| matches!(f, Frame::Rules { .. }))
            .expect("the SIGHUP is recorded");
        let mut compared = 0;
        let mut last = String::new();
        let mut second_before_reload = false;
        replay(rec.frames, |i, ledger, recorded| {
            let text =
                crate::exporter::metrics::encode_accounts(ledger.snapshot()).expect("encodes");
            let want = recorded.expect("recorded with expositions");
            assert!(want == text, "frame {i}: {:#?}", diff_lines(want, &text));
            compared += 1;
            if i < rules_frame && text.contains("second-alpha") {
                second_before_reload = true;
            }
            last = text;
        })
        .expect("replays");
        assert!(compared >= 8, "{compared} readings");
        assert!(
            !second_before_reload,
            "the new rule took effect before the reload"
        );
        // What the workloads did, independently of the accounting: both rule names kept their
        // CPU (counters never go down), and the port two servers used one after the other has
        // both servers' bytes, exactly.
        for inst in ["first-alpha", "second-alpha"] {
            let cpu = value(
                &last,
                &format!("probe_cpu_seconds_total{{service_instance=\"{inst}\"}}"),
            );
            assert!(cpu.is_some_and(|c| c > 0.3), "{inst}: {cpu:?}");
        }
        let served: Vec<&str> = last
            .lines()
            .filter(|l| l.starts_with("probe_tcp_bytes_total{") && l.contains("direction=\"rx\""))
            .filter(|l| l.ends_with(" 600000"))
            .collect();
        assert_eq!(served.len(), 1, "{served:#?}");
    }

    #[test]
    fn a_torn_or_damaged_tail_keeps_the_frames_before_it() {
        let bytes = fixture();
        let whole = decode(Path::new("x"), &bytes).expect("ok").frames.len();
        let torn = decode(Path::new("x"), &bytes[..bytes.len() - 3]).expect("ok");
        assert_eq!(torn.frames.len(), whole - 1);
        assert!(
            torn.damaged.as_deref().is_some_and(|d| d.contains("torn")),
            "{:?}",
            torn.damaged
        );

        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0xff;
        let bad = decode(Path::new("x"), &flipped).expect("ok");
        assert_eq!(bad.frames.len(), whole - 1);
        assert!(bad
            .damaged
            .as_deref()
            .is_some_and(|d| d.contains("checksum")));
    }

    #[test]
    fn foreign_files_and_other_formats_are_refused_by_name() {
        let e = decode(Path::new("notes.txt"), b"hello, this is not it").expect_err("refused");
        assert_eq!(e.to_string(), "notes.txt: not a probe recording");
        let mut newer = fixture();
        newer[8..12].copy_from_slice(&(FORMAT + 1).to_le_bytes());
        let e = decode(Path::new("r.bin"), &newer).expect_err("refused");
        assert!(
            e.to_string()
                .contains(&format!("recording format {}", FORMAT + 1)),
            "{e}"
        );
        let e = decode(Path::new("r.bin"), &fixture()[..12]).expect_err("refused");
        assert!(matches!(e, RecordError::NoStart(_)), "{e}");
    }

    #[test]
    fn frames_written_read_back_and_a_write_error_stops_recording() {
        let dir = std::env::temp_dir().join(format!("probe-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("ok");
        let path = dir.join("r.bin");
        let mut rec = Recorder::create(&path, false).expect("ok");
        rec.write(&Frame::Start {
            top_k: 2,
            rank_tau_secs: 30.0,
            rules: None,
            ledger: Box::new(Ledger::new(30.0, limits(2, &Rules::defaults()))),
        });
        rec.write(&Frame::Reading {
            reading: Box::default(),
            exposition: None,
        });
        let back = read(&path).expect("ok");
        assert_eq!(back.frames.len(), 2);
        assert!(back.damaged.is_none());
        // /dev/full: every write fails with ENOSPC. At start that is an error; later, the
        // recording stops and the daemon goes on.
        assert!(Recorder::create(Path::new("/dev/full"), false).is_err());
        let mut full = Recorder {
            out: Some(BufWriter::new(
                File::options().write(true).open("/dev/full").expect("ok"),
            )),
            path: "/dev/full".into(),
            expositions: false,
        };
        assert!(full.active());
        full.write(&Frame::Rules { rules: None });
        assert!(!full.active());
        let _ = std::fs::remove_dir_all(dir);
    }
}
