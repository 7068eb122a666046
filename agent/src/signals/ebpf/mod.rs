//! eBPF signals: the kernel's own view of TCP retransmits (by peer and process), socket
//! states (per process), run-queue latency (per cgroup) and block I/O latency (per device).
//! One file per family (`tcp`, `sock`, `sched`, `block`) loads its object from `ebpf/` (built
//! by `build.rs`, embedded here) with aya and turns its maps into snapshot metrics.
//!
//! Every family loads on its own: one that cannot (no privileges, no BTF, a verifier refusal,
//! an object built without clang) is listed in `Snapshot::unavailable` as `ebpf.<family>` with
//! the reason, and the procfs signals carry on. medic never fails to start for want of eBPF.

pub mod abi;
pub mod block;
pub mod cgroups;
pub mod sched;
pub mod sock;
pub mod tcp;

use super::Snapshot;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;

pub(crate) static TCP_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcp.bpf.o"));
pub(crate) static SOCK_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sock.bpf.o"));
pub(crate) static SCHED_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sched.bpf.o"));
pub(crate) static BLOCK_OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/block.bpf.o"));
static MISSING: &str = include_str!(concat!(env!("OUT_DIR"), "/ebpf_missing.txt"));

/// Whether this build embeds the eBPF programs: `Err(why)` when it was built without them
/// (clang-19 or libbpf-dev missing at build time). Shown by `medic --version`.
pub fn embedded() -> Result<(), &'static str> {
    if MISSING.is_empty() {
        Ok(())
    } else {
        Err(MISSING)
    }
}

/// `[signals.ebpf]` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EbpfConfig {
    /// Load the eBPF families at all.
    pub enabled: bool,
    /// Families to load (`tcp`, `sock`, `sched`, `block`).
    pub families: Vec<String>,
    /// Run-queue latency follows one task in this many (a power of two; 1 follows all).
    pub sched_sample_every: u32,
    /// Retransmits on the node within a second that wake the evaluation at once.
    pub retrans_burst: u64,
    /// A process's CLOSE_WAIT count that wakes the evaluation at once (and each multiple of it).
    pub close_wait_threshold: i64,
    /// A process using at least this % of one core over 100 ms (the scheduler's own run time)
    /// wakes the evaluation at once, with that share as its `cpu_pct`.
    pub cpu_hot_pct: u64,
}

impl Default for EbpfConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            families: ["tcp", "sock", "sched", "block"].map(String::from).to_vec(),
            sched_sample_every: 8,
            retrans_burst: 50,
            close_wait_threshold: 100,
            cpu_hot_pct: 90,
        }
    }
}

/// Turns an aya error chain into one line.
pub(crate) fn why(e: impl std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The loaded families.
#[derive(Default)]
pub struct EbpfSignals {
    tcp: Option<tcp::Tcp>,
    sock: Option<sock::Sock>,
    sched: Option<sched::Sched>,
    block: Option<block::Block>,
    /// `ebpf.<family>` → why it is not loaded.
    pub unavailable: BTreeMap<String, String>,
    /// The programs of the loaded families (for their run counts in `/metrics`).
    pub programs: Vec<crate::metrics::collect::Program>,
    cgroups: cgroups::CgroupNames,
}

impl EbpfSignals {
    /// Loads and attaches every configured family; never fails.
    pub fn start(cfg: &EbpfConfig) -> Self {
        let mut s = Self::default();
        if !cfg.enabled {
            for f in ["tcp", "sock", "sched", "block"] {
                s.unavailable.insert(format!("ebpf.{f}"), "disabled in the config (signals.ebpf.enabled = false)".into());
            }
            return s;
        }
        let want = |f: &str| cfg.families.iter().any(|x| x == f);
        let missing = (!MISSING.is_empty()).then(|| format!("medic was built without eBPF programs ({MISSING})"));
        macro_rules! family {
            ($name:literal, $field:ident, $load:expr) => {
                if !want($name) {
                    s.unavailable.insert(format!("ebpf.{}", $name), "not in signals.ebpf.families".into());
                } else if let Some(m) = &missing {
                    s.unavailable.insert(format!("ebpf.{}", $name), m.clone());
                } else {
                    let loaded = $load;
                    let attached = std::mem::take(&mut *ATTACHED.lock().unwrap_or_else(|p| p.into_inner()));
                    match loaded {
                        Ok(f) => {
                            tracing::info!(message = "eBPF family loaded.", family = $name);
                            let programs = attached.into_iter().map(|(name, id)| crate::metrics::collect::Program { family: $name, name, id });
                            s.programs.extend(programs);
                            s.$field = Some(f)
                        }
                        Err(e) => {
                            tracing::warn!(message = "eBPF family unavailable.", family = $name, reason = %e);
                            s.unavailable.insert(format!("ebpf.{}", $name), e);
                        }
                    }
                }
            };
        }
        // Parsed once for every family (a few hundred ms and several MiB each time), and
        // dropped once they are loaded.
        let btf = if missing.is_none() { kernel_btf() } else { Err(String::new()) };
        let btf = btf.as_ref().map_err(Clone::clone);
        family!("tcp", tcp, btf.clone().and_then(|b| tcp::Tcp::load_with(cfg, None, b)));
        family!("sock", sock, btf.clone().and_then(|b| sock::Sock::load_with(cfg, b)));
        family!("sched", sched, btf.clone().and_then(|b| sched::Sched::load_with(cfg, b)));
        family!("block", block, btf.and_then(block::Block::load_with));
        s
    }

    /// Names of the loaded families.
    pub fn loaded(&self) -> Vec<&'static str> {
        [("tcp", self.tcp.is_some()), ("sock", self.sock.is_some()), ("sched", self.sched.is_some()), ("block", self.block.is_some())]
            .into_iter()
            .filter_map(|(n, on)| on.then_some(n))
            .collect()
    }

    /// Reads every loaded family into the snapshot.
    pub fn sample(&mut self, snap: &mut Snapshot) {
        for (k, v) in &self.unavailable {
            snap.unavailable.insert(k.clone(), v.clone());
        }
        let cg = &mut self.cgroups;
        if let Some(t) = &mut self.tcp {
            if let Err(e) = t.sample(snap) {
                snap.errors.push(format!("ebpf.tcp: {e}"));
            }
        }
        if let Some(s) = &mut self.sock {
            if let Err(e) = s.sample(snap) {
                snap.errors.push(format!("ebpf.sock: {e}"));
            }
        }
        if let Some(s) = &mut self.sched {
            if let Err(e) = s.sample(snap, cg) {
                snap.errors.push(format!("ebpf.sched: {e}"));
            }
        }
        if let Some(b) = &mut self.block {
            if let Err(e) = b.sample(snap) {
                snap.errors.push(format!("ebpf.block: {e}"));
            }
        }
        if self.sched.is_some() || self.sock.is_some() {
            crate::signals::process::resum_units(&mut snap.units, &snap.processes);
        }
    }

    /// Duplicates of the event rings' file descriptors, readable when a family has an event
    /// that should wake the evaluation at once.
    pub fn event_fds(&self) -> Vec<OwnedFd> {
        let mut v = Vec::new();
        if let Some(fd) = self.tcp.as_ref().and_then(|t| t.event_fd()) {
            v.push(fd);
        }
        if let Some(fd) = self.sock.as_ref().and_then(|s| s.event_fd()) {
            v.push(fd);
        }
        if let Some(fd) = self.sched.as_ref().and_then(|s| s.event_fd()) {
            v.push(fd);
        }
        v
    }

    /// Takes the pending events (and so clears readiness); returns how many there were.
    pub fn drain_events(&mut self) -> Vec<abi::Event> {
        let mut v = Vec::new();
        if let Some(t) = &mut self.tcp {
            v.extend(t.drain());
        }
        if let Some(s) = &mut self.sock {
            v.extend(s.drain());
        }
        if let Some(s) = &mut self.sched {
            v.extend(s.drain());
        }
        v
    }
}

/// Programs attached by [`attach_btf`] since the last family was loaded: (name, kernel id).
static ATTACHED: std::sync::Mutex<Vec<(String, u32)>> = std::sync::Mutex::new(Vec::new());

/// Loads program `prog` as a BTF-enabled raw tracepoint (`tp_btf`, 5.5) on `tracepoint` and
/// attaches it: typed kernel arguments, no tracefs, and a recursion guard per program (a
/// classic tracepoint program is skipped whenever any other tracing program runs on the CPU).
pub(crate) fn attach_btf(bpf: &mut aya::Ebpf, btf: &aya::Btf, prog: &str, tracepoint: &str) -> Result<(), String> {
    let p: &mut aya::programs::BtfTracePoint =
        bpf.program_mut(prog).ok_or_else(|| format!("program {prog} missing"))?.try_into().map_err(|e| format!("{prog}: {}", why(e)))?;
    p.load(tracepoint, btf).map_err(|e| format!("{prog}: load: {}", why(e)))?;
    p.attach().map_err(|e| format!("{prog}: attach {tracepoint}: {}", why(e)))?;
    if let Ok(info) = p.info() {
        ATTACHED.lock().unwrap_or_else(|p| p.into_inner()).push((prog.to_string(), info.id()));
    }
    Ok(())
}

/// The kernel's BTF, which `tp_btf` programs are checked and attached against.
pub(crate) fn kernel_btf() -> Result<aya::Btf, String> {
    aya::Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {}", why(e)))
}

/// Takes map `name` out of `bpf` as a `T`.
pub(crate) fn take<T: TryFrom<aya::maps::Map>>(bpf: &mut aya::Ebpf, name: &str) -> Result<T, String>
where
    T::Error: std::error::Error,
{
    let m = bpf.take_map(name).ok_or_else(|| format!("map {name} missing"))?;
    T::try_from(m).map_err(|e| format!("map {name}: {}", why(e)))
}

/// Reads one ring buffer's pending events.
pub(crate) fn drain_ring(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<abi::Event> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        if item.len() >= std::mem::size_of::<abi::Event>() {
            let b = &item[..];
            let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().unwrap_or_default());
            let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().unwrap_or_default());
            out.push(abi::Event { kind: u32_at(0), tgid: u32_at(4), value: u64_at(8), cgroup: u64_at(16) });
        }
    }
    out
}

/// Sums a per-CPU u64 counter.
pub(crate) fn percpu_sum(map: &aya::maps::PerCpuArray<aya::maps::MapData, u64>, idx: u32) -> u64 {
    map.get(&idx, 0).map(|v| v.iter().sum()).unwrap_or(0)
}
