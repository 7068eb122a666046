//! Signals on a busy node, checked against the kernel's own tools at the same moment.
//!
//! One test builds the load once (2,000 extra processes, 5,000 loopback connections held by a
//! helper, so 10,000 sockets, and four tmpfs mounts of different sizes and fills) and checks each
//! family in turn: CPU against `/proc/stat` and `/proc/<pid>/stat` read by the test, processes
//! against `ps`, memory against `free`, disks against `df`, TCP counters against `nstat`. The
//! test reads the tool just before and just after medic's sample, so medic's reading is
//! bracketed; where a family needs more room than the bracket, the tolerance and its reason sit
//! beside the check, in its message, and in docs/PLAYBOOKS.md ("How exact each signal is").
//! Everything the fixture starts or mounts goes when it drops, failing test or not. Socket counts
//! against `ss` are checked with the socket tests.

use crate::util::{Nft, Reaped, Tmpfs};
use medic::signals::{Roots, Sampler, Snapshot};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SLEEPERS: usize = 2_000;
const CONNECTIONS: usize = 5_000;

/// The test's mounts: (directory, size, inodes, files, bytes per file). Sizes, fill and inode
/// use all differ, and one name has a space (written `\040` in /proc/self/mounts).
const MOUNTS: &[(&str, &str, u64, usize, usize)] = &[
    ("small", "8m", 1_000, 5, 1 << 20),
    ("inodes", "16m", 500, 400, 0),
    ("many files", "64m", 50_000, 3_000, 4_096),
    ("large", "1g", 100_000, 2, 24 << 20),
];

/// Holds `argv[1]` loopback connections (both ends; as root it may raise its own fd limit) until
/// its stdin closes, which is when the test goes, however it goes. Prints the listening port
/// once every connection is up.
const HOLDER: &str = r#"
import resource, socket, sys
n = int(sys.argv[1])
limit = max(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 2 * n + 64)
resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
l = socket.socket()
l.bind(("127.0.0.1", 0))
l.listen(1024)
keep = []
for _ in range(n):
    keep.append(socket.create_connection(l.getsockname()))
    keep.append(l.accept()[0])
print(l.getsockname()[1], flush=True)
sys.stdin.read()
"#;

/// The load. Fields drop in order: the mounts go before the directory that holds them.
struct LoadedNode {
    mounts: Vec<Tmpfs>,
    holder: Reaped,
    sleepers: Vec<Reaped>,
    _dir: tempfile::TempDir,
}

impl LoadedNode {
    /// Each part is owned as soon as it exists, so a failure half-way still cleans up.
    fn build() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut sleepers = Vec::with_capacity(SLEEPERS);
        for _ in 0..SLEEPERS {
            let c = Command::new("sleep").arg("600").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
            sleepers.push(Reaped(c.expect("spawn sleep")));
        }
        let mut c = Command::new("python3")
            .args(["-c", HOLDER, &CONNECTIONS.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 (.ci/setup installs it)");
        let out = c.stdout.take().unwrap();
        let holder = Reaped(c);
        let mut port = String::new();
        BufReader::new(out).read_line(&mut port).unwrap();
        assert!(port.trim().parse::<u16>().is_ok(), "the helper could not hold {CONNECTIONS} connections (its stderr is above)");
        let mut mounts = Vec::new();
        for (name, size, inodes, files, bytes) in MOUNTS {
            let path = dir.path().join(name);
            mounts.push(Tmpfs::mount(&path, &format!("size={size},nr_inodes={inodes}")));
            let data = vec![0x5au8; *bytes];
            for i in 0..*files {
                std::fs::write(path.join(format!("f{i}")), &data).unwrap();
            }
        }
        LoadedNode { mounts, holder, sleepers, _dir: dir }
    }
}

/// A family's check: panics on a disagreement, else says what it compared.
type Check = fn(&LoadedNode) -> String;

/// One test for every family, so that the load is built once and torn down by `drop`, even when
/// a family fails: each family runs in turn and a failure names it.
#[test]
fn every_signal_family_agrees_with_the_kernels_tools_on_a_loaded_node() {
    let t = Instant::now();
    let node = LoadedNode::build();
    eprintln!("scale: {SLEEPERS} sleepers, {} sockets, {} mounts up in {:.1?}", 2 * CONNECTIONS, MOUNTS.len(), t.elapsed());
    let checks: [(&str, Check); 5] =
        [("cpu", cpu), ("processes", processes), ("memory", memory), ("disks", disks), ("tcp counters", tcp_counters)];
    let mut failed = Vec::new();
    for (family, check) in checks {
        let t = Instant::now();
        match std::panic::catch_unwind(AssertUnwindSafe(|| check(&node))) {
            Ok(summary) => eprintln!("scale: {family} agrees ({:.1?}): {summary}", t.elapsed()),
            Err(_) => failed.push(family),
        }
    }
    let t = Instant::now();
    drop(node);
    eprintln!("scale: load torn down in {:.1?}", t.elapsed());
    assert!(failed.is_empty(), "families that disagree with the kernel's tools: {failed:?} (each one's panic message is above)");
}

fn sampler() -> Sampler {
    let mut s = Sampler::new(Roots::default());
    // The first sample has no rates; it also remembers each process's command line and unit.
    s.sample(medic::audit::now_ms());
    s
}

/// [busy, iowait, total] ticks of each `cpu` line of /proc/stat, keyed `cpu`, `cpu0`, ...: busy
/// is all but idle and iowait, as top and mpstat count it (guest time is already inside user).
fn proc_stat() -> BTreeMap<String, [u64; 3]> {
    let text = std::fs::read_to_string("/proc/stat").unwrap();
    let cpu_lines = text.lines().filter(|l| l.starts_with("cpu"));
    cpu_lines
        .map(|l| {
            let mut it = l.split_ascii_whitespace();
            let name = it.next().unwrap().to_string();
            let v: Vec<u64> = it.take(8).map(|x| x.parse().unwrap()).collect();
            let total: u64 = v.iter().sum();
            (name, [total - v[3] - v[4], v[4], total])
        })
        .collect()
}

/// The three load averages `uptime` prints.
fn uptime() -> [f64; 3] {
    let out = Command::new("uptime").env("LC_ALL", "C").output().expect("uptime (procps)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (_, loads) = text.split_once("load average:").unwrap_or_else(|| panic!("uptime: {text}"));
    let v: Vec<f64> = loads.split(',').map(|x| x.trim().parse().unwrap()).collect();
    v.try_into().unwrap()
}

/// Every process's (start time, utime + stime) in ticks, from /proc/<pid>/stat.
fn pid_ticks() -> HashMap<i64, (u64, u64)> {
    let mut out = HashMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) else { continue };
        let Ok(text) = std::fs::read_to_string(e.path().join("stat")) else { continue };
        // Fields after the parenthesised name, numbered from 3 (state) as in proc(5).
        let f: Vec<&str> = text[text.rfind(')').unwrap() + 1..].split_ascii_whitespace().collect();
        let n = |i: usize| f[i - 3].parse::<u64>().unwrap();
        out.insert(pid, (n(22), n(14) + n(15)));
    }
    out
}

/// Node-wide CPU tolerance, in points: the test reads /proc/stat microseconds before medic does
/// (medic reads it first in a sample). Over 1 s the two cores count ~200 ticks, and a counter
/// that ticks over between the two reads moves the figure by half a point; allow two such ticks.
const NODE_CPU_TOL: f64 = 1.0;
/// The same per core: ~100 ticks a second, one point a tick; allow two.
const CORE_CPU_TOL: f64 = 2.0;

fn cpu(node: &LoadedNode) -> String {
    let spinner = Reaped(Command::new("sh").args(["-c", "while :; do :; done"]).spawn().unwrap());
    let spin = spinner.0.id() as i64;
    let mut s = sampler();
    std::thread::sleep(Duration::from_millis(300));
    let (a1, st1, ts1) = (pid_ticks(), proc_stat(), medic::audit::now_ms());
    let t1 = Instant::now();
    s.sample(ts1);
    let took1 = t1.elapsed();
    let b1 = pid_ticks();
    std::thread::sleep(Duration::from_secs(1));
    let load_before = uptime();
    let (a2, st2, ts2) = (pid_ticks(), proc_stat(), medic::audit::now_ms());
    let t2 = Instant::now();
    let snap = s.sample(ts2);
    let took2 = t2.elapsed();
    let b2 = pid_ticks();
    let load_after = uptime();
    drop(spinner);

    // Node-wide and per core, against the test's own reading of the same interval.
    let share = |k: &str, i: usize| (st2[k][i] - st1[k][i]) as f64 * 100.0 / (st2[k][2] - st1[k][2]) as f64;
    let util = |k: &str| share(k, 0);
    let mut worst_core = 0.0f64;
    let (want, got) = (util("cpu"), snap.metrics["cpu.util_pct"]);
    assert!(
        (got - want).abs() <= NODE_CPU_TOL,
        "cpu.util_pct {got:.2} but /proc/stat says {want:.2} over the same second (tolerance {NODE_CPU_TOL} point: \
         a tick or two counted between the test's read and medic's)"
    );
    let (iowait, got) = (share("cpu", 1), snap.metrics["cpu.iowait_pct"]);
    assert!((got - iowait).abs() <= NODE_CPU_TOL, "cpu.iowait_pct {got:.2} but /proc/stat says {iowait:.2} (tolerance {NODE_CPU_TOL})");
    // Load averages: the kernel recomputes them every 5 s; medic's are what uptime showed just
    // before or just after its sample.
    for (i, key) in ["load.1", "load.5", "load.15"].into_iter().enumerate() {
        let got = snap.metrics[key];
        assert!(
            got == load_before[i] || got == load_after[i],
            "{key} {got} but uptime said {} before and {} after",
            load_before[i],
            load_after[i]
        );
    }
    let cores: Vec<&String> = st1.keys().filter(|k| k.len() > 3).collect();
    for k in &cores {
        let key = format!("cpu.core.{}.util_pct", &k[3..]);
        let (want, got) = (util(k), snap.metrics[&key]);
        worst_core = worst_core.max((got - want).abs());
        assert!(
            (got - want).abs() <= CORE_CPU_TOL,
            "{key} {got:.2} but /proc/stat says {want:.2} (tolerance {CORE_CPU_TOL} points: two ticks of the core's 100 a second)"
        );
    }
    assert_eq!(snap.metrics["cpu.count"], cores.len() as f64);

    // Per process: medic read each process's ticks somewhere inside its sample, so the count it
    // read lies between the test's reads before and after that sample (the counters only grow),
    // and it divides by the interval it was given. So for every process alive through all four
    // reads, cpu_pct must lie in [a2 - b1, b2 - a1] ticks over ts2 - ts1: no tolerance.
    let secs = (ts2 - ts1) as f64 / 1000.0;
    let hz = rustix::param::clock_ticks_per_second() as f64;
    let pct = |ticks: u64| ticks as f64 / hz / secs * 100.0;
    let (mut checked, mut bad) = (0, Vec::new());
    let mut spun = None;
    for p in &snap.processes {
        let (Some(got), Some(a1), Some(b1), Some(a2), Some(b2)) =
            (p.cpu_pct, a1.get(&p.pid), b1.get(&p.pid), a2.get(&p.pid), b2.get(&p.pid))
        else {
            continue;
        };
        if [b1.0, a2.0, b2.0].iter().any(|st| *st != a1.0) {
            continue; // the pid was reused
        }
        let (lo, hi) = (pct(a2.1.saturating_sub(b1.1)), pct(b2.1 - a1.1));
        checked += 1;
        if got < lo - 1e-9 || got > hi + 1e-9 {
            bad.push(format!("pid {} ({}): {got:.2} % outside [{lo:.2}, {hi:.2}]", p.pid, p.name));
        }
        if p.pid == spin {
            spun = Some((got, lo, hi));
        }
    }
    assert!(bad.is_empty(), "{} of {checked} processes read a CPU % their /proc/<pid>/stat cannot explain: {bad:?}", bad.len());
    assert!(checked > SLEEPERS, "only {checked} processes were compared");
    let sleepers: HashSet<i64> = node.sleepers.iter().map(|r| r.0.id() as i64).collect();
    let idle = snap.processes.iter().filter(|p| sleepers.contains(&p.pid) && p.cpu_pct == Some(0.0)).count();
    assert_eq!(idle, SLEEPERS, "every sleeper reads exactly 0 %");
    let (got, lo, hi) = spun.expect("the spinner was compared");
    assert!(got >= 10.0, "the spinner read {got:.1} %: too idle for the comparison to say anything about a busy process");
    format!(
        "node {:.2} vs {want:.2} %, worst core off by {worst_core:.2}; {checked} processes within their brackets, \
         spinner {got:.1} % in [{lo:.1}, {hi:.1}]; samples took {took1:.0?} and {took2:.0?}",
        snap.metrics["cpu.util_pct"]
    )
}

/// `ps -e`: pid → (RSS in KiB, threads), without ps itself.
fn ps() -> HashMap<i64, (u64, u64)> {
    let c = Command::new("ps").args(["-e", "--no-headers", "-o", "pid=,rss=,nlwp="]).stdout(Stdio::piped()).spawn().expect("ps (procps)");
    let me = c.id() as i64;
    let out = c.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let row = |l: &str| {
        let v: Vec<u64> = l.split_ascii_whitespace().map(|x| x.parse().unwrap()).collect();
        (v[0] as i64, (v[1], v[2]))
    };
    text.lines().map(row).filter(|(pid, _)| *pid != me).collect()
}

/// Processes medic lists but ps saw neither before nor after the sample: ones that started and
/// ended inside it (a concurrent test's short commands). More than this is a bug.
const BORN_AND_GONE_MAX: usize = 20;

fn processes(node: &LoadedNode) -> String {
    let mut s = sampler();
    let before = ps();
    let snap = s.sample(medic::audit::now_ms());
    let after = ps();
    let listed: HashMap<i64, &medic::signals::process::ProcessInfo> = snap.processes.iter().map(|p| (p.pid, p)).collect();

    // Every process that ps saw before and after the sample lived through it: medic lists it.
    let stable: Vec<i64> = before.keys().filter(|p| after.contains_key(p)).copied().collect();
    let missing: Vec<i64> = stable.iter().filter(|p| !listed.contains_key(p)).copied().collect();
    assert!(missing.is_empty(), "ps saw {} processes before and after the sample that medic does not list: {missing:?}", missing.len());
    let extra: Vec<i64> = listed.keys().filter(|p| !before.contains_key(p) && !after.contains_key(p)).copied().collect();
    assert!(
        extra.len() <= BORN_AND_GONE_MAX,
        "medic lists {} processes ps never saw (at most {BORN_AND_GONE_MAX} may start and end inside a sample): {extra:?}",
        extra.len()
    );

    // Threads and RSS, where ps read the same before and after: both exact (RSS from statm, as
    // ps reads it; see `rss_is_the_exact_count_not_the_per_cpu_estimate`).
    let slack = 0;
    let (mut compared, mut exact_rss, mut worst_rss, mut bad) = (0, 0, 0u64, Vec::new());
    for pid in &stable {
        let (b, a, p) = (before[pid], after[pid], listed[pid]);
        if b != a {
            continue;
        }
        compared += 1;
        let off = p.rss_bytes.abs_diff(b.0 * 1024);
        exact_rss += usize::from(off == 0);
        worst_rss = worst_rss.max(off);
        if off > slack || p.threads != b.1 {
            bad.push(format!("pid {pid} ({}): rss {} threads {} but ps {} KiB, {} threads", p.name, p.rss_bytes, p.threads, b.0, b.1));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {compared} processes disagree with ps on threads, or on RSS by more than the kernel's per-CPU estimate \
         allows ({slack} bytes): {bad:?}",
        bad.len()
    );
    for r in &node.sleepers {
        let p = listed.get(&(r.0.id() as i64)).expect("every sleeper listed");
        assert_eq!((p.name.as_str(), p.state.as_str(), p.threads), ("sleep", "S", 1));
    }

    // Open fds of the process holding 10,000 sockets, against its fd directory.
    let holder = node.holder.0.id();
    let fds = std::fs::read_dir(format!("/proc/{holder}/fd")).unwrap().count() as u64;
    assert!(fds > 2 * CONNECTIONS as u64);
    assert_eq!(listed[&(holder as i64)].fds, Some(fds), "fds of the socket holder");
    format!(
        "medic lists {} processes, ps {} before and {} after; {} born and gone inside the sample; \
         {compared} thread counts equal to ps's, RSS exact for {exact_rss} and at most {} KiB off (slack {} KiB); \
         holder's {fds} fds exact",
        listed.len(),
        before.len(),
        after.len(),
        extra.len(),
        worst_rss / 1024,
        slack / 1024
    )
}

/// Regression: medic read a process's RSS from /proc/<pid>/stat, which on Linux 6.2 and later
/// is the kernel's per-CPU estimate: on two CPUs up to 768 KiB from what ps and top show (the
/// exact sum, from /proc/<pid>/status or statm since 6.16), and on a large machine with 64 KiB
/// pages a small process read 0. It now reads /proc/<pid>/statm.
#[test]
fn rss_is_the_exact_count_not_the_per_cpu_estimate() {
    let spawn = || Reaped(Command::new("sleep").arg("60").stdin(Stdio::null()).stdout(Stdio::null()).spawn().unwrap());
    let sleepers: Vec<Reaped> = (0..50).map(|_| spawn()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let before = ps();
    let snap = Sampler::new(Roots::default()).sample(medic::audit::now_ms());
    let after = ps();
    let mut bad = Vec::new();
    for r in &sleepers {
        let pid = r.0.id() as i64;
        let p = snap.processes.iter().find(|p| p.pid == pid).expect("every sleeper listed");
        if before[&pid] == after[&pid] && p.rss_bytes != before[&pid].0 * 1024 {
            bad.push(format!("pid {pid}: {} KiB, ps {} KiB", p.rss_bytes / 1024, before[&pid].0));
        }
    }
    assert!(bad.is_empty(), "{} of {} sleepers' RSS differs from ps's: {bad:?}", bad.len(), sleepers.len());
}

/// `free -b`: the Mem: row (total used free shared buff/cache available) and Swap: (total used free).
fn free() -> (Vec<u64>, Vec<u64>) {
    let out = Command::new("free").arg("-b").output().expect("free (procps)");
    let text = String::from_utf8(out.stdout).unwrap();
    let row = |name: &str| -> Vec<u64> {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("free has no {name} row: {text}"));
        line.split_ascii_whitespace().skip(1).map(|x| x.parse().unwrap()).collect()
    };
    (row("Mem:"), row("Swap:"))
}

/// Memory that may come and go between free's reads and medic's (page cache, slab, a
/// concurrent build): medic's figure may sit this far outside the range free read around it.
const MEM_TOL: f64 = 16.0 * 1024.0 * 1024.0;
/// Rounds of (tool, medic, tool) before a figure that moved while it was read counts as wrong.
const ROUNDS: usize = 5;

fn memory(_: &LoadedNode) -> String {
    let mut s = sampler();
    for round in 1..=ROUNDS {
        let (mb, sb) = free();
        let snap = s.sample(medic::audit::now_ms());
        let (ma, sa) = free();
        let m = |k: &str| snap.metrics[k];
        // free (procps 4) says used = total - available, as medic does; a free that did not would show here.
        assert_eq!(mb[1], mb[0] - mb[5], "free's used is total - available");
        assert_eq!(m("mem.total_bytes"), mb[0] as f64, "MemTotal");
        assert_eq!(m("swap.total_bytes"), sb[0] as f64, "SwapTotal");
        let pct = |v: &[u64]| v[1] as f64 * 100.0 / v[0] as f64;
        let pct_tol = MEM_TOL * 100.0 / mb[0] as f64;
        let figures = [
            ("mem.available_bytes", mb[5] as f64, ma[5] as f64, MEM_TOL),
            ("mem.used_bytes", mb[1] as f64, ma[1] as f64, MEM_TOL),
            ("mem.used_pct", pct(&mb), pct(&ma), pct_tol),
            ("swap.used_bytes", sb[1] as f64, sa[1] as f64, MEM_TOL),
            ("swap.free_bytes", sb[2] as f64, sa[2] as f64, MEM_TOL),
        ];
        let (mut worst, mut outside) = (0.0f64, Vec::new());
        for (key, b, a, tol) in figures {
            let got = m(key);
            let off = (b.min(a) - got).max(got - b.max(a)).max(0.0);
            if key.ends_with("_bytes") {
                worst = worst.max(off);
            }
            if off > tol {
                outside.push(format!("{key} {got} is {off} outside free's {b} before and {a} after"));
            }
        }
        if outside.is_empty() {
            return format!(
                "total exact; used {} within free's {}..{} (round {round}); worst {:.1} MiB outside free's readings",
                m("mem.used_bytes"),
                mb[1].min(ma[1]),
                mb[1].max(ma[1]),
                worst / 1048576.0
            );
        }
        assert!(
            round < ROUNDS,
            "{outside:?} in {ROUNDS} rounds in a row (tolerance 16 MiB for memory that came and went between the reads)"
        );
    }
    unreachable!()
}

/// One `df` row: size, used, avail, use%, inodes, iused, ifree, iuse%.
#[derive(Debug, Clone, PartialEq)]
struct Df([f64; 8]);

/// `df -B1` of each path in order (a mount point may hold spaces: the target is last).
fn df(paths: &[PathBuf]) -> Vec<Df> {
    let out = Command::new("df")
        .args(["-B1", "--output=size,used,avail,pcent,itotal,iused,iavail,ipcent,target"])
        .args(paths)
        .output()
        .expect("df (coreutils)");
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Df> = text
        .lines()
        .skip(1)
        .map(|l| {
            let v: Vec<f64> = l.split_ascii_whitespace().take(8).map(|x| x.trim_end_matches('%').parse().unwrap()).collect();
            Df(v.try_into().unwrap())
        })
        .collect();
    assert_eq!(rows.len(), paths.len(), "df: {text}");
    rows
}

fn disks(node: &LoadedNode) -> String {
    let mut paths: Vec<PathBuf> = node.mounts.iter().map(|m| m.0.clone()).collect();
    paths.push("/".into());
    let mut s = sampler();
    for round in 1..=ROUNDS {
        let before = df(&paths);
        let snap = s.sample(medic::audit::now_ms());
        let after = df(&paths);
        // (path, whether df saw it change during the round, what disagreed)
        let mut wrong = Vec::new();
        for ((path, b), a) in paths.iter().zip(&before).zip(&after) {
            let mp = path.to_str().unwrap();
            assert!(snap.mounts.iter().any(|m| m.mount_point == mp), "{mp} is not among medic's mounts");
            let key = |k: &str| format!("disk.{mp}.{k}");
            let m = |k: &str| snap.metrics.get(&key(k)).copied().unwrap_or_else(|| panic!("no {}", key(k)));
            // Counts: df's used is total - free, as medic's; df's avail is medic's free_bytes.
            let counts =
                [(0, "total_bytes"), (1, "used_bytes"), (2, "free_bytes"), (4, "inodes_total"), (5, "inodes_used"), (6, "inodes_free")];
            for (i, k) in counts {
                let got = m(k);
                if got < b.0[i].min(a.0[i]) || got > b.0[i].max(a.0[i]) {
                    wrong.push((mp, b != a, format!("{} {got} but df read {} before and {} after", key(k), b.0[i], a.0[i])));
                }
            }
            // Percentages: df rounds up to a whole percent, medic keeps the fraction.
            for (i, k) in [(3, "used_pct"), (7, "inodes_used_pct")] {
                let got = m(k);
                if got <= b.0[i].min(a.0[i]) - 1.0 || got > b.0[i].max(a.0[i]) + 1e-9 {
                    wrong.push((mp, b != a, format!("{} {got} does not round up to df's {}% / {}%", key(k), b.0[i], a.0[i])));
                }
            }
        }
        // `/` changes while other tests and builds write to it: a figure that moved while it was
        // read and fell outside df's readings (written and removed in between) gets another round.
        let settled = wrong.iter().any(|(_, moved, _)| !moved) || round == ROUNDS;
        assert!(!settled || wrong.is_empty(), "disagree with df (round {round}): {wrong:?}");
        if wrong.is_empty() {
            let moving: Vec<&PathBuf> = paths.iter().zip(before.iter().zip(&after)).filter(|(_, (b, a))| b != a).map(|(p, _)| p).collect();
            return format!(
                "{} mounts exact against df and df -i (round {round}){}, e.g. {}: used {} of {}, inodes {}%",
                paths.len() - moving.len(),
                if moving.is_empty() {
                    String::new()
                } else {
                    format!("; {moving:?} moved during the sample and sat between df's readings")
                },
                paths[2].display(),
                before[2].0[1],
                before[2].0[0],
                before[2].0[7]
            );
        }
    }
    unreachable!()
}

/// medic's TCP counters and their names in `nstat`.
const COUNTERS: &[(&str, &str)] = &[
    ("tcp.retrans_segs", "TcpRetransSegs"),
    ("tcp.out_segs", "TcpOutSegs"),
    ("tcp.in_segs", "TcpInSegs"),
    ("tcp.in_errs", "TcpInErrs"),
    ("tcp.out_rsts", "TcpOutRsts"),
    ("tcp.attempt_fails", "TcpAttemptFails"),
    ("tcp.estab_resets", "TcpEstabResets"),
    ("tcp.listen_overflows", "TcpExtListenOverflows"),
    ("tcp.listen_drops", "TcpExtListenDrops"),
    ("tcp.lost_retransmit", "TcpExtTCPLostRetransmit"),
    ("tcp.timeouts", "TcpExtTCPTimeouts"),
    ("tcp.syn_retrans", "TcpExtTCPSynRetrans"),
    ("tcp.fast_retrans", "TcpExtTCPFastRetrans"),
    ("tcp.slow_start_retrans", "TcpExtTCPSlowStartRetrans"),
];

/// `nstat -asz`: every counter, absolute (not since nstat last ran), leaving nstat's history alone.
fn nstat() -> HashMap<String, f64> {
    let out = Command::new("nstat").arg("-asz").output().expect("nstat (iproute2)");
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut it = l.split_ascii_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

/// medic's counters against nstat's read just before and after its sample: the counters only
/// grow, so each of medic's must lie between the two.
fn bracketed(snap: &Snapshot, before: &HashMap<String, f64>, after: &HashMap<String, f64>) {
    for (key, name) in COUNTERS {
        let (b, a, got) = (before[*name], after[*name], snap.metrics[*key]);
        assert!(got >= b && got <= a, "{key} {got} but nstat's {name} read {b} before and {a} after");
    }
}

fn tcp_counters(_: &LoadedNode) -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (_peer, _) = l.accept().unwrap();
    let mut s = sampler();
    let (n1, ts1) = (nstat(), medic::audit::now_ms());
    let s1 = s.sample(ts1);
    let m1 = nstat();
    bracketed(&s1, &n1, &m1);

    // Retransmits: data on an open connection whose segments are dropped (timeouts), and a new
    // connection whose SYNs are (SYN retransmits), for long enough for a few of each.
    let rule = Nft::drop_port(port);
    conn.write_all(&[0x5a; 1000]).unwrap();
    let syn = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_millis(2500));
    assert!(syn.is_err(), "the drop rule holds");
    drop(rule);

    let (n2, ts2) = (nstat(), medic::audit::now_ms());
    let s2 = s.sample(ts2);
    let m2 = nstat();
    bracketed(&s2, &n2, &m2);
    let moved = |name: &str| n2[name] - m1[name];
    for name in ["TcpRetransSegs", "TcpExtTCPTimeouts", "TcpExtTCPSynRetrans"] {
        assert!(moved(name) >= 1.0, "{name} did not move: the retransmits were not made");
    }
    // Deltas: medic's lies between nstat's narrowest and widest, by the brackets above; the rate
    // is that delta over the interval medic was given.
    let secs = (ts2 - ts1) as f64 / 1000.0;
    for (key, _) in COUNTERS {
        let delta = s2.metrics[*key] - s1.metrics[*key];
        let rate = s2.metrics[&format!("{key}_per_s")];
        assert!((rate - delta / secs).abs() < 1e-6, "{key}_per_s {rate} but the counter moved {delta} in {secs} s");
    }
    let d = |key: &str| s2.metrics[key] - s1.metrics[key];
    format!(
        "all {} counters between nstat's readings; retrans_segs +{} (nstat +{}..{}), timeouts +{}, syn_retrans +{}, out_segs +{} (nstat +{}..{})",
        COUNTERS.len(),
        d("tcp.retrans_segs"),
        moved("TcpRetransSegs"),
        m2["TcpRetransSegs"] - n1["TcpRetransSegs"],
        d("tcp.timeouts"),
        d("tcp.syn_retrans"),
        d("tcp.out_segs"),
        moved("TcpOutSegs"),
        m2["TcpOutSegs"] - n1["TcpOutSegs"]
    )
}
