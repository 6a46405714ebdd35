//! Pins under bpffs, so that a restarted `probe serve` (kill -9 included) carries on where the
//! previous one stopped: the maps that accumulate (exits, block IO, TCP, run queue) and the
//! links that keep the programs attached while no daemon runs.
//!
//! Layout: `ROOT/<layout>/maps/<MAP>` and `ROOT/<layout>/links/<generation>/<program>@<target>`.
//! `<layout>`
//! names the maps' shapes (type, key and value sizes, capacity) and [`LAYOUT_VERSION`]: a probe
//! whose maps differ finds another name, removes the old pins and starts fresh (and says so),
//! never reads a map it does not understand. One daemon at a time: `ROOT` is locked (flock).
//!
//! Taking over: a new daemon reuses the pinned maps (aya opens them instead of creating them),
//! loads its programs as the next generation, attaches them beside the old ones (inactive:
//! they return at once), hands over with one write of `ACTIVE_GENERATION`, then removes the old
//! links: no gap (detaching the last program of a tracepoint and attaching one again takes
//! milliseconds: a block or TCP load loses events in them) and nothing counted twice. A graceful
//! exit (SIGTERM) removes the links: nothing of
//! probe keeps running while no daemon does, except after a crash until the next start or
//! `probe unpin`.

use std::{
    collections::BTreeSet,
    fs::File,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use aya::programs::links::FdLink;
use probe_common::{
    block::{IO_MAP, STARTS_MAP, STATS_MAP as BLOCK_STATS_MAP, WRITERS_MAP},
    config::ACTIVE_MAP,
    cpu::{DEAD_MAP, EXIT_STATS_MAP},
    runq::{STATS_MAP as RUNQ_STATS_MAP, THREADS_MAP as RUNQ_THREADS_MAP},
    tcp::{LISTEN_MAP, RTT_MAP, SOCKETS_MAP, STATS_MAP as TCP_STATS_MAP, TRAFFIC_MAP},
};
use tracing::{info, warn};

/// The default pin directory (`--bpf.pin-path`).
pub const DEFAULT_ROOT: &str = "/sys/fs/bpf/probe";

/// Bump when a pinned map keeps its shape but changes meaning (a field reused, a unit changed):
/// the layout name changes with it and a new probe starts fresh instead of misreading.
pub const LAYOUT_VERSION: u32 = 1;

/// The maps kept across restarts: everything that accumulates or remembers (who owns a socket,
/// who dirtied a file, requests in flight). Not pinned: the remote-port set (rewritten at each
/// start from the flags) and the log buffer.
pub const PINNED_MAPS: &[&str] = &[
    ACTIVE_MAP,
    DEAD_MAP,
    EXIT_STATS_MAP,
    IO_MAP,
    STARTS_MAP,
    WRITERS_MAP,
    BLOCK_STATS_MAP,
    TRAFFIC_MAP,
    LISTEN_MAP,
    SOCKETS_MAP,
    RTT_MAP,
    TCP_STATS_MAP,
    RUNQ_THREADS_MAP,
    RUNQ_STATS_MAP,
];

/// The shape of one map as the kernel creates it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapShape {
    pub name: String,
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

/// The directory name for a set of map shapes: `v<LAYOUT_VERSION>-<crc32 of the shapes>`.
pub fn layout_name(shapes: &[MapShape]) -> String {
    let mut sorted: Vec<&MapShape> = shapes.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let mut h = crc32fast::Hasher::new();
    for s in sorted {
        h.update(
            format!(
                "{} {} {} {} {} {};",
                s.name, s.map_type, s.key_size, s.value_size, s.max_entries, s.flags
            )
            .as_bytes(),
        );
    }
    format!("v{LAYOUT_VERSION}-{:08x}", h.finalize())
}

/// Why pins could not be opened.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Another daemon holds them.
    Busy(String),
    /// Nothing can be pinned here (no bpffs, no permission).
    Other(String),
}

/// The pins of one running daemon.
#[derive(Debug)]
pub struct Pins {
    root: PathBuf,
    dir: PathBuf,
    /// flock on `root`, held while the daemon runs.
    _lock: File,
    /// Generations of links a previous daemon left (directories under `links/`).
    old_generations: BTreeSet<u32>,
    /// This daemon's generation (its links go under `links/<generation>/`).
    generation: u32,
    /// Whether pinned maps were found (a previous daemon's), i.e. this is a restart.
    pub reused: bool,
    /// What happened, for the log and `probe check`.
    pub notes: Vec<String>,
}

impl Pins {
    /// Locks `root`, removes pins of other layouts, and lists the links of a previous daemon.
    pub fn open(root: &Path, layout: &str) -> Result<Self, OpenError> {
        std::fs::create_dir_all(root).map_err(|e| {
            OpenError::Other(format!(
                "cannot create {}: {e} (is bpffs mounted at its parent?)",
                root.display()
            ))
        })?;
        let lock = File::open(root)
            .map_err(|e| OpenError::Other(format!("cannot open {}: {e}", root.display())))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(OpenError::Busy(format!(
                "another probe serve uses the pins in {} (stop it, or give this one another --bpf.pin-path)",
                root.display()
            )));
        }
        Self::open_locked(root, layout, lock).map_err(OpenError::Other)
    }

    fn open_locked(root: &Path, layout: &str, lock: File) -> Result<Self, String> {
        let mut notes = Vec::new();
        for entry in read_dir_names(root)? {
            if entry != layout && is_layout_name(&entry) {
                let old = root.join(&entry);
                remove_pins(&old).map_err(|e| format!("cannot remove {}: {e}", old.display()))?;
                let note = format!(
                    "pinned maps in {} have another layout (probe upgraded, or map sizes changed): removed, counting from zero",
                    old.display()
                );
                warn!("{note}");
                notes.push(note);
            }
        }
        let dir = root.join(layout);
        let maps = dir.join("maps");
        let links = dir.join("links");
        let reused = read_dir_names(&maps).is_ok_and(|names| !names.is_empty());
        for d in [&maps, &links] {
            std::fs::create_dir_all(d)
                .map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        }
        let mut old_generations = BTreeSet::new();
        let mut old_links = 0;
        for name in read_dir_names(&links)? {
            match name.parse::<u32>() {
                Ok(g) => {
                    old_links += read_dir_names(&links.join(&name)).map_or(0, |l| l.len());
                    old_generations.insert(g);
                }
                // Not ours: leave it.
                Err(_) => {
                    warn!(path = %links.join(&name).display(), "unexpected entry in the pin directory")
                }
            }
        }
        if reused {
            let note = format!(
                "taking over from a previous daemon: maps in {}, {old_links} links still attached",
                maps.display(),
            );
            info!("{note}");
            notes.push(note);
        }
        Ok(Self {
            root: root.to_path_buf(),
            dir,
            _lock: lock,
            old_generations,
            generation: 0,
            reused,
            notes,
        })
    }

    pub fn generation(&self) -> u32 {
        self.generation
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where map `name` is pinned.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    fn link_path(&self, key: &str) -> PathBuf {
        self.dir
            .join("links")
            .join(self.generation.to_string())
            .join(key)
    }

    /// Whether a previous daemon's programs are still attached (then the new ones attach
    /// inactive and take over at [`Pins::release_rest`]).
    pub fn has_old_links(&self) -> bool {
        !self.old_generations.is_empty()
    }

    /// Chooses this daemon's generation: above the active one (`active`, read from the pinned
    /// map) and above any left in `links/` (a daemon that died mid-handover), never 0 (the
    /// generation of programs loaded without pins).
    pub fn choose_generation(&mut self, active: u32) -> u32 {
        let top = self
            .old_generations
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .max(active);
        self.generation = top.wrapping_add(1).max(1);
        self.generation
    }

    /// Pins a link of this daemon under `key`, so the program stays attached if the daemon dies.
    pub fn keep(&mut self, key: &str, link: FdLink) -> Result<(), String> {
        let path = self.link_path(key);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let _ = std::fs::remove_file(&path);
        link.pin(&path)
            .map(drop)
            .map_err(|e| format!("cannot pin link {}: {e}", path.display()))
    }

    /// Removes a link this daemon pinned (it detaches: this daemon holds no other reference).
    pub fn unkeep(&mut self, key: &str) {
        let _ = std::fs::remove_file(self.link_path(key));
    }

    /// Detaches the previous daemons' programs (after the handover to this one's).
    pub fn release_old(&mut self) {
        for g in std::mem::take(&mut self.old_generations) {
            let dir = self.dir.join("links").join(g.to_string());
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                warn!(path = %dir.display(), error = %e, "cannot detach a previous daemon's programs");
            }
        }
    }

    /// Graceful exit: detaches every program (their links go), keeps the maps.
    pub fn detach_all(&self) {
        let links = self.dir.join("links");
        for name in read_dir_names(&links).unwrap_or_default() {
            let _ = std::fs::remove_dir_all(links.join(name));
        }
    }

    /// The kernel ids of the pinned maps (a saved state belongs to exactly these maps).
    pub fn map_ids(&self) -> Vec<(String, u32)> {
        let mut ids: Vec<(String, u32)> = PINNED_MAPS
            .iter()
            .filter_map(|name| {
                let info = aya::maps::MapInfo::from_pin(self.map_path(name)).ok()?;
                Some(((*name).to_string(), info.id()))
            })
            .collect();
        ids.sort();
        ids
    }
}

/// Whether a directory name is one of probe's layouts (`v<N>-<8 hex digits>`): only those are
/// ever removed, so a pin path shared with other software (even bpffs' root) loses nothing else.
pub fn is_layout_name(name: &str) -> bool {
    let Some((v, hex)) = name.split_once('-') else {
        return false;
    };
    v.len() > 1
        && v.starts_with('v')
        && v[1..].bytes().all(|b| b.is_ascii_digit())
        && hex.len() == 8
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    Ok(names)
}

/// Removes one layout's pins: links first (their programs detach), then maps.
fn remove_pins(dir: &Path) -> std::io::Result<()> {
    let links = dir.join("links");
    if links.is_dir() {
        std::fs::remove_dir_all(&links)?;
    }
    if dir.is_dir() {
        std::fs::remove_dir_all(dir)?;
    } else if dir.exists() {
        std::fs::remove_file(dir)?;
    }
    Ok(())
}

/// `probe unpin`: detaches every program probe left attached and removes its maps and saved
/// state. Refuses while a daemon holds the pins. Returns what was removed.
pub fn unpin(root: &Path, state: Option<&Path>) -> Result<Vec<PathBuf>, String> {
    let mut removed = Vec::new();
    if root.exists() {
        let lock = File::open(root).map_err(|e| format!("cannot open {}: {e}", root.display()))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(format!(
                "a probe serve is running with the pins in {}: stop it first",
                root.display()
            ));
        }
        for name in read_dir_names(root)? {
            if !is_layout_name(&name) {
                continue; // not probe's
            }
            let p = root.join(name);
            remove_pins(&p).map_err(|e| format!("cannot remove {}: {e}", p.display()))?;
            removed.push(p);
        }
        // Only if nothing else is in it (and it is not a mount point, which fails).
        if std::fs::remove_dir(root).is_ok() {
            removed.push(root.to_path_buf());
        }
    }
    if let Some(state) = state {
        match std::fs::remove_file(state) {
            Ok(()) => removed.push(state.to_path_buf()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot remove {}: {e}", state.display())),
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(name: &str, max: u32) -> MapShape {
        MapShape {
            name: name.into(),
            map_type: 1,
            key_size: 16,
            value_size: 64,
            max_entries: max,
            flags: 0,
        }
    }

    #[test]
    fn layout_name_follows_shapes_not_order() {
        let a = layout_name(&[shape("A", 10), shape("B", 20)]);
        assert!(is_layout_name(&a), "{a}");
        for not in [
            "v1",
            "v-0000000a",
            "vx-0000000a",
            "v1-000000zz",
            "cilium",
            "v1-0000000a0",
        ] {
            assert!(!is_layout_name(not), "{not}");
        }
        assert_eq!(a, layout_name(&[shape("B", 20), shape("A", 10)]));
        assert_ne!(a, layout_name(&[shape("A", 10), shape("B", 21)]));
        assert!(a.starts_with(&format!("v{LAYOUT_VERSION}-")), "{a}");
    }

    #[test]
    fn generations_go_above_the_active_one_and_any_left_behind() {
        let dir = std::env::temp_dir().join(format!("probe-pins-gen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for g in ["3", "5"] {
            std::fs::create_dir_all(dir.join("v1-00000000/links").join(g)).expect("mkdir");
        }
        std::fs::create_dir_all(dir.join("v1-0000000a/maps")).expect("mkdir");
        std::fs::create_dir_all(dir.join("someone-else")).expect("mkdir");
        let mut p = Pins::open(&dir, "v1-00000000").expect("open");
        assert!(
            !dir.join("v1-0000000a").exists(),
            "another layout's pins were kept"
        );
        assert!(
            dir.join("someone-else").exists(),
            "a directory not probe's was removed"
        );
        assert!(
            p.notes.iter().any(|n| n.contains("another layout")),
            "{:?}",
            p.notes
        );
        assert!(p.has_old_links());
        assert_eq!(p.choose_generation(4), 6, "above generation 5 left behind");
        assert_eq!(p.choose_generation(9), 10, "above the active one");
        assert_eq!(p.choose_generation(u32::MAX), 1, "wraps, never to 0");
        p.release_old();
        assert!(!p.has_old_links());
        assert!(
            !dir.join("v1-00000000/links/3").exists() && !dir.join("v1-00000000/links/5").exists()
        );
        drop(p);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unpin_of_nothing_removes_nothing() {
        let dir = std::env::temp_dir().join(format!("probe-unpin-test-{}", std::process::id()));
        assert_eq!(unpin(&dir, None), Ok(vec![]));
    }

    #[test]
    fn unpin_removes_layouts_and_state_and_respects_the_lock() {
        let dir = std::env::temp_dir().join(format!("probe-unpin-lock-{}", std::process::id()));
        let state = dir.with_extension("state");
        std::fs::create_dir_all(dir.join("v1-00000000/links")).expect("mkdir");
        std::fs::write(&state, b"x").expect("state");
        let held = Pins::open(&dir, "v1-00000000").expect("open");
        assert!(
            unpin(&dir, Some(&state)).is_err(),
            "unpin while a daemon holds the pins"
        );
        drop(held);
        let removed = unpin(&dir, Some(&state)).expect("unpin");
        assert!(
            removed.contains(&state) && removed.contains(&dir),
            "{removed:?}"
        );
        assert!(!dir.exists() && !state.exists());
    }
}
