//! Benchmarks of the per-tick work: evaluating the bundled playbooks against a snapshot of a
//! busy node (300 processes in 40 services, 8 mounts, 10 minutes of 1 s history), sampling the
//! live /proc, and pushing a snapshot into the history; and 1,000 playbooks (the bundled ones
//! and the examples, each copy under a name of its own, all due) evaluated in one tick through
//! `decide::evaluate`, as the daemon's `EvalJob` does, on a synthetic node of 2,000 processes in
//! 50 units, 20 mounts and a few thousand metric keys with a full 10-minute history. Results go
//! to docs/BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use medic::decide::{self, Due};
use medic::playbooks::{api::State, bundled, Playbook, Runtime};
use medic::signals::disk::Mount;
use medic::signals::history::History;
use medic::signals::process::{derive_tree, units_of, ProcessInfo};
use medic::signals::{Roots, Sampler, Snapshot};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

fn busy_snapshot(t: i64) -> Snapshot {
    let mut s = Snapshot { ts_ms: 1_700_000_000_000 + t * 1000, ..Default::default() };
    for i in 0..300i64 {
        let mut tcp = BTreeMap::new();
        tcp.insert("established".to_string(), (i % 9) as u64);
        if i % 50 == 0 {
            tcp.insert("close_wait".to_string(), 20);
        }
        s.processes.push(ProcessInfo {
            pid: 1000 + i,
            name: format!("proc{i}"),
            cmdline: format!("/usr/bin/proc{i} --flag"),
            unit: Some(format!("svc{}.service", i % 40)),
            cpu_pct: Some(((i * 37 + t) % 100) as f64 * 0.5),
            rss_bytes: 50_000_000 + (i as u64) * 1_000_000,
            fds: Some(20),
            threads: 4,
            start_time: 1_699_000_000,
            state: "S".into(),
            tcp,
            ..Default::default()
        });
    }
    s.units = units_of(&s.processes);
    for m in ["/", "/boot", "/home", "/var", "/var/log", "/var/lib/docker", "/srv", "/tmp"] {
        s.mounts.push(Mount { device: "/dev/vda".into(), mount_point: m.into(), fs_type: "ext4".into() });
        s.metrics.insert(format!("disk.{m}.used_pct"), 55.0);
    }
    for (k, v) in
        [("cpu.util_pct", 40.0), ("load.1", 1.2), ("tcp.retrans_pct", 0.3), ("tcp.retrans_segs_per_s", 2.0), ("mem.used_pct", 61.0)]
    {
        s.metrics.insert(k.into(), v);
    }
    s
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new(Default::default());
    let pbs: Vec<_> = bundled::PLAYBOOKS.iter().map(|(f, src, _)| rt.compile(f, src).unwrap()).collect();
    let mut history = History::new(600_000, 1000, 16384);
    let mut snap = busy_snapshot(0);
    for t in 0..600 {
        snap = busy_snapshot(t);
        history.push(&snap);
    }
    let (snap, history) = (Arc::new(snap), Arc::new(history));
    let states: Vec<State> = pbs.iter().map(|_| State::default()).collect();

    c.bench_function("evaluate/all_bundled_busy_node", |b| {
        b.iter(|| {
            for (pb, st) in pbs.iter().zip(&states) {
                black_box(rt.evaluate(pb, snap.clone(), history.clone(), st).unwrap());
            }
        })
    });
    for (pb, st) in pbs.iter().zip(&states) {
        c.bench_function(&format!("evaluate/{}", pb.meta.name), |b| {
            b.iter(|| black_box(rt.evaluate(pb, snap.clone(), history.clone(), st).unwrap()))
        });
    }
    let mut h = (*history).clone();
    let mut t = 600;
    c.bench_function("history/push_busy_snapshot", |b| {
        b.iter(|| {
            t += 1;
            let mut s = (*snap).clone();
            s.ts_ms = 1_700_000_000_000 + t * 1000;
            h.push(black_box(&s));
        })
    });
    for every in [1, 5] {
        let mut sampler = Sampler::with_socket_scan_every(Roots::default(), every);
        let mut now = medic::audit::now_ms();
        c.bench_function(&format!("sample/live_procfs_socket_scan_every_{every}"), |b| {
            b.iter(|| {
                now += 1000;
                black_box(sampler.sample(now))
            })
        });
    }
    // The kernel walks its whole TCP hash table for each read of /proc/net/tcp{,6}.
    c.bench_function("sample/read_proc_net_tcp_and_tcp6", |b| {
        b.iter(|| {
            black_box(std::fs::read("/proc/net/tcp").unwrap());
            black_box(std::fs::read("/proc/net/tcp6").unwrap());
        })
    });
}

/// The unit names the example playbooks look at, then synthetic services up to 50 units.
const NAMED_UNITS: [&str; 4] = ["app.service", "myapp.service", "postgresql.service", "web.service"];

/// A large node at second `t`: 2,000 processes in 50 units (a few runaways, a few near their
/// fd limit, a zombie pile, one `report-gen`), 20 mounts, node-wide, per-core, network, PSI,
/// file, probe and eBPF per-process/per-unit keys (about 2,700 metric keys).
fn large_snapshot(t: i64) -> Snapshot {
    let mut s = Snapshot { ts_ms: 1_700_000_000_000 + t * 1000, ..Default::default() };
    for i in 0..2000i64 {
        let unit = match i % 50 {
            u @ 0..=3 => NAMED_UNITS[u as usize].to_string(),
            u => format!("svc{u}.service"),
        };
        let mut tcp = BTreeMap::new();
        tcp.insert("established".to_string(), (i % 9) as u64);
        if i % 100 == 0 {
            tcp.insert("close_wait".to_string(), 30);
        }
        let pid = 1000 + i;
        s.processes.push(ProcessInfo {
            pid,
            // A tree: every tenth process parents the nine after it; 1 parents those.
            ppid: if i % 10 == 0 { 1 } else { 1000 + i - i % 10 },
            name: if i == 1234 { "report-gen".into() } else { format!("proc{}", i % 300) },
            cmdline: format!("/usr/bin/proc{} --config /etc/proc{}/main.conf --workers 4", i % 300, i % 300),
            unit: Some(unit),
            // Three runaways at 99 %; the rest between 0 and 49.5 %, moving with t.
            cpu_pct: Some(if i % 700 == 7 { 99.0 } else { ((i * 37 + t) % 100) as f64 * 0.5 }),
            rss_bytes: 20_000_000 + (i as u64 % 200) * 1_000_000,
            fds: Some(if i % 500 == 3 { 1000 } else { 20 + (i as u64 % 50) }),
            fd_limit: Some(1024),
            threads: 1 + (i as u64 % 8),
            start_time: 1_699_000_000 + i as u64,
            state: if (1901..1906).contains(&i) { "Z".into() } else { "S".into() },
            tcp,
            ..Default::default()
        });
    }
    derive_tree(&mut s.processes);
    s.units = units_of(&s.processes);
    for u in s.units.values_mut() {
        u.memory_bytes = Some(u.rss_bytes + 50_000_000);
    }
    let mut m = |k: String, v: f64| {
        s.metrics.insert(k, v);
    };
    for (i, mp) in ["/", "/boot", "/boot/efi", "/home", "/var", "/var/log", "/var/lib/docker", "/var/lib/postgresql", "/srv", "/tmp"]
        .iter()
        .map(|m| m.to_string())
        .chain((0..10).map(|i| format!("/data/{i}")))
        .enumerate()
    {
        s.mounts.push(Mount { device: format!("/dev/vd{i}"), mount_point: mp.clone(), fs_type: "ext4".into() });
        m(format!("disk.{mp}.used_pct"), 40.0 + i as f64);
        m(format!("disk.{mp}.inodes_used_pct"), 10.0);
        m(format!("disk.{mp}.total_bytes"), 100e9);
        m(format!("disk.{mp}.used_bytes"), (40.0 + i as f64) * 1e9);
        m(format!("disk.{mp}.free_bytes"), (60.0 - i as f64) * 1e9);
        m(format!("disk.{mp}.ro"), 0.0);
    }
    for (k, v) in [
        ("cpu.util_pct", 40.0),
        ("cpu.iowait_pct", 1.0),
        ("cpu.count", 16.0),
        ("load.1", 3.2),
        ("load.5", 3.0),
        ("load.15", 2.8),
        ("mem.used_pct", 61.0),
        ("mem.total_bytes", 64e9),
        ("mem.available_bytes", 25e9),
        ("swap.used_bytes", 0.0),
        ("tcp.retrans_pct", 0.3),
        ("tcp.retrans_segs_per_s", 2.0),
        ("tcp.close_wait", 200.0),
        ("file.app_log.matches", 0.0),
        ("file.heartbeat.age_secs", 12.0),
        ("file.nginx_conf.exists", 1.0),
        ("file.nginx_conf.changed", 0.0),
        ("file.nginx_conf.mode", 420.0),
        ("file.nginx_conf.uid", 0.0),
        ("file.nginx_conf.gid", 0.0),
        ("probe.web.ok", 1.0),
        ("probe.web.status", 200.0),
        ("probe.https.ok", 1.0),
        ("probe.https.status", 200.0),
        ("probe.https.cert_days_left", 80.0),
        ("probe.postgres.ok", 1.0),
        ("program.backup.ok", 1.0),
        ("program.backup.exit", 0.0),
        ("program.backup.age_hours", 3.0),
    ] {
        m(k.into(), v);
    }
    for c in 0..16 {
        m(format!("cpu.core.{c}.util_pct"), 40.0);
    }
    for ifname in ["eth0", "eth1", "lo", "docker0"] {
        for f in ["up", "admin_up", "carrier", "speed_mbps", "rx_bytes_per_s", "tx_bytes_per_s", "rx_util_pct", "tx_util_pct"] {
            m(format!("net.{ifname}.{f}"), 1.0);
        }
    }
    for res in ["cpu", "memory", "io"] {
        for kind in ["some", "full"] {
            for w in ["avg10", "avg60", "avg300"] {
                m(format!("psi.{res}.{kind}.{w}"), 0.5);
            }
        }
    }
    for i in 0..2000i64 {
        m(format!("ebpf.proc.{}.sock.close_wait", 1000 + i), if i % 100 == 0 { 30.0 } else { 0.0 });
    }
    for u in 0..50 {
        let unit = NAMED_UNITS.get(u).map_or_else(|| format!("svc{u}.service"), |n| n.to_string());
        for f in ["sock.close_wait", "sock.established", "retrans"] {
            m(format!("ebpf.unit.{unit}.{f}"), 1.0);
        }
        m(format!("ebpf.runq.unit.{unit}.p99_us"), 800.0);
    }
    for p in 0..20 {
        m(format!("ebpf.tcp.peer.10.0.0.{p}:443.retrans"), 0.0);
    }
    for d in ["vda", "vdb", "nvme0n1", "nvme1n1"] {
        for f in ["read_p99_us", "write_p99_us", "ios_per_s"] {
            m(format!("ebpf.blk.{d}.{f}"), 900.0);
        }
    }
    s
}

/// The bundled playbooks and the examples, each source copied under `n` names of its own
/// (`disk-old-logs-17`), compiled; the copies are distinct playbooks for the decider.
fn many_playbooks(rt: &Runtime, n: usize) -> Vec<Playbook> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks/examples");
    let mut sources: Vec<(String, String)> = bundled::PLAYBOOKS.iter().map(|(f, src, _)| (f.to_string(), src.to_string())).collect();
    let mut examples: Vec<_> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|x| x == "rhai")).collect();
    examples.sort();
    for p in examples {
        sources.push((p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()));
    }
    (0..n)
        .map(|i| {
            let (file, src) = &sources[i % sources.len()];
            // The first `name: "..."` is META's.
            let at = src.find("name: \"").unwrap() + "name: \"".len();
            let end = at + src[at..].find('"').unwrap();
            let renamed = format!("{}{}-{i}{}", &src[..at], &src[at..end], &src[end..]);
            rt.compile(&format!("bench/{i}/{file}"), &renamed).unwrap_or_else(|e| panic!("{e}"))
        })
        .collect()
}

fn thousand(c: &mut Criterion) {
    let rt = Runtime::new(Default::default());
    let pbs = many_playbooks(&rt, 1000);
    let mut history = History::new(600_000, 1000, 16384);
    let mut snap = large_snapshot(0);
    for t in 0..=600 {
        snap = large_snapshot(t);
        history.push(&snap);
    }
    let (snap, history) = (Arc::new(snap), Arc::new(history));
    let states: Vec<State> = pbs.iter().map(|_| State::default()).collect();
    let dues = || -> Vec<Due> {
        pbs.iter().zip(&states).map(|(pb, st)| Due { file: pb.file.clone(), pb: pb.clone(), state: st.clone() }).collect()
    };
    // Once, outside the measurement: every copy must evaluate without an error.
    let mut by_source: BTreeMap<String, (u32, f64)> = BTreeMap::new();
    let done = decide::evaluate(&rt, dues(), &snap, &history, &mut |name, secs| {
        // `name-17` → `name`: the time of each source, over its copies.
        let e = by_source.entry(name.rsplit_once('-').map_or(name, |(n, _)| n).to_string()).or_default();
        e.0 += 1;
        e.1 += secs;
    });
    let failed: Vec<String> = done.iter().filter_map(|d| d.result.as_ref().err().map(|e| e.to_string())).collect();
    assert!(failed.is_empty(), "{failed:?}");
    let asked: usize = done.iter().map(|d| d.result.as_ref().map_or(0, |e| e.requests.len())).sum();
    eprintln!(
        "1000 playbooks: {} processes, {} units, {} mounts, {} metric keys, {} history series; {asked} requests per tick",
        snap.processes.len(),
        snap.units.len(),
        snap.mounts.len(),
        snap.metrics.len(),
        history.series_count()
    );
    for (name, (n, secs)) in &by_source {
        eprintln!("  {name:<24} {n:>3} copies, {:>8.1} µs each (first, cold tick)", secs * 1e6 / f64::from(*n));
    }
    c.bench_function("evaluate/1000_playbooks_one_tick", |b| {
        b.iter_batched(dues, |due| black_box(decide::evaluate(&rt, due, &snap, &history, &mut |_, _| {})), BatchSize::LargeInput)
    });
}

criterion_group! {
    name = thousand_playbooks;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(5)).warm_up_time(std::time::Duration::from_secs(1));
    targets = thousand
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches, thousand_playbooks);
