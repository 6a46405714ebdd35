//! The daemon as a service: what the HTTP side and the timers share. One [`Daemon`] behind a
//! lock (collections are whole), whether the first collection is done (`/readyz`), and the web
//! config in force (replaced on SIGHUP).

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, RwLock,
    },
    time::Instant,
};

use crate::{
    api::Sample,
    daemon::{Daemon, Snapshot},
    webconfig::WebConfig,
};

/// The daemon as the HTTP side sees it.
pub struct App {
    daemon: Mutex<Daemon>,
    ready: AtomicBool,
    web: RwLock<Arc<WebConfig>>,
    /// One password check (bcrypt) at a time.
    pub bcrypt: tokio::sync::Semaphore,
}

impl App {
    pub fn new(daemon: Daemon, web: WebConfig) -> Self {
        Self {
            daemon: Mutex::new(daemon),
            ready: AtomicBool::new(false),
            web: RwLock::new(Arc::new(web)),
            bcrypt: tokio::sync::Semaphore::new(1),
        }
    }

    /// The web config in force: new connections and requests use it.
    pub fn web(&self) -> Arc<WebConfig> {
        self.web
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces the web config (SIGHUP); connections already open keep their TLS session.
    pub fn set_web(&self, web: WebConfig) {
        *self
            .web
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(web);
    }

    /// The daemon. A panic while it was held (a bug) must not stop the exporter for good, so
    /// a poisoned lock is taken over: the accounts are only ever updated whole.
    pub fn daemon(&self) -> MutexGuard<'_, Daemon> {
        self.daemon
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Collects (the timer calls this between scrapes).
    pub fn collect(&self) {
        self.daemon().collect();
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Collects (unless a collection started after `asked` is done: concurrent scrapes share
    /// one) and returns what the exporter encodes.
    pub fn snapshot_since(&self, asked: Instant) -> Snapshot {
        let snapshot = {
            let mut d = self.daemon();
            d.collect_since(asked);
            d.snapshot()
        };
        self.ready.store(true, Ordering::Relaxed);
        snapshot
    }

    /// Collects (as [`App::snapshot_since`]) and returns the sample `probe top --from` reads.
    pub fn top_sample(&self, asked: Instant) -> Sample {
        let sample = {
            let mut d = self.daemon();
            d.collect_since(asked);
            Sample::from_snapshot(&d.snapshot(), d.uptime_secs())
        };
        self.ready.store(true, Ordering::Relaxed);
        sample
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}
