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

/// Version of the store's layout and of its frames' encoding; a store of another version is
/// refused with a message, not misread.
pub const FORMAT: i64 = 1;
pub const FILE: &str = "history.db";

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
}

impl Store {
    /// Opens the store in `dir` for writing, creating both if needed.
    pub fn create(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Dir(dir.to_owned(), e))?;
        let path = dir.join(FILE);
        let conn = Connection::open(&path).map_err(|error| StoreError::Sqlite {
            path: path.clone(),
            error,
        })?;
        let store = Self { conn, path };
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
        let store = Self { conn, path };
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

    /// Writes one frame at `t_ms` (unix ms; a second frame in the same millisecond replaces
    /// the first), then drops what `retention` no longer keeps.
    pub fn append(
        &mut self,
        t_ms: i64,
        frame: &[u8],
        retention: &Retention,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO frames (t_ms, format, data) VALUES (?1, ?2, ?3)",
                params![t_ms, FORMAT, frame],
            )
            .map_err(|e| self.sql(e))?;
        self.retain(t_ms, retention)
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

    /// Frames with `begin_ms <= t_ms <= end_ms`, oldest first: (t_ms, format, bytes).
    pub fn frames(
        &self,
        begin_ms: i64,
        end_ms: i64,
    ) -> Result<Vec<(i64, i64, Vec<u8>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT t_ms, format, data FROM frames WHERE t_ms BETWEEN ?1 AND ?2 ORDER BY t_ms",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![begin_ms, end_ms], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .map_err(|e| self.sql(e))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(|e| self.sql(e))
    }

    /// The first and last frame times, if any.
    pub fn range(&self) -> Result<Option<(i64, i64)>, StoreError> {
        self.conn
            .query_row("SELECT MIN(t_ms), MAX(t_ms) FROM frames", [], |r| {
                Ok(
                    match (r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?) {
                        (Some(a), Some(b)) => Some((a, b)),
                        _ => None,
                    },
                )
            })
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

    const DAY: Retention = Retention {
        max_age: Duration::from_secs(86_400),
        max_bytes: 1 << 30,
    };

    #[test]
    fn frames_read_back_by_window_and_a_reader_sees_the_writers_frames() {
        let d = dir("window");
        let mut w = Store::create(&d).expect("create");
        for i in 0..10 {
            w.append(1_000 * i, &[i as u8; 100], &DAY).expect("append");
        }
        let r = Store::open_read(&d).expect("open for reading while the writer is open");
        let got = r.frames(3_000, 5_000).expect("frames");
        assert_eq!(
            got.iter().map(|f| f.0).collect::<Vec<_>>(),
            [3_000, 4_000, 5_000]
        );
        assert_eq!(got[0].2, vec![3u8; 100]);
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
            w.append(s * 1_000, b"frame", &keep).expect("append");
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
            w.append(i * 1_000, &frame, &keep).expect("append");
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
