//! What the flight recorder costs on disk and in CPU: (a) this machine's real snapshots
//! (`signals::Sampler` on /proc, one sample a second, `MEDIC_BENCH_REAL_SAMPLES`, default 120),
//! and (b) a synthetic busy node for a full hour of 1 s ticks: 2,000 processes whose CPU % changes
//! every tick (300 also change RSS), 10,000 sockets spread over them (counts moving), 50 units,
//! 32 peers and eBPF entries, and 5,000 metric keys changing every tick beside 1,000 constant ones.
//!
//! Prints bytes per frame and per hour, the hours 64 MiB holds, and the CPU time of
//! `Recorder::record` (encode + compress + write, amortised) and of reading a frame back, at
//! deflate levels 6 (the default) and 1. Figures go to docs/BENCHMARKS.md ("Flight recorder").
//! Run: `cargo bench --bench recorder`.

use medic::recorder::{self, Recorder, RecorderConfig};
use medic::signals::disk::Mount;
use medic::signals::ebpf::{sched::RunqEntry, tcp::RetransEntry};
use medic::signals::process::{units_of, ProcessInfo};
use medic::signals::sockets::PeerInfo;
use medic::signals::{Roots, Sampler, Snapshot};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const T0: i64 = 1_700_000_000_000;

fn noise(a: i64, b: i64, t: i64) -> u64 {
    let mut x = (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (b as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ (t as u64);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// The busy node at second `t`.
fn busy_node(t: i64) -> Snapshot {
    let mut s = Snapshot { ts_ms: T0 + t * 1000, socket_source: "netlink", ..Default::default() };
    for i in 0..2000i64 {
        let mut tcp = BTreeMap::new();
        // 10,000 sockets: 5 per process on average, a tenth of the processes' counts moving.
        let n = 1 + noise(i, 1, 0) % 9;
        tcp.insert("ESTABLISHED".to_string(), if i % 10 == 0 { n + noise(i, 2, t / 5) % 3 } else { n });
        if i % 50 == 0 {
            tcp.insert("CLOSE_WAIT".to_string(), noise(i, 3, t / 30) % 4);
        }
        s.processes.push(ProcessInfo {
            pid: 1000 + i,
            name: format!("proc{i}"),
            cmdline: format!("/usr/bin/proc{i} --serve --port {}", 8000 + i),
            unit: Some(format!("svc{}.service", i % 50)),
            cpu_pct: Some((noise(i, 4, t) % 10_000) as f64 / 100.0),
            rss_bytes: 20_000_000 + (i as u64) * 4096 + if i < 300 { (noise(i, 5, t) % 64) * 4096 } else { 0 },
            fds: Some(12 + n),
            threads: 4,
            start_time: 1_699_000_000,
            state: if noise(i, 6, t) % 20 == 0 { "R".into() } else { "S".into() },
            tcp,
        });
    }
    s.units = units_of(&s.processes);
    for m in 0..20 {
        s.mounts.push(Mount { device: format!("/dev/vd{m}"), mount_point: format!("/srv/{m}"), fs_type: "ext4".into() });
    }
    // 5,000 keys changing every tick: percentages (two decimals), byte counters and rates.
    for k in 0..5000i64 {
        let v = match k % 3 {
            0 => (noise(k, 7, t) % 10_000) as f64 / 100.0,
            1 => (1_000_000_000 + k * 1_000_000 + t * (noise(k, 8, 0) % 100_000) as i64) as f64,
            _ => (noise(k, 9, t) % 1_000_000) as f64 / 7.0,
        };
        s.metrics.insert(format!("node.series{k}.value"), v);
    }
    for k in 0..1000 {
        s.metrics.insert(format!("node.constant{k}"), k as f64);
    }
    for p in 0..32 {
        s.tcp_peers.push(PeerInfo { peer: format!("10.0.0.{p}:443"), sockets: 10, retransmitting: (t / 60 + p) as u64 % 3, timeouts: 1 });
    }
    for p in 0..50u32 {
        s.ebpf_retrans.push(RetransEntry {
            peer: format!("10.0.1.{p}:5432"),
            local_port: 40000 + p as u16,
            pid: 1000 + p,
            cgroup: 7,
            count: (t / 10) as u64 + p as u64,
        });
    }
    for g in 0..50u64 {
        s.ebpf_runq.push(RunqEntry {
            cgroup: 4000 + g,
            path: Some(format!("/system.slice/svc{g}.service")),
            unit: Some(format!("svc{g}.service")),
            p50_us: Some((noise(g as i64, 10, t) % 50) as f64),
            p99_us: Some((noise(g as i64, 11, t) % 5000) as f64),
            total_p99_us: Some(900.0),
            total_samples: (t as u64) * 100 + g,
        });
    }
    s
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum()
}

/// Records `snaps`; prints the size and the time per record and per frame read back.
fn measure(what: &str, frames: usize, snap: impl Fn(usize) -> Snapshot, level: u32) {
    let dir = tempfile::tempdir().unwrap();
    // No rotation or retention inside the measurement: one segment, one key frame.
    let cfg = RecorderConfig { max_bytes: 1 << 40, segment_secs: 86_400, ..Default::default() };
    let mut r = Recorder::open(dir.path(), &cfg).unwrap().with_level(level);
    let mut spent = Duration::ZERO;
    let (mut first_ms, mut last) = (0, Snapshot::default());
    for i in 0..frames {
        let s = snap(i);
        let t = Instant::now();
        r.record(&s, false).unwrap();
        spent += t.elapsed();
        if i == 0 {
            first_ms = s.ts_ms;
        }
        last = s;
    }
    let t = Instant::now();
    r.close().unwrap();
    spent += t.elapsed();
    let bytes = dir_bytes(dir.path());
    let t = Instant::now();
    let mut n = 0;
    for f in recorder::read(dir.path(), None, None).unwrap() {
        f.unwrap();
        n += 1;
    }
    let read = t.elapsed();
    assert_eq!(n, frames);
    let secs = (last.ts_ms - first_ms) as f64 / 1000.0 + 1.0;
    let per_hour = bytes as f64 * 3600.0 / secs;
    println!(
        "{what}, level {level}: {} frames ({} metrics, {} processes in the last), {} bytes: {:.0} B/frame, {:.1} MiB/hour, 64 MiB holds {:.1} h; record {:.0} µs/frame, read {:.0} µs/frame",
        frames,
        last.metrics.len(),
        last.processes.len(),
        bytes,
        bytes as f64 / frames as f64,
        per_hour / 1_048_576.0,
        64.0 * 1_048_576.0 / per_hour,
        spent.as_secs_f64() * 1e6 / frames as f64,
        read.as_secs_f64() * 1e6 / n as f64,
    );
}

fn main() {
    // `cargo bench` passes `--bench`; anything else (a filter) selects a part.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let want = |p: &str| only.is_empty() || only.iter().any(|o| p.contains(o.as_str()));
    if want("busy") {
        for level in [6, 1] {
            measure("busy synthetic node, 1 h", 3600, |i| busy_node(i as i64), level);
        }
    }
    if want("real") {
        let n: usize = std::env::var("MEDIC_BENCH_REAL_SAMPLES").ok().and_then(|v| v.parse().ok()).unwrap_or(120);
        let mut sampler = Sampler::with_socket_scan_every(Roots::default(), 5);
        let start = Instant::now();
        let base = medic::audit::now_ms();
        let mut snaps = Vec::with_capacity(n);
        for i in 0..n {
            let due = start + Duration::from_secs(i as u64);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
            snaps.push(sampler.sample(base + i as i64 * 1000));
        }
        for level in [6, 1] {
            measure(&format!("this machine, {n} s"), n, |i| snaps[i].clone(), level);
        }
    }
}
