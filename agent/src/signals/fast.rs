//! The fast watch: cheap signals read between ticks, so that a change that matters wakes an
//! evaluation at once instead of at the next tick. Today: every mounted filesystem's usage,
//! one `statvfs` each (a few microseconds), every `signals.fast_interval_ms` (100 ms by default).
//! A mount whose `used_pct` or `inodes_used_pct` moved by at least `signals.fast_step_pct`
//! points since the last full sample (or since its last wake-up) wakes the playbooks that read
//! disks ([`Wake::DISK`]); the woken tick then samples everything as any tick does.
//!
//! It runs on a thread of its own: a filesystem that hangs `statvfs` stalls only this watch,
//! never the loop or the evaluation (network and FUSE filesystems are not watched at all).
//! The mounts and their last sampled usage come from the sampler after each sample
//! ([`FastWatch::baseline`]).

use super::wake::Wake;
use super::Snapshot;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Filesystem types never watched here: a `statvfs` on them can block on the network.
const REMOTE_FS: &[&str] = &["nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "9p", "afs", "lustre", "sshfs"];

/// One watched mount: its path and the usage a wake-up is measured from.
#[derive(Debug, Clone, PartialEq)]
struct Watched {
    path: String,
    used_pct: f64,
    inodes_used_pct: Option<f64>,
}

/// The handle the sampler updates; the thread ends when the last handle is dropped.
#[derive(Clone)]
pub struct FastWatch {
    mounts: Arc<Mutex<Vec<Watched>>>,
}

/// At most this many mounts are watched (the first in the mount table).
pub const MAX_WATCHED: usize = 256;

impl FastWatch {
    /// Starts the watch thread: every `every`, each mount whose usage moved by `step_pct` points
    /// or more calls `wake(Wake::DISK)` (once per check, whatever the number of mounts).
    pub fn start(every: Duration, step_pct: f64, wake: impl Fn(Wake) + Send + 'static) -> std::io::Result<Self> {
        let mounts: Arc<Mutex<Vec<Watched>>> = Arc::default();
        let weak = Arc::downgrade(&mounts);
        std::thread::Builder::new().name("medic-fast".into()).spawn(move || loop {
            std::thread::sleep(every);
            let Some(shared) = weak.upgrade() else { return };
            let list = shared.lock().map(|m| m.clone()).unwrap_or_default();
            drop(shared);
            let mut moved = Vec::new();
            for m in &list {
                let Ok(s) = rustix::fs::statvfs(m.path.as_str()) else { continue };
                let (pct, inodes) = super::disk::used_pcts(&s);
                let far = |a: f64, b: f64| (a - b).abs() >= step_pct;
                if far(pct, m.used_pct) || matches!((inodes, m.inodes_used_pct), (Some(a), Some(b)) if far(a, b)) {
                    moved.push(Watched { path: m.path.clone(), used_pct: pct, inodes_used_pct: inodes });
                }
            }
            if moved.is_empty() {
                continue;
            }
            // The new usage is the base of the next wake-up, until a full sample resets it.
            if let Some(shared) = weak.upgrade() {
                if let Ok(mut cur) = shared.lock() {
                    for w in &moved {
                        if let Some(m) = cur.iter_mut().find(|m| m.path == w.path) {
                            *m = w.clone();
                        }
                    }
                }
            }
            wake(Wake::DISK);
        })?;
        Ok(Self { mounts })
    }

    /// The mounts and their usage as `snap` sampled them: what the next wake-up is measured
    /// from.
    pub fn baseline(&self, snap: &Snapshot) {
        let list: Vec<Watched> = snap
            .mounts
            .iter()
            .filter(|m| !REMOTE_FS.contains(&m.fs_type.as_str()) && !m.fs_type.starts_with("fuse"))
            .filter_map(|m| {
                let used_pct = snap.metric(&format!("disk.{}.used_pct", m.mount_point))?;
                let inodes_used_pct = snap.metric(&format!("disk.{}.inodes_used_pct", m.mount_point));
                Some(Watched { path: m.mount_point.clone(), used_pct, inodes_used_pct })
            })
            .take(MAX_WATCHED)
            .collect();
        if let Ok(mut m) = self.mounts.lock() {
            *m = list;
        }
    }
}
