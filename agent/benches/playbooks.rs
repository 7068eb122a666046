//! Benchmarks of the per-tick work: evaluating the bundled playbooks against a snapshot of a
//! busy node (300 processes in 40 services, 8 mounts, 10 minutes of 1 s history), sampling the
//! live /proc, and pushing a snapshot into the history. Results go to docs/BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion};
use medic::playbooks::{api::State, bundled, Runtime};
use medic::signals::disk::Mount;
use medic::signals::history::History;
use medic::signals::process::{units_of, ProcessInfo};
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
    // 1,000 playbooks due in one tick (issue 13: at most 10 ms): the bundled ones and the
    // Monit examples, each copy under a name of its own, on the same busy node.
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../playbooks/examples");
    let mut sources: Vec<(String, String)> = bundled::PLAYBOOKS.iter().map(|(f, src, _)| (f.to_string(), src.to_string())).collect();
    for e in std::fs::read_dir(&examples).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "rhai") {
            sources.push((e.file_name().to_string_lossy().into_owned(), std::fs::read_to_string(e.path()).unwrap()));
        }
    }
    let thousand: Vec<_> = (0..1000)
        .filter_map(|i| {
            let (f, src) = &sources[i % sources.len()];
            let renamed = src.replacen("name: \"", &format!("name: \"n{i}-"), 1);
            rt.compile(&format!("{i}-{f}"), &renamed).ok()
        })
        .collect();
    assert_eq!(thousand.len(), 1000, "every copy compiles");
    let st = State::default();
    c.bench_function("evaluate/1000_playbooks_one_tick", |b| {
        b.iter(|| {
            for pb in &thousand {
                let _ = black_box(rt.evaluate(pb, snap.clone(), history.clone(), &st));
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

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3)).warm_up_time(std::time::Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
