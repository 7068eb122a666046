//! Audit throughput with group commit: durably logged records per second for batches of 1, 10,
//! 100 and 1,000 records (one write, one fdatasync of the log, one anchor update + fsync per
//! batch: `AuditLog::append_batch`), and the latency of one record alone (p50/p99 of
//! `append_bounded_at`, the agent's single-record path, write to anchor fsync). Each record is a
//! realistic `action` decision (a request with its reason and the signals it read, ~0.8 KiB).
//!
//! The log lives in a fresh directory under `MEDIC_BENCH_DIR` (default `/var/lib`: the state
//! dir's filesystem on a real node, not a tmpfs), removed at the end. Figures go to
//! docs/BENCHMARKS.md ("Audit throughput (group commit)"). Run: `cargo bench --bench audit`
//! (or bench/audit_throughput.sh).

use criterion::{criterion_group, Criterion, Throughput};
use medic::actions::{ActionKind, ActionRequest};
use medic::audit::record::{Action, PlaybookRef, Record};
use medic::audit::{now_ms, AuditLog};
use medic::gate::{Decision, Mode, Verdict};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn record(i: usize) -> Record {
    let req = ActionRequest {
        kind: ActionKind::CleanFiles,
        target: format!("/var/tmp/spool-{}", i % 64),
        params: BTreeMap::from([("older_than_secs".to_string(), json!(3600)), ("pattern".to_string(), json!("*.tmp"))]),
        reason: "disk / is 97.5% full and rose 4 points in 5 minutes; cleaning files older than an hour".into(),
        signals: BTreeMap::from([
            ("disk./.used_pct".to_string(), json!(97.5)),
            ("disk./.free_bytes".to_string(), json!(268_435_456u64)),
            ("disk./.used_pct.rate_5m".to_string(), json!(0.8)),
            ("proc.top_writer.pid".to_string(), json!(4242)),
            ("proc.top_writer.exe".to_string(), json!("/usr/bin/logger-daemon")),
        ]),
    };
    let v = Verdict { decision: Decision::Suppressed, rule: "cooldown", mode: Mode::Live, detail: "cooldown 5m: last ran 2m ago".into() };
    Record::Action(Action::of(PlaybookRef::named("disk-full"), &req, &v))
}

fn bench_dir() -> tempfile::TempDir {
    let base = std::env::var_os("MEDIC_BENCH_DIR").map_or_else(|| PathBuf::from("/var/lib"), PathBuf::from);
    tempfile::Builder::new().prefix("medic-bench-audit.").tempdir_in(base).expect("a bench dir (MEDIC_BENCH_DIR)")
}

fn throughput(c: &mut Criterion) {
    let dir = bench_dir();
    let (mut log, _) = AuditLog::open(dir.path(), "bench-node").unwrap();
    let mut g = c.benchmark_group("audit_group_commit");
    g.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    for n in [1usize, 10, 100, 1000] {
        let recs: Vec<Record> = (0..n).map(record).collect();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("batch_{n}"), |b| b.iter(|| log.append_batch(&recs, now_ms()).unwrap()));
    }
    g.finish();
    drop(log);
    let v = medic::audit::verify::verify(dir.path()).unwrap();
    assert!(v.is_ok(), "the benched log verifies: {v:?}");
}

/// One record alone: p50/p99/max of the agent's single-record append (durable when it returns).
fn latency() {
    let n: usize = std::env::var("MEDIC_BENCH_SINGLE").ok().and_then(|s| s.parse().ok()).unwrap_or(2000);
    let dir = bench_dir();
    let (mut log, _) = AuditLog::open(dir.path(), "bench-node").unwrap();
    let mut t = Vec::with_capacity(n);
    for i in 0..n {
        let rec = record(i);
        let s = Instant::now();
        log.append_bounded_at(&rec, now_ms()).unwrap();
        t.push(s.elapsed());
    }
    t.sort();
    let pct = |p: f64| t[((t.len() as f64 * p) as usize).min(t.len() - 1)].as_secs_f64() * 1e3;
    let total: f64 = t.iter().map(Duration::as_secs_f64).sum();
    println!(
        "audit one record alone ({n} appends, each durable on return): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; {:.0} records/s",
        pct(0.50),
        pct(0.99),
        pct(1.0),
        n as f64 / total
    );
}

criterion_group!(benches, throughput);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if std::env::args().any(|a| a == "--bench") || std::env::args().len() == 1 {
        latency();
    }
}
