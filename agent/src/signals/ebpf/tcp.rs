//! tcp family (ebpf/tcp.bpf.c): retransmits per (peer, local port, owning process), resets
//! sent and received, and burst events that wake the evaluation.
//!
//! All programs are `tp_btf` (no tracefs). A retransmit's owner is read from the socket's own
//! storage (ebpf/owner.bpf.h): the process that connected or listened on it, or that last sent
//! or received on it; this object keeps its own copy of that storage, so the family does not
//! depend on the sock family being loaded.
//!
//! Metric keys: `ebpf.tcp.retrans`, `ebpf.tcp.send_resets`, `ebpf.tcp.receive_resets`,
//! `ebpf.tcp.unowned_retrans`, `ebpf.tcp.events_dropped` (counters since load);
//! `ebpf.tcp.peer.<addr:port>.retrans`, `ebpf.proc.<pid>.retrans` and
//! `ebpf.unit.<unit>.retrans` (counters).
//! Entries in `Snapshot::ebpf_retrans`.

use super::abi::{self, RetransKey};
use super::{attach_btf, take, why, EbpfConfig};
use crate::signals::Snapshot;
use aya::maps::{HashMap as BpfHash, MapData, PerCpuArray, RingBuf};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::os::fd::{AsFd, OwnedFd};

/// Retransmits to one peer from one local port by one process, since load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RetransEntry {
    pub peer: String,
    pub local_port: u16,
    /// 0 when the owner is unknown.
    pub pid: u32,
    pub cgroup: u64,
    pub count: u64,
}

/// For the drop-count test only: a program that emits `events` events each time `tgid` calls
/// getppid(), into a ring buffer of `ring_bytes`.
#[derive(Debug, Clone, Copy)]
pub struct TestFlood {
    pub tgid: u32,
    pub events: u32,
    pub ring_bytes: u32,
}

pub struct Tcp {
    _bpf: aya::Ebpf,
    counters: PerCpuArray<MapData, u64>,
    retrans: BpfHash<MapData, RetransKey, u64>,
    events: RingBuf<MapData>,
}

/// getppid(2)'s system call number, which the test hook matches (no other arch is built).
#[cfg(target_arch = "x86_64")]
const SYS_GETPPID: i64 = 110;
#[cfg(target_arch = "aarch64")]
const SYS_GETPPID: i64 = 173;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const SYS_GETPPID: i64 = -1;

/// `addr:port` of a retransmit key's remote end.
pub fn peer_of(k: &RetransKey) -> String {
    if k.family == 2 {
        format!("{}:{}", std::net::Ipv4Addr::new(k.daddr[0], k.daddr[1], k.daddr[2], k.daddr[3]), k.dport)
    } else {
        let ip = std::net::Ipv6Addr::from(k.daddr);
        match ip.to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{}", k.dport),
            None => format!("[{ip}]:{}", k.dport),
        }
    }
}

impl Tcp {
    pub fn load(cfg: &EbpfConfig, test: Option<TestFlood>) -> Result<Self, String> {
        Self::load_with(cfg, test, &super::kernel_btf()?)
    }

    /// As [`load`](Self::load), with the kernel's BTF parsed once by the caller.
    pub fn load_with(cfg: &EbpfConfig, test: Option<TestFlood>, btf: &aya::Btf) -> Result<Self, String> {
        let window: u64 = 1_000_000_000;
        let mut loader = aya::EbpfLoader::new();
        loader.btf(Some(btf));
        loader.override_global("burst_threshold", &cfg.retrans_burst, true).override_global("burst_window_ns", &window, true);
        let (tgid, events) = test.map_or((0u32, 0u32), |t| (t.tgid, t.events));
        loader.override_global("test_tgid", &tgid, true).override_global("test_events", &events, true).override_global(
            "test_syscall",
            &SYS_GETPPID,
            true,
        );
        if let Some(t) = test {
            loader.map_max_entries("tcp_events", t.ring_bytes);
        }
        let mut bpf = loader.load(super::TCP_OBJ).map_err(|e| format!("load: {}", why(e)))?;
        // Ownership first: a socket is followed from its first state change on.
        attach_btf(&mut bpf, btf, "tcp_owner_state", "inet_sock_set_state")?;
        attach_btf(&mut bpf, btf, "tcp_send_length", "sock_send_length")?;
        attach_btf(&mut bpf, btf, "tcp_recv_length", "sock_recv_length")?;
        attach_btf(&mut bpf, btf, "tcp_retransmit", "tcp_retransmit_skb")?;
        attach_btf(&mut bpf, btf, "tcp_send_reset", "tcp_send_reset")?;
        attach_btf(&mut bpf, btf, "tcp_receive_reset", "tcp_receive_reset")?;
        if test.is_some() {
            attach_btf(&mut bpf, btf, "tcp_test_flood", "sys_enter")?;
        }
        Ok(Self {
            counters: take(&mut bpf, "tcp_counters")?,
            retrans: take(&mut bpf, "retrans")?,
            events: take(&mut bpf, "tcp_events")?,
            _bpf: bpf,
        })
    }

    pub fn entries(&self) -> Vec<RetransEntry> {
        let mut v: Vec<RetransEntry> = self
            .retrans
            .iter()
            .flatten()
            .map(|(k, c)| RetransEntry { peer: peer_of(&k), local_port: k.sport, pid: k.tgid, cgroup: k.cgroup, count: c })
            .collect();
        v.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.peer.cmp(&b.peer)));
        v
    }

    pub fn dropped(&self) -> u64 {
        super::percpu_sum(&self.counters, abi::TCP_EVENTS_DROPPED)
    }

    pub fn sample(&mut self, snap: &mut Snapshot) -> Result<(), String> {
        let m = &mut snap.metrics;
        for (idx, key) in [
            (abi::TCP_RETRANS, "ebpf.tcp.retrans"),
            (abi::TCP_SEND_RESET, "ebpf.tcp.send_resets"),
            (abi::TCP_RECV_RESET, "ebpf.tcp.receive_resets"),
            (abi::TCP_UNOWNED, "ebpf.tcp.unowned_retrans"),
            (abi::TCP_EVENTS_DROPPED, "ebpf.tcp.events_dropped"),
            (abi::TCP_RETRANS_UNTRACKED, "ebpf.tcp.retrans_untracked"),
        ] {
            m.insert(key.into(), super::percpu_sum(&self.counters, idx) as f64);
        }
        let entries = self.entries();
        let mut by_peer: BTreeMap<String, u64> = BTreeMap::new();
        let mut by_pid: BTreeMap<u32, u64> = BTreeMap::new();
        for e in &entries {
            *by_peer.entry(e.peer.clone()).or_default() += e.count;
            if e.pid != 0 {
                *by_pid.entry(e.pid).or_default() += e.count;
            }
        }
        for (p, c) in by_peer {
            m.insert(format!("ebpf.tcp.peer.{p}.retrans"), c as f64);
        }
        let unit_of: BTreeMap<i64, &str> = snap.processes.iter().filter_map(|p| Some((p.pid, p.unit.as_deref()?))).collect();
        let mut by_unit: BTreeMap<String, u64> = BTreeMap::new();
        for (p, c) in by_pid {
            m.insert(format!("ebpf.proc.{p}.retrans"), c as f64);
            if let Some(u) = unit_of.get(&(p as i64)) {
                *by_unit.entry(format!("ebpf.unit.{u}.retrans")).or_default() += c;
            }
        }
        for (k, c) in by_unit {
            m.insert(k, c as f64);
        }
        snap.ebpf_retrans = entries;
        Ok(())
    }

    pub fn event_fd(&self) -> Option<OwnedFd> {
        self.events.as_fd().try_clone_to_owned().ok()
    }

    pub fn drain(&mut self) -> Vec<abi::Event> {
        super::drain_ring(&mut self.events)
    }
}
