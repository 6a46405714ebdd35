//! The daemon's own accounts, saved at every collection (`--state.file`, default
//! /run/probe/state: tmpfs, gone at reboot like the pinned maps it goes with), so that a
//! restarted daemon continues every instance counter where it was instead of resetting it.
//!
//! A saved state is used only with the very maps it was accounted from (their kernel ids are
//! in it) and on the same boot; otherwise the daemon starts fresh and says why. The file is
//! written whole and renamed into place, so a crash leaves the previous one; a checksum guards
//! against anything else.
//!
//! Format: `PROBEST1`, the format version (u32 LE), the payload's CRC-32 (u32 LE), then the
//! payload: [`Saved`] in postcard.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};

use crate::{daemon::InstanceMeta, model::accounts::Accounts};

/// The default `--state.file`.
pub const DEFAULT_FILE: &str = "/run/probe/state";

/// Bump whenever [`Saved`] or anything in it changes shape: an older file is then not read.
pub const FORMAT: u32 = 3;
const MAGIC: &[u8; 8] = b"PROBEST1";
const HEADER: usize = 16;

/// What a restarted daemon needs to carry on.
#[derive(Debug, Serialize, Deserialize)]
pub struct Saved {
    /// The pinned maps the accounts were read from: (map name, kernel map id).
    pub maps: Vec<(String, u32)>,
    /// /proc/sys/kernel/random/boot_id when saved.
    pub boot_id: String,
    /// CLOCK_MONOTONIC (ns) at which the accounts' clock reads zero (the first daemon's start).
    pub epoch_mono_ns: u64,
    pub accounts: Accounts,
    pub meta: Vec<(Arc<str>, InstanceMeta)>,
    /// Kernel entries credited but not yet deleted when this was saved.
    pub pending: Pending,
}

/// Deletions that follow a save: a daemon that dies in between would count these entries
/// again, so the next one deletes them first.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Pending {
    /// Dead-thread map entries, (tgid, start_ns), of processes folded in for good (no thread
    /// of theirs can die any more, so the entry cannot have changed).
    pub dead: Vec<(u32, u64)>,
    /// Run-queue entries of threads that did their final switch.
    pub runq_dead: Vec<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("not a probe state file")]
    Magic,
    #[error("written by another probe (state format {found}, this one reads {FORMAT})")]
    Format { found: u32 },
    #[error("corrupt (checksum mismatch)")]
    Checksum,
    #[error("cannot decode: {0}")]
    Decode(#[from] postcard::Error),
    #[error("cannot decode: {0} bytes left over")]
    Trailing(usize),
}

pub fn encode(saved: &Saved) -> Result<Vec<u8>, postcard::Error> {
    let payload = postcard::to_stdvec(saved)?;
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT.to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(out)
}

pub fn decode(bytes: &[u8]) -> Result<Saved, StateError> {
    if bytes.len() < HEADER || &bytes[..8] != MAGIC {
        return Err(StateError::Magic);
    }
    let word = |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let found = word(8);
    if found != FORMAT {
        return Err(StateError::Format { found });
    }
    let payload = &bytes[HEADER..];
    if crc32fast::hash(payload) != word(12) {
        return Err(StateError::Checksum);
    }
    // postcard is not self-describing: a payload of another shape may decode into nonsense, and
    // bytes left over are one sign of it.
    let (saved, rest) = postcard::take_from_bytes(payload)?;
    if !rest.is_empty() {
        return Err(StateError::Trailing(rest.len()));
    }
    Ok(saved)
}

/// Reads a saved state; `Ok(None)` if there is none.
pub fn load(path: &Path) -> Result<Option<Saved>, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => decode(&bytes).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::Read(path.to_path_buf(), e)),
    }
}

/// Writes `bytes` to `path` atomically (a temporary file renamed over it).
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// This boot's id (empty if unknown: then a state is never taken for this boot's).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// CLOCK_MONOTONIC now, in ns.
pub fn monotonic_ns() -> u64 {
    crate::collect::tcp::monotonic_ns()
}

/// Why a saved state cannot be used with these maps on this boot, if it cannot.
pub fn mismatch(saved: &Saved, maps: &[(String, u32)], boot_id: &str) -> Option<String> {
    if boot_id.is_empty() || saved.boot_id != boot_id {
        return Some("saved on another boot".into());
    }
    if saved.maps != maps {
        return Some("its pinned maps were replaced since (removed, or a new layout)".into());
    }
    if saved.epoch_mono_ns > monotonic_ns() {
        return Some("its clock is ahead of this boot's".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Saved {
        Saved {
            maps: vec![("DEAD_TASKS".into(), 7)],
            boot_id: "b".into(),
            epoch_mono_ns: 5,
            accounts: Accounts::new(30.0),
            meta: vec![(Arc::from("mysqld:3306"), InstanceMeta::default())],
            pending: Pending {
                dead: vec![(1, 2)],
                runq_dead: vec![9],
            },
        }
    }

    #[test]
    fn round_trip() {
        let bytes = encode(&sample()).expect("encode");
        let back = decode(&bytes).expect("decode");
        assert_eq!(back.maps, sample().maps);
        assert_eq!(back.pending, sample().pending);
        assert_eq!(back.meta, sample().meta);
    }

    #[test]
    fn damaged_files_are_refused() {
        let bytes = encode(&sample()).expect("encode");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(matches!(decode(&flipped), Err(StateError::Checksum)));
        assert!(matches!(
            decode(&bytes[..HEADER + 2]),
            Err(StateError::Checksum)
        ));
        assert!(matches!(decode(b"garbage"), Err(StateError::Magic)));
        let mut newer = bytes.clone();
        newer[8] = 99;
        assert!(matches!(
            decode(&newer),
            Err(StateError::Format { found: 99 })
        ));
    }

    #[test]
    fn a_state_fits_only_its_maps_and_boot() {
        let s = sample();
        let maps = s.maps.clone();
        assert_eq!(mismatch(&s, &maps, "b"), None);
        assert!(mismatch(&s, &maps, "other").is_some());
        assert!(mismatch(&s, &[("DEAD_TASKS".into(), 8)], "b").is_some());
        assert!(mismatch(&s, &maps, "").is_some());
    }

    /// Accounts with content: two processes in two instances, one round with CPU, block IO (a
    /// latency histogram), TCP and run-queue waits.
    fn accounts_with_two_instances() -> Accounts {
        use std::collections::HashMap;

        use crate::model::{
            accounts::Round,
            io::{IoCounters, Op},
            latency::Latency,
            process::{ProcessKey, ProcessSample},
            tcp::{Role, TcpCounters, TcpDim},
        };
        let key = |tgid: u32| ProcessKey {
            tgid,
            start_ns: u64::from(tgid) * 1000,
        };
        let mut latency = Latency {
            count: 3,
            sum_ns: 70_000,
            ..Latency::default()
        };
        latency.buckets[4] = 2;
        latency.buckets[6] = 1;
        let io = HashMap::from([(
            key(1),
            HashMap::from([(
                ("vda".into(), Op::Write),
                IoCounters {
                    bytes: 12_288,
                    latency: latency.clone(),
                },
            )]),
        )]);
        let tcp = HashMap::from([(
            key(2),
            HashMap::from([(
                TcpDim {
                    role: Role::Server,
                    port: 3307,
                },
                TcpCounters {
                    rx_bytes: 100,
                    tx_bytes: 200,
                    ..TcpCounters::default()
                },
            )]),
        )]);
        let runq = HashMap::from([(key(2), HashMap::from([(2u32, latency)]))]);
        let live: HashMap<ProcessKey, ProcessSample> = [(1, 3_000_000_000u64), (2, 5_000_000_000)]
            .into_iter()
            .map(|(tgid, cpu_ns)| {
                let key = ProcessKey {
                    tgid,
                    start_ns: u64::from(tgid) * 1000,
                };
                let sample = ProcessSample {
                    cpu_ns,
                    run_delay_ns: cpu_ns / 10,
                    rss_pages: 256,
                    threads: 1,
                    ..ProcessSample::default()
                };
                (key, sample)
            })
            .collect();
        let mut acc = Accounts::new(30.0);
        let round = Round {
            live: &live,
            dead: &HashMap::new(),
            io: Some(&io),
            tcp: Some(&tcp),
            runq: Some(&runq),
            elapsed_secs: 1.0,
            now_secs: 10.0,
            page_size: 4096,
        };
        acc.apply(&round, &mut |k: &ProcessKey| {
            format!("mysqld:330{}", k.tgid + 5)
        });
        acc.end_round(10.0);
        acc
    }

    /// postcard is not self-describing: a change to the shape of [`Saved`] or of anything in it
    /// (the accounts above all) could make an older file decode into nonsense. A file saved by
    /// this FORMAT is committed (testdata/state.bin) and must read back to the same accounts;
    /// after a shape change this fails until FORMAT is bumped (older files are then refused)
    /// and the file written again: `PROBE_WRITE_STATE_FIXTURE=1 cargo test -p probe-user state`.
    #[test]
    fn a_state_saved_by_this_format_reads_back() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/src/testdata/state.bin");
        let want = Saved {
            accounts: accounts_with_two_instances(),
            ..sample()
        };
        if std::env::var_os("PROBE_WRITE_STATE_FIXTURE").is_some() {
            write(Path::new(path), &encode(&want).expect("encode")).expect("write fixture");
        }
        let bytes = std::fs::read(path).expect("testdata/state.bin");
        let back = decode(&bytes).unwrap_or_else(|e| {
            panic!(
                "{path}: {e}. If the shape of the saved state changed, bump state::FORMAT and \
                 write the file again (PROBE_WRITE_STATE_FIXTURE=1)"
            )
        });
        assert_eq!(back.accounts.instances(), want.accounts.instances());
        assert_eq!(
            back.accounts.instances()["mysqld:3307"].cpu_ns,
            5_000_000_000,
            "the second process's CPU, as fed"
        );
        assert_eq!(back.accounts.sizes(), (2, 2));
        assert_eq!(
            back.accounts.top_processes(5),
            want.accounts.top_processes(5)
        );
        assert_eq!(back.accounts.io(), want.accounts.io());
        assert_eq!(back.accounts.tcp(), want.accounts.tcp());
        assert_eq!(back.accounts.runq(), want.accounts.runq());
        assert_eq!(back.accounts.io().len(), 1, "the fixture has block IO");
        assert_eq!(
            back.accounts.runq().len(),
            1,
            "the fixture has run-queue waits"
        );
        assert_eq!((back.maps, back.pending), (want.maps, want.pending));
    }

    #[test]
    fn write_replaces_whole() {
        let p = std::env::temp_dir().join(format!("probe-state-test-{}/state", std::process::id()));
        write(&p, b"one").expect("write");
        write(&p, b"two").expect("write");
        assert_eq!(std::fs::read(&p).expect("read"), b"two");
        let _ = std::fs::remove_dir_all(p.parent().expect("dir"));
    }
}
