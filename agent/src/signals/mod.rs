//! Sensing: turns procfs (and the cgroup tree under sysfs) into one [`Snapshot`] per tick, and
//! keeps the [`history::History`] of those snapshots that playbooks aggregate over.
//!
//! One file per signal family (`cpu`, `memory`, `disk`, `net`, `files`, `sockets`, `tcp`, `process`); this module
//! only sequences them. The `/proc` and `/sys` roots are injected so tests run on fixture trees.
//! A family that cannot be read is *unavailable* (listed in [`Snapshot::unavailable`] with why),
//! never a fake zero; a file that does not parse is an error naming file, line and field.

pub mod cpu;
pub mod disk;
pub mod ebpf;
pub mod fast;
pub mod files;
pub mod held;
pub mod history;
pub mod memory;
pub mod net;
pub mod parse;
pub mod probes;
pub mod process;
pub mod sock_diag;
pub mod sockets;
pub mod tcp;
pub mod wake;

use parse::ParseError;
use process::{ProcContext, ProcMemo, ProcessInfo, UnitInfo};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Everything sensed at one instant. Playbooks see it through a read-only view.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Snapshot {
    /// Milliseconds since the epoch (the sampler's clock; simulated in playbook tests).
    pub ts_ms: i64,
    /// Node-wide metrics by key (see each family's module for its keys).
    pub metrics: BTreeMap<String, f64>,
    pub processes: Vec<ProcessInfo>,
    pub units: BTreeMap<String, UnitInfo>,
    pub mounts: Vec<disk::Mount>,
    /// Where the TCP socket table of the last scan came from: `"netlink"` (sock_diag) or
    /// `"procfs"` (/proc/net/tcp{,6}); empty before the first scan.
    pub socket_source: &'static str,
    /// Remote peers with sockets retransmitting now (see [`sockets::PeerInfo`]).
    pub tcp_peers: Vec<sockets::PeerInfo>,
    /// eBPF: retransmits by peer and owning process, since the tcp family loaded.
    pub ebpf_retrans: Vec<ebpf::tcp::RetransEntry>,
    /// eBPF: run-queue latency per cgroup.
    pub ebpf_runq: Vec<ebpf::sched::RunqEntry>,
    /// Signal family → why it is unavailable on this node.
    pub unavailable: BTreeMap<String, String>,
    /// Files that could not be parsed this tick, `file:line: field: reason`.
    pub errors: Vec<String>,
}

/// Where to read from.
#[derive(Debug, Clone)]
pub struct Roots {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self { proc: "/proc".into(), sys: "/sys".into() }
    }
}

/// Counters remembered from the previous sample, for rates.
#[derive(Default)]
struct Previous {
    ts_ms: i64,
    stat: Option<cpu::Stat>,
    disks: Option<BTreeMap<String, disk::DiskCounters>>,
    net: Option<BTreeMap<String, net::Counters>>,
    tcp: BTreeMap<String, f64>,
    procs: HashMap<i64, ProcMemo>,
    sockets: Option<SocketScan>,
}

/// The last read of the TCP tables.
#[derive(Default)]
struct SocketScan {
    ok: bool,
    source: &'static str,
    counts: [u64; 13],
    inodes: sockets::InodeStates,
    peers: Vec<sockets::PeerInfo>,
}

/// Where the TCP socket table is read from.
enum SocketSource {
    /// Netlink sock_diag (the live /proc only: a dump describes this process's network
    /// namespace, not a fixture tree's). `None` after a failed dump: reopened at the next scan.
    Netlink(Option<sock_diag::SockDiag>),
    /// The text tables under the proc root, read to their end.
    Text,
}

/// Reads snapshots; holds the previous counters so that rates and CPU % come out right.
pub struct Sampler {
    roots: Roots,
    /// The TCP tables and per-process fds are read every this many samples (the first always).
    socket_scan_every: u64,
    samples: u64,
    ebpf: Option<ebpf::EbpfSignals>,
    sockets: SocketSource,
    clk_tck: u64,
    page_size: u64,
    prev: Previous,
    files: files::Files,
    /// Results of the agent-run sensors (probes, programs), merged into each sample.
    board: Option<probes::Board>,
    /// The fast watch, told each sample's mounts and usage (the daemon's only).
    fast: Option<fast::FastWatch>,
    /// When a retransmit burst was first seen since the last sample (wall-clock ms).
    tcp_woken_at: Option<i64>,
    /// The files read every sample, held open between samples.
    held: held::Held,
}

impl Sampler {
    pub fn new(roots: Roots) -> Self {
        Self::with_socket_scan_every(roots, 1)
    }

    /// As [`new`](Self::new), reading sockets (the TCP tables and each process's fds) only every
    /// `n` samples: the costliest part of a sample, for counts that move slowly.
    pub fn with_socket_scan_every(roots: Roots, n: u64) -> Self {
        let sockets = if roots.proc == Path::new("/proc") {
            match sock_diag::SockDiag::open() {
                Ok(d) => SocketSource::Netlink(Some(d)),
                Err(e) => {
                    tracing::warn!(message = "Reading TCP sockets from /proc/net/tcp{,6} instead of netlink.", error_code = e.code(), error = %e);
                    SocketSource::Text
                }
            }
        } else {
            SocketSource::Text
        };
        Self {
            roots,
            socket_scan_every: n.max(1),
            samples: 0,
            ebpf: None,
            sockets,
            clk_tck: rustix::param::clock_ticks_per_second().max(1),
            page_size: rustix::param::page_size() as u64,
            prev: Previous::default(),
            files: files::Files::new(files::FilesConfig::default()),
            board: None,
            fast: None,
            tcp_woken_at: None,
            held: held::Held::new(),
        }
    }

    /// Watches the config's files (`[files]`), and the playbooks' once declared through
    /// [`files_declared`](Self::files_declared).
    pub fn with_files(mut self, cfg: files::FilesConfig) -> Self {
        self.files = files::Files::new(cfg);
        self
    }

    /// Where the loaded playbooks' `files` are handed to this sampler (at start and reload).
    pub fn files_declared(&self) -> files::Declared {
        self.files.declared()
    }

    /// Adds the eBPF families (loaded by the caller; see [`ebpf::EbpfSignals::start`]).
    pub fn with_ebpf(mut self, e: ebpf::EbpfSignals) -> Self {
        self.ebpf = Some(e);
        self
    }

    /// Adds the latest results of the agent-run sensors to every sample (see [`probes`]).
    pub fn with_board(mut self, b: probes::Board) -> Self {
        self.board = Some(b);
        self
    }

    /// Has `w` told each sample's mounts and their usage (see [`fast`]).
    pub fn with_fast_watch(&mut self, w: fast::FastWatch) {
        self.fast = Some(w);
    }

    /// A retransmit burst was seen at `ms` (the first since the last sample counts): the woken
    /// sample's TCP rates start at the fast watch's reading one interval before it, so a tick
    /// held back (by the spacing of wake-ups, or an evaluation under way) still covers the burst.
    pub fn note_tcp_wake(&mut self, ms: i64) {
        self.tcp_woken_at.get_or_insert(ms);
    }

    /// Where /proc and /sys are read from.
    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    pub fn ebpf(&self) -> Option<&ebpf::EbpfSignals> {
        self.ebpf.as_ref()
    }

    pub fn ebpf_mut(&mut self) -> Option<&mut ebpf::EbpfSignals> {
        self.ebpf.as_mut()
    }

    /// Takes one sample at `ts_ms`. Never fails: what cannot be read is reported inside.
    pub fn sample(&mut self, ts_ms: i64) -> Snapshot {
        self.sample_woken(ts_ms, wake::Wake::NONE)
    }

    /// As [`sample`](Self::sample), for a tick woken early by `woken`: the socket tables and
    /// per-process fds (the costly part, read every `socket_scan_every` samples) are not read
    /// then, nor is their count of samples moved, so a wake-up is as quick as a sample can be
    /// and a storm of them costs no scans. The eBPF socket counts are read at every sample.
    pub fn sample_woken(&mut self, ts_ms: i64, woken: wake::Wake) -> Snapshot {
        let mut s = Snapshot { ts_ms, ..Default::default() };
        let secs = if self.prev.ts_ms > 0 { (ts_ms - self.prev.ts_ms) as f64 / 1000.0 } else { 0.0 };
        let p = self.roots.proc.clone();

        // CPU
        let mut boot_time = 0;
        let f = p.join("stat");
        match self.held.read_text(&f).and_then(|t| cpu::parse_stat(&f, &t)) {
            Ok(stat) => {
                boot_time = stat.boot_time;
                s.metrics.insert("cpu.count".into(), stat.cores.len() as f64);
                if let Some(prev) = &self.prev.stat {
                    cpu::utilisation(prev, &stat, &mut s.metrics);
                }
                self.prev.stat = Some(stat);
            }
            Err(e) => fail(&mut s, "cpu", e),
        }
        let f = p.join("loadavg");
        if let Err(e) = self.held.read_text(&f).and_then(|t| cpu::parse_loadavg(&f, &t, &mut s.metrics)) {
            fail(&mut s, "load", e);
        }
        for res in ["cpu", "memory", "io"] {
            let f = p.join("pressure").join(res);
            match self.held.read_text(&f) {
                Ok(t) => {
                    if let Err(e) = cpu::parse_psi(&f, res, &t, &mut s.metrics) {
                        fail(&mut s, &format!("psi.{res}"), e);
                    }
                }
                Err(e) if !f.exists() => {
                    s.unavailable.insert(format!("psi.{res}"), format!("kernel has no PSI here ({e})"));
                }
                Err(e) => fail(&mut s, &format!("psi.{res}"), e),
            }
        }

        // Memory
        let f = p.join("meminfo");
        if let Err(e) = self.held.read_text(&f).and_then(|t| memory::parse_meminfo(&f, &t, &mut s.metrics)) {
            fail(&mut s, "mem", e);
        }

        // Disk
        let f = p.join("self").join("mounts");
        match self.held.read_text(&f).and_then(|t| disk::parse_mounts(&f, &t)) {
            Ok(mounts) => {
                for m in &mounts {
                    if let Err(e) = disk::statvfs_into(m, &mut s.metrics) {
                        s.errors.push(format!("statvfs {}: {e}", m.mount_point));
                    }
                }
                s.mounts = mounts;
            }
            Err(e) => fail(&mut s, "disk", e),
        }
        let f = p.join("diskstats");
        match self.held.read_text(&f).and_then(|t| disk::parse_diskstats(&f, &t)) {
            Ok(cur) => {
                disk::diskstats_into(self.prev.disks.as_ref(), &cur, secs, &mut s.metrics);
                self.prev.disks = Some(cur);
            }
            Err(e) => fail(&mut s, "blk", e),
        }

        // Network interfaces
        let f = p.join("net").join("dev");
        match self.held.read_text(&f).and_then(|t| net::parse_dev(&f, &t)) {
            Ok((cur, left_out)) => {
                net::into(self.prev.net.as_ref(), &cur, secs, &self.roots.sys, &mut self.held, &mut s.metrics);
                if left_out > 0 {
                    s.unavailable
                        .insert("net".into(), format!("{left_out} interfaces beyond the first {} not reported", net::MAX_INTERFACES));
                }
                self.prev.net = Some(cur);
            }
            Err(e) => fail(&mut s, "net", e),
        }

        // TCP counters
        let mut tcp_now = BTreeMap::new();
        let f = p.join("net").join("snmp");
        if let Err(e) = self.held.read_text(&f).and_then(|t| tcp::parse_snmp(&f, &t, &mut tcp_now)) {
            fail(&mut s, "tcp", e);
        }
        let f = p.join("net").join("netstat");
        if let Err(e) = self.held.read_text(&f).and_then(|t| tcp::parse_netstat(&f, &t, &mut tcp_now)) {
            fail(&mut s, "tcp.ext", e);
        }
        if self.prev.ts_ms > 0 {
            let prev = std::mem::take(&mut self.prev.tcp);
            tcp::rates_into(&prev, secs, &mut tcp_now);
            // Woken by a retransmit burst: the snmp rates over the fast watch's last window, so
            // that the burst is not diluted by the normal traffic of the rest of the interval.
            if woken.intersects(wake::Wake::TCP) {
                let since = self.tcp_woken_at.unwrap_or(ts_ms).min(ts_ms);
                if let Some((t, recent)) = self.fast.as_ref().and_then(|f| f.tcp_before(since)) {
                    tcp::rates_into(&recent, (ts_ms - t) as f64 / 1000.0, &mut tcp_now);
                }
            }
        }
        self.prev.tcp = tcp_now.iter().filter(|(k, _)| !k.ends_with("_per_s")).map(|(k, v)| (k.clone(), *v)).collect();
        s.metrics.extend(tcp_now);

        self.tcp_woken_at = None;

        // Sockets: reading the tables makes the kernel walk its whole TCP hash table (about
        // 3 ms per file here, whatever the socket count), so they are read every
        // `socket_scan_every` samples, with the per-process fd scans that need them.
        let scan = woken.is_empty() && self.samples % self.socket_scan_every == 0 || self.prev.sockets.is_none();
        if woken.is_empty() {
            self.samples += 1;
        }
        if scan {
            self.prev.sockets = Some(self.read_sockets(&mut s));
        }
        let empty = SocketScan::default();
        let sock = self.prev.sockets.take().unwrap_or(empty);
        s.socket_source = sock.source;
        if sock.ok {
            sockets::counts_into(&sock.counts, &mut s.metrics);
            s.tcp_peers = sock.peers.clone();
        } else {
            s.unavailable.insert("sock".into(), "no readable /proc/net/tcp table".into());
        }

        // Processes
        self.read_processes(&mut s, boot_time, secs, &sock.inodes, scan);
        self.prev.sockets = Some(sock);

        // Declared files
        self.files.sample(&mut s);
        // Probes and programs: their latest results (absent until each has reported).
        if let Some(b) = &self.board {
            b.merge_into(&mut s.metrics);
        }

        // eBPF, last: the sock family names units from the process list.
        if let Some(e) = &mut self.ebpf {
            e.sample(&mut s);
        }
        self.prev.ts_ms = ts_ms;
        if let Some(f) = &self.fast {
            f.baseline(&s);
        }
        self.held.sweep();
        s
    }

    fn read_sockets(&mut self, s: &mut Snapshot) -> SocketScan {
        let (table, ok, source) = match self.dump_netlink(s) {
            Some(table) => (table, true, "netlink"),
            None => {
                let (table, ok) = sockets::from_text(&self.roots.proc, &mut s.errors);
                (table, ok, "procfs")
            }
        };
        SocketScan { ok, source, counts: table.counts, peers: table.top_peers(), inodes: table.inodes }
    }

    /// The socket table over netlink; `None` where netlink is not the source, or when this
    /// dump failed (then the text tables tell the same truth at a higher cost).
    fn dump_netlink(&mut self, s: &mut Snapshot) -> Option<sockets::SocketTable> {
        let SocketSource::Netlink(slot) = &mut self.sockets else { return None };
        let dumped = match slot {
            Some(d) => sockets::from_netlink(d),
            None => sock_diag::SockDiag::open().and_then(|d| sockets::from_netlink(slot.insert(d))),
        };
        dumped
            .map_err(|e| {
                // The socket may hold the rest of the dump: a new one at the next scan.
                *slot = None;
                tracing::warn!(message = "Netlink socket dump failed; /proc/net/tcp{,6} for this scan.", error_code = e.code(), error = %e);
                s.errors.push(e.to_string());
            })
            .ok()
    }

    fn read_processes(&mut self, s: &mut Snapshot, boot_time: u64, secs: f64, inodes: &sockets::InodeStates, scan_fds: bool) {
        let Ok(dir) = std::fs::read_dir(&self.roots.proc) else {
            s.unavailable.insert("proc".into(), "process table not readable".into());
            return;
        };
        let mut ticks = HashMap::new();
        let mut cgroups = BTreeMap::new();
        let cx = ProcContext {
            boot_time,
            clk_tck: self.clk_tck,
            page_size: self.page_size,
            elapsed_secs: secs,
            uptime_secs: self.held.read_text(&self.roots.proc.join("uptime")).ok().and_then(|t| cpu::parse_uptime(&t)),
            prev: &self.prev.procs,
            sockets: inodes,
            scan_fds,
        };
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) else { continue };
            match process::read_process(&entry.path(), pid, &cx, &mut self.held, &mut s.errors) {
                Ok(Some((info, memo))) => {
                    if let (Some(u), Some(cg)) = (&info.unit, &memo.cgroup) {
                        cgroups.entry(u.clone()).or_insert(cg.clone());
                    }
                    ticks.insert(pid, memo);
                    s.processes.push(info);
                }
                Ok(None) => {}
                Err(e) => s.errors.push(e.to_string()),
            }
        }
        s.processes.sort_by_key(|p| p.pid);
        process::derive_tree(&mut s.processes);
        self.prev.procs = ticks;
        s.units = process::units_of(&s.processes);
        for (unit, u) in s.units.iter_mut() {
            // The unit's cgroup is the path up to and including the unit's own component.
            let Some(cg) = cgroups.get(unit) else { continue };
            let Some(end) = cg.find(unit.as_str()) else { continue };
            let path = self.roots.sys.join("fs/cgroup").join(cg[..end + unit.len()].trim_start_matches('/')).join("memory.current");
            u.memory_bytes = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse().ok());
        }
    }
}

fn fail(s: &mut Snapshot, family: &str, e: ParseError) {
    s.unavailable.insert(family.to_string(), e.to_string());
    s.errors.push(e.to_string());
}

impl Snapshot {
    /// The metric, if this node has it.
    pub fn metric(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).copied()
    }
}
