//! sched family (ebpf/sched.bpf.c): run-queue latency from the kernel's own sched_info stamps,
//! every wait node-wide and sampled tasks per cgroup (see the C file for why and what it
//! costs).
//!
//! Metric keys (per interval between two samples): `ebpf.runq.p50_us`, `ebpf.runq.p99_us`,
//! `ebpf.runq.waits_per_s`; per cgroup (sampled)
//! `ebpf.runq.cgroup.<id>.p99_us` and, where the cgroup is a unit's,
//! `ebpf.runq.unit.<unit>.p99_us`. `Snapshot::ebpf_runq` lists every cgroup seen, with its
//! interval and since-load percentiles.
//!
//! Hot processes: the C program reports a process that ran for at least `cpu_hot_pct` % of a
//! core over its 100 ms window (`sched_events`); each report wakes an evaluation and, at the
//! next sample, is that process's `cpu_pct` (the share over the scheduler's window, the latest
//! and most precise figure there is; see docs/SIGNALS.md). `ebpf.sched.events_dropped` counts
//! reports a full ring lost.

use super::abi::{Hist, HIST_SLOTS};
use super::cgroups::CgroupNames;
use super::{why, EbpfConfig};
use crate::signals::Snapshot;
use aya::maps::{Array, HashMap as BpfHash, MapData, PerCpuArray, RingBuf};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Run-queue latency of one cgroup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunqEntry {
    pub cgroup: u64,
    pub path: Option<String>,
    pub unit: Option<String>,
    /// Over the last interval (None when no sampled wait ended in it).
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// Since the family was loaded.
    pub total_p99_us: Option<f64>,
    pub total_samples: u64,
}

pub struct Sched {
    _bpf: aya::Ebpf,
    epoch: Array<MapData, u32>,
    epoch_value: u32,
    node: PerCpuArray<MapData, u64>,
    cgroup: BpfHash<MapData, u64, Hist>,
    prev_node: Hist,
    prev_cgroup: HashMap<u64, Hist>,
    prev_ts: i64,
    events: RingBuf<MapData>,
    dropped: PerCpuArray<MapData, u64>,
    /// Hot reports since the last sample: tgid → share of a core in %.
    hot: HashMap<u32, f64>,
}

/// At most this many hot reports are kept between two samples (a report for a process not in
/// the next sample is dropped with the rest).
const MAX_HOT: usize = 4096;

impl Sched {
    pub fn load(cfg: &EbpfConfig) -> Result<Self, String> {
        Self::load_with(cfg, &super::kernel_btf()?)
    }

    /// As [`load`](Self::load), with the kernel's BTF parsed once by the caller.
    pub fn load_with(cfg: &EbpfConfig, btf: &aya::Btf) -> Result<Self, String> {
        let every = cfg.sched_sample_every.max(1).next_power_of_two();
        let mask: u32 = every - 1;
        let mut bpf = aya::EbpfLoader::new()
            .btf(Some(btf))
            .override_global("sample_mask", &mask, true)
            .override_global("hot_permille", &(cfg.cpu_hot_pct.clamp(1, 100) * 10), true)
            .load(super::SCHED_OBJ)
            .map_err(|e| format!("load: {}", why(e)))?;
        super::attach_btf(&mut bpf, btf, "runq_switch", "sched_switch")?;
        super::attach_btf(&mut bpf, btf, "cpu_runtime", "sched_stat_runtime")?;
        Ok(Self {
            events: super::take(&mut bpf, "sched_events")?,
            dropped: super::take(&mut bpf, "sched_dropped")?,
            hot: HashMap::new(),
            epoch: super::take(&mut bpf, "epoch")?,
            node: super::take(&mut bpf, "runq_node")?,
            cgroup: super::take(&mut bpf, "runq_cgroup")?,
            _bpf: bpf,
            epoch_value: 0,
            prev_node: Hist::default(),
            prev_cgroup: HashMap::new(),
            prev_ts: 0,
        })
    }

    /// A duplicate of the event ring's fd (readable when a process became hot).
    pub fn event_fd(&self) -> Option<std::os::fd::OwnedFd> {
        use std::os::fd::AsFd;
        self.events.as_fd().try_clone_to_owned().ok()
    }

    /// Takes the pending hot reports, keeping each process's latest for the next sample.
    pub fn drain(&mut self) -> Vec<super::abi::Event> {
        let events = super::drain_ring(&mut self.events);
        for e in &events {
            if e.kind == super::abi::EV_CPU_HOT && (self.hot.len() < MAX_HOT || self.hot.contains_key(&e.tgid)) {
                self.hot.insert(e.tgid, e.value as f64 / 10.0);
            }
        }
        events
    }

    /// Gives each process reported hot since the last sample the share the scheduler measured.
    fn apply_hot(&mut self, snap: &mut Snapshot) {
        // Reports still in the ring (the loop drains it only between evaluations) count too.
        self.drain();
        if self.hot.is_empty() {
            return;
        }
        for p in &mut snap.processes {
            if let Some(pct) = u32::try_from(p.pid).ok().and_then(|pid| self.hot.get(&pid)) {
                p.cpu_pct = Some(*pct);
            }
        }
        self.hot.clear();
    }

    fn node_hist(&self) -> Hist {
        let mut h = Hist::default();
        for i in 0..HIST_SLOTS {
            h.slots[i] = super::percpu_sum(&self.node, i as u32);
        }
        h
    }

    pub fn sample(&mut self, snap: &mut Snapshot, names: &mut CgroupNames) -> Result<(), String> {
        self.apply_hot(snap);
        snap.metrics.insert("ebpf.sched.events_dropped".into(), super::percpu_sum(&self.dropped, 0) as f64);
        // Follow another slice of the tasks from now on.
        self.epoch_value = self.epoch_value.wrapping_add(1);
        self.epoch.set(0, self.epoch_value, 0).map_err(|e| format!("epoch: {}", why(e)))?;
        names.tick();
        let secs = if self.prev_ts > 0 { (snap.ts_ms - self.prev_ts) as f64 / 1000.0 } else { 0.0 };
        self.prev_ts = snap.ts_ms;
        let node = self.node_hist();
        let d = node.minus(&self.prev_node);
        self.prev_node = node;
        if let Some(p) = d.percentile(50.0) {
            snap.metrics.insert("ebpf.runq.p50_us".into(), p);
        }
        if let Some(p) = d.percentile(99.0) {
            snap.metrics.insert("ebpf.runq.p99_us".into(), p);
        }
        if secs > 0.0 {
            snap.metrics.insert("ebpf.runq.waits_per_s".into(), d.total() as f64 / secs);
        }
        let mut entries = Vec::new();
        for (id, h) in self.cgroup.iter().flatten() {
            let prev = self.prev_cgroup.insert(id, h).unwrap_or_default();
            let d = h.minus(&prev);
            let unit = names.unit(id);
            let e = RunqEntry {
                cgroup: id,
                path: names.path(id),
                unit: unit.clone(),
                p50_us: d.percentile(50.0),
                p99_us: d.percentile(99.0),
                total_p99_us: h.percentile(99.0),
                total_samples: h.total(),
            };
            if let Some(p) = e.p99_us {
                snap.metrics.insert(format!("ebpf.runq.cgroup.{id}.p99_us"), p);
                if let Some(u) = unit {
                    snap.metrics.insert(format!("ebpf.runq.unit.{u}.p99_us"), p);
                }
            }
            entries.push(e);
        }
        entries.sort_by_key(|e| e.cgroup);
        snap.ebpf_runq = entries;
        Ok(())
    }
}
