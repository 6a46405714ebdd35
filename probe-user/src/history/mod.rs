//! History on the host: a frame of the accounts' [`Snapshot`] per collection in a local store
//! ([`store`]), kept by age and by size, for answering after the fact which instance ate the
//! machine. `probe serve` records through [`writer`]; `probe top --begin/--end` reads a window
//! ([`read`], then `top::past`); `probe history dump` exports one ([`dump`]).

pub mod dump;
pub mod read;
pub mod store;
pub mod synth;
pub mod time;
pub mod writer;

/// Where `probe serve` records, and where the commands that read history look by default.
pub const DEFAULT_DIR: &str = "/var/lib/probe";

use serde::{Deserialize, Serialize};

use crate::daemon::Snapshot;

/// `probe history info|dump`.
pub fn command(cmd: crate::cli::HistoryCommand) -> anyhow::Result<()> {
    use crate::cli::HistoryCommand;
    match cmd {
        HistoryCommand::Info { dir } => {
            let s = store::Store::open_read(&dir)?;
            let st = s.stats()?;
            println!("history: {}", dir.display());
            println!("frames:  {}", st.frames);
            println!("size:    {:.1} MiB", st.bytes as f64 / (1 << 20) as f64);
            let data = s.data_bytes()?;
            println!(
                "data:    {data} bytes of frames ({:.0} per frame)",
                data as f64 / st.frames.max(1) as f64
            );
            match s.range()? {
                Some((a, b)) => {
                    println!("first:   {}", time::show_local(a));
                    println!("last:    {}", time::show_local(b));
                }
                None => println!("(no frame yet)"),
            }
            Ok(())
        }
        HistoryCommand::Synth(args) => synth::run(&args),
        HistoryCommand::Dump(args) => {
            let h = read::History::open(&args.dir)?;
            let (first, last) = h.range()?;
            let at = |t: &Option<String>, name: &str, default: i64| -> anyhow::Result<i64> {
                t.as_deref().map_or(Ok(default), |t| {
                    time::parse_now(t).map_err(|e| anyhow::anyhow!("--{name} {e}"))
                })
            };
            let (begin, end) = (
                at(&args.begin, "begin", first)?,
                at(&args.end, "end", last)?,
            );
            h.check_window(begin, end)?;
            let out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut dumper = dump::Dumper::new(args.format, out)?;
            let mut error = None;
            // Stops at the first error (a reader gone: `| head`).
            let damaged = h.each(begin, end, |f| {
                error = dumper.frame(f).err();
                error.is_none()
            })?;
            // A reader that stopped early (`| head`) is not an error.
            let broken_pipe = |e: &anyhow::Error| {
                e.chain().any(|c| {
                    c.downcast_ref::<std::io::Error>()
                        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
                        || c.downcast_ref::<csv::Error>().is_some_and(|e| {
                            matches!(e.kind(), csv::ErrorKind::Io(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
                        })
                        || c.downcast_ref::<serde_json::Error>()
                            .is_some_and(|e| e.io_error_kind() == Some(std::io::ErrorKind::BrokenPipe))
                })
            };
            match error.map_or_else(|| dumper.finish(), Err) {
                Err(e) if broken_pipe(&e) => return Ok(()),
                r => r?,
            }
            if damaged > 0 {
                eprintln!("probe history: {damaged} damaged frame(s) left out");
            }
            Ok(())
        }
    }
}

/// One collection as history keeps it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Frame {
    /// Unix time (ms) of the collection.
    pub t_ms: i64,
    /// When the daemon that wrote it started (unix ms). Where it changes between two frames
    /// the daemon restarted: its counters reset unless `restored` (readers treat it as
    /// Prometheus' rate() treats a counter reset).
    pub daemon_started_ms: i64,
    pub restored: bool,
    /// The accounts (the daemon's own counters are not kept).
    pub snapshot: Snapshot,
    /// Each collector and whether it was up.
    pub collectors: Vec<(String, bool)>,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("cannot encode a frame: {0}")]
    Encode(postcard::Error),
    #[error("cannot compress a frame: {0}")]
    Compress(std::io::Error),
    #[error("damaged frame (cannot decompress): {0}")]
    Decompress(std::io::Error),
    #[error("damaged frame (cannot decode): {0}")]
    Decode(postcard::Error),
}

/// zstd's default level: most of the gain for a fraction of the CPU of higher ones.
const LEVEL: i32 = 3;
/// A frame is a snapshot of bounded size (instances and top-K rows are capped); 64 MiB is far
/// above any real one and stops a damaged length from allocating more.
const MAX_RAW: usize = 64 << 20;
/// Put before a frame used as a dictionary, so that no frame can look like a zstd dictionary
/// header (which starts with a magic number) and be loaded as one.
const DICT_PREFIX: &[u8] = b"probe history frame\n";
/// One keyframe (compressed on its own) every this many frames; the others are compressed
/// with the previous frame as zstd's dictionary (consecutive frames share most of their
/// names and many of their numbers: about 2.5x smaller). A window is read from the keyframe
/// before it: at 5 s per frame, at most 5 minutes of frames more.
pub const KEYFRAME_EVERY: u32 = 60;

/// A frame as stored: postcard, compressed with zstd, with zstd's checksum (a damaged frame is
/// refused, not decoded into other numbers). `base_ms`: the frame it is a delta against.
#[derive(Debug)]
pub struct Encoded {
    pub t_ms: i64,
    pub base_ms: Option<i64>,
    pub data: Vec<u8>,
}

/// The writer's side: keyframes and deltas against the frame written before.
#[derive(Default)]
pub struct Encoder {
    /// The last frame written (t_ms, dictionary), and frames since the last keyframe.
    prev: Option<(i64, Vec<u8>)>,
    since_key: u32,
}

impl Encoder {
    pub fn encode(&mut self, frame: &Frame) -> Result<Encoded, FrameError> {
        let raw = postcard::to_stdvec(frame).map_err(FrameError::Encode)?;
        // A keyframe when due, and when the clock went back (a delta must follow its base).
        let base = self
            .prev
            .as_ref()
            .filter(|(t, _)| self.since_key + 1 < KEYFRAME_EVERY && *t < frame.t_ms);
        let mut c = match base {
            Some((_, dict)) => zstd::bulk::Compressor::with_dictionary(LEVEL, dict),
            None => zstd::bulk::Compressor::new(LEVEL),
        }
        .map_err(FrameError::Compress)?;
        c.include_checksum(true).map_err(FrameError::Compress)?;
        let data = c.compress(&raw).map_err(FrameError::Compress)?;
        let base_ms = base.map(|(t, _)| *t);
        self.since_key = if base_ms.is_some() {
            self.since_key + 1
        } else {
            0
        };
        self.prev = Some((frame.t_ms, dictionary(raw)));
        Ok(Encoded {
            t_ms: frame.t_ms,
            base_ms,
            data,
        })
    }

    /// After a frame could not be written: the next one is a keyframe.
    pub fn reset(&mut self) {
        self.prev = None;
    }
}

fn dictionary(raw: Vec<u8>) -> Vec<u8> {
    let mut d = Vec::with_capacity(DICT_PREFIX.len() + raw.len());
    d.extend_from_slice(DICT_PREFIX);
    d.extend_from_slice(&raw);
    d
}

/// The reader's side: frames in time order, each delta decoded with the frame before it.
#[derive(Default)]
pub struct Decoder {
    prev: Option<(i64, Vec<u8>)>,
}

impl Decoder {
    /// `Ok(None)`: a delta whose base this decoder has not seen (the first frames of a window
    /// read from its keyframe never are; the oldest frames of a store after retention may be).
    pub fn decode(
        &mut self,
        t_ms: i64,
        base_ms: Option<i64>,
        data: &[u8],
    ) -> Result<Option<Frame>, FrameError> {
        let raw = match base_ms {
            None => zstd::bulk::decompress(data, MAX_RAW).map_err(FrameError::Decompress)?,
            Some(base) => {
                let Some((_, dict)) = self.prev.as_ref().filter(|(t, _)| *t == base) else {
                    self.prev = None;
                    return Ok(None);
                };
                zstd::bulk::Decompressor::with_dictionary(dict)
                    .and_then(|mut d| d.decompress(data, MAX_RAW))
                    .map_err(FrameError::Decompress)?
            }
        };
        let frame: Frame = postcard::from_bytes(&raw).map_err(FrameError::Decode)?;
        self.prev = Some((t_ms, dictionary(raw)));
        Ok(Some(frame))
    }
}

/// One frame on its own (a keyframe).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    Ok(Encoder::default().encode(frame)?.data)
}

pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    Decoder::default()
        .decode(0, None, bytes)?
        .ok_or(FrameError::Decompress(
            std::io::ErrorKind::InvalidData.into(),
        ))
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::{store::*, *};
    use crate::model::accounts::InstanceTotals;

    fn frame(t_ms: i64, cpu_ns: u64) -> Frame {
        Frame {
            t_ms,
            daemon_started_ms: 1_000,
            restored: false,
            snapshot: Snapshot {
                instances: vec![(
                    Arc::from("mariadbd:3306"),
                    InstanceTotals {
                        cpu_ns,
                        ..InstanceTotals::default()
                    },
                )],
                processes: 3,
                ..Snapshot::default()
            },
            collectors: vec![("cpu".into(), true), ("tcp".into(), false)],
        }
    }

    #[test]
    fn a_frame_goes_through_the_store_and_back() {
        let d = std::env::temp_dir().join(format!("probe-history-frame-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let mut w = Store::create(&d).expect("create");
        let keep = Retention {
            max_age: Duration::from_secs(3_600),
            max_bytes: 1 << 20,
        };
        let mut enc = Encoder::default();
        for i in 0..3 {
            let f = frame(10_000 + i * 5_000, 1_000_000 * i as u64);
            w.append(&enc.encode(&f).expect("encode"), &keep)
                .expect("append");
        }
        let r = Store::open_read(&d).expect("open");
        let frames = r.frames(15_000, 20_000).expect("window");
        // From the keyframe: 10 s, then the deltas.
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].base_ms, None);
        assert_eq!(frames[2].base_ms, Some(15_000));
        let mut dec = Decoder::default();
        let back: Vec<Frame> = frames
            .iter()
            .map(|f| dec.decode(f.t_ms, f.base_ms, &f.data).expect("decode"))
            .collect::<Option<_>>()
            .expect("every base seen");
        let back = &back[2];
        assert_eq!(back.t_ms, 20_000);
        assert_eq!(back.snapshot.instances[0].1.cpu_ns, 2_000_000);
        assert_eq!(back.snapshot.processes, 3);
        assert_eq!(back.collectors, frame(0, 0).collectors);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn deltas_decode_in_order_keyframes_come_when_due_and_an_orphan_is_skipped() {
        let mut enc = Encoder::default();
        let frames: Vec<Encoded> = (0..KEYFRAME_EVERY as i64 + 2)
            .map(|i| enc.encode(&frame(i * 1_000, i as u64 * 7)).expect("encode"))
            .collect();
        let keys: Vec<i64> = frames
            .iter()
            .filter(|f| f.base_ms.is_none())
            .map(|f| f.t_ms)
            .collect();
        assert_eq!(keys, [0, i64::from(KEYFRAME_EVERY) * 1_000]);
        let mut dec = Decoder::default();
        for f in &frames {
            let back = dec.decode(f.t_ms, f.base_ms, &f.data).expect("decode");
            assert_eq!(
                back.expect("base seen").snapshot.instances[0].1.cpu_ns,
                f.t_ms as u64 / 1_000 * 7
            );
        }
        // Without its base, a delta is not decoded (not decoded wrongly either).
        let mut dec = Decoder::default();
        assert!(dec
            .decode(3_000, Some(2_000), &frames[3].data)
            .expect("no error")
            .is_none());
        // A clock that went back makes a keyframe.
        assert_eq!(enc.encode(&frame(5, 1)).expect("encode").base_ms, None);
        // And so does a failed write.
        enc.reset();
        assert_eq!(
            enc.encode(&frame(1_000_000, 1)).expect("encode").base_ms,
            None
        );
    }

    #[test]
    fn a_damaged_frame_is_an_error_not_a_panic() {
        let mut bytes = encode(&frame(1, 2)).expect("encode");
        let n = bytes.len();
        bytes[n / 2] ^= 0x55;
        assert!(decode(&bytes).is_err());
        assert!(decode(&bytes[..n / 2]).is_err());
        assert!(decode(b"").is_err());
    }
}
