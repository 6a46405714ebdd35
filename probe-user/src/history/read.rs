//! Reading history: the frames of a time window, decoded, with clear errors for a window
//! outside what is stored.

use std::path::{Path, PathBuf};

use super::{
    store::{Store, StoreError},
    time, Decoder, Frame,
};

pub struct History {
    store: Store,
    dir: PathBuf,
}

impl History {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            store: Store::open_read(dir)?,
            dir: dir.to_owned(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// First and last frame times; an error if there is no frame.
    pub fn range(&self) -> anyhow::Result<(i64, i64)> {
        self.store.range()?.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: the history holds no frame yet (probe serve writes one per collection)",
                self.dir.display()
            )
        })
    }

    /// A window that is backwards or misses the stored range is an error saying what is
    /// stored, not an empty answer.
    pub fn check_window(&self, begin_ms: i64, end_ms: i64) -> anyhow::Result<()> {
        if begin_ms > end_ms {
            anyhow::bail!(
                "--begin ({}) is after --end ({})",
                time::show_local(begin_ms),
                time::show_local(end_ms)
            );
        }
        let (first, last) = self.range()?;
        if end_ms < first || begin_ms > last {
            anyhow::bail!(
                "nothing recorded between {} and {}: {} holds {} to {}",
                time::show_local(begin_ms),
                time::show_local(end_ms),
                self.dir.display(),
                time::show_local(first),
                time::show_local(last)
            );
        }
        Ok(())
    }

    /// Calls `f` with each frame of the window in time order, one decoded at a time (a long
    /// window is not held in memory), until it says false; returns how many could not be
    /// read.
    pub fn each(
        &self,
        begin_ms: i64,
        end_ms: i64,
        mut f: impl FnMut(Frame) -> bool,
    ) -> anyhow::Result<usize> {
        let mut decoder = Decoder::default();
        let mut damaged = 0;
        self.store.each_frame(begin_ms, end_ms, |f0| {
            let in_window = f0.t_ms >= begin_ms;
            if f0.format != super::store::FORMAT {
                damaged += usize::from(in_window);
                decoder = Decoder::default();
                return true;
            }
            match decoder.decode(f0.t_ms, f0.base_ms, &f0.data) {
                Ok(Some(frame)) if in_window => return f(frame),
                Ok(Some(_)) => {}
                // A delta whose chain is broken by a damaged frame before it.
                Ok(None) => damaged += usize::from(in_window),
                Err(_) => {
                    damaged += usize::from(in_window);
                    decoder = Decoder::default();
                }
            }
            true
        })?;
        Ok(damaged)
    }

    /// The frame at or before `t_ms` (the moment `probe top --at` shows), and the frame times
    /// on both sides of it.
    pub fn around(&self, t_ms: i64) -> anyhow::Result<(Option<i64>, Option<i64>)> {
        Ok(self.store.around(t_ms)?)
    }
}
