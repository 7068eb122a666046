//! Disk signals: per mount point bytes and inodes (statvfs of each mount listed in
//! `<proc>/self/mounts`), and per block device I/O counters from `/proc/diskstats`.
//!
//! Metric keys: `disk.<mount>.{total_bytes,used_bytes,free_bytes,used_pct,inodes_total,
//! inodes_used,inodes_free,inodes_used_pct,ro}` (`ro`: 1 when the filesystem is read-only,
//! mounted so or remounted so by the kernel after an error, from statvfs's `ST_RDONLY`, the flag
//! `/proc/self/mounts` prints as `ro`) and `blk.<dev>.{reads,writes,read_bytes,
//! write_bytes,io_ms}` (counters) with `..._per_s` rates between two samples.

use super::parse::{bounded, num, ParseError, MAX_NAME, MAX_PATH};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One mounted filesystem worth watching.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mount {
    pub device: String,
    pub mount_point: String,
    pub fs_type: String,
}

/// Filesystems that hold no user data (or are always full, like squashfs): never reported.
pub const PSEUDO_FS: &[&str] = &[
    "proc",
    "sysfs",
    "cgroup",
    "cgroup2",
    "devpts",
    "mqueue",
    "debugfs",
    "tracefs",
    "securityfs",
    "pstore",
    "bpf",
    "configfs",
    "fusectl",
    "hugetlbfs",
    "autofs",
    "binfmt_misc",
    "nsfs",
    "devtmpfs",
    "rpc_pipefs",
    "efivarfs",
    "squashfs",
    "ramfs",
    "nfsd",
    "selinuxfs",
    "overlay_lower",
];

/// Undoes the octal escapes (`\040` for a space) the kernel writes in mount paths.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_mounts(file: &Path, text: &str) -> Result<Vec<Mount>, ParseError> {
    let mut mounts: Vec<Mount> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let mut it = line.split_ascii_whitespace();
        let (Some(dev), Some(mp), Some(fs)) = (it.next(), it.next(), it.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(ParseError::new(file, i + 1, "mount entry", "expected device, mount point and type"));
        };
        if PSEUDO_FS.contains(&fs) {
            continue;
        }
        // Bounded like every value playbooks see (a FUSE user names the device and picks the
        // mount point); a point longer than PATH_MAX fails statvfs and is reported.
        let mount_point = bounded(unescape(mp), MAX_PATH);
        // A later mount on the same point hides the earlier one.
        mounts.retain(|m| m.mount_point != mount_point);
        mounts.push(Mount { device: bounded(unescape(dev), MAX_NAME), mount_point, fs_type: bounded(fs.to_string(), MAX_NAME) });
    }
    Ok(mounts)
}

/// Space and inode figures of one mount, from statvfs.
pub fn statvfs_into(mount: &Mount, out: &mut BTreeMap<String, f64>) -> std::io::Result<()> {
    let s = rustix::fs::statvfs(mount.mount_point.as_str())?;
    let frsize = if s.f_frsize > 0 { s.f_frsize } else { s.f_bsize };
    let total = s.f_blocks.saturating_mul(frsize);
    let free_root = s.f_bfree.saturating_mul(frsize);
    let avail = s.f_bavail.saturating_mul(frsize);
    let used = total.saturating_sub(free_root);
    let p = format!("disk.{}", mount.mount_point);
    let (used_pct, inodes_used_pct) = used_pcts(&s);
    out.insert(format!("{p}.total_bytes"), total as f64);
    out.insert(format!("{p}.used_bytes"), used as f64);
    out.insert(format!("{p}.free_bytes"), avail as f64);
    out.insert(format!("{p}.used_pct"), used_pct);
    out.insert(format!("{p}.ro"), f64::from(u8::from(s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))));
    if let Some(pct) = inodes_used_pct {
        let iused = s.f_files.saturating_sub(s.f_ffree);
        out.insert(format!("{p}.inodes_total"), s.f_files as f64);
        out.insert(format!("{p}.inodes_used"), iused as f64);
        out.insert(format!("{p}.inodes_free"), s.f_ffree as f64);
        out.insert(format!("{p}.inodes_used_pct"), pct);
    }
    Ok(())
}

/// `used_pct` as df computes it (used / (used + available to non-root)) and `inodes_used_pct`
/// (none on a filesystem without an inode count), from one statvfs.
pub fn used_pcts(s: &rustix::fs::StatVfs) -> (f64, Option<f64>) {
    let frsize = if s.f_frsize > 0 { s.f_frsize } else { s.f_bsize };
    let used = s.f_blocks.saturating_sub(s.f_bfree).saturating_mul(frsize);
    let denom = used.saturating_add(s.f_bavail.saturating_mul(frsize));
    let pct = if denom == 0 { 0.0 } else { used as f64 * 100.0 / denom as f64 };
    let inodes = (s.f_files > 0).then(|| s.f_files.saturating_sub(s.f_ffree) as f64 * 100.0 / s.f_files as f64);
    (pct, inodes)
}

/// Cumulative counters of one block device.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct DiskCounters {
    pub reads: u64,
    pub read_sectors: u64,
    pub writes: u64,
    pub write_sectors: u64,
    pub io_ms: u64,
}

pub fn parse_diskstats(file: &Path, text: &str) -> Result<BTreeMap<String, DiskCounters>, ParseError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let f: Vec<&str> = line.split_ascii_whitespace().collect();
        if f.is_empty() {
            continue;
        }
        if f.len() < 14 {
            return Err(ParseError::new(file, n, "diskstats entry", format!("expected at least 14 columns, found {}", f.len())));
        }
        let name = f[2];
        let c = DiskCounters {
            reads: num(file, n, "reads completed", Some(f[3]))?,
            read_sectors: num(file, n, "sectors read", Some(f[5]))?,
            writes: num(file, n, "writes completed", Some(f[7]))?,
            write_sectors: num(file, n, "sectors written", Some(f[9]))?,
            io_ms: num(file, n, "time doing I/O", Some(f[12]))?,
        };
        // Idle loop and ram devices are noise on every host.
        if c.reads == 0 && c.writes == 0 && (name.starts_with("loop") || name.starts_with("ram")) {
            continue;
        }
        out.insert(name.to_string(), c);
    }
    Ok(out)
}

/// Counters and, with a previous reading `secs` ago, per-second rates.
pub fn diskstats_into(
    prev: Option<&BTreeMap<String, DiskCounters>>,
    cur: &BTreeMap<String, DiskCounters>,
    secs: f64,
    out: &mut BTreeMap<String, f64>,
) {
    for (dev, c) in cur {
        let p = format!("blk.{dev}");
        let vals = [
            ("reads", c.reads),
            ("writes", c.writes),
            ("read_bytes", c.read_sectors * 512),
            ("write_bytes", c.write_sectors * 512),
            ("io_ms", c.io_ms),
        ];
        for (k, v) in vals {
            out.insert(format!("{p}.{k}"), v as f64);
        }
        if let Some(old) = prev.and_then(|m| m.get(dev)).filter(|_| secs > 0.0) {
            let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
            out.insert(format!("{p}.reads_per_s"), rate(old.reads, c.reads));
            out.insert(format!("{p}.writes_per_s"), rate(old.writes, c.writes));
            out.insert(format!("{p}.read_bytes_per_s"), rate(old.read_sectors * 512, c.read_sectors * 512));
            out.insert(format!("{p}.write_bytes_per_s"), rate(old.write_sectors * 512, c.write_sectors * 512));
            // Share of wall time the device was busy, like iostat's %util.
            out.insert(format!("{p}.util_pct"), (rate(old.io_ms, c.io_ms) / 10.0).min(100.0));
        }
    }
}
