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
//!
//! `live` samples this node with the agent's sampler (socket scan every 5 samples, eBPF if it
//! loads) at 1 s for `MEDIC_BENCH_LIVE_SECS` (default 600), records it, and saves the snapshots
//! to `MEDIC_BENCH_DUMP`; `dump` records a saved run again with this build's format and shows
//! which parts of the frames the bytes go to. bench/recorder_size.sh loads the node first.

use medic::recorder::{self, format, Recorder, RecorderConfig};
use medic::signals::disk::Mount;
use medic::signals::ebpf::{sched::RunqEntry, tcp::RetransEntry};
use medic::signals::ebpf::{EbpfConfig, EbpfSignals};
use medic::signals::process::UnitInfo;
use medic::signals::process::{units_of, ProcessInfo};
use medic::signals::sockets::PeerInfo;
use medic::signals::{Roots, Sampler, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Read, Write};
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
            ..Default::default()
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
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        total += e.unwrap().metadata().unwrap().len();
    }
    total
}

/// A snapshot as saved by `live` (a `Snapshot` owns a `&'static str`, so it has no `Deserialize`).
#[derive(Serialize, Deserialize)]
struct Saved {
    ts_ms: i64,
    metrics: BTreeMap<String, f64>,
    processes: Vec<ProcessInfo>,
    units: BTreeMap<String, UnitInfo>,
    mounts: Vec<Mount>,
    socket_source: String,
    tcp_peers: Vec<PeerInfo>,
    ebpf_retrans: Vec<RetransEntry>,
    ebpf_runq: Vec<RunqEntry>,
    unavailable: BTreeMap<String, String>,
    errors: Vec<String>,
}

impl Saved {
    fn of(s: &Snapshot) -> Self {
        Self {
            ts_ms: s.ts_ms,
            metrics: s.metrics.clone(),
            processes: s.processes.clone(),
            units: s.units.clone(),
            mounts: s.mounts.clone(),
            socket_source: s.socket_source.to_string(),
            tcp_peers: s.tcp_peers.clone(),
            ebpf_retrans: s.ebpf_retrans.clone(),
            ebpf_runq: s.ebpf_runq.clone(),
            unavailable: s.unavailable.clone(),
            errors: s.errors.clone(),
        }
    }

    fn snapshot(self) -> Snapshot {
        Snapshot {
            ts_ms: self.ts_ms,
            metrics: self.metrics,
            processes: self.processes,
            units: self.units,
            mounts: self.mounts,
            socket_source: ["netlink", "procfs"].into_iter().find(|x| *x == self.socket_source).unwrap_or(""),
            tcp_peers: self.tcp_peers,
            ebpf_retrans: self.ebpf_retrans,
            ebpf_runq: self.ebpf_runq,
            unavailable: self.unavailable,
            errors: self.errors,
        }
    }
}

/// Saved snapshots: a deflate stream of (length u32 LE, postcard `Saved`).
fn load(path: &str) -> Vec<Snapshot> {
    let mut z = flate2::read::DeflateDecoder::new(BufReader::new(std::fs::File::open(path).expect("MEDIC_BENCH_DUMP")));
    let mut out = Vec::new();
    let mut len = [0u8; 4];
    while z.read_exact(&mut len).is_ok() {
        let mut buf = vec![0u8; u32::from_le_bytes(len) as usize];
        z.read_exact(&mut buf).unwrap();
        out.push(postcard::from_bytes::<Saved>(&buf).unwrap().snapshot());
    }
    out
}

/// Samples this node at 1 s for `secs`, recording as the agent does; saves the snapshots.
fn live(secs: usize, dump: &str) {
    let ebpf = EbpfSignals::start(&EbpfConfig::default());
    println!("eBPF families loaded: {:?}", ebpf.loaded());
    let mut sampler = Sampler::with_socket_scan_every(Roots::default(), 5).with_ebpf(ebpf);
    let dir = tempfile::tempdir().unwrap();
    let cfg = RecorderConfig { max_bytes: 1 << 40, segment_secs: 86_400, ..Default::default() };
    let mut r = Recorder::open(dir.path(), &cfg).unwrap();
    let mut out = flate2::write::DeflateEncoder::new(BufWriter::new(std::fs::File::create(dump).unwrap()), flate2::Compression::new(1));
    let (mut sample_cpu, mut record_cpu) = (Duration::ZERO, Duration::ZERO);
    let start = Instant::now();
    let mut last = Snapshot::default();
    for i in 0..secs {
        let due = start + Duration::from_secs(i as u64);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let c = cpu_time();
        // The wall clock, as the agent stamps: CPU % divides by the interval as it was.
        let s = sampler.sample(medic::audit::now_ms());
        let c2 = cpu_time();
        r.record(&s, medic::signals::wake::Wake::NONE).unwrap();
        record_cpu += cpu_time() - c2;
        sample_cpu += c2 - c;
        let b = postcard::to_allocvec(&Saved::of(&s)).unwrap();
        out.write_all(&(b.len() as u32).to_le_bytes()).unwrap();
        out.write_all(&b).unwrap();
        last = s;
    }
    r.close().unwrap();
    out.finish().unwrap().flush().unwrap();
    let bytes = dir_bytes(dir.path());
    let per_hour = bytes as f64 * 3600.0 / secs as f64;
    println!(
        "live, {secs} s: {} metrics, {} processes, {} units, {} peers, {} retrans, {} runq in the last; sockets {:?}; {} bytes: {:.0} B/frame, {:.1} MiB/hour; CPU: sample {:.1} ms, record {:.2} ms per frame",
        last.metrics.len(),
        last.processes.len(),
        last.units.len(),
        last.tcp_peers.len(),
        last.ebpf_retrans.len(),
        last.ebpf_runq.len(),
        last.metrics.get("sock.tcp.total"),
        bytes,
        bytes as f64 / secs as f64,
        per_hour / 1_048_576.0,
        sample_cpu.as_secs_f64() * 1e3 / secs as f64,
        record_cpu.as_secs_f64() * 1e3 / secs as f64,
    );
    println!("unavailable in the last: {:?}", last.unavailable.keys().collect::<Vec<_>>());
}

/// Every frame of a recording of `snaps` (default segments) reads back equal to its snapshot.
fn verify(snaps: &[Snapshot]) {
    let dir = tempfile::tempdir().unwrap();
    let mut r = Recorder::open(dir.path(), &RecorderConfig { max_bytes: 1 << 40, ..Default::default() }).unwrap();
    for s in snaps {
        r.record(s, medic::signals::wake::Wake::NONE).unwrap();
    }
    r.close().unwrap();
    let mut n = 0;
    for (f, s) in recorder::read(dir.path(), None, None).unwrap().zip(snaps) {
        assert!(f.unwrap().snap == *s, "frame {n} does not read back equal");
        n += 1;
    }
    assert_eq!(n, snaps.len());
    println!("all {n} frames read back equal");
}

/// This thread's CPU time (user + system).
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Where the bytes of a recording of `snaps` go: each part of the frames deflated on its own
/// (one stream per part, so the figures add up to a little more than the recording).
fn breakdown(snaps: &[Snapshot]) {
    let mut enc = format::Encoder::default();
    let mut parts: Vec<(&'static str, Vec<u8>)> = Vec::new();
    for s in snaps {
        for (i, (name, bytes)) in enc.encode(s, medic::signals::wake::Wake::NONE).parts().into_iter().enumerate() {
            if parts.len() <= i {
                parts.push((name, Vec::new()));
            }
            parts[i].1.extend_from_slice(&bytes);
        }
    }
    let secs = snaps.len().max(1) as f64;
    println!("{:<32} {:>12} {:>14} {:>12}", "part", "raw B/frame", "deflated B/fr", "MiB/hour");
    for (name, raw) in &parts {
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::new(recorder::writer::LEVEL));
        z.write_all(raw).unwrap();
        let c = z.finish().unwrap().len() as f64;
        println!("{name:<32} {:>12.0} {:>14.0} {:>12.2}", raw.len() as f64 / secs, c / secs, c * 3600.0 / secs / 1_048_576.0);
    }
    // Metric value changes by family (the key up to its first dot).
    let mut fam: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for w in snaps.windows(2) {
        for (k, v) in &w[1].metrics {
            let f = k.split('.').next().unwrap_or("").to_string();
            let e = fam.entry(f).or_default();
            e.1 += 1;
            if w[0].metrics.get(k).map(|o| o.to_bits()) != Some(v.to_bits()) {
                e.0 += 1;
            }
        }
    }
    println!("metric changes per frame by family (changed / present):");
    for (f, (c, n)) in fam {
        println!("  {f:<12} {:>8.1} / {:>8.1}", c as f64 / (secs - 1.0).max(1.0), n as f64 / (secs - 1.0).max(1.0));
    }
    let mut pf = [0u64; 6];
    for w in snaps.windows(2) {
        let prev: std::collections::HashMap<_, _> = w[0].processes.iter().map(|p| ((p.pid, p.start_time), p)).collect();
        for p in &w[1].processes {
            let Some(o) = prev.get(&(p.pid, p.start_time)) else { continue };
            pf[0] += 1;
            pf[1] += u64::from(o.cpu_pct.map(f64::to_bits) != p.cpu_pct.map(f64::to_bits));
            pf[2] += u64::from(o.rss_bytes != p.rss_bytes);
            pf[3] += u64::from(o.fds != p.fds);
            pf[4] += u64::from(o.tcp != p.tcp);
            pf[5] += u64::from(o.state != p.state);
        }
    }
    let n = (secs - 1.0).max(1.0);
    println!(
        "processes per frame: {:.0} kept; changed: cpu_pct {:.1}, rss {:.1}, fds {:.1}, tcp {:.1}, state {:.1}",
        pf[0] as f64 / n,
        pf[1] as f64 / n,
        pf[2] as f64 / n,
        pf[3] as f64 / n,
        pf[4] as f64 / n,
        pf[5] as f64 / n
    );
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
        r.record(&s, medic::signals::wake::Wake::NONE).unwrap();
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
    if only.iter().any(|o| o == "live") {
        let secs = std::env::var("MEDIC_BENCH_LIVE_SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
        live(secs, &std::env::var("MEDIC_BENCH_DUMP").expect("MEDIC_BENCH_DUMP: where to save the snapshots"));
        return;
    }
    if only.iter().any(|o| o == "dump") {
        let path = std::env::var("MEDIC_BENCH_DUMP").expect("MEDIC_BENCH_DUMP: a file `live` saved");
        let snaps = load(&path);
        let n = snaps.len();
        for level in [6, 1] {
            measure(&format!("saved run {path}, {n} s"), n, |i| snaps[i].clone(), level);
        }
        verify(&snaps);
        breakdown(&snaps);
        return;
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
