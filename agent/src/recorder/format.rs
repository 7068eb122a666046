//! The recording's on-disk format, both directions: the segment header, the block frame
//! (length, CRC-32, deflate payload) and the delta encoding of frames, so that the writer's
//! [`Encoder`] and the reader's [`Decoder`] sit side by side and cannot drift.
//!
//! A segment is `MAGIC` + version (u32 LE), then blocks: `len: u32 LE`, `crc32: u32 LE` of the
//! payload, `payload`: a raw deflate stream of postcard-encoded [`FrameRec`]s back to back. The
//! first frame of a segment is a key frame (everything against an empty state); each next one
//! carries only what changed since the previous frame: metric values (key indices into a
//! per-segment key table, values as the XOR of their bits with the previous value, zero bytes at
//! either end dropped), processes new (whole), changed (by their index in the previous frame's
//! list, gap-coded, only the fields that changed, RSS as a difference) and gone (by index), units
//! set and gone, and mounts, peers, eBPF entries, unavailable and errors whole when changed.
//! Bump [`VERSION`] whenever this or a recorded signal type changes shape, and keep the older
//! shapes readable (`format/v2.rs`: the frames of version 2, converted on read).
//!
//! Version 3 added each process's `ppid` and `fd_limit`. What the process tree derives
//! (`children`, `zombie_children`, `rss_tree_bytes`, `fds_pct`) is not recorded: the [`Decoder`]
//! derives it with the sampler's own function (`signals::process::derive_tree`).

use super::RecorderError;
use crate::signals::ebpf::{sched::RunqEntry, tcp::RetransEntry};
use crate::signals::process::{ProcessInfo, UnitInfo};
use crate::signals::{disk::Mount, sockets::PeerInfo, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const MAGIC: &[u8; 8] = b"MEDICREC";
pub const VERSION: u32 = 3;
/// The oldest version this build reads.
pub const OLDEST_READ: u32 = 2;

mod v2;
pub const HEADER_LEN: u64 = 12;
/// Length and CRC before each block.
pub const BLOCK_HEADER_LEN: u64 = 8;
/// Longest encoded frame the writer records (a block holds less than [`BLOCK_TARGET`] before
/// it, so a raw block stays under 17 MiB, its deflate stream under [`MAX_BLOCK_BYTES`]).
pub const MAX_FRAME_BYTES: usize = 16 << 20;
/// Longest compressed block a reader accepts.
pub const MAX_BLOCK_BYTES: u32 = 32 << 20;
/// Longest decompressed block a reader accepts (a deflate bomb stops there).
pub const MAX_RAW_BYTES: usize = 64 << 20;
/// Metric keys one segment may name (the writer starts a new segment at half).
pub const MAX_KEYS: usize = 1 << 20;
/// The writer closes a block at this many raw bytes, flush time or not.
pub const BLOCK_TARGET: usize = 1 << 20;
/// Segment files are `rec-<first ts_ms, 15 digits>[-<n>].mrec`.
pub const EXT: &str = "mrec";

pub fn header() -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// Checks a segment's first bytes; its format version.
pub fn check_header(path: &Path, h: &[u8]) -> Result<u32, RecorderError> {
    let fmt = |reason: String| RecorderError::Format { path: path.to_path_buf(), reason };
    if h.len() < HEADER_LEN as usize || &h[..8] != MAGIC {
        return Err(fmt("bad magic".into()));
    }
    let v = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if !(OLDEST_READ..=VERSION).contains(&v) {
        return Err(fmt(format!("format version {v}, this medic reads {OLDEST_READ} to {VERSION}")));
    }
    Ok(v)
}

/// Decodes the next frame of a segment of format `version` from `buf`: the frame (in this
/// version's shape) and the bytes after it.
pub fn take_frame(version: u32, buf: &[u8]) -> Result<(FrameRec, &[u8]), postcard::Error> {
    if version == 2 {
        let (old, rest) = postcard::take_from_bytes::<v2::FrameRec>(buf)?;
        return Ok((old.into(), rest));
    }
    postcard::take_from_bytes::<FrameRec>(buf)
}

/// The block frame around a compressed payload.
pub fn block(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + BLOCK_HEADER_LEN as usize);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A segment's file name for its first frame's time.
pub fn segment_name(ts_ms: i64, n: u32) -> String {
    let ts = ts_ms.max(0);
    if n == 0 {
        format!("rec-{ts:015}.{EXT}")
    } else {
        format!("rec-{ts:015}-{n}.{EXT}")
    }
}

/// (first ts_ms, n) from a segment's file name; `None` for any other file.
pub fn parse_segment_name(name: &str) -> Option<(i64, u32)> {
    let stem = name.strip_prefix("rec-")?.strip_suffix(&format!(".{EXT}"))?;
    let (ts, n) = match stem.split_once('-') {
        Some((ts, n)) => (ts, n.parse().ok()?),
        None => (stem, 0),
    };
    if ts.len() != 15 || !ts.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((ts.parse().ok()?, n))
}

/// The segments in `dir`, oldest first: (first ts_ms, path, size).
pub fn list_segments(dir: &Path) -> Result<Vec<(i64, u32, PathBuf, u64)>, RecorderError> {
    let mut out = Vec::new();
    let rd = std::fs::read_dir(dir).map_err(|e| RecorderError::io(dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| RecorderError::io(dir, e))?;
        let Some((ts, n)) = entry.file_name().to_str().and_then(parse_segment_name) else { continue };
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            out.push((ts, n, entry.path(), meta.len()));
        }
    }
    out.sort_by_key(|s| (s.0, s.1));
    Ok(out)
}

const SOCKET_SOURCES: [&str; 3] = ["", "netlink", "procfs"];

/// One frame as stored. `Vec`s are empty and `Option`s `None` where nothing changed.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FrameRec {
    ts_ms: i64,
    /// What woke the tick (`Wake::to_byte`: 0 none, 1 every class, as version 3's bool).
    forced: u8,
    /// Keys appended to the segment's key table.
    new_keys: Vec<String>,
    /// Indices of the metrics set (new or changed), ascending, as gaps from the previous one
    /// (the first from 0); their values are in `values`, in the same order.
    set: Vec<u32>,
    values: Vec<u8>,
    /// Indices of metrics gone, gap-coded like `set`.
    gone: Vec<u32>,
    /// The whole process list (a key frame, or a list not sorted by (pid, start time)).
    procs: Option<Vec<ProcessInfo>>,
    /// Processes of the previous frame's list that changed, by their index in it (gap-coded).
    procs_set: Vec<ProcRec>,
    /// Processes new since the previous frame, whole.
    procs_new: Vec<ProcessInfo>,
    /// Indices in the previous frame's list of the processes gone, gap-coded.
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

impl FrameRec {
    pub fn ts_ms(&self) -> i64 {
        self.ts_ms
    }

    /// Each part of this frame postcard-encoded on its own, process changes split by field:
    /// for the benchmark's breakdown of where a recording's bytes go (agent/benches/recorder.rs).
    pub fn parts(&self) -> Vec<(&'static str, Vec<u8>)> {
        fn enc<T: Serialize + ?Sized>(v: &T) -> Vec<u8> {
            postcard::to_allocvec(v).unwrap_or_default()
        }
        let mut out = vec![
            ("header (ts, forced)", enc(&(self.ts_ms, self.forced))),
            ("metric keys (new)", enc(&self.new_keys)),
            ("metric set (indices)", enc(&self.set)),
            ("metric values", enc(&self.values)),
            ("metric gone", enc(&self.gone)),
            ("procs (whole list)", enc(&self.procs)),
            ("procs new", enc(&self.procs_new)),
            ("procs gone", enc(&self.procs_gone)),
            ("units", enc(&(&self.units_set, &self.units_gone))),
            ("mounts", enc(&self.mounts)),
            ("tcp peers, socket source", enc(&(&self.tcp_peers, self.socket_source))),
            ("ebpf retrans", enc(&self.ebpf_retrans)),
            ("ebpf runq", enc(&self.ebpf_runq)),
            ("unavailable, errors", enc(&(&self.unavailable, &self.errors))),
        ];
        out.push(("proc: count, index", enc(&(self.procs_set.len(), self.procs_set.iter().map(|r| r.at).collect::<Vec<_>>()))));
        macro_rules! field {
            ($($f:ident),*) => { $( out.push((concat!("proc: ", stringify!($f)), enc(&self.procs_set.iter().map(|r| &r.$f).collect::<Vec<_>>()))); )* };
        }
        field!(name, cmdline, unit, cpu_pct, rss_delta, fds, threads, state, tcp, ppid, fd_limit);
        out
    }
}

/// A process of the previous frame that changed: its index there (as the gap from the previous
/// change's), and the fields that changed; RSS as the difference from its previous value.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ProcRec {
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
    ppid: Option<i64>,
    fd_limit: Option<Option<u64>>,
}

fn changed<T: PartialEq + Clone>(old: Option<&T>, new: &T) -> Option<T> {
    match old {
        Some(o) if o == new => None,
        _ => Some(new.clone()),
    }
}

/// What changed in a process kept from the previous frame (at gap `at`), if anything.
fn proc_delta(at: u32, o: &ProcessInfo, p: &ProcessInfo) -> Option<ProcRec> {
    let r = ProcRec {
        at,
        name: changed(Some(&o.name), &p.name),
        cmdline: changed(Some(&o.cmdline), &p.cmdline),
        unit: changed(Some(&o.unit), &p.unit),
        cpu_pct: (bits(o.cpu_pct) != bits(p.cpu_pct)).then_some(p.cpu_pct),
        rss_delta: (o.rss_bytes != p.rss_bytes).then(|| p.rss_bytes.wrapping_sub(o.rss_bytes) as i64),
        fds: changed(Some(&o.fds), &p.fds),
        threads: changed(Some(&o.threads), &p.threads),
        state: changed(Some(&o.state), &p.state),
        tcp: changed(Some(&o.tcp), &p.tcp),
        ppid: changed(Some(&o.ppid), &p.ppid),
        fd_limit: changed(Some(&o.fd_limit), &p.fd_limit),
    };
    let same = r.name.is_none()
        && r.cmdline.is_none()
        && r.unit.is_none()
        && r.cpu_pct.is_none()
        && r.rss_delta.is_none()
        && r.fds.is_none()
        && r.threads.is_none()
        && r.state.is_none()
        && r.tcp.is_none()
        && r.ppid.is_none()
        && r.fd_limit.is_none();
    (!same).then_some(r)
}

/// Floats are compared by their bits, so that a change between 0.0 and -0.0 is recorded too.
fn bits(v: Option<f64>) -> Option<u64> {
    v.map(f64::to_bits)
}

fn unit_eq(a: &UnitInfo, b: &UnitInfo) -> bool {
    a.cpu_pct.to_bits() == b.cpu_pct.to_bits() && a == b
}

fn runq_eq(a: &[RunqEntry], b: &[RunqEntry]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x == y && bits(x.p50_us) == bits(y.p50_us) && bits(x.p99_us) == bits(y.p99_us) && bits(x.total_p99_us) == bits(y.total_p99_us)
        })
}

fn proc_key(p: &ProcessInfo) -> (i64, u64) {
    (p.pid, p.start_time)
}

fn sorted(procs: &[ProcessInfo]) -> bool {
    procs.windows(2).all(|w| proc_key(&w[0]) < proc_key(&w[1]))
}

/// A value as the XOR of its bits with the previous value's: one byte of (leading zero bytes
/// << 4 | trailing zero bytes), then the bytes between. A counter that moved a little, or an
/// integer-valued float, costs 2 to 4 bytes instead of 8.
fn put_value(out: &mut Vec<u8>, x: u64) {
    let lead = (x.leading_zeros() / 8) as usize;
    let trail = if x == 0 { 0 } else { (x.trailing_zeros() / 8) as usize };
    out.push(((lead as u8) << 4) | trail as u8);
    out.extend_from_slice(&x.to_be_bytes()[lead..8 - trail]);
}

fn take_value(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let h = *buf.get(*pos)?;
    let (lead, trail) = ((h >> 4) as usize, (h & 15) as usize);
    if lead + trail > 8 {
        return None;
    }
    let n = 8 - lead - trail;
    let bytes = buf.get(*pos + 1..*pos + 1 + n)?;
    *pos += 1 + n;
    let mut be = [0u8; 8];
    be[lead..8 - trail].copy_from_slice(bytes);
    Some(u64::from_be_bytes(be))
}

/// Gap-codes ascending indices.
fn gaps(sorted_idx: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut prev = 0;
    sorted_idx
        .map(|i| {
            let g = i - prev;
            prev = i;
            g
        })
        .collect()
}

/// The writer's side: what the previous frame of this segment held.
#[derive(Default)]
pub struct Encoder {
    index: HashMap<String, u32>,
    /// By key index: the value's bits in the previous frame, or `None` if absent from it.
    vals: Vec<Option<u64>>,
    /// Frame number in which each key was last seen.
    seen: Vec<u64>,
    frames: u64,
    prev: Option<Snapshot>,
}

impl Encoder {
    /// Keys in this segment's table.
    pub fn keys(&self) -> usize {
        self.vals.len()
    }

    /// The frame for `s`, against the previous one (a key frame for the first).
    pub fn encode(&mut self, s: &Snapshot, forced: crate::signals::wake::Wake) -> FrameRec {
        self.frames += 1;
        let mut f = FrameRec { ts_ms: s.ts_ms, forced: forced.to_byte(), ..Default::default() };

        let mut set: Vec<(u32, u64)> = Vec::new();
        for (k, v) in &s.metrics {
            let bits = v.to_bits();
            let i = match self.index.get(k) {
                Some(&i) => i,
                None => {
                    let i = self.vals.len() as u32;
                    self.index.insert(k.clone(), i);
                    self.vals.push(None);
                    self.seen.push(0);
                    f.new_keys.push(k.clone());
                    i
                }
            };
            let slot = &mut self.vals[i as usize];
            if *slot != Some(bits) {
                set.push((i, bits ^ slot.unwrap_or(0)));
                *slot = Some(bits);
            }
            self.seen[i as usize] = self.frames;
        }
        set.sort_unstable_by_key(|e| e.0);
        f.set = gaps(set.iter().map(|e| e.0));
        for (_, x) in &set {
            put_value(&mut f.values, *x);
        }
        let mut gone = Vec::new();
        for (i, slot) in self.vals.iter_mut().enumerate() {
            if slot.is_some() && self.seen[i] != self.frames {
                *slot = None;
                gone.push(i as u32);
            }
        }
        f.gone = gaps(gone.into_iter());

        let prev = self.prev.take();
        let p = prev.as_ref();
        match p {
            Some(p) if sorted(&p.processes) && sorted(&s.processes) => {
                let (mut a, mut b) = (p.processes.iter().enumerate().peekable(), s.processes.iter().peekable());
                // The previous change's and the previous gone process's index, for the gaps.
                let (mut set_at, mut gone_at) = (0u32, 0u32);
                loop {
                    match (a.peek(), b.peek()) {
                        (Some((i, x)), Some(y)) if proc_key(x) == proc_key(y) => {
                            let i = *i as u32;
                            if let Some(r) = proc_delta(i - set_at, x, y) {
                                f.procs_set.push(r);
                                set_at = i;
                            }
                            a.next();
                            b.next();
                        }
                        (Some((i, x)), y) if y.is_none_or(|y| proc_key(x) < proc_key(y)) => {
                            f.procs_gone.push(*i as u32 - gone_at);
                            gone_at = *i as u32;
                            a.next();
                        }
                        (_, Some(y)) => {
                            f.procs_new.push((*y).clone());
                            b.next();
                        }
                        _ => break,
                    }
                }
            }
            _ => f.procs = Some(s.processes.clone()),
        }
        for (name, u) in &s.units {
            if !p.and_then(|p| p.units.get(name)).is_some_and(|o| unit_eq(o, u)) {
                f.units_set.push((name.clone(), u.clone()));
            }
        }
        if let Some(p) = p {
            f.units_gone = p.units.keys().filter(|k| !s.units.contains_key(*k)).cloned().collect();
        }
        f.mounts = changed(p.map(|p| &p.mounts), &s.mounts);
        if p.map(|p| p.socket_source) != Some(s.socket_source) {
            f.socket_source = Some(SOCKET_SOURCES.iter().position(|x| *x == s.socket_source).unwrap_or(0) as u8);
        }
        f.tcp_peers = changed(p.map(|p| &p.tcp_peers), &s.tcp_peers);
        f.ebpf_retrans = changed(p.map(|p| &p.ebpf_retrans), &s.ebpf_retrans);
        if !p.is_some_and(|p| runq_eq(&p.ebpf_runq, &s.ebpf_runq)) {
            f.ebpf_runq = Some(s.ebpf_runq.clone());
        }
        f.unavailable = changed(p.map(|p| &p.unavailable), &s.unavailable);
        f.errors = changed(p.map(|p| &p.errors), &s.errors);
        self.prev = Some(s.clone());
        f
    }
}

/// The reader's side: the segment's key table and the previous frame, to apply deltas to.
#[derive(Default)]
pub struct Decoder {
    keys: Vec<String>,
    vals: Vec<Option<u64>>,
    prev: Snapshot,
}

fn ungap(g: &[u32], limit: usize) -> Option<Vec<usize>> {
    let mut out = Vec::with_capacity(g.len().min(limit));
    let mut at: usize = 0;
    for (n, d) in g.iter().enumerate() {
        at = if n == 0 { *d as usize } else { at.checked_add(*d as usize)? };
        if at >= limit || (n > 0 && *d == 0) {
            return None;
        }
        out.push(at);
    }
    Some(out)
}

impl Decoder {
    /// Applies one frame; `Err` carries why it does not decode.
    pub fn apply(&mut self, f: FrameRec) -> Result<(Snapshot, crate::signals::wake::Wake), String> {
        if self.keys.len() + f.new_keys.len() > MAX_KEYS {
            return Err(format!("more than {MAX_KEYS} metric keys in one segment"));
        }
        self.vals.extend(std::iter::repeat_n(None, f.new_keys.len()));
        self.keys.extend(f.new_keys);
        let set = ungap(&f.set, self.keys.len()).ok_or("metric index out of range")?;
        let mut pos = 0;
        for i in set {
            let x = take_value(&f.values, &mut pos).ok_or("metric value truncated")?;
            self.vals[i] = Some(self.vals[i].unwrap_or(0) ^ x);
        }
        if pos != f.values.len() {
            return Err("trailing metric value bytes".into());
        }
        for i in ungap(&f.gone, self.keys.len()).ok_or("gone metric index out of range")? {
            self.vals[i] = None;
        }
        let mut s = std::mem::take(&mut self.prev);
        s.ts_ms = f.ts_ms;
        s.metrics = self.keys.iter().zip(&self.vals).filter_map(|(k, v)| Some((k.clone(), f64::from_bits((*v)?)))).collect();

        let procs_changed = f.procs.is_some() || !f.procs_set.is_empty() || !f.procs_gone.is_empty() || !f.procs_new.is_empty();
        if let Some(all) = f.procs {
            s.processes = all;
        } else if !f.procs_set.is_empty() || !f.procs_gone.is_empty() || !f.procs_new.is_empty() {
            let n = s.processes.len();
            let at = ungap(&f.procs_set.iter().map(|r| r.at).collect::<Vec<_>>(), n).ok_or("process index out of range")?;
            for (i, r) in at.into_iter().zip(f.procs_set) {
                let p = &mut s.processes[i];
                macro_rules! take {
                    ($($f:ident),*) => { $( if let Some(v) = r.$f { p.$f = v; } )* };
                }
                take!(name, cmdline, unit, cpu_pct, fds, threads, state, tcp, ppid, fd_limit);
                if let Some(d) = r.rss_delta {
                    p.rss_bytes = p.rss_bytes.wrapping_add(d as u64);
                }
            }
            let gone = ungap(&f.procs_gone, n).ok_or("gone process index out of range")?;
            let mut keep = vec![true; n];
            for i in gone {
                keep[i] = false;
            }
            let mut kept = keep.iter();
            s.processes.retain(|_| kept.next().copied().unwrap_or(true));
            if !f.procs_new.is_empty() {
                s.processes.extend(f.procs_new);
                s.processes.sort_by_key(proc_key);
            }
        }
        if procs_changed {
            crate::signals::process::derive_tree(&mut s.processes);
        }
        for u in &f.units_gone {
            s.units.remove(u);
        }
        s.units.extend(f.units_set);
        if let Some(m) = f.mounts {
            s.mounts = m;
        }
        if let Some(i) = f.socket_source {
            s.socket_source = SOCKET_SOURCES.get(i as usize).copied().unwrap_or("");
        }
        if let Some(v) = f.tcp_peers {
            s.tcp_peers = v;
        }
        if let Some(v) = f.ebpf_retrans {
            s.ebpf_retrans = v;
        }
        if let Some(v) = f.ebpf_runq {
            s.ebpf_runq = v;
        }
        if let Some(v) = f.unavailable {
            s.unavailable = v;
        }
        if let Some(v) = f.errors {
            s.errors = v;
        }
        self.prev = s.clone();
        Ok((s, crate::signals::wake::Wake::from_byte(f.forced)))
    }
}
