//! The history store: one SQLite database (`history.db` in the history directory), one row per
//! frame. SQLite rather than a file format of our own: a torn last write is rolled back by its
//! journal (WAL), readers and the writer do not block each other, and a time window is one
//! indexed range query. Retention by age and by size runs after every frame written (the
//! oldest frames go first), so the store never grows past its bounds between cleanups.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::Encoded;

/// Version of the store's layout and of its frames' encoding; a store of another version is
/// refused with a message, not misread.
pub const FORMAT: i64 = 1;
pub const FILE: &str = "history.db";
/// Held (flock) by the one daemon recording into a directory.
const LOCK: &str = "history.lock";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}: no history there (probe serve records to --history.dir)")]
    Missing(PathBuf),
    #[error("{path}: not a probe history store ({why})")]
    Foreign { path: PathBuf, why: String },
    #[error("{path}: written by a newer probe (history format {found}, this one reads {FORMAT})")]
    Newer { path: PathBuf, found: i64 },
    #[error("{path}: {error}")]
    Sqlite {
        path: PathBuf,
        error: rusqlite::Error,
    },
    #[error("cannot create {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("{0}: another probe serve records there (its lock file history.lock is held)")]
    Busy(PathBuf),
}

/// One stored frame, as [`super::Decoder`] takes it.
#[derive(Debug)]
pub struct Stored {
    pub t_ms: i64,
    pub format: i64,
    /// The frame it is a delta against; None: a keyframe.
    pub base_ms: Option<i64>,
    pub data: Vec<u8>,
}

/// How much history is kept.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_age: Duration,
    /// Bytes of frames and their index; the file itself may be a few pages larger.
    pub max_bytes: u64,
}

/// What the store holds (self-metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub frames: u64,
    /// Bytes in use (pages holding data, without free pages).
    pub bytes: u64,
    /// Unix ms of the oldest frame.
    pub oldest_ms: Option<i64>,
}

pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The writer's lock on the directory (None for readers).
    _lock: Option<std::fs::File>,
}

impl Store {
    /// Opens the store in `dir` for writing, creating both if needed. One writer per
    /// directory: a second one is refused ([`StoreError::Busy`]).
    pub fn create(dir: &Path) -> Result<Self, StoreError> {
        use std::os::fd::AsRawFd as _;
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir(dir.to_owned(), e))?;
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))
            .map_err(|e| StoreError::Dir(dir.to_owned(), e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StoreError::Busy(dir.to_owned()));
        }
        let path = dir.join(FILE);
        let conn = Connection::open(&path).map_err(|error| StoreError::Sqlite {
            path: path.clone(),
            error,
        })?;
        let store = Self {
            conn,
            path,
            _lock: Some(lock),
        };
        // Readers' locks are short; wait them out rather than fail a frame.
        store
            .conn
            .busy_timeout(Duration::from_secs(2))
            .map_err(|e| store.sql(e))?;
        store.init()?;
        Ok(store)
    }

    /// Opens the store in `dir` for reading; nothing is created.
    pub fn open_read(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(FILE);
        if !path.exists() {
            return Err(StoreError::Missing(dir.to_owned()));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|error| StoreError::Sqlite {
            path: path.clone(),
            error,
        })?;
        let store = Self {
            conn,
            path,
            _lock: None,
        };
        // A reader waits out the writer's checkpoints rather than failing.
        store
            .conn
            .busy_timeout(Duration::from_secs(2))
            .map_err(|e| store.sql(e))?;
        store.check_format()?;
        Ok(store)
    }

    fn sql(&self, error: rusqlite::Error) -> StoreError {
        match error {
            rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::NotADatabase => {
                StoreError::Foreign {
                    path: self.path.clone(),
                    why: "not an SQLite database".into(),
                }
            }
            e if e.to_string().contains("no such table") => StoreError::Foreign {
                path: self.path.clone(),
                why: "an SQLite database without probe's tables".into(),
            },
            error => StoreError::Sqlite {
                path: self.path.clone(),
                error,
            },
        }
    }

    fn init(&self) -> Result<(), StoreError> {
        // auto_vacuum must be chosen before the first table exists: with INCREMENTAL, pages
        // freed by retention go back to the file system (incremental_vacuum below).
        self.conn
            .execute_batch(
                "PRAGMA auto_vacuum = INCREMENTAL;
                 PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
                 CREATE TABLE IF NOT EXISTS frames (
                     t_ms INTEGER PRIMARY KEY,
                     format INTEGER NOT NULL,
                     base_ms INTEGER,
                     data BLOB NOT NULL
                 );",
            )
            .map_err(|e| self.sql(e))?;
        self.conn
            .execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?1)",
                params![FORMAT.to_string()],
            )
            .map_err(|e| self.sql(e))?;
        self.check_format()
    }

    fn check_format(&self) -> Result<(), StoreError> {
        let found: Option<String> = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.sql(e))?;
        let found = match found.as_deref().map(str::parse::<i64>) {
            Some(Ok(v)) => v,
            _ => {
                return Err(StoreError::Foreign {
                    path: self.path.clone(),
                    why: "no format version".into(),
                })
            }
        };
        if found > FORMAT {
            return Err(StoreError::Newer {
                path: self.path.clone(),
                found,
            });
        }
        Ok(())
    }

    /// Writes one frame (unix ms; a second frame in the same millisecond replaces the
    /// first), then drops what `retention` no longer keeps.
    pub fn append(&mut self, frame: &Encoded, retention: &Retention) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO frames (t_ms, format, base_ms, data) VALUES (?1, ?2, ?3, ?4)",
                params![frame.t_ms, FORMAT, frame.base_ms, frame.data],
            )
            .map_err(|e| self.sql(e))?;
        self.retain(frame.t_ms, retention)
    }

    fn retain(&mut self, now_ms: i64, retention: &Retention) -> Result<(), StoreError> {
        let oldest_kept = now_ms.saturating_sub(retention.max_age.as_millis() as i64);
        let mut deleted = self
            .conn
            .execute("DELETE FROM frames WHERE t_ms < ?1", params![oldest_kept])
            .map_err(|e| self.sql(e))?;
        // By size: drop the oldest frames that make up what is over, until under (never the
        // newest). The size is three pragmas; frames are counted (a scan) only when over.
        loop {
            let bytes = self.bytes_in_use()?;
            if bytes <= retention.max_bytes {
                break;
            }
            let frames = self.count()?;
            if frames <= 1 {
                break;
            }
            let over = bytes - retention.max_bytes;
            let per_frame = (bytes / frames).max(1);
            let n = (over / per_frame + 1).min(frames - 1);
            deleted += self
                .conn
                .execute(
                    "DELETE FROM frames WHERE t_ms IN (SELECT t_ms FROM frames ORDER BY t_ms LIMIT ?1)",
                    params![n as i64],
                )
                .map_err(|e| self.sql(e))?;
        }
        if deleted > 0 {
            // Deltas whose chain lost its keyframe cannot be read: they go too.
            self.conn
                .execute(
                    "DELETE FROM frames WHERE t_ms < (SELECT MIN(t_ms) FROM frames WHERE base_ms IS NULL)",
                    [],
                )
                .map_err(|e| self.sql(e))?;
            self.conn
                .execute_batch("PRAGMA incremental_vacuum;")
                .map_err(|e| self.sql(e))?;
        }
        Ok(())
    }

    /// Bytes in pages that hold data (free pages not counted).
    fn bytes_in_use(&self) -> Result<u64, StoreError> {
        let pragma = |name: &str| -> Result<u64, StoreError> {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| r.get::<_, i64>(0))
                .map(|v| v.max(0) as u64)
                .map_err(|e| self.sql(e))
        };
        Ok(pragma("page_count")?.saturating_sub(pragma("freelist_count")?) * pragma("page_size")?)
    }

    fn count(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row("SELECT COUNT(*) FROM frames", [], |r| r.get::<_, i64>(0))
            .map(|v| v.max(0) as u64)
            .map_err(|e| self.sql(e))
    }

    /// Bytes in use and the oldest frame's time: cheap enough for every frame.
    pub fn usage(&self) -> Result<(u64, Option<i64>), StoreError> {
        let oldest = self
            .conn
            .query_row("SELECT MIN(t_ms) FROM frames", [], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        Ok((self.bytes_in_use()?, oldest))
    }

    /// Bytes of the frames' data (without SQLite's pages and index): a scan.
    pub fn data_bytes(&self) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(LENGTH(data)), 0) FROM frames",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|v| v.max(0) as u64)
            .map_err(|e| self.sql(e))
    }

    /// What the store holds. Counting frames reads the whole index: not for every frame.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let oldest_ms = self
            .conn
            .query_row("SELECT MIN(t_ms) FROM frames", [], |r| r.get(0))
            .map_err(|e| self.sql(e))?;
        Ok(StoreStats {
            frames: self.count()?,
            bytes: self.bytes_in_use()?,
            oldest_ms,
        })
    }

    /// Frames with `begin_ms <= t_ms <= end_ms`, oldest first, after the frames from the
    /// keyframe at or before `begin_ms` that a decoder needs first.
    pub fn frames(&self, begin_ms: i64, end_ms: i64) -> Result<Vec<Stored>, StoreError> {
        let mut v = Vec::new();
        self.each_frame(begin_ms, end_ms, |f| {
            v.push(f);
            true
        })?;
        Ok(v)
    }

    /// The same, one row at a time (a long window is never held in memory), until `f` says
    /// false.
    pub fn each_frame(
        &self,
        begin_ms: i64,
        end_ms: i64,
        mut f: impl FnMut(Stored) -> bool,
    ) -> Result<(), StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT t_ms, format, base_ms, data FROM frames
                 WHERE t_ms >= COALESCE(
                     (SELECT MAX(t_ms) FROM frames WHERE t_ms <= ?1 AND base_ms IS NULL), ?1)
                   AND t_ms <= ?2
                 ORDER BY t_ms",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![begin_ms, end_ms], |r| {
                Ok(Stored {
                    t_ms: r.get(0)?,
                    format: r.get(1)?,
                    base_ms: r.get(2)?,
                    data: r.get(3)?,
                })
            })
            .map_err(|e| self.sql(e))?;
        for row in rows {
            if !f(row.map_err(|e| self.sql(e))?) {
                break;
            }
        }
        Ok(())
    }

    /// The time of the last frame at or before `t_ms`, and of the first after it.
    pub fn around(&self, t_ms: i64) -> Result<(Option<i64>, Option<i64>), StoreError> {
        self.conn
            .query_row(
                "SELECT (SELECT MAX(t_ms) FROM frames WHERE t_ms <= ?1),
                        (SELECT MIN(t_ms) FROM frames WHERE t_ms > ?1)",
                params![t_ms],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(|e| self.sql(e))
    }

    /// The first and last frame times, if any.
    pub fn range(&self) -> Result<Option<(i64, i64)>, StoreError> {
        self.conn
            // Two subqueries: SQLite answers MIN or MAX alone from the key's b-tree, both in
            // one SELECT by scanning the table (the whole store).
            .query_row(
                "SELECT (SELECT MIN(t_ms) FROM frames), (SELECT MAX(t_ms) FROM frames)",
                [],
                |r| {
                    Ok(
                        match (r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?) {
                            (Some(a), Some(b)) => Some((a, b)),
                            _ => None,
                        },
                    )
                },
            )
            .map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("probe-history-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn key(t_ms: i64, data: &[u8]) -> Encoded {
        Encoded {
            t_ms,
            base_ms: None,
            data: data.to_vec(),
        }
    }

    const DAY: Retention = Retention {
        max_age: Duration::from_secs(86_400),
        max_bytes: 1 << 30,
    };

    #[test]
    fn frames_read_back_by_window_and_a_reader_sees_the_writers_frames() {
        let d = dir("window");
        let mut w = Store::create(&d).expect("create");
        for i in 0..10 {
            w.append(&key(1_000 * i, &[i as u8; 100]), &DAY)
                .expect("append");
        }
        let r = Store::open_read(&d).expect("open for reading while the writer is open");
        let got = r.frames(3_000, 5_000).expect("frames");
        assert_eq!(
            got.iter().map(|f| f.t_ms).collect::<Vec<_>>(),
            [3_000, 4_000, 5_000]
        );
        assert_eq!(got[0].data, vec![3u8; 100]);
        assert_eq!(r.range().expect("range"), Some((0, 9_000)));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn retention_by_age_drops_frames_older_than_it() {
        let d = dir("age");
        let mut w = Store::create(&d).expect("create");
        let keep = Retention {
            max_age: Duration::from_secs(60),
            max_bytes: 1 << 30,
        };
        for s in 0..=300 {
            w.append(&key(s * 1_000, b"frame"), &keep).expect("append");
        }
        let st = w.stats().expect("stats");
        assert_eq!(st.oldest_ms, Some(240_000));
        assert_eq!(st.frames, 61);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn retention_by_size_keeps_the_store_under_its_bound_and_the_newest_frames() {
        let d = dir("size");
        let mut w = Store::create(&d).expect("create");
        let keep = Retention {
            max_age: Duration::from_secs(86_400),
            max_bytes: 256 * 1024,
        };
        let frame = vec![7u8; 4_000];
        for i in 0..500 {
            w.append(&key(i * 1_000, &frame), &keep).expect("append");
            assert!(
                w.stats().expect("stats").bytes <= keep.max_bytes,
                "over the bound after frame {i}"
            );
        }
        let st = w.stats().expect("stats");
        assert!(st.frames >= 40, "{st:?}: kept too little");
        assert_eq!(w.range().expect("range").map(|r| r.1), Some(499_000));
        // The file shrinks with it (incremental vacuum), not only the pages in use.
        let file = std::fs::metadata(d.join(FILE)).expect("file").len();
        assert!(file <= keep.max_bytes + 64 * 1024, "file {file} bytes");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_window_starts_at_its_keyframe_and_retention_drops_orphaned_deltas() {
        let d = dir("chains");
        let mut w = Store::create(&d).expect("create");
        let frame = |t_ms: i64| Encoded {
            t_ms,
            // A keyframe every 4 frames, as the encoder makes them.
            base_ms: (t_ms % 4_000 != 0).then_some(t_ms - 1_000),
            data: vec![1; 10],
        };
        for i in 0..12 {
            w.append(&frame(i * 1_000), &DAY).expect("append");
        }
        let got = w.frames(6_000, 7_000).expect("frames");
        assert_eq!(
            got.iter().map(|f| f.t_ms).collect::<Vec<_>>(),
            [4_000, 5_000, 6_000, 7_000]
        );
        assert_eq!(w.around(6_500).expect("around"), (Some(6_000), Some(7_000)));
        // Retention by age cuts the chain of 4 s-7 s after 5 s: 6 s and 7 s go with it.
        let keep = Retention {
            max_age: Duration::from_millis(12_000 - 5_500),
            max_bytes: 1 << 30,
        };
        w.append(&frame(12_000), &keep).expect("append");
        assert_eq!(w.range().expect("range"), Some((8_000, 12_000)));
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_second_writer_is_refused() {
        let d = dir("busy");
        let _w = Store::create(&d).expect("create");
        let e = Store::create(&d).err().expect("refused");
        assert!(matches!(e, StoreError::Busy(_)), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn foreign_and_newer_stores_are_refused_by_name() {
        let d = dir("foreign");
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(
            d.join(FILE),
            b"this is not a database, just some text in its place......",
        )
        .expect("write");
        let e = Store::open_read(&d).err().expect("refused");
        assert!(e.to_string().contains("not a probe history store"), "{e}");
        let e = Store::create(&d).err().expect("refused");
        assert!(e.to_string().contains("not a probe history store"), "{e}");

        let d = dir("newer");
        let w = Store::create(&d).expect("create");
        w.conn
            .execute("UPDATE meta SET value = '99' WHERE key = 'format'", [])
            .expect("update");
        drop(w);
        let e = Store::open_read(&d).err().expect("refused");
        assert!(e.to_string().contains("history format 99"), "{e}");

        let e = Store::open_read(&dir("nothing")).err().expect("refused");
        assert!(matches!(e, StoreError::Missing(_)), "{e}");
    }
}
