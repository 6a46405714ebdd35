//! History on the host (issue 15, first step): a frame of the accounts' [`Snapshot`] per
//! collection in a local store ([`store`]), kept by age and by size, for answering after the
//! fact which instance ate the machine. Not yet recorded by `probe serve`: this step is the
//! store and the frames' encoding, tested on their own.

pub mod store;

use serde::{Deserialize, Serialize};

use crate::daemon::Snapshot;

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

/// A frame as stored: postcard, compressed with zstd (a well-kept library: the format is
/// the same everywhere and decompression is fast for window queries).
pub fn encode(frame: &Frame) -> Result<Vec<u8>, FrameError> {
    let raw = postcard::to_stdvec(frame).map_err(FrameError::Encode)?;
    // With its checksum: a damaged frame is refused, not decoded into other numbers.
    let mut c = zstd::bulk::Compressor::new(LEVEL).map_err(FrameError::Compress)?;
    c.include_checksum(true).map_err(FrameError::Compress)?;
    c.compress(&raw).map_err(FrameError::Compress)
}

pub fn decode(bytes: &[u8]) -> Result<Frame, FrameError> {
    // A frame is a snapshot of bounded size (instances and top-K rows are capped); 64 MiB is
    // far above any real one and stops a damaged length from allocating more.
    let raw = zstd::bulk::decompress(bytes, 64 << 20).map_err(FrameError::Decompress)?;
    postcard::from_bytes(&raw).map_err(FrameError::Decode)
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
        for i in 0..3 {
            let f = frame(10_000 + i * 5_000, 1_000_000 * i as u64);
            w.append(f.t_ms, &encode(&f).expect("encode"), &keep)
                .expect("append");
        }
        let r = Store::open_read(&d).expect("open");
        let frames = r.frames(15_000, 20_000).expect("window");
        assert_eq!(frames.len(), 2);
        let back = decode(&frames[1].2).expect("decode");
        assert_eq!(back.t_ms, 20_000);
        assert_eq!(back.snapshot.instances[0].1.cpu_ns, 2_000_000);
        assert_eq!(back.snapshot.processes, 3);
        assert_eq!(back.collectors, frame(0, 0).collectors);
        let _ = std::fs::remove_dir_all(d);
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
