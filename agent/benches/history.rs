//! What the signal history costs on a busy node: 2,000 processes (300 of them active, their CPU %
//! and RSS changing every second), 50 services, 20 mounts, 16 cores, 4 disks and the eBPF
//! families' per-process, per-unit, per-cgroup and per-peer keys, pushed every second for longer
//! than the 600 s horizon.
//!
//! Prints the memory it holds (counted by a global allocator: bytes asked of malloc, live) for
//! that node, and for the worst case (every series changing every tick), then times one push.
//! Results go to docs/BENCHMARKS.md and docs/ARCHITECTURE.md ("Memory bounds").

// The counting allocator below is the only unsafe code: it forwards to the system allocator.
#![allow(unsafe_code)]

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use medic::config::SignalsConfig;
use medic::signals::disk::Mount;
use medic::signals::history::History;
use medic::signals::process::{units_of, ProcessInfo};
use medic::signals::Snapshot;
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards to the system allocator with the caller's own arguments; the
// counter only adds up the sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            LIVE.fetch_add(l.size(), Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            LIVE.fetch_add(new, Relaxed);
            LIVE.fetch_sub(l.size(), Relaxed);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const PROCESSES: i64 = 2000;
const ACTIVE: i64 = 300;
const UNITS: i64 = 50;
const MOUNTS: i64 = 20;

/// A deterministic "random" number for (a, b, t).
fn noise(a: i64, b: i64, t: i64) -> u64 {
    let mut x = (a as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (b as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F) ^ (t as u64);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

/// The busy node at second `t`; with `all_change`, every value changes every second.
fn busy_node(t: i64, all_change: bool) -> Snapshot {
    let mut s = Snapshot { ts_ms: 1_700_000_000_000 + t * 1000, ..Default::default() };
    let vary = |i: i64, k: i64, every: i64| if all_change { t } else { t / every + noise(i, k, 0) as i64 % 7 };
    for i in 0..PROCESSES {
        let active = i < ACTIVE || all_change;
        let mut tcp = BTreeMap::new();
        if i % 10 == 0 {
            tcp.insert("established".to_string(), 3);
        }
        if i % 200 == 0 || all_change {
            tcp.insert("close_wait".to_string(), (vary(i, 1, 120) % 5) as u64);
        }
        s.processes.push(ProcessInfo {
            pid: 1000 + i,
            name: format!("proc{i}"),
            cmdline: format!("/usr/bin/proc{i} --serve"),
            unit: (i < UNITS * 20).then(|| format!("svc{}.service", i % UNITS)),
            cpu_pct: Some(if active { (noise(i, 2, t) % 10_000) as f64 / 100.0 } else { 0.0 }),
            rss_bytes: 20_000_000 + (i as u64) * 4096 + if active { (noise(i, 3, t) % 64) * 4096 } else { 0 },
            fds: Some(12 + (vary(i, 4, 300) % 3) as u64),
            threads: 4,
            start_time: 1_699_000_000,
            state: "S".into(),
            tcp,
            ..Default::default()
        });
    }
    s.units = units_of(&s.processes);
    for (u, info) in s.units.iter_mut() {
        info.memory_bytes = Some(info.rss_bytes + 1_000_000);
        for st in ["established", "close_wait"] {
            s.metrics.insert(format!("ebpf.unit.{u}.sock.{st}"), (vary(0, 5, 30) % 4) as f64);
        }
        s.metrics.insert(format!("ebpf.runq.unit.{u}.p99_us"), (noise(u.len() as i64, 6, t) % 5000) as f64);
    }
    for m in 0..MOUNTS {
        let mp = if m == 0 { "/".to_string() } else { format!("/srv/data{m}") };
        s.mounts.push(Mount { device: format!("/dev/vd{m}"), mount_point: mp.clone(), fs_type: "ext4".into() });
        let used = 40.0 + (vary(m, 7, 10) % 100) as f64 / 100.0;
        for (f, v) in [
            ("total_bytes", 1e11),
            ("used_bytes", used * 1e9),
            ("free_bytes", (100.0 - used) * 1e9),
            ("used_pct", used),
            ("inodes_total", 6e6),
            ("inodes_used", 1e5),
            ("inodes_free", 5.9e6),
            ("inodes_used_pct", 1.7),
        ] {
            s.metrics.insert(format!("disk.{mp}.{f}"), v);
        }
    }
    // Node-wide: 16 cores, memory, load, PSI, TCP counters, 4 disks: all change every second.
    for c in 0..16 {
        for f in ["user", "system", "iowait", "idle", "steal", "util_pct"] {
            s.metrics.insert(format!("cpu.{c}.{f}_pct"), (noise(c, f.len() as i64, t) % 10_000) as f64 / 100.0);
        }
    }
    for (i, k) in
        ["mem.used_pct", "mem.available_bytes", "mem.cached_bytes", "swap.used_pct", "load.1", "load.5", "load.15"].iter().enumerate()
    {
        s.metrics.insert((*k).into(), (noise(i as i64, 8, t) % 1000) as f64);
    }
    for r in ["cpu", "memory", "io"] {
        for k in ["some", "full"] {
            for w in ["avg10", "avg60", "avg300", "total_us"] {
                s.metrics.insert(format!("psi.{r}.{k}.{w}"), (noise(r.len() as i64, w.len() as i64, t) % 100) as f64);
            }
        }
    }
    for i in 0..30 {
        s.metrics.insert(format!("tcp.counter{i}"), (noise(i, 9, t) % 100) as f64);
    }
    for d in 0..4 {
        for f in ["reads_per_s", "writes_per_s", "read_bytes_per_s", "write_bytes_per_s", "util_pct"] {
            s.metrics.insert(format!("disk.vd{d}.{f}"), (noise(d, 10, t) % 1000) as f64);
        }
        for f in ["completions", "p50_us", "p99_us", "errors"] {
            s.metrics.insert(format!("ebpf.blk.vd{d}.{f}"), (vary(d, 11, 1) % 1000) as f64);
        }
    }
    // eBPF per process (sockets, retransmits), per cgroup and per peer.
    for i in (0..PROCESSES).step_by(10) {
        s.metrics.insert(format!("ebpf.proc.{}.sock.established", 1000 + i), 3.0);
        if i % 40 == 0 {
            s.metrics.insert(format!("ebpf.proc.{}.retrans", 1000 + i), (vary(i, 12, 60) % 10) as f64);
        }
    }
    for g in 0..100 {
        s.metrics.insert(format!("ebpf.cgroup.{}.sock.established", 4000 + g), (vary(g, 13, 60) % 9) as f64);
        s.metrics.insert(format!("ebpf.runq.cgroup.{}.p99_us", 4000 + g), (noise(g, 14, t) % 5000) as f64);
    }
    for p in 0..100 {
        s.metrics.insert(format!("ebpf.tcp.peer.10.0.{}.{}:443.retrans", p / 250, p % 250), (vary(p, 15, 60) % 10) as f64);
    }
    if all_change {
        for v in s.metrics.values_mut() {
            *v += t as f64;
        }
    }
    s
}

/// Fills a history for 700 s of the busy node; returns it and the heap it holds.
fn filled(max_series: usize, all_change: bool) -> (History, usize) {
    let cfg = SignalsConfig { max_series, ..Default::default() };
    let before = LIVE.load(Relaxed);
    let mut h = History::new(cfg.history_secs as i64 * 1000, cfg.interval_secs as i64 * 1000, cfg.max_series);
    for t in 0..700 {
        let s = busy_node(t, all_change);
        h.push(&s);
    }
    let held = LIVE.load(Relaxed) - before;
    (h, held)
}

fn report(what: &str, h: &History, held: usize) {
    let mib = |b: usize| b as f64 / 1_048_576.0;
    let st = h.status();
    println!(
        "{what}: {} series (cap {}), {} refused; heap held {:.1} MiB ({:.0} B/series), History::bytes() {:.1} MiB, bound {:.1} MiB",
        st.series,
        st.max_series,
        st.counts.refused,
        mib(held),
        held as f64 / st.series.max(1) as f64,
        mib(st.bytes),
        mib(st.bound_bytes)
    );
}

fn bench(c: &mut Criterion) {
    let cap = SignalsConfig::default().max_series;
    let (mut h, held) = filled(cap, false);
    report("history/busy_node_typical", &h, held);
    let (worst, held_worst) = filled(cap, true);
    report("history/busy_node_every_value_changing", &worst, held_worst);
    drop(worst);

    let mut t = 700;
    c.bench_function("history/push_busy_node_2000_processes", |b| {
        b.iter_batched(
            || {
                t += 1;
                busy_node(t, false)
            },
            // The snapshot is handed back, so its drop is not timed.
            |s| {
                h.push(black_box(&s));
                s
            },
            BatchSize::LargeInput,
        )
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(5)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
