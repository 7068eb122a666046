//! The signal history: one time series per metric key, kept for a horizon, with windowed
//! aggregates (avg, min, max, rate, delta, percentile) and the helpers playbooks build on
//! ("sustained for", "X of the last Y"); and what happens when it is full.
//!
//! **Storage.** The time of each push (a tick) is kept once, in a ring every series shares. A
//! series is its value at each tick, run-length encoded as (value, count) runs, with NaN runs for
//! ticks where it had no value; its last run is held inline. Most series on a node are constant
//! (an idle process's CPU, fds and RSS), and a constant series allocates nothing whatever the
//! horizon. Aggregates see every (tick, value) point, so they are exact.
//!
//! **Coverage.** The ring keeps every tick inside the horizon plus the newest one before it (the
//! anchor, if within two intervals of the horizon), so a window as long as the horizon is
//! covered even when ticks jitter or one is skipped. A window aggregate over a series that does
//! not reach back to `now - window` (too young, or refused, or evicted) is `None`:
//! *unavailable*, never a value computed over less than the window, and never a silent `false`.
//!
//! **Bounds.** At most `max_series` series of at most `max_runs` runs (`horizon / interval + 3`:
//! the points of a horizon, the anchor, one tick of jitter) of [`RUN_BYTES`] each: the hard bound
//! [`History::bound_bytes`]. Ticks closer than the interval (an eBPF event wakes a tick at once)
//! are all kept, the ring holding twice the nominal count; a series that changes on every one of
//! them loses its oldest runs first, so the bound holds.
//!
//! **When full.** A series a playbook reads is never evicted. A new series at the cap evicts an
//! unread per-process series (`proc.<pid>.…`, `ebpf.proc.<pid>.…`), the youngest first, unless it
//! is an unread per-process series itself; a new node-wide (unit, mount, cgroup) series that a
//! playbook reads may also evict an unread node-wide one. Otherwise it is refused. So neither
//! what playbooks read nor node-wide series are starved by processes, and many processes read
//! by a playbook do not starve node-wide series either. A read of one process's series marks
//! that field for every process (`proc.*.cpu_pct`): a playbook reads the next hot process's
//! series the same way. Series of processes that exited, or whose pid now belongs to another
//! process, go at the first push whose process list no longer has them, and processes seen
//! before are recorded before newcomers, so the room exits free goes first to a series refused
//! earlier. Refusals and evictions are counted, the last keys kept for `medic status`, and a
//! warning logged at most once a minute.

use super::process::ProcessInfo;
use super::Snapshot;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroU32;
use std::sync::Mutex;

/// Bytes one run costs: its value and its repeat count.
pub const RUN_BYTES: usize = std::mem::size_of::<Run>();
/// Refused (and evicted) keys kept for `medic status`.
const LAST_KEYS: usize = 8;
/// Example keys named in one warning.
const WARN_EXAMPLES: usize = 5;
/// A refusal or a live eviction is logged at most this often (on the snapshots' clock).
const WARN_EVERY_MS: i64 = 60_000;
/// Keys and patterns remembered as read; a playbook reading more distinct keys than this
/// (beyond the process generalisation) gets no priority for the rest.
const MAX_READS: usize = 4096;
/// A read not renewed for this long (or the horizon, if longer) is forgotten, so a playbook
/// that was unloaded stops holding series.
const READ_TTL_MS: i64 = 3_600_000;

/// A comparison used by the threshold helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Cmp {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            ">" => Self::Gt,
            ">=" => Self::Ge,
            "<" => Self::Lt,
            "<=" => Self::Le,
            "==" => Self::Eq,
            "!=" => Self::Ne,
            _ => return None,
        })
    }
    pub fn test(self, a: f64, b: f64) -> bool {
        match self {
            Self::Gt => a > b,
            Self::Ge => a >= b,
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Eq => a == b,
            Self::Ne => a != b,
        }
    }
}

/// The series that may be evicted (no playbook reads them), the first to go first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Victim {
    /// A per-process series.
    Process,
    /// A node-wide, unit, mount or cgroup series.
    Node,
}

/// What a new series may evict when the history is full: an unread per-process series when it
/// is read or is not per-process itself (so neither playbooks' reads nor node-wide series are
/// starved by processes); also an unread node-wide one when it is a node-wide series a playbook
/// reads. A series a playbook reads is never evicted.
fn may_evict(read: bool, per_process: bool) -> Option<Victim> {
    match (read, per_process) {
        (false, true) => None,
        (true, true) | (false, false) => Some(Victim::Process),
        (true, false) => Some(Victim::Node),
    }
}

/// `proc.<pid>.<field>` and `ebpf.proc.<pid>.<field>`: the pid, and where it is in the key.
fn process_key(key: &str) -> Option<(NonZeroU32, usize, usize)> {
    for prefix in ["proc.", "ebpf.proc."] {
        if let Some(rest) = key.strip_prefix(prefix) {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits > 0 && rest[digits..].starts_with('.') {
                let pid = rest[..digits].parse::<u32>().ok().and_then(NonZeroU32::new)?;
                return Some((pid, prefix.len(), prefix.len() + digits));
            }
        }
    }
    None
}

/// What a read of `key` marks: the key, with a process's pid generalised (`proc.*.cpu_pct`).
pub fn read_class(key: &str) -> Cow<'_, str> {
    match process_key(key) {
        Some((_, at, end)) => Cow::Owned(format!("{}*{}", &key[..at], &key[end..])),
        None => Cow::Borrowed(key),
    }
}

/// `*` matches any run of characters (dots included: mount points and unit names have them).
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// What playbooks read, shared by every evaluation through the `Arc<History>`.
#[derive(Debug, Clone)]
struct Reads {
    /// Keys and patterns → when last read (ms, the snapshots' clock).
    at: HashMap<String, i64>,
    /// The entries of `at` with a `*`, matched as globs.
    globs: Vec<String>,
    /// Changes when an entry is added or forgotten, so cached classes are recomputed.
    generation: u32,
}

impl Default for Reads {
    fn default() -> Self {
        Self { at: HashMap::new(), globs: Vec::new(), generation: 1 }
    }
}

impl Reads {
    fn mark(&mut self, what: Cow<'_, str>, now: i64) {
        if let Some(t) = self.at.get_mut(what.as_ref()) {
            *t = (*t).max(now);
            return;
        }
        if self.at.len() >= MAX_READS {
            return;
        }
        if what.contains('*') {
            self.globs.push(what.to_string());
        }
        self.at.insert(what.into_owned(), now);
        self.generation = self.generation.wrapping_add(1).max(1);
    }

    fn covers(&self, key: &str) -> bool {
        self.at.contains_key(read_class(key).as_ref()) || self.globs.iter().any(|g| glob(g, key))
    }

    fn expire(&mut self, before: i64) {
        let n = self.at.len();
        self.at.retain(|_, t| *t >= before);
        if self.at.len() != n {
            self.globs.retain(|g| self.at.contains_key(g));
            self.generation = self.generation.wrapping_add(1).max(1);
        }
    }
}

/// `n` ticks of value `v` (NaN: no value). Packed: 10 bytes instead of 16, in one buffer so that
/// a push touches one cache line at each end of it.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed)]
struct Run {
    v: f64,
    n: u16,
}

/// One series: its runs from tick `start` to tick `end` (absolute tick numbers).
#[derive(Debug, Clone)]
struct Series {
    start: u64,
    /// The last tick with a value.
    end: u64,
    /// The runs before the last one, oldest first; a gap is a NaN run.
    runs: VecDeque<Run>,
    /// The last run, held inline (never a gap): a constant series never touches, nor
    /// allocates, its buffers.
    last: f64,
    last_n: u16,
    /// The process the series belongs to, for per-process keys.
    pid: Option<NonZeroU32>,
    /// Whether a playbook reads it, as of the reads' `generation` (0: not yet known).
    read: bool,
    read_generation: u32,
}

/// Grows a run buffer by doubling without going past `max` (a deque would double to a power of
/// two).
fn reserve<T>(d: &mut VecDeque<T>, max: usize) {
    if d.len() == d.capacity() {
        d.reserve_exact(d.capacity().max(1).min(max.saturating_sub(d.len())).max(1));
    }
}

impl Series {
    fn new(tick: u64, v: f64, pid: Option<NonZeroU32>) -> Self {
        Self { start: tick, end: tick, runs: VecDeque::new(), last: v, last_n: 1, pid, read: false, read_generation: 0 }
    }

    fn run_count(&self) -> usize {
        self.runs.len() + 1
    }

    /// Appends `v` at `tick`, a gap before it for the ticks the series had no value.
    fn append(&mut self, tick: u64, v: f64, max_runs: usize) {
        if tick <= self.end {
            return; // the same key twice in one snapshot: the first value stands
        }
        let gap = tick - self.end - 1;
        self.end = tick;
        // Bitwise, so that -0.0 and 0.0 stay apart.
        if gap == 0 && v.to_bits() == self.last.to_bits() && self.last_n < u16::MAX {
            self.last_n += 1;
            return;
        }
        self.push_run(self.last, u64::from(self.last_n), max_runs);
        self.push_run(f64::NAN, gap, max_runs);
        (self.last, self.last_n) = (v, 1);
        self.drop_leading_gap();
    }

    /// Adds `n` ticks of `v` after the buffered runs, the oldest run going when there are
    /// `max_runs` with the last one.
    fn push_run(&mut self, v: f64, mut n: u64, max_runs: usize) {
        if let Some(b) = self.runs.back_mut().filter(|b| { b.v }.to_bits() == v.to_bits()) {
            let add = n.min(u64::from(u16::MAX - b.n));
            b.n += add as u16;
            n -= add;
        }
        while n > 0 {
            if self.run_count() >= max_runs {
                self.pop_run();
            }
            let add = n.min(u64::from(u16::MAX));
            reserve(&mut self.runs, max_runs);
            self.runs.push_back(Run { v, n: add as u16 });
            n -= add;
        }
    }

    fn pop_run(&mut self) {
        if let Some(r) = self.runs.pop_front() {
            self.start += u64::from(r.n);
        }
    }

    /// A series starts with a value, so that its start says how far back it reaches.
    fn drop_leading_gap(&mut self) {
        while self.runs.front().is_some_and(|r| { r.v }.is_nan()) {
            self.pop_run();
        }
    }

    /// Forgets the ticks before `base`; false when nothing is left.
    fn trim(&mut self, base: u64) -> bool {
        if self.end < base {
            return false;
        }
        if self.start >= base {
            return true;
        }
        while self.start < base {
            let need = base - self.start;
            match self.runs.front_mut() {
                Some(r) if need >= u64::from(r.n) => self.pop_run(),
                Some(r) => {
                    r.n -= need as u16;
                    self.start = base;
                }
                // Only the last run is left, and it reaches `end`, at or after `base`.
                None => {
                    self.last_n -= need as u16;
                    self.start = base;
                }
            }
        }
        self.drop_leading_gap();
        // A series that varied and then settled gives its buffers back.
        if self.runs.capacity() > 16 && self.runs.len() * 4 < self.runs.capacity() {
            self.runs.shrink_to(self.runs.len() * 2);
        }
        true
    }

    /// The runs, oldest first.
    fn all_runs(&self) -> impl DoubleEndedIterator<Item = (f64, u16)> + '_ {
        self.runs.iter().map(|r| (r.v, r.n)).chain(std::iter::once((self.last, self.last_n)))
    }

    /// The runs with a value clipped to ticks `[from, to)`, oldest first: (first tick, value,
    /// ticks), never empty. Aggregates that need no time work on these, a run at a time.
    fn runs_in(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, f64, u64)> + '_ {
        let mut first = self.start;
        self.all_runs().filter_map(move |(v, c)| {
            let (lo, hi) = (first.max(from), (first + u64::from(c)).min(to));
            first += u64::from(c);
            (!v.is_nan() && hi > lo).then(|| (lo, v, hi - lo))
        })
    }

    /// (tick, value) of each point in ticks `[from, to)`, oldest first.
    fn points(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, f64)> + '_ {
        self.runs_in(from, to).flat_map(|(lo, v, n)| (lo..lo + n).map(move |t| (t, v)))
    }

    /// The values of the last points at or before tick `to`, newest first.
    fn points_back(&self, to: u64) -> impl Iterator<Item = f64> + '_ {
        let mut next = self.end + 1;
        self.all_runs().rev().flat_map(move |(v, c)| {
            let first = next - u64::from(c);
            let n = if v.is_nan() { 0 } else { (to + 1).min(next).saturating_sub(first) };
            next = first;
            std::iter::repeat_n(v, n as usize)
        })
    }

    fn bytes(&self) -> usize {
        self.runs.capacity() * RUN_BYTES
    }
}

/// Counts since start, for `medic status` and the log.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HistoryCounts {
    /// Series not recorded because the history was full (a key refused on consecutive pushes
    /// counts once).
    pub refused: u64,
    /// Live series evicted to make room for a series of a higher class.
    pub evicted_live: u64,
    /// Series dropped because their process exited or its pid was reused (normal).
    pub evicted_exited: u64,
    /// The last keys refused, newest last.
    pub last_refused: VecDeque<String>,
    /// The last live keys evicted, newest last.
    pub last_evicted: VecDeque<String>,
}

/// The history as `medic status` and the `agent_started` record show it.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryStatus {
    pub series: usize,
    pub max_series: usize,
    /// Series refused at the last push.
    pub refusing_now: usize,
    /// How far back the history reaches now, in seconds.
    pub span_secs: i64,
    /// Memory held by the history now (buffers and tables, keys included).
    pub bytes: usize,
    /// The most it can hold, keys not counted (see [`History::bound_bytes`]).
    pub bound_bytes: usize,
    /// Keys and patterns playbooks read (kept first).
    pub reads: usize,
    #[serde(flatten)]
    pub counts: HistoryCounts,
}

/// What one push refused or evicted, for the rate-limited warnings.
#[derive(Debug, Clone, Default)]
struct Pending {
    refused: u64,
    refused_examples: Vec<String>,
    evicted: u64,
    evicted_examples: Vec<String>,
}

/// Bounded per-key time series (see the module note).
#[derive(Debug)]
pub struct History {
    horizon_ms: i64,
    interval_ms: i64,
    max_runs: usize,
    max_ticks: usize,
    max_series: usize,
    /// Push times, oldest first; `ticks[0]` is tick number `base`.
    ticks: VecDeque<i64>,
    base: u64,
    series: HashMap<Box<str>, Series>,
    /// The processes of the last snapshot that had any: pid → (start time, first tick seen).
    procs: HashMap<i64, (u64, u64)>,
    reads: Mutex<Reads>,
    counts: HistoryCounts,
    /// Hashes of the keys refused at the last push and at this one.
    refused_before: HashSet<u64>,
    refused_now: HashSet<u64>,
    pending: Pending,
    last_warning_ms: Option<i64>,
}

impl Clone for History {
    fn clone(&self) -> Self {
        Self {
            horizon_ms: self.horizon_ms,
            interval_ms: self.interval_ms,
            max_runs: self.max_runs,
            max_ticks: self.max_ticks,
            max_series: self.max_series,
            ticks: self.ticks.clone(),
            base: self.base,
            series: self.series.clone(),
            procs: self.procs.clone(),
            reads: Mutex::new(self.reads_lock().clone()),
            counts: self.counts.clone(),
            refused_before: self.refused_before.clone(),
            refused_now: self.refused_now.clone(),
            pending: self.pending.clone(),
            last_warning_ms: self.last_warning_ms,
        }
    }
}

fn key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

fn remember(list: &mut VecDeque<String>, key: &str) {
    if list.back().is_some_and(|k| k == key) {
        return;
    }
    list.retain(|k| k != key);
    if list.len() >= LAST_KEYS {
        list.pop_front();
    }
    list.push_back(key.to_string());
}

impl History {
    pub fn new(horizon_ms: i64, interval_ms: i64, max_series: usize) -> Self {
        let points = (horizon_ms.max(0) / interval_ms.max(1)) as usize + 1;
        let max_runs = (points + 2).max(4);
        Self {
            horizon_ms,
            interval_ms: interval_ms.max(1),
            max_runs,
            max_ticks: 2 * max_runs,
            max_series,
            ticks: VecDeque::new(),
            base: 0,
            series: HashMap::new(),
            procs: HashMap::new(),
            reads: Mutex::new(Reads::default()),
            counts: HistoryCounts::default(),
            refused_before: HashSet::new(),
            refused_now: HashSet::new(),
            pending: Pending::default(),
            last_warning_ms: None,
        }
    }

    fn reads_lock(&self) -> std::sync::MutexGuard<'_, Reads> {
        self.reads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most memory the history can hold, keys not counted: every series at its most runs,
    /// its table slot (a hash table runs at most half empty) and the tick ring.
    pub fn bound_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Box<str>, Series)>() + 1;
        self.max_series * (self.max_runs * RUN_BYTES + 2 * slot) + self.max_ticks * std::mem::size_of::<i64>()
    }

    /// The memory held now: run buffers, keys, the table, the tick ring, the process list.
    pub fn bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Box<str>, Series)>() + 1;
        let series: usize = self.series.iter().map(|(k, s)| k.len() + s.bytes()).sum();
        series
            + self.series.capacity() * slot
            + self.ticks.capacity() * std::mem::size_of::<i64>()
            + self.procs.capacity() * (std::mem::size_of::<(i64, (u64, u64))>() + 1)
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    pub fn status(&self) -> HistoryStatus {
        let span_secs = match (self.ticks.front(), self.ticks.back()) {
            (Some(a), Some(b)) => (b - a) / 1000,
            _ => 0,
        };
        HistoryStatus {
            series: self.series.len(),
            max_series: self.max_series,
            refusing_now: self.refused_before.len(),
            span_secs,
            bytes: self.bytes(),
            bound_bytes: self.bound_bytes(),
            reads: self.reads_lock().at.len(),
            counts: self.counts.clone(),
        }
    }

    /// Notes that a playbook read `key` (a process's key marks its field for every process):
    /// such series are kept first when the history is full.
    pub fn note_read(&self, key: &str, now_ms: i64) {
        self.reads_lock().mark(read_class(key), now_ms);
    }

    /// Notes keys or patterns (`unit.*.memory_bytes`) a playbook is known to read.
    pub fn note_reads(&self, patterns: &[String], now_ms: i64) {
        let mut r = self.reads_lock();
        for p in patterns {
            r.mark(read_class(p), now_ms);
        }
    }

    /// Records a snapshot: drops the series of processes that are gone and what fell out of the
    /// horizon, then records every metric. A snapshot not newer than the last is ignored.
    pub fn push(&mut self, snap: &Snapshot) {
        let ts = snap.ts_ms;
        if self.ticks.back().is_some_and(|t| *t >= ts) {
            return;
        }
        self.forget_exited(&snap.processes);
        self.ticks.push_back(ts);
        // What fell out of the horizon makes room before anything new asks for it.
        self.trim(ts);
        let tick = self.base + self.ticks.len() as u64 - 1;
        let mut victims = None;
        for (k, v) in &snap.metrics {
            self.put(&mut victims, k, tick, *v);
        }
        let mut key = String::new();
        for (name, u) in &snap.units {
            let vals = [
                ("cpu_pct", Some(u.cpu_pct)),
                ("rss_bytes", Some(u.rss_bytes as f64)),
                ("memory_bytes", u.memory_bytes.map(|m| m as f64)),
                ("processes", Some(u.processes as f64)),
                ("tcp.close_wait", Some(u.tcp.get("close_wait").copied().unwrap_or(0) as f64)),
            ];
            for (field, v) in vals {
                if let Some(v) = v {
                    key.clear();
                    key.push_str("unit.");
                    key.push_str(name);
                    key.push('.');
                    key.push_str(field);
                    self.put(&mut victims, &key, tick, v);
                }
            }
        }
        // Processes seen before go first: the room that exits freed goes to a series refused
        // earlier (a process that has lived longer) before new processes take it.
        let seen_before: Vec<bool> = snap.processes.iter().map(|p| self.procs.get(&p.pid).is_some_and(|(_, seen)| *seen < tick)).collect();
        for old in [true, false] {
            for (p, _) in snap.processes.iter().zip(&seen_before).filter(|(_, s)| **s == old) {
                use std::fmt::Write;
                key.clear();
                let _ = write!(key, "proc.{}.", p.pid);
                let stem = key.len();
                let mut put = |this: &mut Self, field: &str, v: f64| {
                    key.truncate(stem);
                    key.push_str(field);
                    this.put(&mut victims, &key, tick, v);
                };
                if let Some(c) = p.cpu_pct {
                    put(self, "cpu_pct", c);
                }
                put(self, "rss_bytes", p.rss_bytes as f64);
                if let Some(f) = p.fds {
                    put(self, "fds", f as f64);
                }
                put(self, "tcp.close_wait", p.tcp.get("close_wait").copied().unwrap_or(0) as f64);
            }
        }
        self.refused_before = std::mem::take(&mut self.refused_now);
        self.refused_now = HashSet::with_capacity(self.refused_before.len());
        self.warn(ts);
    }

    /// Drops the series of processes that left the process list or whose pid was reused (a
    /// different start time). An empty list is a failed read, not a node without processes.
    fn forget_exited(&mut self, processes: &[ProcessInfo]) {
        if processes.is_empty() {
            return;
        }
        let tick = self.base + self.ticks.len() as u64;
        let now: HashMap<i64, (u64, u64)> = processes
            .iter()
            .map(|p| {
                let seen = self.procs.get(&p.pid).filter(|(start, _)| *start == p.start_time).map_or(tick, |(_, seen)| *seen);
                (p.pid, (p.start_time, seen))
            })
            .collect();
        let gone: HashSet<u32> = self
            .procs
            .iter()
            .filter(|(pid, (start, _))| now.get(pid).is_none_or(|(s, _)| s != start))
            .filter_map(|(pid, _)| u32::try_from(*pid).ok())
            .collect();
        self.procs = now;
        if gone.is_empty() {
            return;
        }
        let before = self.series.len();
        self.series.retain(|_, s| !s.pid.is_some_and(|p| gone.contains(&p.get())));
        self.counts.evicted_exited += (before - self.series.len()) as u64;
    }

    fn put(&mut self, victims: &mut Option<Vec<(Victim, u64, Box<str>)>>, key: &str, tick: u64, v: f64) {
        if !v.is_finite() {
            return;
        }
        if let Some(s) = self.series.get_mut(key) {
            s.append(tick, v, self.max_runs);
            return;
        }
        let pid = process_key(key).map(|(pid, ..)| pid);
        // A process not in the list (the eBPF maps outlive processes) would be dropped at once.
        if pid.is_some_and(|p| !self.procs.is_empty() && !self.procs.contains_key(&i64::from(p.get()))) {
            return;
        }
        if self.series.len() >= self.max_series && !self.make_room(victims, key, pid.is_some()) {
            let h = key_hash(key);
            if self.refused_now.insert(h) && !self.refused_before.contains(&h) {
                self.counts.refused += 1;
                remember(&mut self.counts.last_refused, key);
                self.pending.refused += 1;
                if self.pending.refused_examples.len() < WARN_EXAMPLES {
                    self.pending.refused_examples.push(key.to_string());
                }
            }
            return;
        }
        self.series.insert(key.into(), Series::new(tick, v, pid));
    }

    /// Evicts an unread series that `key` may displace (see [`may_evict`]), per-process ones
    /// and the youngest first; false when there is none.
    fn make_room(&mut self, victims: &mut Option<Vec<(Victim, u64, Box<str>)>>, key: &str, per_process: bool) -> bool {
        let read = self.reads.get_mut().unwrap_or_else(|e| e.into_inner()).covers(key);
        let Some(worst) = may_evict(read, per_process) else { return false };
        let order = victims.get_or_insert_with(|| self.eviction_order());
        while let Some((class, ..)) = order.last() {
            if *class > worst {
                return false;
            }
            let (_, _, victim) = order.pop().expect("looked at");
            if self.series.remove(&victim).is_some() {
                self.counts.evicted_live += 1;
                remember(&mut self.counts.last_evicted, &victim);
                self.pending.evicted += 1;
                if self.pending.evicted_examples.len() < WARN_EXAMPLES {
                    self.pending.evicted_examples.push(victim.to_string());
                }
                return true;
            }
        }
        false
    }

    /// The series that may be evicted (unread ones), the first to go last: per-process before
    /// node-wide, then the youngest (the least history lost).
    fn eviction_order(&mut self) -> Vec<(Victim, u64, Box<str>)> {
        let reads = self.reads.get_mut().unwrap_or_else(|e| e.into_inner());
        let mut order = Vec::new();
        for (k, s) in &mut self.series {
            if s.read_generation != reads.generation {
                s.read = reads.covers(k);
                s.read_generation = reads.generation;
            }
            if !s.read {
                order.push((if s.pid.is_some() { Victim::Process } else { Victim::Node }, s.start, k.clone()));
            }
        }
        order.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        order
    }

    /// Forgets the ticks before the horizon and what only they held. The anchor (the newest
    /// tick before the horizon) stays if it is within two intervals of it (a late tick, a
    /// skipped one): after a pause (a suspended VM, a clock step) an old tick must not make a
    /// window look covered.
    fn trim(&mut self, ts: i64) {
        let cutoff = ts - self.horizon_ms;
        let mut drop = 0;
        while self.ticks.len() - drop > 1
            && (self.ticks[drop + 1] <= cutoff
                || self.ticks[drop] < cutoff - 2 * self.interval_ms
                || self.ticks.len() - drop > self.max_ticks)
        {
            drop += 1;
        }
        self.ticks.drain(..drop);
        self.base += drop as u64;
        let base = self.base;
        self.series.retain(|_, s| s.trim(base));
        self.reads.get_mut().unwrap_or_else(|e| e.into_inner()).expire(ts - READ_TTL_MS.max(self.horizon_ms));
    }

    /// Logs what this push refused or evicted, at most once a minute, with example keys.
    fn warn(&mut self, ts: i64) {
        let p = &self.pending;
        if (p.refused == 0 && p.evicted == 0) || self.last_warning_ms.is_some_and(|t| ts - t < WARN_EVERY_MS) {
            return;
        }
        let p = std::mem::take(&mut self.pending);
        self.last_warning_ms = Some(ts);
        let (series, max_series) = (self.series.len(), self.max_series);
        if p.refused > 0 {
            tracing::warn!(
                message = "Signal history full: new series refused; playbooks see them as unavailable.",
                error_code = "history_series_refused",
                refused = p.refused,
                examples = %p.refused_examples.join(", "),
                series, max_series,
                hint = "raise signals.max_series; `medic status` lists the last refused keys",
            );
        }
        if p.evicted > 0 {
            tracing::warn!(
                message = "Signal history full: live series evicted for series of a higher class.",
                error_code = "history_series_evicted",
                evicted = p.evicted,
                examples = %p.evicted_examples.join(", "),
                series, max_series,
                hint = "raise signals.max_series",
            );
        }
    }

    fn ts_of(&self, tick: u64) -> i64 {
        self.ticks[(tick - self.base) as usize]
    }

    /// Tick numbers `[from, to)` of the ticks with a time in `[start_ms, end_ms]`.
    fn ticks_between(&self, start_ms: i64, end_ms: i64) -> (u64, u64) {
        let from = self.ticks.partition_point(|t| *t < start_ms);
        let to = self.ticks.partition_point(|t| *t <= end_ms);
        (self.base + from as u64, self.base + to as u64)
    }

    /// The points of `key` within `[now - window, now]`.
    pub fn window(&self, key: &str, now: i64, window_ms: i64) -> impl Iterator<Item = (i64, f64)> + '_ {
        let (from, to) = self.ticks_between(now - window_ms, now);
        self.series.get(key).into_iter().flat_map(move |s| s.points(from, to).map(|(t, v)| (self.ts_of(t), v)))
    }

    /// The runs in the window of a series that reaches back to `now - window`, else `None`.
    fn covered(&self, key: &str, now: i64, window_ms: i64) -> Option<impl Iterator<Item = (u64, f64, u64)> + '_> {
        let s = self.series.get(key).filter(|s| self.ts_of(s.start) <= now - window_ms)?;
        let (from, to) = self.ticks_between(now - window_ms, now);
        Some(s.runs_in(from, to))
    }

    /// The latest value of `key` at or before `now`.
    pub fn latest(&self, key: &str, now: i64) -> Option<f64> {
        let s = self.series.get(key)?;
        let to = self.ticks.partition_point(|t| *t <= now).checked_sub(1)? as u64 + self.base;
        s.points_back(to).next()
    }

    /// Whether the series reaches back to `now - window` (it has a point at or before it).
    pub fn covers(&self, key: &str, now: i64, window_ms: i64) -> bool {
        self.series.get(key).is_some_and(|s| self.ts_of(s.start) <= now - window_ms)
    }

    pub fn avg(&self, key: &str, now: i64, w: i64) -> Option<f64> {
        let (mut n, mut sum) = (0u64, 0.0);
        for (_, v, c) in self.covered(key, now, w)? {
            n += c;
            // Point by point, as a list of points would add them.
            for _ in 0..c {
                sum += v;
            }
        }
        (n > 0).then(|| sum / n as f64)
    }

    pub fn min(&self, key: &str, now: i64, w: i64) -> Option<f64> {
        self.covered(key, now, w)?.map(|(_, v, _)| v).reduce(f64::min)
    }

    pub fn max(&self, key: &str, now: i64, w: i64) -> Option<f64> {
        self.covered(key, now, w)?.map(|(_, v, _)| v).reduce(f64::max)
    }

    /// The first and last points in the window (tick, value), when there are two or more.
    fn ends(&self, key: &str, now: i64, w: i64) -> Option<((u64, f64), (u64, f64))> {
        let mut runs = self.covered(key, now, w)?;
        let (t0, v0, n0) = runs.next()?;
        let (t1, v1, n1) = runs.last().unwrap_or((t0, v0, n0));
        let last = (t1 + n1 - 1, v1);
        (last.0 > t0).then_some(((t0, v0), last))
    }

    /// Last minus first value in the window. Over a window of 0, the change within an instant:
    /// 0 when the key has a value now (a sustain window set to zero keeps a playbook's "and not
    /// going down" true, rather than unknown).
    pub fn delta(&self, key: &str, now: i64, w: i64) -> Option<f64> {
        if w == 0 {
            return self.covered(key, now, 0)?.next().map(|_| 0.0);
        }
        let (first, last) = self.ends(key, now, w)?;
        Some(last.1 - first.1)
    }

    /// Change per second over the window (for counters; a counter reset reads as 0).
    pub fn rate(&self, key: &str, now: i64, w: i64) -> Option<f64> {
        let (first, last) = self.ends(key, now, w)?;
        let secs = (self.ts_of(last.0) - self.ts_of(first.0)) as f64 / 1000.0;
        (secs > 0.0).then(|| (last.1 - first.1).max(0.0) / secs)
    }

    /// Nearest-rank percentile `q` (0–100) of the values in the window.
    pub fn percentile(&self, key: &str, now: i64, w: i64, q: f64) -> Option<f64> {
        let mut v: Vec<f64> = self.covered(key, now, w)?.flat_map(|(_, v, n)| std::iter::repeat_n(v, n as usize)).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = ((q.clamp(0.0, 100.0) / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.saturating_sub(1).min(v.len() - 1)])
    }

    /// Whether every point in the window satisfies the test; `None` (unavailable) when the
    /// series does not cover the whole window or has no value in it.
    pub fn sustained(&self, key: &str, now: i64, w: i64, cmp: Cmp, threshold: f64) -> Option<bool> {
        let mut runs = self.covered(key, now, w)?.peekable();
        runs.peek()?;
        Some(runs.all(|(_, v, _)| cmp.test(v, threshold)))
    }

    /// Whether at least `x` of the last `y` points satisfy the test; `None` (unavailable) with
    /// fewer than `y` points.
    pub fn x_of_last_y(&self, key: &str, now: i64, x: usize, y: usize, cmp: Cmp, threshold: f64) -> Option<bool> {
        let s = self.series.get(key)?;
        let to = self.ticks.partition_point(|t| *t <= now).checked_sub(1)? as u64 + self.base;
        let (mut n, mut pass) = (0, 0);
        for v in s.points_back(to).take(y) {
            n += 1;
            pass += usize::from(cmp.test(v, threshold));
        }
        (n == y).then_some(pass >= x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::process::ProcessInfo;

    fn hist(points: &[(i64, f64)]) -> History {
        let mut h = History::new(600_000, 1_000, 16);
        for (t, v) in points {
            let mut s = Snapshot { ts_ms: *t, ..Default::default() };
            s.metrics.insert("x".into(), *v);
            h.push(&s);
        }
        h
    }

    fn proc(pid: i64, cpu: f64) -> ProcessInfo {
        ProcessInfo { pid, name: format!("p{pid}"), cpu_pct: Some(cpu), fds: Some(10), start_time: 1000, ..Default::default() }
    }

    #[test]
    fn aggregates_over_window() {
        let h = hist(&[(0, 1.0), (1000, 2.0), (2000, 3.0), (3000, 10.0)]);
        assert_eq!(h.avg("x", 3000, 2000), Some(5.0));
        assert_eq!(h.max("x", 3000, 3000), Some(10.0));
        assert_eq!(h.min("x", 3000, 1000), Some(3.0));
        assert_eq!(h.rate("x", 3000, 3000), Some(3.0));
        assert_eq!(h.delta("x", 3000, 3000), Some(9.0));
        assert_eq!(h.delta("x", 3000, 0), Some(0.0), "over an instant: no change");
        assert_eq!(h.delta("x", 3000, 1), None, "a window with one point: unknown, as rate");
        assert_eq!(h.percentile("x", 3000, 3000, 50.0), Some(2.0));
        assert_eq!(h.avg("missing", 3000, 1000), None);
        assert_eq!(h.latest("x", 3000), Some(10.0));
        assert_eq!(h.latest("x", 2500), Some(3.0));
    }

    #[test]
    fn window_aggregates_over_short_history_are_unavailable_not_partial() {
        let h = hist(&[(0, 95.0), (1000, 96.0), (2000, 97.0)]);
        for w in [2000, 1000] {
            assert_eq!(h.sustained("x", 2000, w, Cmp::Gt, 90.0), Some(true));
        }
        assert_eq!(h.sustained("x", 2000, 2000, Cmp::Gt, 96.5), Some(false));
        assert_eq!(h.sustained("x", 2000, 3000, Cmp::Gt, 90.0), None, "history shorter than the window");
        assert_eq!(h.sustained("missing", 2000, 1000, Cmp::Gt, 90.0), None, "no series");
        for f in [History::avg, History::min, History::max, History::rate, History::delta] {
            assert_eq!(f(&h, "x", 2000, 60_000), None, "a 60 s window over 2 s of history");
            assert!(f(&h, "x", 2000, 2000).is_some());
        }
        assert_eq!(h.percentile("x", 2000, 60_000, 99.0), None);
        assert_eq!(h.x_of_last_y("x", 2000, 3, 3, Cmp::Gt, 95.5), Some(false));
        assert_eq!(h.x_of_last_y("x", 2000, 2, 3, Cmp::Gt, 95.5), Some(true));
        assert_eq!(h.x_of_last_y("x", 2000, 1, 4, Cmp::Gt, 0.0), None, "fewer than y points");
        assert_eq!(h.x_of_last_y("x", 2000, 2, 3, Cmp::Gt, 95.0), Some(true));
        assert_eq!(h.x_of_last_y("x", 1000, 2, 2, Cmp::Gt, 90.0), Some(true), "the last points at or before now");
    }

    #[test]
    fn a_window_as_long_as_the_horizon_is_covered_despite_jitter() {
        // Ticks a millisecond late now and then: without the anchor tick before the horizon,
        // a "10m" window over a 600 s history would almost never be covered.
        let mut h = History::new(600_000, 1000, 16);
        let mut t = 0;
        for i in 0..1500 {
            t += if i % 7 == 0 { 1001 } else { 1000 };
            let mut s = Snapshot { ts_ms: t, ..Default::default() };
            s.metrics.insert("x".into(), 95.0);
            h.push(&s);
            if i > 620 {
                assert_eq!(h.sustained("x", t, 600_000, Cmp::Ge, 90.0), Some(true), "at tick {i}");
            }
        }
        assert!(h.ticks.len() <= h.max_runs, "{} ticks", h.ticks.len());
    }

    #[test]
    fn a_tick_from_before_a_pause_does_not_make_a_window_covered() {
        let mut h = History::new(600_000, 1000, 16);
        for t in [0, 1000, 2000, 3_600_000, 3_601_000] {
            let mut s = Snapshot { ts_ms: t, ..Default::default() };
            s.metrics.insert("x".into(), 95.0);
            h.push(&s);
        }
        assert_eq!(h.sustained("x", 3_601_000, 600_000, Cmp::Ge, 90.0), None, "1 s of history after an hour's pause");
        assert_eq!(h.ticks.len(), 2);
    }

    #[test]
    fn gaps_are_skipped_and_constant_series_cost_one_run() {
        let mut h = History::new(600_000, 1000, 16);
        for t in 0..700 {
            let mut s = Snapshot { ts_ms: t * 1000, ..Default::default() };
            s.metrics.insert("flat".into(), 7.0);
            if !(100..200).contains(&t) {
                s.metrics.insert("holey".into(), t as f64);
            }
            h.push(&s);
        }
        assert_eq!(h.series["flat"].run_count(), 1);
        assert_eq!(h.series["flat"].runs.capacity(), 0, "a constant series allocates no run buffer");
        assert_eq!(h.window("flat", 699_000, 600_000).count(), 601);
        assert_eq!(h.avg("flat", 699_000, 600_000), Some(7.0));
        // 300 s back reaches t = 399..699: all present.
        assert_eq!(h.window("holey", 699_000, 300_000).count(), 301);
        let mut h2 = History::new(600_000, 1000, 16);
        for t in 0..300 {
            let mut s = Snapshot { ts_ms: t * 1000, ..Default::default() };
            if !(100..200).contains(&t) {
                s.metrics.insert("holey".into(), 1.0);
            }
            h2.push(&s);
        }
        assert_eq!(h2.window("holey", 299_000, 299_000).count(), 200, "the gap has no points");
        assert_eq!(h2.sustained("holey", 299_000, 299_000, Cmp::Eq, 1.0), Some(true));
        assert_eq!(h2.x_of_last_y("holey", 299_000, 150, 150, Cmp::Eq, 1.0), Some(true), "points, not ticks");
    }

    type Points = [(i64, f64)];

    /// The run-length encoding gives back exactly the points a plain list of them would.
    #[test]
    fn runs_give_back_exactly_the_points_pushed() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut rand = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut h = History::new(60_000, 1000, 16);
        let mut pushed: Vec<(i64, [Option<f64>; 3])> = Vec::new();
        let mut t = 0;
        for _ in 0..400 {
            t += 1000 + rand(3) as i64 - 1;
            let mut s = Snapshot { ts_ms: t, ..Default::default() };
            let mut row = [None; 3];
            for (i, k) in ["a", "b", "c"].iter().enumerate() {
                // Few distinct values (runs), and gaps of every length.
                if rand(10) >= [1, 5, 9][i] {
                    let v = [0.0, -0.0, 1.5, 7.0][rand(if i == 0 { 2 } else { 4 }) as usize];
                    s.metrics.insert((*k).into(), v);
                    row[i] = Some(v);
                }
            }
            h.push(&s);
            pushed.push((t, row));
            let kept = pushed.iter().rposition(|(ts, _)| *ts <= t - 60_000).unwrap_or(0);
            for (i, k) in ["a", "b", "c"].iter().enumerate() {
                for w in [0, 1000, 5000, 30_000, 60_000, 90_000] {
                    let want: Vec<(i64, u64)> = pushed[kept..]
                        .iter()
                        .filter(|(ts, _)| *ts >= t - w)
                        .filter_map(|(ts, row)| row[i].map(|v| (*ts, v.to_bits())))
                        .collect();
                    let got: Vec<(i64, u64)> = h.window(k, t, w).map(|(ts, v)| (ts, v.to_bits())).collect();
                    assert_eq!(got, want, "{k} over {w} ms at {t}");
                    // The aggregates, as a plain list of points gives them, when covered.
                    let first = pushed[kept..].iter().find(|(_, row)| row[i].is_some()).map(|(ts, _)| *ts);
                    let pts: Vec<(i64, f64)> = want.iter().map(|(ts, b)| (*ts, f64::from_bits(*b))).collect();
                    let covered = first.is_some_and(|f| f <= t - w) && !pts.is_empty();
                    let bits = |o: Option<f64>| o.map(f64::to_bits);
                    let exp = |f: &dyn Fn(&Points) -> Option<f64>| bits(if covered { f(&pts) } else { None });
                    let two = |p: &[(i64, f64)]| (p.len() >= 2).then(|| (p[0], p[p.len() - 1]));
                    assert_eq!(bits(h.avg(k, t, w)), exp(&|p| Some(p.iter().fold(0.0, |a, x| a + x.1) / p.len() as f64)), "avg");
                    assert_eq!(bits(h.min(k, t, w)), exp(&|p| p.iter().map(|x| x.1).reduce(f64::min)), "min");
                    assert_eq!(bits(h.max(k, t, w)), exp(&|p| p.iter().map(|x| x.1).reduce(f64::max)), "max");
                    let delta = |p: &Points| if w == 0 { p.first().map(|_| 0.0) } else { two(p).map(|(a, b)| b.1 - a.1) };
                    assert_eq!(bits(h.delta(k, t, w)), exp(&delta), "delta");
                    assert_eq!(
                        bits(h.rate(k, t, w)),
                        exp(&|p| two(p).map(|(a, b)| (b.1 - a.1).max(0.0) / ((b.0 - a.0) as f64 / 1000.0))),
                        "rate"
                    );
                    let sustained = covered.then(|| pts.iter().all(|x| x.1 > 1.0));
                    assert_eq!(h.sustained(k, t, w, Cmp::Gt, 1.0), sustained, "sustained");
                }
                let back: Vec<f64> = pushed[kept..].iter().rev().filter_map(|(_, row)| row[i]).collect();
                assert_eq!(h.latest(k, t).map(f64::to_bits), back.first().map(|v| v.to_bits()), "{k} latest at {t}");
                if back.is_empty() {
                    assert!(!h.series.contains_key(*k));
                    continue;
                }
                let y = 5.min(back.len());
                let x = back.iter().take(y).filter(|v| **v > 1.0).count();
                assert_eq!(h.x_of_last_y(k, t, x, y, Cmp::Gt, 1.0), Some(true));
                assert_eq!(h.x_of_last_y(k, t, x + 1, y, Cmp::Gt, 1.0), Some(false));
            }
        }
    }

    #[test]
    fn bounded_runs_ticks_and_series() {
        let mut h = History::new(10_000, 1_000, 2);
        for t in 0..100 {
            let mut s = Snapshot { ts_ms: t * 1000, ..Default::default() };
            for k in ["a", "b", "c"] {
                s.metrics.insert(k.into(), t as f64);
            }
            h.push(&s);
        }
        assert_eq!(h.series_count(), 2);
        assert_eq!(h.window("a", 99_000, 1_000_000).count(), 11, "the horizon (the anchor is its first tick)");
        assert!(h.series["a"].run_count() <= h.max_runs && h.series["a"].runs.capacity() <= h.max_runs);
        assert_eq!(h.counts.refused, 1, "a key refused at every push counts once");
        assert_eq!(h.status().refusing_now, 1);
        assert_eq!(h.counts.last_refused, ["c"]);
        // Ticks four times faster than the interval: the ring and each series stay bounded.
        for t in 0..400 {
            let mut s = Snapshot { ts_ms: 100_000 + t * 250, ..Default::default() };
            s.metrics.insert("a".into(), t as f64);
            h.push(&s);
        }
        assert!(h.ticks.len() <= h.max_ticks);
        assert!(h.series["a"].run_count() <= h.max_runs);
        assert!(h.bytes() < h.bound_bytes() + 1024, "{} > {}", h.bytes(), h.bound_bytes());
        // docs/ARCHITECTURE.md ("Memory bounds") states these.
        assert_eq!((RUN_BYTES, std::mem::size_of::<(Box<str>, Series)>() + 1), (10, 89));
        let d = crate::config::SignalsConfig::default();
        let at_defaults = History::new(d.history_secs as i64 * 1000, d.interval_secs as i64 * 1000, d.max_series);
        assert_eq!(at_defaults.bound_bytes() >> 20, 97, "MiB");
    }

    #[test]
    fn series_of_exited_processes_go_and_a_reused_pid_starts_afresh() {
        let mut h = History::new(600_000, 1000, 1000);
        let mut s = Snapshot { ts_ms: 1000, processes: vec![proc(10, 50.0), proc(11, 1.0)], ..Default::default() };
        s.metrics.insert("ebpf.proc.11.retrans".into(), 3.0);
        s.metrics.insert("ebpf.proc.99.retrans".into(), 3.0);
        h.push(&s);
        assert!(h.series.contains_key("proc.11.cpu_pct") && h.series.contains_key("ebpf.proc.11.retrans"));
        assert!(!h.series.contains_key("ebpf.proc.99.retrans"), "a pid not in the process list");
        // pid 11 exits; pid 10 is reused by a new process.
        let mut reborn = proc(10, 3.0);
        reborn.start_time = 2000;
        h.push(&Snapshot { ts_ms: 2000, processes: vec![reborn], ..Default::default() });
        assert!(h.series.keys().all(|k| !k.contains(".11.")), "{:?}", h.series.keys().collect::<Vec<_>>());
        assert_eq!(h.window("proc.10.cpu_pct", 2000, 10_000).collect::<Vec<_>>(), [(2000, 3.0)]);
        assert_eq!(h.counts.evicted_exited, 4 + 4 + 1);
        assert_eq!(h.counts.evicted_live, 0);
        // An empty process list is a failed read: nothing is dropped.
        h.push(&Snapshot { ts_ms: 3000, ..Default::default() });
        assert!(h.series.contains_key("proc.10.cpu_pct"));
    }

    #[test]
    fn reads_generalise_process_keys_and_match_patterns() {
        assert_eq!(read_class("proc.4242.cpu_pct"), "proc.*.cpu_pct");
        assert_eq!(read_class("ebpf.proc.7.sock.close_wait"), "ebpf.proc.*.sock.close_wait");
        assert_eq!(read_class("proc.count"), "proc.count");
        assert_eq!(read_class("disk./var/log.used_pct"), "disk./var/log.used_pct");
        assert!(glob("unit.*.memory_bytes", "unit.nginx.service.memory_bytes"));
        assert!(glob("disk.*.used_pct", "disk./var/lib.d.used_pct"));
        assert!(!glob("disk.*.used_pct", "disk./.used_bytes"));
        assert!(glob("a*b*c", "abc") && !glob("a*b*c", "acb") && glob("*", ""));
        let h = History::new(600_000, 1000, 10);
        h.note_read("proc.4242.cpu_pct", 0);
        h.note_reads(&["unit.*.memory_bytes".into()], 0);
        let r = h.reads_lock();
        assert!(r.covers("proc.1.cpu_pct") && !r.covers("proc.1.fds"));
        assert!(r.covers("unit.a.service.memory_bytes") && !r.covers("unit.a.service.rss_bytes"));
    }

    /// The bug: with `max_series` full of short-lived processes, a playbook's series got no
    /// history, so `sustained()` stayed false and nothing said so.
    #[test]
    fn a_read_series_keeps_its_history_when_the_cap_is_full_of_short_lived_processes() {
        let mut h = History::new(600_000, 1000, 600);
        h.note_read("proc.1.cpu_pct", 0);
        h.note_read("disk./var.inodes_used_pct", 0);
        let mut next_pid = 1000;
        let mut live: Vec<i64> = Vec::new();
        for t in 0..700i64 {
            let mut s = Snapshot { ts_ms: t * 1000, ..Default::default() };
            s.metrics.insert("cpu.util_pct".into(), 50.0);
            s.processes.push(proc(1, 99.0));
            // 120 new processes a tick, each living 5 ticks: 600 at a time, 2 400 series.
            live.retain(|p| *p >= next_pid - 600);
            for _ in 0..120 {
                live.push(next_pid);
                next_pid += 1;
            }
            s.processes.extend(live.iter().map(|p| proc(*p, 0.0)));
            if t == 300 {
                // A mount appears late: node-wide series are not starved by processes.
                s.metrics.insert("disk./var.inodes_used_pct".into(), 93.0);
            }
            if t > 300 {
                s.metrics.insert("disk./var.inodes_used_pct".into(), 93.0);
            }
            h.push(&s);
        }
        let now = 699_000;
        assert_eq!(h.sustained("proc.1.cpu_pct", now, 600_000, Cmp::Ge, 95.0), Some(true));
        assert_eq!(h.sustained("cpu.util_pct", now, 600_000, Cmp::Ge, 50.0), Some(true));
        assert_eq!(h.sustained("disk./var.inodes_used_pct", now, 300_000, Cmp::Ge, 90.0), Some(true));
        assert!(h.series_count() <= 600);
        assert!(h.counts.refused > 0 && !h.counts.last_refused.is_empty(), "refusals are counted and named");
        assert!(h.counts.evicted_exited > 0);
        assert!(h.counts.last_refused.iter().all(|k| k.starts_with("proc.")), "{:?}", h.counts.last_refused);
    }

    #[test]
    fn a_new_read_series_evicts_the_youngest_unread_process_series_first() {
        let mut h = History::new(600_000, 1000, 8);
        let mut s = Snapshot { ts_ms: 1000, processes: vec![proc(1, 1.0)], ..Default::default() };
        s.metrics.insert("node.a".into(), 1.0);
        h.push(&s); // node.a + 4 series of pid 1
        s.ts_ms = 2000;
        s.processes.push(proc(2, 1.0));
        h.push(&s); // + 3 of pid 2 (the fourth refused)
        assert_eq!((h.series_count(), h.counts.refused), (8, 1));
        s.ts_ms = 3000;
        s.metrics.insert("node.b".into(), 1.0);
        h.push(&s);
        assert!(h.series.contains_key("node.b"), "a node-wide series evicts a process series");
        assert_eq!(h.counts.evicted_live, 1);
        assert!(h.counts.last_evicted[0].starts_with("proc.2."), "the youngest goes first: {:?}", h.counts.last_evicted);
        h.note_read("node.c", 3000);
        h.note_read("proc.1.cpu_pct", 3000);
        s.ts_ms = 4000;
        s.metrics.insert("node.c".into(), 1.0);
        h.push(&s);
        assert!(h.series.contains_key("node.c") && h.series.contains_key("proc.1.cpu_pct"));
        // Nothing below a node-wide series but read ones and node-wide ones: refused.
        for i in 0..10 {
            s.metrics.insert(format!("node.x{i}"), 1.0);
        }
        s.ts_ms = 5000;
        h.push(&s);
        assert!(h.series.contains_key("proc.1.cpu_pct") && h.series.contains_key("node.c"));
        assert!(h.counts.last_refused.iter().any(|k| k.starts_with("node.x")));
    }

    #[test]
    fn reads_are_forgotten_when_not_renewed() {
        let mut h = History::new(60_000, 1000, 8);
        h.note_read("x", 0);
        for t in 0..5 {
            h.push(&Snapshot { ts_ms: t * 1_000_000, ..Default::default() });
        }
        assert_eq!(h.status().reads, 0);
    }
}
