//! cgroup v2 ids to paths. The kernel programs report a cgroup by id (the inode number of its
//! directory); instance rules need its path. Paths are learnt from /proc/<pid>/cgroup as
//! processes are read, and an id nobody reported is looked up by walking the cgroup2 mount
//! (at most once per collection).

use std::{
    collections::HashMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

/// Deepest cgroup tree walked.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Default)]
pub struct CgroupPaths {
    mount: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    walked_this_round: bool,
}

impl CgroupPaths {
    pub fn new(mount: Option<PathBuf>) -> Self {
        Self {
            mount,
            by_id: HashMap::new(),
            walked_this_round: false,
        }
    }

    /// Start of a collection: allows one more walk.
    pub fn new_round(&mut self) {
        self.walked_this_round = false;
    }

    pub fn learn(&mut self, id: u64, path: &str) {
        if id != 0 && !self.by_id.contains_key(&id) {
            self.by_id.insert(id, path.to_string());
        }
    }

    pub fn get(&mut self, id: u64) -> Option<String> {
        if id == 0 {
            return None;
        }
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        if !self.walked_this_round {
            self.walked_this_round = true;
            if let Some(mount) = self.mount.clone() {
                self.by_id.clear();
                walk(&mount, &mount, 0, &mut self.by_id);
            }
        }
        self.by_id.get(&id).cloned()
    }
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut HashMap<u64, String>) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let rel = dir
        .strip_prefix(root)
        .map(|r| format!("/{}", r.to_string_lossy()))
        .unwrap_or_default();
    out.insert(meta.ino(), rel);
    if depth >= MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            walk(root, &entry.path(), depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_a_directory_tree_into_relative_paths() {
        let root = std::env::temp_dir().join(format!("probe-cg-{}", std::process::id()));
        std::fs::create_dir_all(root.join("system.slice/a.service")).expect("mkdir");
        let ino = std::fs::metadata(root.join("system.slice/a.service"))
            .expect("stat")
            .ino();
        let mut paths = CgroupPaths::new(Some(root.clone()));
        assert_eq!(paths.get(ino).as_deref(), Some("/system.slice/a.service"));
        let root_ino = std::fs::metadata(&root).expect("stat").ino();
        assert_eq!(paths.get(root_ino).as_deref(), Some("/"));
        // Unknown ids do not trigger a second walk in the same round.
        assert_eq!(paths.get(u64::MAX), None);
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[test]
    fn learnt_paths_win() {
        let mut paths = CgroupPaths::new(None);
        paths.learn(42, "/kubepods.slice/x.scope");
        assert_eq!(paths.get(42).as_deref(), Some("/kubepods.slice/x.scope"));
        assert_eq!(paths.get(0), None);
    }
}
