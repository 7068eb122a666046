//! sock family (ebpf/sock.bpf.c): TCP state transitions node-wide, and current sockets per
//! (owning process, state), so one service's CLOSE_WAIT leak shows as that service's number.
//!
//! Metric keys: `ebpf.sock.transitions.<state>` (counters since load),
//! `ebpf.proc.<pid>.sock.<state>`, `ebpf.cgroup.<id>.sock.<state>` and
//! `ebpf.unit.<unit>.sock.<state>` (current counts); `ebpf.sock.events_dropped`.
//!
//! Who owns a socket is kept with the socket, in its own storage (ebpf/owner.bpf.h): the
//! process that connected or listened on it, inherited by the sockets it accepts, and moved to
//! any other process that sends or receives on it. Each socket is counted once, under (owner,
//! current state), so a process's CLOSE_WAIT count is what `ss -tanp` shows for it. Sockets
//! that existed before medic loaded are counted from their first send or receive; those of an
//! owner that exited are forgotten. All programs are `tp_btf` (no tracefs).

use super::abi::{self, StateKey};
use super::{attach_btf, take, why, EbpfConfig};
use crate::signals::sockets::STATES;
use crate::signals::Snapshot;
use aya::maps::{HashMap as BpfHash, MapData, PerCpuArray, RingBuf};
use std::collections::{BTreeMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};

pub struct Sock {
    _bpf: aya::Ebpf,
    transitions: PerCpuArray<MapData, u64>,
    states: BpfHash<MapData, StateKey, i64>,
    dropped: aya::maps::Array<MapData, u64>,
    events: RingBuf<MapData>,
}

impl Sock {
    pub fn load(cfg: &EbpfConfig) -> Result<Self, String> {
        Self::load_with(cfg, &super::kernel_btf()?)
    }

    /// As [`load`](Self::load), with the kernel's BTF parsed once by the caller.
    pub fn load_with(cfg: &EbpfConfig, btf: &aya::Btf) -> Result<Self, String> {
        let mut bpf = aya::EbpfLoader::new()
            .btf(Some(btf))
            .override_global("close_wait_threshold", &cfg.close_wait_threshold, true)
            .load(super::SOCK_OBJ)
            .map_err(|e| format!("load: {}", why(e)))?;
        // State changes first: a send or receive that first claims a socket takes its state
        // from the storage the state program keeps, and no change may go unseen after that.
        attach_btf(&mut bpf, btf, "sock_state", "inet_sock_set_state")?;
        attach_btf(&mut bpf, btf, "sock_send_length", "sock_send_length")?;
        attach_btf(&mut bpf, btf, "sock_recv_length", "sock_recv_length")?;
        Ok(Self {
            transitions: take(&mut bpf, "transitions")?,
            states: take(&mut bpf, "states")?,
            dropped: take(&mut bpf, "sock_dropped")?,
            events: take(&mut bpf, "sock_events")?,
            _bpf: bpf,
        })
    }

    pub fn sample(&mut self, snap: &mut Snapshot) -> Result<(), String> {
        for (i, name) in STATES.iter().enumerate().skip(1) {
            let n = super::percpu_sum(&self.transitions, i as u32);
            snap.metrics.insert(format!("ebpf.sock.transitions.{name}"), n as f64);
        }
        let counter = |i| self.dropped.get(&i, 0).unwrap_or(0) as f64;
        snap.metrics.insert("ebpf.sock.events_dropped".into(), counter(super::abi::SOCK_EVENTS_DROPPED));
        snap.metrics.insert("ebpf.sock.states_full".into(), counter(super::abi::SOCK_STATES_FULL));
        let alive: HashSet<i64> = snap.processes.iter().map(|p| p.pid).collect();
        let unit_of: BTreeMap<i64, String> = snap.processes.iter().filter_map(|p| Some((p.pid, p.unit.clone()?))).collect();
        let mut stale = Vec::new();
        let mut per_unit: BTreeMap<String, i64> = BTreeMap::new();
        let mut per_pid: BTreeMap<i64, BTreeMap<String, u64>> = BTreeMap::new();
        for (k, n) in self.states.iter().flatten() {
            let pid = k.tgid as i64;
            // Only an exited owner's entries go: removing an entry of a live one (even at 0)
            // could drop an add the kernel makes to it meanwhile, and the count would be off
            // for good. A live owner keeps one entry per (state, cgroup) it has used.
            if !alive.contains(&pid) && !snap.processes.is_empty() {
                stale.push(k);
                continue;
            }
            if n <= 0 {
                continue;
            }
            let state = STATES.get(k.state as usize).copied().unwrap_or("unknown");
            *per_pid.entry(pid).or_default().entry(state.to_string()).or_default() += n as u64;
            *snap.metrics.entry(format!("ebpf.proc.{pid}.sock.{state}")).or_default() += n as f64;
            *snap.metrics.entry(format!("ebpf.cgroup.{}.sock.{state}", k.cgroup)).or_default() += n as f64;
            if let Some(u) = unit_of.get(&pid) {
                *per_unit.entry(format!("ebpf.unit.{u}.sock.{state}")).or_default() += n;
            }
        }
        for (k, n) in per_unit {
            snap.metrics.insert(k, n as f64);
        }
        // A process the kernel counts sockets for has those counts as its `tcp` (and its unit's,
        // summed again by the caller): exact at every sample, where the fd scan they replace is
        // every few samples and not at a woken tick. A process it knows no socket of (its
        // sockets predate the family and stay idle) keeps the scan's counts.
        for p in &mut snap.processes {
            if let Some(counts) = per_pid.remove(&p.pid) {
                p.tcp = counts;
            }
        }
        for k in stale {
            let _ = self.states.remove(&k);
        }
        Ok(())
    }

    pub fn event_fd(&self) -> Option<OwnedFd> {
        self.events.as_fd().try_clone_to_owned().ok()
    }

    pub fn drain(&mut self) -> Vec<abi::Event> {
        super::drain_ring(&mut self.events)
    }
}
