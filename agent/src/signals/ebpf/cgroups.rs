//! Maps cgroup v2 ids (the kernfs inode number of a cgroup's directory, what the eBPF programs
//! report) to cgroup paths and systemd units, by walking the cgroup2 mount. Cached; refreshed
//! when an unknown id shows up (at most once per sample).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Default)]
pub struct CgroupNames {
    root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    refreshed: bool,
}

fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() > 2 && f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
    })
}

fn walk(dir: &Path, rel: &str, out: &mut HashMap<u64, String>, depth: usize) {
    if let Ok(m) = std::fs::metadata(dir) {
        out.insert(m.ino(), if rel.is_empty() { "/".into() } else { rel.to_string() });
    }
    if depth > 12 {
        return;
    }
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let name = e.file_name().to_string_lossy().into_owned();
            walk(&e.path(), &format!("{rel}/{name}"), out, depth + 1);
        }
    }
}

impl CgroupNames {
    /// Call once per sample before lookups.
    pub fn tick(&mut self) {
        self.refreshed = false;
    }

    /// The cgroup path (e.g. `/system.slice/nginx.service`) of `id`.
    pub fn path(&mut self, id: u64) -> Option<String> {
        if !self.by_id.contains_key(&id) && !self.refreshed {
            self.refreshed = true;
            if self.root.is_none() {
                self.root = cgroup2_root();
            }
            if let Some(root) = &self.root {
                let mut m = HashMap::new();
                walk(root, "", &mut m, 0);
                self.by_id = m;
            }
        }
        self.by_id.get(&id).cloned()
    }

    /// The systemd unit owning cgroup `id`, if its path names one.
    pub fn unit(&mut self, id: u64) -> Option<String> {
        let p = self.path(id)?;
        p.rsplit('/').find(|c| c.ends_with(".service") || c.ends_with(".scope")).map(str::to_string)
    }
}
