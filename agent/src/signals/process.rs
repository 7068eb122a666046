//! Per-process signals from `/proc/<pid>/{stat,statm,cmdline,cgroup,fd,limits}`: name, command
//! line, systemd unit, parent, CPU %, RSS, open fds and their soft limit, threads, start time,
//! state and TCP sockets by state; what the process tree adds to each ([`derive_tree`]: direct
//! children, zombie children, RSS with all descendants, fds as a share of the limit), computed
//! by one function for the live sampler, `playbook test` timelines and replayed recordings;
//! and the per-unit roll-up (plus the unit's cgroup `memory.current` where cgroup v2 has it).

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
    /// Parent pid (`/proc/<pid>/stat` field 4); 0 for PID 1 and kernel threads' root.
    pub ppid: i64,
    pub name: String,
    pub cmdline: String,
    /// The systemd unit owning the process (`nginx.service`, `session-3.scope`), if any.
    pub unit: Option<String>,
    /// Share of one core over the last interval (200 = two cores); `None` on the first sample.
    pub cpu_pct: Option<f64>,
    pub rss_bytes: u64,
    /// Open file descriptors; `None` when `/proc/<pid>/fd` cannot be read (not root).
    pub fds: Option<u64>,
    /// Soft RLIMIT_NOFILE ("Max open files" in `/proc/<pid>/limits`), read with the fds;
    /// `None` when unreadable or unlimited.
    pub fd_limit: Option<u64>,
    pub threads: u64,
    /// Start time, seconds since the epoch.
    pub start_time: u64,
    /// One-letter kernel state (R, S, D, Z, T, ...).
    pub state: String,
    /// TCP sockets this process holds, per state name (only non-zero states).
    pub tcp: BTreeMap<String, u64>,
    /// Derived from the list by [`derive_tree`], never read, recorded or set in a test case:
    /// direct children (processes whose `ppid` is this pid).
    #[serde(skip)]
    pub children: u64,
    /// Direct children in state `Z` (exited, not yet reaped by this process).
    #[serde(skip)]
    pub zombie_children: u64,
    /// `rss_bytes` of this process and all its descendants.
    #[serde(skip)]
    pub rss_tree_bytes: u64,
    /// `fds` as a percentage of `fd_limit`; `None` when either is unknown.
    #[serde(skip)]
    pub fds_pct: Option<f64>,
}

/// Fills the fields of each process that come from the whole list: `children`,
/// `zombie_children`, `rss_tree_bytes` and `fds_pct`. O(n) over a list sorted or not: a map
/// from pid to index, then each process's RSS added to its ancestors' in one pass from the
/// leaves up (ordered by depth with a counting sort, so a parent's total is complete before it
/// is added to its own parent). A `ppid` naming no process in the list (0, a kernel thread's, one that
/// exited between reads) ends the chain there; a cycle (impossible in a real tree, possible in a
/// hand-written case or a damaged recording) is cut rather than followed.
pub fn derive_tree(processes: &mut [ProcessInfo]) {
    let n = processes.len();
    let index: std::collections::HashMap<i64, usize> = processes.iter().enumerate().map(|(i, p)| (p.pid, i)).collect();
    let parent: Vec<Option<usize>> = processes.iter().map(|p| index.get(&p.ppid).copied().filter(|_| p.ppid != p.pid)).collect();
    for p in processes.iter_mut() {
        p.children = 0;
        p.zombie_children = 0;
        p.rss_tree_bytes = p.rss_bytes;
        p.fds_pct = match (p.fds, p.fd_limit) {
            (Some(f), Some(l)) if l > 0 => Some(f as f64 * 100.0 / l as f64),
            _ => None,
        };
    }
    // Depth of each process (distance to its root), each walked once: O(n) in all.
    const UNSET: u32 = u32::MAX;
    const ON_PATH: u32 = u32::MAX - 1;
    let mut depth = vec![UNSET; n];
    // A process whose parent edge is ignored because following it closes a cycle.
    let mut cut = vec![false; n];
    let mut path = Vec::new();
    for start in 0..n {
        if depth[start] != UNSET {
            continue;
        }
        let mut at = start;
        // The depth of the process above the walk's last one; `None`: the last one is a root.
        let top = loop {
            path.push(at);
            depth[at] = ON_PATH;
            match parent[at] {
                None => break None,
                Some(up) if depth[up] == ON_PATH => {
                    cut[at] = true;
                    break None;
                }
                Some(up) if depth[up] != UNSET => break Some(depth[up]),
                Some(up) => at = up,
            }
        };
        let mut d = top.map_or(0, |t| t.saturating_add(1));
        while let Some(i) = path.pop() {
            depth[i] = d;
            d = d.saturating_add(1);
        }
    }
    // Deepest first (a counting sort by depth): every child is added to its parent before the
    // parent is added to its own.
    let levels = depth.iter().max().map_or(0, |d| *d as usize + 1);
    let mut start_of = vec![0usize; levels + 1];
    for d in &depth {
        start_of[*d as usize + 1] += 1;
    }
    for l in 1..=levels {
        start_of[l] += start_of[l - 1];
    }
    let mut order = vec![0usize; n];
    for (i, d) in depth.iter().enumerate() {
        order[start_of[*d as usize]] = i;
        start_of[*d as usize] += 1;
    }
    for i in order.into_iter().rev() {
        let Some(up) = parent[i].filter(|_| !cut[i]) else { continue };
        let (rss, zombie) = (processes[i].rss_tree_bytes, processes[i].state == "Z");
        let p = &mut processes[up];
        p.children += 1;
        p.zombie_children += u64::from(zombie);
        p.rss_tree_bytes = p.rss_tree_bytes.saturating_add(rss);
    }
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
    pub fd_limit: Option<u64>,
    pub tcp: BTreeMap<String, u64>,
}

/// The row of `/proc/<pid>/limits` that holds RLIMIT_NOFILE.
const NOFILE_ROW: &str = "Max open files";

/// The soft "Max open files" limit from a `/proc/<pid>/limits` text: `Ok(None)` when it is
/// `unlimited`. The row is `Max open files  <soft>  <hard>  files`; a text without it, or with
/// a soft field that is neither a number nor `unlimited`, is an error naming the line.
pub fn parse_fd_limit(file: &Path, text: &str) -> Result<Option<u64>, ParseError> {
    for (n, line) in text.lines().enumerate() {
        let Some(rest) = line.strip_prefix(NOFILE_ROW) else { continue };
        let soft = rest.split_ascii_whitespace().next();
        return match soft {
            Some("unlimited") => Ok(None),
            other => num(file, n + 1, "Max open files (soft limit)", other).map(Some),
        };
    }
    Err(ParseError::new(file, 0, NOFILE_ROW, "no such row"))
}

/// The parts of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, PartialEq)]
pub struct PidStat {
    pub name: String,
    pub state: String,
    pub ppid: i64,
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
    // Fields 3 to 24 are the ones used: kept on the stack, no list allocated per process.
    let mut f = [None; 22];
    for (slot, word) in f.iter_mut().zip(text[close + 1..].split_ascii_whitespace()) {
        *slot = Some(word);
    }
    let field = |n: usize| f.get(n - 3).copied().flatten();
    let utime: u64 = num(file, 1, "utime (14)", field(14))?;
    let stime: u64 = num(file, 1, "stime (15)", field(15))?;
    Ok(PidStat {
        name,
        state: field(3).ok_or_else(|| ParseError::new(file, 1, "state (3)", "missing"))?.to_string(),
        ppid: num(file, 1, "ppid (4)", field(4))?,
        cpu_ticks: utime + stime,
        threads: num(file, 1, "num_threads (20)", field(20))?,
        start_ticks: num(file, 1, "starttime (22)", field(22))?,
        rss_pages: num::<i64>(file, 1, "rss (24)", field(24))?.max(0) as u64,
    })
}

/// The systemd unit and the cgroup v2 path from `/proc/<pid>/cgroup`.
pub fn parse_cgroup(text: &str) -> (Option<String>, Option<String>) {
    let (mut v2, mut v1) = (None, None);
    for line in text.lines() {
        let mut it = line.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(p)) = (it.next(), it.next(), it.next()) else { continue };
        if id == "0" && ctrl.is_empty() {
            v2 = Some(p);
        } else if ctrl == "name=systemd" && v1.is_none() {
            v1 = Some(p);
        }
    }
    // The v2 line wins over the v1 systemd hierarchy when both place the process; on a hybrid
    // host whose unified hierarchy nobody manages, every process is at its root there, and only
    // the v1 line names the unit.
    let path = match (v2, v1) {
        (Some("/"), Some(v1)) => Some(v1),
        (Some(v2), _) => Some(v2),
        (None, v1) => v1,
    };
    let unit = path.and_then(|p| {
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
    /// Seconds since boot now (`/proc/uptime`, to 10 ms): the age of a process first seen, whose
    /// CPU % is then its average since it started (it started within the last interval).
    pub uptime_secs: Option<f64>,
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
fn read_statm_resident(path: &Path, held: &mut super::held::Held) -> Option<u64> {
    parse_statm_resident(&held.read(path).ok()?)
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
/// A part that does not parse while the rest does (its `limits`) is pushed to `errors` and left
/// unknown, so the process is still seen. `stat` and `statm`, read every sample, are read
/// through files `held` open from one sample to the next (see [`super::held`]).
pub fn read_process(
    dir: &Path,
    pid: i64,
    cx: &ProcContext<'_>,
    held: &mut super::held::Held,
    errors: &mut Vec<String>,
) -> Result<Option<(ProcessInfo, ProcMemo)>, ParseError> {
    let stat_file = dir.join("stat");
    let bytes = match held.read(&stat_file) {
        Ok(b) => b,
        // Gone between listing and reading (ENOENT/ESRCH): not an error.
        Err(_) => return Ok(None),
    };
    // Lossy: the name inside is any bytes the process chose (prctl PR_SET_NAME, the
    // executable's file name); a process must not hide from medic by choosing invalid UTF-8.
    // Borrowed, not copied, when it is valid (nearly always).
    let st = parse_pid_stat(&stat_file, &String::from_utf8_lossy(&bytes))?;
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
    // The limit is read with the fds (every `socket_scan_every` samples): `prlimit` can change
    // it at any time, but it moves as rarely as the counts it is compared with.
    let (fds, tcp, fd_limit) = match same.filter(|_| !cx.scan_fds) {
        Some(p) => (p.fds, p.tcp.clone(), p.fd_limit),
        None => {
            let (fds, tcp) = scan_fds(dir, cx.sockets);
            let limits = dir.join("limits");
            let fd_limit = match std::fs::read(&limits) {
                // Gone, or not ours to read: unknown, as for the fds.
                Err(_) => None,
                Ok(b) => parse_fd_limit(&limits, &String::from_utf8_lossy(&b)).unwrap_or_else(|e| {
                    errors.push(e.to_string());
                    None
                }),
            };
            (fds, tcp, fd_limit)
        }
    };
    let cpu_pct = match prev {
        Some(p) if cx.elapsed_secs > 0.0 => {
            Some(st.cpu_ticks.saturating_sub(p.cpu_ticks) as f64 / cx.clk_tck as f64 / cx.elapsed_secs * 100.0)
        }
        Some(_) => None,
        // Not there at the previous sample: it started since (or its pid was reused), so its
        // CPU time is all within this interval. Its average since it started is known now, not
        // a tick later (a new runaway is seen on the first sample). Unknown on the agent's first
        // sample (a process may be older than any interval) and below 50 ms of age (too few
        // 10 ms ticks to say).
        None if cx.elapsed_secs > 0.0 => cx.uptime_secs.and_then(|up| {
            let age = (up - st.start_ticks as f64 / cx.clk_tck.max(1) as f64).min(cx.elapsed_secs);
            (age >= 0.05).then(|| st.cpu_ticks as f64 / cx.clk_tck.max(1) as f64 / age * 100.0)
        }),
        None => None,
    };
    let memo = ProcMemo {
        start_ticks: st.start_ticks,
        cpu_ticks: st.cpu_ticks,
        name: st.name.clone(),
        cmdline: cmdline.clone(),
        unit: unit.clone(),
        cgroup,
        fds,
        fd_limit,
        tcp: tcp.clone(),
    };
    let info = ProcessInfo {
        pid,
        ppid: st.ppid,
        name: st.name,
        cmdline,
        unit,
        cpu_pct,
        // statm's resident count is exact; stat's field 24 is the kernel's per-CPU estimate.
        rss_bytes: read_statm_resident(&dir.join("statm"), held).unwrap_or(st.rss_pages) * cx.page_size,
        fds,
        fd_limit,
        threads: st.threads,
        start_time: cx.boot_time + st.start_ticks / cx.clk_tck.max(1),
        state: st.state,
        tcp,
        ..Default::default()
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
        u.rss_bytes += p.rss_bytes;
        u.fds += p.fds.unwrap_or(0);
        add_cpu_and_sockets(u, p);
    }
    units
}

/// What of a process its unit sums that the eBPF families may refresh after the sample.
fn add_cpu_and_sockets(u: &mut UnitInfo, p: &ProcessInfo) {
    u.cpu_pct += p.cpu_pct.unwrap_or(0.0);
    for (s, n) in &p.tcp {
        *u.tcp.entry(s.clone()).or_insert(0) += n;
    }
}

/// Sums each unit's `cpu_pct` and socket counts again from its processes, after the eBPF
/// families gave some processes fresher figures (the scheduler's share, the kernel's socket
/// counts); what only the unit has (its cgroup's memory) is kept.
pub fn resum_units(units: &mut BTreeMap<String, UnitInfo>, processes: &[ProcessInfo]) {
    for u in units.values_mut() {
        u.cpu_pct = 0.0;
        u.tcp.clear();
    }
    for p in processes {
        if let Some(u) = p.unit.as_ref().and_then(|u| units.get_mut(u)) {
            add_cpu_and_sockets(u, p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pid: i64, ppid: i64, state: &str, rss: u64) -> ProcessInfo {
        ProcessInfo { pid, ppid, state: state.into(), rss_bytes: rss, ..Default::default() }
    }

    #[test]
    fn the_tree_counts_children_zombies_and_memory_with_descendants() {
        // 1 ─┬─ 10 ─┬─ 11 (Z)
        //    │      ├─ 12 (Z)
        //    │      └─ 13 ── 14
        //    └─ 20
        // Listed out of order, with a process whose parent is not in the list.
        let mut ps = vec![p(14, 13, "S", 1), p(1, 0, "S", 1000), p(12, 10, "Z", 0), p(20, 1, "R", 7), p(13, 10, "S", 10)];
        ps.extend([p(11, 10, "Z", 0), p(10, 1, "S", 100), p(99, 98, "S", 5)]);
        derive_tree(&mut ps);
        let get = |pid: i64| ps.iter().find(|x| x.pid == pid).unwrap().clone();
        assert_eq!((get(10).children, get(10).zombie_children, get(10).rss_tree_bytes), (3, 2, 111));
        assert_eq!((get(1).children, get(1).zombie_children, get(1).rss_tree_bytes), (2, 0, 1118));
        assert_eq!((get(13).children, get(13).rss_tree_bytes), (1, 11));
        assert_eq!((get(99).children, get(99).rss_tree_bytes), (0, 5), "an orphan of the list is its own root");
        // Derived again from scratch: nothing accumulates.
        derive_tree(&mut ps);
        assert_eq!(ps.iter().find(|x| x.pid == 1).unwrap().rss_tree_bytes, 1118);
    }

    #[test]
    fn a_cycle_or_self_parent_is_cut_not_followed() {
        let mut ps = vec![p(1, 3, "S", 1), p(2, 1, "S", 2), p(3, 2, "S", 4), p(4, 4, "S", 8)];
        derive_tree(&mut ps);
        let total: u64 = ps.iter().map(|x| x.children).sum();
        assert_eq!(total, 2, "one edge of the 3-cycle is cut, the self-parent ignored");
        assert_eq!(ps[3].rss_tree_bytes, 8);
        assert!(ps[..3].iter().all(|x| x.rss_tree_bytes <= 7), "no RSS counted twice around the cycle");
    }

    #[test]
    fn a_deep_chain_is_linear_and_does_not_recurse() {
        let mut ps: Vec<ProcessInfo> = (1..=100_000).map(|i| p(i, i - 1, "S", 1)).collect();
        derive_tree(&mut ps);
        assert_eq!(ps[0].rss_tree_bytes, 100_000);
        assert_eq!(ps[99_999].rss_tree_bytes, 1);
    }

    #[test]
    fn fds_pct_needs_both_fds_and_a_limit() {
        let mut ps = vec![
            ProcessInfo { pid: 1, fds: Some(240), fd_limit: Some(256), ..Default::default() },
            ProcessInfo { pid: 2, fds: Some(240), fd_limit: None, ..Default::default() },
            ProcessInfo { pid: 3, fds: None, fd_limit: Some(256), ..Default::default() },
            ProcessInfo { pid: 4, fds: Some(1), fd_limit: Some(0), ..Default::default() },
        ];
        derive_tree(&mut ps);
        assert_eq!(ps[0].fds_pct, Some(93.75));
        assert!(ps[1..].iter().all(|x| x.fds_pct.is_none()));
    }

    const LIMITS: &str = "Limit                     Soft Limit           Hard Limit           Units     \n\
Max cpu time              unlimited            unlimited            seconds   \n\
Max open files            1024                 524288               files     \n\
Max locked memory         8388608              8388608              bytes     \n";

    #[test]
    fn the_soft_nofile_limit_is_read_unlimited_is_none_and_errors_name_the_line() {
        let f = Path::new("/proc/7/limits");
        assert_eq!(parse_fd_limit(f, LIMITS), Ok(Some(1024)));
        assert_eq!(parse_fd_limit(f, &LIMITS.replace("1024     ", "unlimited")), Ok(None));
        let e = parse_fd_limit(f, &LIMITS.replace("1024", "lots")).unwrap_err();
        assert_eq!(e.to_string(), "/proc/7/limits:3: Max open files (soft limit): expected a number, found \"lots\"");
        let e = parse_fd_limit(f, "Limit Soft Hard\n").unwrap_err();
        assert_eq!(e.to_string(), "/proc/7/limits: Max open files: no such row");
        assert!(parse_fd_limit(f, "Max open files\n").is_err());
    }

    #[test]
    fn the_parent_pid_comes_from_stat_field_4() {
        let st = parse_pid_stat(Path::new("stat"), "42 (a (b) c) Z 7 42 42 0 -1 4194560 0 0 0 0 3 4 0 0 20 0 1 0 100 0 0").unwrap();
        assert_eq!((st.ppid, st.state.as_str(), st.name.as_str()), (7, "Z", "a (b) c"));
    }
}
