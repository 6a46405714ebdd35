//! Recording in `probe serve`: the daemon hands each collection's frame to a thread of its own
//! that compresses it and writes it, so a slow or full disk never holds up a collection or a
//! scrape. A write that fails (full or read-only disk, store removed) stops recording with one
//! log line and a metric; it is tried again every [`RETRY`], and says so when it works again.

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed},
        mpsc, Arc,
    },
    time::{Duration, Instant},
};

use tracing::{info, warn};

use super::{
    store::{Retention, Store},
    Encoder, Frame,
};

/// How long after a failure recording is tried again.
pub const RETRY: Duration = Duration::from_secs(10);
/// Frames waiting for the writer; past it a frame is dropped (and counted), never waited for.
const QUEUE: usize = 4;

#[derive(Clone, Debug)]
pub struct Settings {
    pub dir: PathBuf,
    pub retention: Retention,
}

/// What the recorder did, for the self-metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub frames_written: AtomicU64,
    pub write_errors: AtomicU64,
    /// Frames not written: the writer was behind, or recording was stopped by an error.
    pub frames_dropped: AtomicU64,
    /// Bytes the store uses, after the last frame.
    pub bytes: AtomicU64,
    /// Unix ms of the oldest frame kept (`i64::MIN`: none yet).
    pub oldest_ms: AtomicI64,
    /// Whether the last frame was written.
    pub recording: AtomicBool,
}

/// [`Stats`] read at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub frames_written: u64,
    pub write_errors: u64,
    pub frames_dropped: u64,
    pub bytes: u64,
    pub oldest_ms: Option<i64>,
    pub recording: bool,
}

impl Stats {
    pub fn usage(&self) -> Usage {
        Usage {
            frames_written: self.frames_written.load(Relaxed),
            write_errors: self.write_errors.load(Relaxed),
            frames_dropped: self.frames_dropped.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            oldest_ms: Some(self.oldest_ms.load(Relaxed)).filter(|&t| t != i64::MIN),
            recording: self.recording.load(Relaxed),
        }
    }
}

/// The daemon's end: frames go in, the thread writes them.
pub struct Recorder {
    tx: Option<mpsc::SyncSender<Frame>>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub stats: Arc<Stats>,
    pub dir: PathBuf,
}

impl Recorder {
    /// Starts the writer thread; the store is opened on the first frame (a failure there is
    /// handled as any write failure: logged, counted, tried again).
    pub fn start(settings: Settings) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let stats = Arc::new(Stats {
            oldest_ms: AtomicI64::new(i64::MIN),
            ..Stats::default()
        });
        let dir = settings.dir.clone();
        let thread = {
            let stats = stats.clone();
            std::thread::Builder::new()
                .name("probe-history".into())
                .spawn(move || write_frames(&settings, &rx, &stats))?
        };
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            stats,
            dir,
        })
    }

    /// Hands a frame to the writer; never blocks.
    pub fn offer(&self, frame: Frame) {
        let Some(tx) = &self.tx else { return };
        if tx.try_send(frame).is_err() {
            self.stats.frames_dropped.fetch_add(1, Relaxed);
        }
    }
}

impl Drop for Recorder {
    /// Lets the writer finish the frames it has (a few), so that a clean stop loses none.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_frames(settings: &Settings, rx: &mpsc::Receiver<Frame>, stats: &Stats) {
    let mut store: Option<Store> = None;
    let mut encoder = Encoder::default();
    // When the last failure happened; while it is recent, frames are dropped.
    let mut failed: Option<Instant> = None;
    for frame in rx {
        if failed.is_some_and(|t| t.elapsed() < RETRY) {
            stats.frames_dropped.fetch_add(1, Relaxed);
            continue;
        }
        let result = (|| -> anyhow::Result<()> {
            if store.is_none() {
                store = Some(Store::create(&settings.dir)?);
                encoder.reset();
            }
            let s = store.as_mut().expect("opened above");
            s.append(&encoder.encode(&frame)?, &settings.retention)?;
            let (bytes, oldest) = s.usage()?;
            stats.bytes.store(bytes, Relaxed);
            stats.oldest_ms.store(oldest.unwrap_or(i64::MIN), Relaxed);
            Ok(())
        })();
        match result {
            Ok(()) => {
                stats.frames_written.fetch_add(1, Relaxed);
                stats.recording.store(true, Relaxed);
                if failed.take().is_some() {
                    info!(dir = %settings.dir.display(), "history: recording again");
                }
            }
            Err(e) => {
                stats.write_errors.fetch_add(1, Relaxed);
                stats.frames_dropped.fetch_add(1, Relaxed);
                stats.recording.store(false, Relaxed);
                // Closed and opened again on the next try: whatever failed (a full disk, a
                // store deleted under it) starts from a clean connection and a keyframe.
                store = None;
                encoder.reset();
                if failed.is_none() {
                    warn!(
                        dir = %settings.dir.display(),
                        "history: recording stopped, serving goes on (trying again every {}s): {e:#}",
                        RETRY.as_secs()
                    );
                }
                failed = Some(Instant::now());
            }
        }
    }
}
