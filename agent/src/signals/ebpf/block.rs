//! block family (ebpf/block.bpf.c): request latency per device, errors and bytes.
//!
//! Metric keys: `ebpf.blk.<dev>.completions`, `.errors`, `.bytes` (counters since load);
//! `ebpf.blk.<dev>.p50_us`, `.p99_us` (over the last interval); `ebpf.blk.unmatched`
//! (completions without an issue stamp: in flight at load, or evicted from the 4,096-entry
//! `issued` map) and `ebpf.blk.devices_full` (completions of a device past 256), since load.

use super::abi::{BlkStats, Hist};
use super::why;
use super::{attach_btf, kernel_btf, take};
use crate::signals::Snapshot;
use aya::maps::{HashMap as BpfHash, MapData};
use std::collections::HashMap;

pub struct Block {
    _bpf: aya::Ebpf,
    stats: BpfHash<MapData, u32, BlkStats>,
    counters: aya::maps::Array<MapData, u64>,
    prev: HashMap<u32, Hist>,
    names: HashMap<u32, String>,
}

/// The kernel's dev_t (major << 20 | minor) to a device name, from /sys/dev/block.
pub fn dev_name(dev: u32) -> String {
    let (major, minor) = (dev >> 20, dev & 0xfffff);
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("DEVNAME=").map(str::to_string)))
        .unwrap_or_else(|| format!("{major}:{minor}"))
}

impl Block {
    pub fn load() -> Result<Self, String> {
        Self::load_with(&kernel_btf()?)
    }

    /// As [`load`](Self::load), with the kernel's BTF parsed once by the caller.
    pub fn load_with(btf: &aya::Btf) -> Result<Self, String> {
        let mut bpf = aya::EbpfLoader::new().btf(Some(btf)).load(super::BLOCK_OBJ).map_err(|e| format!("load: {}", why(e)))?;
        attach_btf(&mut bpf, btf, "blk_issue", "block_rq_issue")?;
        attach_btf(&mut bpf, btf, "blk_complete", "block_rq_complete")?;
        Ok(Self {
            stats: take(&mut bpf, "blk_stats")?,
            counters: take(&mut bpf, "blk_counters")?,
            _bpf: bpf,
            prev: HashMap::new(),
            names: HashMap::new(),
        })
    }

    pub fn sample(&mut self, snap: &mut Snapshot) -> Result<(), String> {
        for (i, key) in [(super::abi::BLK_UNMATCHED, "ebpf.blk.unmatched"), (super::abi::BLK_DEVICES_FULL, "ebpf.blk.devices_full")] {
            snap.metrics.insert(key.into(), self.counters.get(&i, 0).unwrap_or(0) as f64);
        }
        for (dev, s) in self.stats.iter().flatten() {
            let name = self.names.entry(dev).or_insert_with(|| dev_name(dev)).clone();
            let p = format!("ebpf.blk.{name}");
            snap.metrics.insert(format!("{p}.completions"), s.lat_us.total() as f64);
            snap.metrics.insert(format!("{p}.errors"), s.errors as f64);
            snap.metrics.insert(format!("{p}.bytes"), s.bytes as f64);
            let prev = self.prev.insert(dev, s.lat_us).unwrap_or_default();
            let d = s.lat_us.minus(&prev);
            if let Some(v) = d.percentile(50.0) {
                snap.metrics.insert(format!("{p}.p50_us"), v);
            }
            if let Some(v) = d.percentile(99.0) {
                snap.metrics.insert(format!("{p}.p99_us"), v);
            }
        }
        Ok(())
    }
}
