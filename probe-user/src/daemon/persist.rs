//! Carrying on across restarts: the accounts saved at every collection and restored at start
//! (see [`crate::state`]).

use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{limits, Daemon};
use crate::model::accounts::Accounts;

impl Daemon {
    /// Carries on from a previous daemon's saved accounts, if they belong to the pinned maps
    /// this one reuses; then deletes what that daemon credited but did not delete.
    pub(super) fn restore(&mut self, reused: bool) {
        let (true, Some(path)) = (self.pinned, self.opts.state_file.clone()) else {
            return;
        };
        let saved = match crate::state::load(&path) {
            Ok(Some(saved)) => saved,
            Ok(None) => {
                if reused {
                    info!(file = %path.display(), "no saved accounts: instance counters start from zero (the kernel maps' totals are kept)");
                }
                return;
            }
            Err(e) => {
                warn!(file = %path.display(), "saved accounts not used, counting from zero: {e}");
                return;
            }
        };
        if let Some(why) = crate::state::mismatch(&saved, &self.map_ids, &self.boot_id) {
            warn!(file = %path.display(), "saved accounts not used, counting from zero: {why}");
            return;
        }
        let crate::state::Saved {
            epoch_mono_ns,
            mut accounts,
            meta,
            pending,
            ..
        } = saved;
        accounts.set_limits(limits(self.opts.top_k, &self.opts.rules));
        accounts.set_tau(self.opts.rank_tau_secs);
        let (procs, instances) = accounts.sizes();
        self.ledger.accounts = accounts;
        self.ledger.meta = meta.into_iter().collect();
        self.epoch_mono_ns = epoch_mono_ns;
        let since =
            Duration::from_nanos(crate::state::monotonic_ns().saturating_sub(epoch_mono_ns));
        self.started = Instant::now()
            .checked_sub(since)
            .unwrap_or_else(Instant::now);
        self.collector.forget_pending(&pending);
        self.stats.restored = true;
        info!(file = %path.display(), processes = procs, instances, "carrying on from the previous daemon's accounts");
    }

    /// Saves the accounts with the deletions about to follow (see [`crate::state::Pending`]).
    pub(super) fn save(&mut self, pending: crate::state::Pending) {
        let (true, Some(path)) = (self.pinned, &self.opts.state_file) else {
            return;
        };
        let saved = crate::state::Saved {
            maps: self.map_ids.clone(),
            boot_id: self.boot_id.clone(),
            epoch_mono_ns: self.epoch_mono_ns,
            accounts: std::mem::replace(&mut self.ledger.accounts, Accounts::new(0.0)),
            meta: self
                .ledger
                .meta
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            pending,
        };
        let written = crate::state::encode(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| crate::state::write(path, &bytes));
        self.ledger.accounts = saved.accounts;
        if let Err(e) = written {
            if self.stats.state_save_failures == 0 {
                warn!(file = %path.display(), error = %e, "cannot save the accounts: a restart will count from zero (further failures are only counted)");
            }
            self.stats.state_save_failures += 1;
        }
    }
}
