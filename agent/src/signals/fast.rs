//! The fast watch: cheap signals read between ticks, so that a change that matters wakes an
//! evaluation at once instead of at the next tick. Today: every mounted filesystem's usage,
//! one `statvfs` each (a few microseconds), every `signals.fast_interval_ms` (100 ms by default).
//! A mount whose `used_pct` or `inodes_used_pct` moved by at least `signals.fast_step_pct`
//! points since the last full sample (or since its last wake-up) wakes the playbooks that read
//! disks ([`Wake::DISK`]); the woken tick then samples everything as any tick does.
//!
//! With the eBPF tcp family loaded (the only source of TCP wake-ups), it also reads the `Tcp:`
//! counters of `/proc/net/snmp` at each check (one `pread` of an open file, ~20 µs) and keeps
//! the last [`TCP_READINGS`]. A tick woken by a retransmit burst takes its `tcp.*_per_s` and
//! `tcp.retrans_pct` over the window since the newest reading at least one interval before the
//! burst was seen (100 to 200 ms by default) instead of since the previous sample: a burst that
//! starts late in a second is then not diluted by the normal traffic before it
//! ([`FastWatch::tcp_before`]).
//!
//! It runs on a thread of its own: a filesystem that hangs `statvfs` stalls only this watch,
//! never the loop or the evaluation (network and FUSE filesystems are not watched at all).
//! The mounts and their last sampled usage come from the sampler after each sample
//! ([`FastWatch::baseline`]).

use super::wake::Wake;
use super::Snapshot;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// TCP counter readings (wall-clock ms, counters), oldest first.
type TcpReadings = Arc<Mutex<VecDeque<(i64, BTreeMap<String, f64>)>>>;

/// How many `/proc/net/snmp` readings are kept (1.6 s at the default interval).
pub const TCP_READINGS: usize = 16;

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
    /// The last TCP counter readings (wall-clock ms, counters), oldest first; empty when off.
    tcp: TcpReadings,
    every_ms: i64,
}

/// At most this many mounts are watched (the first in the mount table).
pub const MAX_WATCHED: usize = 256;

impl FastWatch {
    /// Starts the watch thread: every `every`, each mount whose usage moved by `step_pct` points
    /// or more calls `wake(Wake::DISK)` (once per check, whatever the number of mounts). With
    /// `snmp` (the path of `/proc/net/snmp`), the TCP counters are read at each check too.
    pub fn start(every: Duration, step_pct: f64, snmp: Option<PathBuf>, wake: impl Fn(Wake) + Send + 'static) -> std::io::Result<Self> {
        let mounts: Arc<Mutex<Vec<Watched>>> = Arc::default();
        let tcp: TcpReadings = Arc::default();
        let weak = Arc::downgrade(&mounts);
        let tcp_weak = Arc::downgrade(&tcp);
        let mut snmp = snmp.and_then(|p| std::fs::File::open(&p).ok().map(|f| (p, f)));
        let mut buf = vec![0u8; 16 * 1024];
        std::thread::Builder::new().name("medic-fast".into()).spawn(move || loop {
            std::thread::sleep(every);
            if let Some((path, file)) = &mut snmp {
                let Some(ring) = tcp_weak.upgrade() else { return };
                if let Some(counters) = read_tcp(path, file, &mut buf) {
                    if let Ok(mut r) = ring.lock() {
                        if r.len() >= TCP_READINGS {
                            r.pop_front();
                        }
                        r.push_back((crate::audit::now_ms(), counters));
                    }
                }
            }
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
        Ok(Self { mounts, tcp, every_ms: every.as_millis().min(i64::MAX as u128) as i64 })
    }

    /// The newest TCP counter reading taken at least one check interval before `ts_ms`, with its
    /// time: the start of a woken tick's TCP rate window. None when the TCP part is off or has
    /// no reading that old yet.
    pub fn tcp_before(&self, ts_ms: i64) -> Option<(i64, BTreeMap<String, f64>)> {
        let r = self.tcp.lock().ok()?;
        r.iter().rev().find(|(t, _)| *t <= ts_ms - self.every_ms).cloned()
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

/// One reading of the `Tcp:` counters: `pread` at offset 0 of the open file (procfs builds the
/// text anew at each read from the start). None when it cannot be read or parsed.
fn read_tcp(path: &std::path::Path, file: &std::fs::File, buf: &mut [u8]) -> Option<BTreeMap<String, f64>> {
    let n = rustix::io::pread(file, &mut *buf, 0).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    let mut out = BTreeMap::new();
    super::tcp::parse_snmp(path, text, &mut out).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_readings_are_kept_only_when_asked_and_the_window_is_at_least_one_interval() {
        let snmp = FastWatch::start(Duration::from_millis(20), 1.0, Some("/proc/net/snmp".into()), |_| {}).unwrap();
        let off = FastWatch::start(Duration::from_millis(20), 1.0, None, |_| {}).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let now = crate::audit::now_ms();
        let (t, counters) = snmp.tcp_before(now).expect("a reading at least 20 ms old");
        assert!(t <= now - 20 && t > now - 1000, "{t} vs {now}");
        assert!(counters.contains_key("tcp.out_segs") && counters.contains_key("tcp.retrans_segs"), "{counters:?}");
        assert!(snmp.tcp.lock().unwrap().len() <= TCP_READINGS);
        assert!(snmp.tcp_before(now - 60_000).is_none(), "none that old");
        assert!(off.tcp_before(now).is_none(), "off without a path");
    }
}
