//! medic's own /proc parsers against the `procfs-core` crate's, on the same text: this machine's
//! /proc read once into memory (per-process files: every process here, repeated to 2,000), each
//! side going from text to what the sampler keeps (metrics, `Stat`, `PidStat`, ...), so the
//! procfs side includes the small conversion medic would need. And, for the verdict on
//! `sysinfo`, its process refresh against medic's own process scan with 2,000 sleeping children.
//! Run: `cargo bench -p medic --bench procfs -- --warm-up-time 1 --measurement-time 3`.
//! Results and the verdict: docs/BENCHMARKS.md, docs/ARCHITECTURE.md.

use criterion::{criterion_group, criterion_main, Criterion};
use medic::signals::cpu::{self, CpuTimes, Stat};
use medic::signals::disk::{self, DiskCounters, Mount, PSEUDO_FS};
use medic::signals::process::{self, PidStat, ProcContext};
use medic::signals::sockets::{self, SocketTable};
use medic::signals::{memory, tcp};
use procfs_core::{FromRead, FromReadSI};
use std::collections::{BTreeMap, HashMap};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const PROCESSES: usize = 2_000;

fn text(p: &str) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn si() -> procfs_core::ExplicitSystemInfo {
    procfs_core::ExplicitSystemInfo {
        boot_time_secs: 0,
        ticks_per_second: rustix::param::clock_ticks_per_second(),
        page_size: rustix::param::page_size() as u64,
        is_little_endian: cfg!(target_endian = "little"),
    }
}

/// `/proc/<pid>/{stat,statm,status}` of every process here, repeated to `PROCESSES`.
/// The texts of one file name, one per process.
type Texts = Vec<Vec<u8>>;

fn per_process() -> (Texts, Texts, Texts) {
    let (mut stat, mut statm, mut status) = (Vec::new(), Vec::new(), Vec::new());
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()).is_none() {
            continue;
        }
        let p = e.path();
        if let (Ok(a), Ok(b), Ok(c)) = (std::fs::read(p.join("stat")), std::fs::read(p.join("statm")), std::fs::read(p.join("status"))) {
            stat.push(a);
            statm.push(b);
            status.push(c);
        }
    }
    let n = stat.len();
    let grow = |v: &mut Vec<Vec<u8>>| {
        for i in 0..PROCESSES.saturating_sub(n) {
            v.push(v[i % n].clone());
        }
    };
    grow(&mut stat);
    grow(&mut statm);
    grow(&mut status);
    eprintln!("per-process files: {n} processes here, repeated to {}", stat.len());
    (stat, statm, status)
}

// The procfs side, each ending where medic's parser ends.

fn procfs_stat(t: &str) -> Stat {
    let k = procfs_core::KernelStats::from_read(t.as_bytes(), &si()).unwrap();
    let times = |c: &procfs_core::CpuTime| {
        let idle = c.idle + c.iowait.unwrap_or(0);
        let total = c.user + c.nice + c.system + idle + c.irq.unwrap_or(0) + c.softirq.unwrap_or(0) + c.steal.unwrap_or(0);
        CpuTimes { busy: total - idle, iowait: c.iowait.unwrap_or(0), total }
    };
    Stat { total: times(&k.total), cores: k.cpu_time.iter().map(times).collect(), boot_time: k.btime }
}

fn procfs_loadavg(t: &str, out: &mut BTreeMap<String, f64>) {
    let l = procfs_core::LoadAverage::from_read(t.as_bytes()).unwrap();
    out.insert("load.1".into(), l.one.into());
    out.insert("load.5".into(), l.five.into());
    out.insert("load.15".into(), l.fifteen.into());
}

fn procfs_psi(res: &str, t: &str, out: &mut BTreeMap<String, f64>) {
    let (some, full) = match res {
        "cpu" => procfs_core::CpuPressure::from_read(t.as_bytes()).map(|p| (p.some, p.full)),
        "memory" => procfs_core::MemoryPressure::from_read(t.as_bytes()).map(|p| (p.some, p.full)),
        _ => procfs_core::IoPressure::from_read(t.as_bytes()).map(|p| (p.some, p.full)),
    }
    .unwrap();
    for (kind, r) in [("some", some), ("full", full)] {
        out.insert(format!("psi.{res}.{kind}.avg10"), r.avg10.into());
        out.insert(format!("psi.{res}.{kind}.avg60"), r.avg60.into());
        out.insert(format!("psi.{res}.{kind}.avg300"), r.avg300.into());
        out.insert(format!("psi.{res}.{kind}.total_us"), r.total as f64);
    }
}

fn procfs_meminfo(t: &str, out: &mut BTreeMap<String, f64>) {
    let m = procfs_core::Meminfo::from_read(t.as_bytes()).unwrap();
    let (total, avail) = (m.mem_total, m.mem_available.unwrap());
    let used = total.saturating_sub(avail);
    out.insert("mem.total_bytes".into(), total as f64);
    out.insert("mem.available_bytes".into(), avail as f64);
    out.insert("mem.used_bytes".into(), used as f64);
    out.insert("mem.used_pct".into(), used as f64 * 100.0 / total as f64);
    out.insert("swap.total_bytes".into(), m.swap_total as f64);
    out.insert("swap.free_bytes".into(), m.swap_free as f64);
    out.insert("swap.used_bytes".into(), m.swap_total.saturating_sub(m.swap_free) as f64);
}

fn procfs_mounts(t: &str) -> Vec<Mount> {
    let v: Vec<procfs_core::MountEntry> = FromRead::from_read(t.as_bytes()).unwrap();
    let mut mounts: Vec<Mount> = Vec::new();
    for e in v.into_iter().filter(|e| !PSEUDO_FS.contains(&e.fs_vfstype.as_str())) {
        mounts.retain(|m| m.mount_point != e.fs_file);
        mounts.push(Mount { device: e.fs_spec, mount_point: e.fs_file, fs_type: e.fs_vfstype });
    }
    mounts
}

fn procfs_diskstats(t: &str) -> BTreeMap<String, DiskCounters> {
    let d = procfs_core::DiskStats::from_read(t.as_bytes()).unwrap();
    let mut out = BTreeMap::new();
    for s in d.0 {
        let c = DiskCounters {
            reads: s.reads,
            read_sectors: s.sectors_read,
            writes: s.writes,
            write_sectors: s.sectors_written,
            io_ms: s.time_in_progress,
        };
        if c.reads == 0 && c.writes == 0 && (s.name.starts_with("loop") || s.name.starts_with("ram")) {
            continue;
        }
        out.insert(s.name, c);
    }
    out
}

fn procfs_snmp(t: &str, out: &mut BTreeMap<String, f64>) {
    let s = procfs_core::net::Snmp::from_read(t.as_bytes()).unwrap();
    for (k, v) in [
        ("tcp.retrans_segs", s.tcp_retrans_segs),
        ("tcp.out_segs", s.tcp_out_segs),
        ("tcp.in_segs", s.tcp_in_segs),
        ("tcp.in_errs", s.tcp_in_errs),
        ("tcp.out_rsts", s.tcp_out_rsts),
        ("tcp.attempt_fails", s.tcp_attempt_fails),
        ("tcp.estab_resets", s.tcp_estab_resets),
    ] {
        out.insert(k.into(), v as f64);
    }
}

/// procfs's table has no `retrnsmt` column (medic's per-peer retransmits), so this side does
/// less than medic's: a lower bound on its cost.
fn procfs_tcp(t: &str, table: &mut SocketTable) {
    let e = procfs_core::net::TcpNetEntries::from_read(t.as_bytes(), &si()).unwrap();
    for s in e.0 {
        let peer = match s.remote_address {
            std::net::SocketAddr::V4(a) => (a.ip().to_ipv6_mapped().octets(), a.port()),
            std::net::SocketAddr::V6(a) => (a.ip().octets(), a.port()),
        };
        table.add(s.state.to_u8(), s.inode, peer, 0);
    }
}

fn procfs_pid_stat(t: &[u8]) -> PidStat {
    let s = procfs_core::process::Stat::from_read(t).unwrap();
    PidStat {
        name: s.comm,
        state: s.state.to_string(),
        ppid: s.ppid as i64,
        cpu_ticks: s.utime + s.stime,
        threads: s.num_threads.max(0) as u64,
        start_ticks: s.starttime,
        rss_pages: s.rss,
    }
}

fn files(c: &mut Criterion) {
    let p = Path::new("/proc");
    let stat = text("/proc/stat");
    let loadavg = text("/proc/loadavg");
    let psi: Vec<(&str, String)> = ["cpu", "memory", "io"].into_iter().map(|r| (r, text(&format!("/proc/pressure/{r}")))).collect();
    let meminfo = text("/proc/meminfo");
    let mounts = text("/proc/self/mounts");
    let diskstats = text("/proc/diskstats");
    let snmp = text("/proc/net/snmp");
    let netstat = text("/proc/net/netstat");
    let tcp4 = text("/proc/net/tcp");
    let (pid_stat, pid_statm, pid_status) = per_process();

    // Same content out of both before timing anything.
    assert_eq!(cpu::parse_stat(p, &stat).unwrap(), procfs_stat(&stat));
    assert_eq!(disk::parse_diskstats(p, &diskstats).unwrap(), procfs_diskstats(&diskstats));
    assert_eq!(disk::parse_mounts(p, &mounts).unwrap(), procfs_mounts(&mounts));
    for t in &pid_stat {
        assert_eq!(process::parse_pid_stat(p, &String::from_utf8_lossy(t)).unwrap(), procfs_pid_stat(t));
    }

    let mut g = c.benchmark_group("procfs_parse");
    g.bench_function("stat/ours", |b| b.iter(|| black_box(cpu::parse_stat(p, black_box(&stat)).unwrap())));
    g.bench_function("stat/procfs", |b| b.iter(|| black_box(procfs_stat(black_box(&stat)))));
    g.bench_function("loadavg/ours", |b| {
        b.iter(|| {
            let mut out = BTreeMap::new();
            cpu::parse_loadavg(p, black_box(&loadavg), &mut out).unwrap();
            black_box(out)
        })
    });
    g.bench_function("loadavg/procfs", |b| {
        b.iter(|| {
            let mut out = BTreeMap::new();
            procfs_loadavg(black_box(&loadavg), &mut out);
            black_box(out)
        })
    });
    g.bench_function("pressure_x3/ours", |b| {
        b.iter(|| {
            let mut out = BTreeMap::new();
            for (r, t) in &psi {
                cpu::parse_psi(p, r, black_box(t), &mut out).unwrap();
            }
            black_box(out)
        })
    });
    g.bench_function("pressure_x3/procfs", |b| {
        b.iter(|| {
            let mut out = BTreeMap::new();
            for (r, t) in &psi {
                procfs_psi(r, black_box(t), &mut out);
            }
            black_box(out)
        })
    });
    g.bench_function("meminfo/ours", |b| {
        b.iter(|| {
            let mut out = BTreeMap::new();
            memory::parse_meminfo(p, black_box(&meminfo), &mut out).unwrap();
            black_box(out)
        })
    });
    g.bench_function("meminfo/procfs", |b| {
        b.iter(|| {
            let mut out = BTreeMap::new();
            procfs_meminfo(black_box(&meminfo), &mut out);
            black_box(out)
        })
    });
    g.bench_function("mounts/ours", |b| b.iter(|| black_box(disk::parse_mounts(p, black_box(&mounts)).unwrap())));
    g.bench_function("mounts/procfs", |b| b.iter(|| black_box(procfs_mounts(black_box(&mounts)))));
    g.bench_function("diskstats/ours", |b| b.iter(|| black_box(disk::parse_diskstats(p, black_box(&diskstats)).unwrap())));
    g.bench_function("diskstats/procfs", |b| b.iter(|| black_box(procfs_diskstats(black_box(&diskstats)))));
    g.bench_function("snmp/ours", |b| {
        b.iter(|| {
            let mut out = BTreeMap::new();
            tcp::parse_snmp(p, black_box(&snmp), &mut out).unwrap();
            black_box(out)
        })
    });
    g.bench_function("snmp/procfs", |b| {
        b.iter(|| {
            let mut out = BTreeMap::new();
            procfs_snmp(black_box(&snmp), &mut out);
            black_box(out)
        })
    });
    // procfs-core has no /proc/net/netstat parser: ours alone, for the record.
    g.bench_function("netstat/ours", |b| {
        b.iter(|| {
            let mut out = BTreeMap::new();
            tcp::parse_netstat(p, black_box(&netstat), &mut out).unwrap();
            black_box(out)
        })
    });
    g.bench_function("net_tcp/ours", |b| {
        b.iter(|| {
            let mut t = SocketTable::default();
            sockets::parse_tcp_table(p, black_box(&tcp4), &mut t).unwrap();
            black_box(t)
        })
    });
    g.bench_function("net_tcp/procfs", |b| {
        b.iter(|| {
            let mut t = SocketTable::default();
            procfs_tcp(black_box(&tcp4), &mut t);
            black_box(t)
        })
    });
    // Per-process files, 2,000 of each (medic reads stat and statm per process per sample).
    g.bench_function("pid_stat_x2000/ours", |b| {
        b.iter(|| {
            for t in &pid_stat {
                black_box(process::parse_pid_stat(p, &String::from_utf8_lossy(black_box(t))).unwrap());
            }
        })
    });
    g.bench_function("pid_stat_x2000/procfs", |b| {
        b.iter(|| {
            for t in &pid_stat {
                black_box(procfs_pid_stat(black_box(t)));
            }
        })
    });
    g.bench_function("pid_statm_x2000/ours", |b| {
        b.iter(|| {
            for t in &pid_statm {
                black_box(process::parse_statm_resident(black_box(t)).unwrap());
            }
        })
    });
    g.bench_function("pid_statm_x2000/procfs", |b| {
        b.iter(|| {
            for t in &pid_statm {
                black_box(procfs_core::process::StatM::from_read(black_box(&t[..])).unwrap().resident);
            }
        })
    });
    // medic does not read status (statm has the RSS in 30 bytes); what reading it would cost.
    g.bench_function("pid_status_x2000/procfs", |b| {
        b.iter(|| {
            for t in &pid_status {
                black_box(procfs_core::process::Status::from_read(black_box(&t[..])).unwrap().vmrss);
            }
        })
    });
    g.finish();
}

/// Kills and reaps the children it holds when dropped.
struct Sleepers(Vec<Child>);

impl Drop for Sleepers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// medic's process scan (as `Sampler::read_processes` walks it, steady state: the previous
/// scan's memo reused) against sysinfo's `refresh_processes` over the same /proc.
fn scan(c: &mut Criterion) {
    let before = std::fs::read_dir("/proc").unwrap().count();
    let spawn = || Command::new("sleep").arg("600").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let _held = Sleepers((0..PROCESSES).map(|_| spawn()).collect());
    let clk_tck = rustix::param::clock_ticks_per_second();
    let page_size = rustix::param::page_size() as u64;
    let boot_time = cpu::read_stat(Path::new("/proc")).unwrap().boot_time;
    let sockets = sockets::InodeStates::new();
    // stat and statm held open across scans, as the sampler holds them.
    let held = std::cell::RefCell::new(medic::signals::held::Held::new());
    let ours = |prev: &HashMap<i64, process::ProcMemo>, scan_fds: bool| {
        let cx = ProcContext { boot_time, clk_tck, page_size, elapsed_secs: 1.0, uptime_secs: None, prev, sockets: &sockets, scan_fds };
        let mut memo = HashMap::new();
        let mut out = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i64>().ok()) else { continue };
            let path: PathBuf = e.path();
            if let Ok(Some((info, m))) = process::read_process(&path, pid, &cx, &mut held.borrow_mut(), &mut Vec::new()) {
                memo.insert(pid, m);
                out.push(info);
            }
        }
        (out, memo)
    };
    let (first, memo) = ours(&HashMap::new(), true);
    eprintln!("process scan: {} processes ({before} /proc entries before the sleepers)", first.len());

    let mut g = c.benchmark_group("process_scan");
    g.sample_size(20);
    g.bench_function("ours_steady", |b| b.iter(|| black_box(ours(&memo, false))));
    g.bench_function("ours_steady_with_fds", |b| b.iter(|| black_box(ours(&memo, true))));
    // What the fd scan added for the soft limit: /proc/<pid>/limits read and parsed, per process.
    let limits: Vec<PathBuf> = first.iter().map(|p| PathBuf::from(format!("/proc/{}/limits", p.pid))).collect();
    g.bench_function("fd_limit_read", |b| {
        b.iter(|| {
            for f in &limits {
                if let Ok(t) = std::fs::read(f) {
                    black_box(process::parse_fd_limit(f, &String::from_utf8_lossy(&t)).ok());
                }
            }
        })
    });
    // The tree (children, zombies, RSS with descendants, fds_pct), derived once per sample.
    let mut tree = first.clone();
    g.bench_function("derive_tree", |b| b.iter(|| process::derive_tree(black_box(&mut tree))));
    use sysinfo::{ProcessRefreshKind, ProcessesToUpdate, System};
    let kind = ProcessRefreshKind::nothing().with_cpu().with_memory().with_cmd(sysinfo::UpdateKind::OnlyIfNotSet);
    let mut sys = System::new();
    sys.refresh_processes_specifics(ProcessesToUpdate::All, true, kind);
    eprintln!("sysinfo sees {} processes (threads included)", sys.processes().len());
    g.bench_function("sysinfo_cpu_mem_cmd", |b| b.iter(|| black_box(sys.refresh_processes_specifics(ProcessesToUpdate::All, true, kind))));
    let mut all = System::new();
    all.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::everything());
    g.bench_function("sysinfo_everything", |b| {
        b.iter(|| black_box(all.refresh_processes_specifics(ProcessesToUpdate::All, true, ProcessRefreshKind::everything())))
    });
    g.finish();
}

criterion_group!(benches, files, scan);
criterion_main!(benches);
