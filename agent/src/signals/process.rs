//! Per-process signals from `/proc/<pid>/{stat,cmdline,cgroup,fd}`: name, command line, systemd
//! unit, CPU %, RSS, open fds, threads, start time, state and TCP sockets by state; and the
//! per-unit roll-up of those (plus the unit's cgroup `memory.current` where cgroup v2 has it).

use super::parse::{bounded, cut_marked, num, read, ParseError, MAX_CMDLINE, MAX_NAME};
use super::sockets::{socket_inode, InodeStates, STATES};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// One process as seen in one sample.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessInfo {
    pub pid: i64,
    pub name: String,
    pub cmdline: String,
    /// The systemd unit owning the process (`nginx.service`, `session-3.scope`), if any.
    pub unit: Option<String>,
    /// Share of one core over the last interval (200 = two cores); `None` on the first sample.
    pub cpu_pct: Option<f64>,
    pub rss_bytes: u64,
    /// Open file descriptors; `None` when `/proc/<pid>/fd` cannot be read (not root).
    pub fds: Option<u64>,
    pub threads: u64,
    /// Start time, seconds since the epoch.
    pub start_time: u64,
    /// One-letter kernel state (R, S, D, Z, T, ...).
    pub state: String,
    /// TCP sockets this process holds, per state name (only non-zero states).
    pub tcp: BTreeMap<String, u64>,
}

/// Per-unit roll-up of the processes in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnitInfo {
    pub unit: String,
    pub processes: u64,
    pub cpu_pct: f64,
    pub rss_bytes: u64,
    pub fds: u64,
    /// cgroup v2 `memory.current` of the unit, where readable.
    pub memory_bytes: Option<u64>,
    pub tcp: BTreeMap<String, u64>,
}

/// What is kept of a process between samples: its CPU ticks (for CPU %), and what rarely
/// changes or is costly to read (command line, unit, the fd scan), reused while the process
/// (same pid and start time, same name) is the same.
#[derive(Debug, Clone)]
pub struct ProcMemo {
    pub start_ticks: u64,
    pub cpu_ticks: u64,
    pub name: String,
    pub cmdline: String,
    pub unit: Option<String>,
    pub cgroup: Option<String>,
    pub fds: Option<u64>,
    pub tcp: BTreeMap<String, u64>,
}

/// The parts of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, PartialEq)]
pub struct PidStat {
    pub name: String,
    pub state: String,
    pub cpu_ticks: u64,
    pub threads: u64,
    pub start_ticks: u64,
    pub rss_pages: u64,
}

pub fn parse_pid_stat(file: &Path, text: &str) -> Result<PidStat, ParseError> {
    // The name sits in parentheses and may itself contain spaces and parentheses.
    let (Some(open), Some(close)) = (text.find('('), text.rfind(')')) else {
        return Err(ParseError::new(file, 1, "comm", "no (name) field"));
    };
    if close < open {
        return Err(ParseError::new(file, 1, "comm", "unbalanced parentheses"));
    }
    // The kernel bounds the name to 15 bytes, but its bytes are the process's own choice.
    let name = bounded(text[open + 1..close].to_string(), MAX_NAME);
    // Fields after the name, numbered from 3 (state) as in proc(5).
    let f: Vec<&str> = text[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| f.get(n - 3).copied();
    let utime: u64 = num(file, 1, "utime (14)", field(14))?;
    let stime: u64 = num(file, 1, "stime (15)", field(15))?;
    Ok(PidStat {
        name,
        state: field(3).ok_or_else(|| ParseError::new(file, 1, "state (3)", "missing"))?.to_string(),
        cpu_ticks: utime + stime,
        threads: num(file, 1, "num_threads (20)", field(20))?,
        start_ticks: num(file, 1, "starttime (22)", field(22))?,
        rss_pages: num::<i64>(file, 1, "rss (24)", field(24))?.max(0) as u64,
    })
}

/// The systemd unit and the cgroup v2 path from `/proc/<pid>/cgroup`.
pub fn parse_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let mut path = None;
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(p)) = (it.next(), it.next(), it.next()) else { continue };
        let v2 = id == "0" && ctrl.is_empty();
        // The v2 line wins over the v1 systemd hierarchy when both exist.
        if v2 || (ctrl == "name=systemd" && path.is_none()) {
            path = Some(p.to_string());
        }
    }
    let unit = path.as_deref().and_then(|p| {
        p.rsplit('/')
            .find(|c| c.ends_with(".service") || c.ends_with(".scope") || c.ends_with(".socket"))
            .map(|u| bounded(u.to_string(), MAX_NAME))
    });
    let cgroup_v2 = text.lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string);
    (unit, cgroup_v2)
}

/// Everything one process read needs from the rest of the sample.
pub struct ProcContext<'a> {
    pub boot_time: u64,
    pub clk_tck: u64,
    pub page_size: u64,
    pub elapsed_secs: f64,
    pub prev: &'a std::collections::HashMap<i64, ProcMemo>,
    pub sockets: &'a InodeStates,
    /// Scan `/proc/<pid>/fd` this sample (else reuse the last scan of the same process).
    pub scan_fds: bool,
}

/// Counts a process's fds and the TCP sockets among them, by state.
fn scan_fds(dir: &Path, sockets: &InodeStates) -> (Option<u64>, BTreeMap<String, u64>) {
    let mut tcp = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.join("fd")) else { return (None, tcp) };
    let mut count = 0;
    for e in entries.flatten() {
        count += 1;
        if let Ok(link) = std::fs::read_link(e.path()) {
            if let Some(state) = socket_inode(link.as_os_str().as_encoded_bytes()).and_then(|i| sockets.get(&i)) {
                *tcp.entry(STATES[*state as usize].to_string()).or_insert(0) += 1;
            }
        }
    }
    (Some(count), tcp)
}

/// Resident pages from `/proc/<pid>/statm` (its second field). Since Linux 6.2 the RSS in
/// `/proc/<pid>/stat` is the kernel's per-CPU estimate (off by up to max(32, 2 × CPUs) pages
/// per CPU for each of three counters: 768 KiB on two CPUs, tens of MiB on a big machine),
/// while statm sums the per-CPU parts (6.16) as `ps` and `top` do. One more small read per
/// process per sample; where statm cannot be read, stat's figure stands.
fn read_statm_resident(path: &Path) -> Option<u64> {
    parse_statm_resident(&std::fs::read(path).ok()?)
}

/// The resident pages (second field) of a `/proc/<pid>/statm` text.
pub fn parse_statm_resident(text: &[u8]) -> Option<u64> {
    std::str::from_utf8(text).ok()?.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// A process's command line, arguments joined by spaces, read no further than its bound.
fn read_cmdline(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut b = Vec::new();
    // One byte past the bound tells that it was longer.
    std::fs::File::open(path)?.take(MAX_CMDLINE as u64 + 1).read_to_end(&mut b)?;
    let cut = b.len() > MAX_CMDLINE;
    let args: Vec<std::borrow::Cow<'_, str>> = b.split(|c| *c == 0).filter(|a| !a.is_empty()).map(String::from_utf8_lossy).collect();
    let joined = args.join(" ");
    // Marked whenever the read stopped short, even if what was read joins shorter than the
    // bound (empty arguments are dropped): a process must not hide its tail unmarked.
    Ok(if cut { cut_marked(joined, MAX_CMDLINE) } else { bounded(joined, MAX_CMDLINE) })
}

/// Reads one process. `Ok(None)` when it vanished while being read (normal on a busy host).
pub fn read_process(dir: &Path, pid: i64, cx: &ProcContext<'_>) -> Result<Option<(ProcessInfo, ProcMemo)>, ParseError> {
    let stat_file = dir.join("stat");
    let text = match std::fs::read(&stat_file) {
        // Lossy: the name inside is any bytes the process chose (prctl PR_SET_NAME, the
        // executable's file name); a process must not hide from medic by choosing invalid UTF-8.
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        // Gone between listing and reading (ENOENT/ESRCH): not an error.
        Err(_) => return Ok(None),
    };
    let st = parse_pid_stat(&stat_file, &text)?;
    let prev = cx.prev.get(&pid).filter(|p| p.start_ticks == st.start_ticks);
    // Same process as last time (an exec changes the name): reuse what rarely changes.
    let same = prev.filter(|p| p.name == st.name);
    let (cmdline, unit, cgroup) = match same {
        Some(p) => (p.cmdline.clone(), p.unit.clone(), p.cgroup.clone()),
        None => {
            let cmdline = read_cmdline(&dir.join("cmdline")).unwrap_or_default();
            let (unit, cgroup) = read(&dir.join("cgroup")).map(|t| parse_cgroup(&t)).unwrap_or((None, None));
            (cmdline, unit, cgroup)
        }
    };
    let (fds, tcp) = match same.filter(|_| !cx.scan_fds) {
        Some(p) => (p.fds, p.tcp.clone()),
        None => scan_fds(dir, cx.sockets),
    };
    let cpu_pct = prev
        .filter(|_| cx.elapsed_secs > 0.0)
        .map(|p| st.cpu_ticks.saturating_sub(p.cpu_ticks) as f64 / cx.clk_tck as f64 / cx.elapsed_secs * 100.0);
    let memo = ProcMemo {
        start_ticks: st.start_ticks,
        cpu_ticks: st.cpu_ticks,
        name: st.name.clone(),
        cmdline: cmdline.clone(),
        unit: unit.clone(),
        cgroup,
        fds,
        tcp: tcp.clone(),
    };
    let info = ProcessInfo {
        pid,
        name: st.name,
        cmdline,
        unit,
        cpu_pct,
        rss_bytes: read_statm_resident(&dir.join("statm")).unwrap_or(st.rss_pages) * cx.page_size,
        fds,
        threads: st.threads,
        start_time: cx.boot_time + st.start_ticks / cx.clk_tck.max(1),
        state: st.state,
        tcp,
    };
    Ok(Some((info, memo)))
}

/// Rolls processes up into their units.
pub fn units_of(processes: &[ProcessInfo]) -> BTreeMap<String, UnitInfo> {
    let mut units: BTreeMap<String, UnitInfo> = BTreeMap::new();
    for p in processes {
        let Some(unit) = &p.unit else { continue };
        let u = units.entry(unit.clone()).or_insert_with(|| UnitInfo { unit: unit.clone(), ..Default::default() });
        u.processes += 1;
        u.cpu_pct += p.cpu_pct.unwrap_or(0.0);
        u.rss_bytes += p.rss_bytes;
        u.fds += p.fds.unwrap_or(0);
        for (s, n) in &p.tcp {
            *u.tcp.entry(s.clone()).or_insert(0) += n;
        }
    }
    units
}
