//! Format version 2's frames, read only: the shapes as they were before version 3 added each
//! process's `ppid` and `fd_limit`, converted into the current [`super::FrameRec`] (those two
//! unknown: `ppid` 0, `fd_limit` `None`), so a recording made by an older agent still replays.
//! Never written. postcard is not self-describing: these fields must keep version 2's order.

use crate::signals::ebpf::{sched::RunqEntry, tcp::RetransEntry};
use crate::signals::process::{ProcessInfo, UnitInfo};
use crate::signals::{disk::Mount, sockets::PeerInfo};
use serde::Deserialize;
use std::collections::BTreeMap;

/// A process as version 2 recorded it.
#[derive(Deserialize)]
pub struct Process {
    pid: i64,
    name: String,
    cmdline: String,
    unit: Option<String>,
    cpu_pct: Option<f64>,
    rss_bytes: u64,
    fds: Option<u64>,
    threads: u64,
    start_time: u64,
    state: String,
    tcp: BTreeMap<String, u64>,
}

impl From<Process> for ProcessInfo {
    fn from(p: Process) -> Self {
        ProcessInfo {
            pid: p.pid,
            name: p.name,
            cmdline: p.cmdline,
            unit: p.unit,
            cpu_pct: p.cpu_pct,
            rss_bytes: p.rss_bytes,
            fds: p.fds,
            threads: p.threads,
            start_time: p.start_time,
            state: p.state,
            tcp: p.tcp,
            ..Default::default()
        }
    }
}

/// A changed process as version 2 recorded it.
#[derive(Deserialize)]
pub struct ProcRec {
    at: u32,
    name: Option<String>,
    cmdline: Option<String>,
    unit: Option<Option<String>>,
    cpu_pct: Option<Option<f64>>,
    rss_delta: Option<i64>,
    fds: Option<Option<u64>>,
    threads: Option<u64>,
    state: Option<String>,
    tcp: Option<BTreeMap<String, u64>>,
}

/// A frame as version 2 recorded it.
#[derive(Deserialize)]
pub struct FrameRec {
    ts_ms: i64,
    forced: bool,
    new_keys: Vec<String>,
    set: Vec<u32>,
    values: Vec<u8>,
    gone: Vec<u32>,
    procs: Option<Vec<Process>>,
    procs_set: Vec<ProcRec>,
    procs_new: Vec<Process>,
    procs_gone: Vec<u32>,
    units_set: Vec<(String, UnitInfo)>,
    units_gone: Vec<String>,
    mounts: Option<Vec<Mount>>,
    socket_source: Option<u8>,
    tcp_peers: Option<Vec<PeerInfo>>,
    ebpf_retrans: Option<Vec<RetransEntry>>,
    ebpf_runq: Option<Vec<RunqEntry>>,
    unavailable: Option<BTreeMap<String, String>>,
    errors: Option<Vec<String>>,
}

impl From<FrameRec> for super::FrameRec {
    fn from(f: FrameRec) -> Self {
        let procs = |v: Vec<Process>| v.into_iter().map(ProcessInfo::from).collect();
        super::FrameRec {
            ts_ms: f.ts_ms,
            forced: u8::from(f.forced),
            new_keys: f.new_keys,
            set: f.set,
            values: f.values,
            gone: f.gone,
            procs: f.procs.map(procs),
            procs_set: f
                .procs_set
                .into_iter()
                .map(|r| super::ProcRec {
                    at: r.at,
                    name: r.name,
                    cmdline: r.cmdline,
                    unit: r.unit,
                    cpu_pct: r.cpu_pct,
                    rss_delta: r.rss_delta,
                    fds: r.fds,
                    threads: r.threads,
                    state: r.state,
                    tcp: r.tcp,
                    ppid: None,
                    fd_limit: None,
                })
                .collect(),
            procs_new: procs(f.procs_new),
            procs_gone: f.procs_gone,
            units_set: f.units_set,
            units_gone: f.units_gone,
            mounts: f.mounts,
            socket_source: f.socket_source,
            tcp_peers: f.tcp_peers,
            ebpf_retrans: f.ebpf_retrans,
            ebpf_runq: f.ebpf_runq,
            unavailable: f.unavailable,
            errors: f.errors,
        }
    }
}
