//! Hostile input against the agent's loop and records (issue 9): a playbook that never returns,
//! idle clients on the control socket, a playbook that writes megabytes per request, a stuck
//! playbook asking every tick for what the gate refuses. Each test reproduces the attack on the
//! real binary or the real agent and shows that the loop keeps answering and the log stays
//! bounded.

use crate::util::{
    audit_lines, medic, playbook_src as playbook, run, status_json, text, wait_until, write_config, write_playbooks, Reaped,
};
use medic::config::Config;
use medic::daemon::Agent;
use medic::signals::Snapshot;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Starts `medic run` on `pbs` with `extra` config; returns (agent, socket, state dir).
fn spawn_agent(dir: &Path, pbs: &[(&str, String)], extra: &str) -> (Reaped, PathBuf, PathBuf) {
    let pb = write_playbooks(dir, pbs);
    let sock = dir.join("control.sock");
    let state = dir.join("state");
    let cfg = write_config(dir, &format!("[control]\nsocket = \"{}\"\n{extra}", sock.display()));
    let child = medic()
        .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pb.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Reaped(child), sock, state)
}

/// Runs `medic <args> --socket <sock>`; (success, output, how long it took).
fn timed(args: &[&str], sock: &Path) -> (bool, String, Duration) {
    let mut a = args.to_vec();
    a.extend(["--socket", sock.to_str().unwrap()]);
    let t = Instant::now();
    let o = run(&a);
    (o.status.success(), text(&o), t.elapsed())
}

const SPIN: &str = "let x = 0; while x < 1_000_000_000_000 { x += 1; }";

/// Regression: `fn evaluate(node, state) { sleep(3600); }` (or a long spin) stopped the agent
/// from answering `medic status` and `medic mode dry-run`, and from heeding SIGTERM.
#[test]
fn mode_dry_run_answers_within_a_second_while_a_playbook_spins_and_sigterm_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let spin = playbook("spin", "#{ kind: \"notify\", target: \"*\" }", "100", "0s", SPIN);
    let (agent, sock, state) =
        spawn_agent(dir.path(), &[("spin.rhai", spin)], "[playbooks.limits]\nmax_operations = 1000000000\ndeadline_ms = 60000\n");
    // The spin runs on the worker from the first tick.
    assert!(
        wait_until(20, || status_json(&sock)["evaluation"]["playbooks"].as_array().is_some_and(|p| p.iter().any(|n| n == "spin"))),
        "status answers and shows the evaluation running: {}",
        status_json(&sock)
    );
    let (ok, out, _) = timed(&["mode", "live", "--reason", "hostile test", "--ttl", "1h"], &sock);
    assert!(ok, "{out}");
    // The emergency brake, while the playbook still spins.
    let (ok, out, took) = timed(&["mode", "dry-run", "--reason", "brake"], &sock);
    assert!(ok, "{out}");
    assert!(took < Duration::from_secs(1), "mode dry-run took {took:?}");
    let st = status_json(&sock);
    assert_eq!(st["mode"]["mode"], "dry-run", "{st}");
    assert!(st["evaluation"]["running_since"].is_string(), "still spinning: {st}");
    // Ticks that find it still running are overruns, recorded once.
    assert!(wait_until(10, || audit_lines(&state).iter().any(|r| r["kind"] == "evaluation_overrun")));
    assert!(status_json(&sock)["evaluation"]["overruns"].as_u64() > Some(0));
    // SIGTERM: the evaluation is abandoned, the agent stops (no action runs: well within 10 s).
    let t = Instant::now();
    assert!(agent.stop(), "a clean exit after SIGTERM");
    assert!(t.elapsed() < Duration::from_secs(5), "stopped in {:?}", t.elapsed());
    let recs = audit_lines(&state);
    let last = recs.last().unwrap();
    assert_eq!(last["kind"], "agent_stopped", "{last}");
    assert_eq!(last["evaluation_abandoned"], serde_json::json!(["spin"]), "{last}");
    let overruns = recs.iter().filter(|r| r["kind"] == "evaluation_overrun").count();
    assert_eq!(overruns, 1, "one overrun record per stuck evaluation");
}

/// Regression: an idle connection to the control socket stalled the single loop for 5 s (no
/// ticks, no commands); 50 of them stalled it for minutes.
#[test]
fn fifty_idle_control_connections_stall_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let note = playbook("tick", "#{ kind: \"notify\", target: \"*\" }", "100000", "0s", "notify(\"tick\");");
    let (agent, sock, state) = spawn_agent(dir.path(), &[("tick.rhai", note)], "[audit]\nrepeat_window_secs = 0\n");
    assert!(wait_until(20, || status_json(&sock)["node"] == "test-node"));
    let ticks = || audit_lines(&state).iter().filter(|r| r["kind"] == "action").count();
    let idle: Vec<_> = (0..50).map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap()).collect();
    let before = ticks();
    let (ok, out, took) = timed(&["status"], &sock);
    assert!(ok && took < Duration::from_secs(1), "status with 50 idle clients: {took:?} {out}");
    let (ok, out, took) = timed(&["mode", "dry-run", "--reason", "brake"], &sock);
    assert!(ok && took < Duration::from_secs(1), "mode dry-run with 50 idle clients: {took:?} {out}");
    // Ticks go on.
    assert!(wait_until(5, || ticks() >= before + 2), "ticks stalled: {} → {}", before, ticks());
    // Each idle client is told off after its deadline, and its slot is free again.
    let mut buf = String::new();
    let mut c = idle.into_iter().next().unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Read::read_to_string(&mut c, &mut buf).unwrap();
    assert!(buf.contains("no request within 2 s"), "{buf}");
    assert!(agent.stop());
}

/// More clients than the agent serves at once: the extra ones are refused at once, the loop
/// does not wait for any of them.
#[test]
fn control_connections_beyond_the_cap_are_refused_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let (agent, sock, _state) = spawn_agent(dir.path(), &[], "");
    assert!(wait_until(20, || status_json(&sock)["node"] == "test-node"));
    let n = medic::daemon::MAX_CONTROL_CONNECTIONS + 20;
    let mut held: Vec<_> = (0..n).map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap()).collect();
    let last = held.last_mut().unwrap();
    last.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut buf = String::new();
    let _ = std::io::Read::read_to_string(last, &mut buf);
    assert!(buf.contains("busy"), "{buf:?}");
    drop(held);
    assert!(wait_until(5, || status_json(&sock)["node"] == "test-node"));
    assert!(agent.stop());
}

fn library_agent(dir: &Path, pbs: &[(&str, String)], cfg: &str) -> (Agent, PathBuf) {
    let state = dir.join("state");
    let cfg = Config::parse("test.toml", cfg).unwrap();
    let pb = write_playbooks(dir, pbs);
    (Agent::start(&cfg, Some(pb), state.clone()).unwrap(), state)
}

fn snapshot(t: i64) -> Snapshot {
    Snapshot { ts_ms: 1_800_000_000_000 + t * 1000, ..Default::default() }
}

/// Regression: a playbook allowed only `notify` read 64 keys of 60 KB and asked for a
/// notification every tick: every decision record copied all reads (3.8 MB records, 1.2 GB of
/// log in 10 s), and a record over 1 MiB later stopped the agent from starting.
#[test]
fn a_megabyte_notify_with_big_reads_gives_records_within_64_kib() {
    let dir = tempfile::tempdir().unwrap();
    let body = r#"
        let big = "x"; while big.len() < 1000000 { big += big; }
        let key = "k"; while key.len() < 60000 { key += key; }
        for i in 0..64 { node.value(`${i}.${key}`); }
        notify(big, #{ details: big });
        notify(`${big}2`);
    "#;
    let pb = playbook("noisy", "#{ kind: \"notify\", target: \"*\" }", "1", "0s", body);
    let (mut agent, state) =
        library_agent(dir.path(), &[("noisy.rhai", pb)], "[playbooks.limits]\nmax_string_size = 4000000\nmax_operations = 10000000\n");
    for t in 0..3 {
        let r = agent.tick_with(snapshot(t)).unwrap();
        assert!(r.disabled.is_empty(), "{:?}", r.disabled);
    }
    agent.stop("test").unwrap();
    let log = std::fs::read_to_string(state.join("audit.log")).unwrap();
    let longest = log.lines().map(str::len).max().unwrap();
    assert!(longest < medic::audit::bound::MAX_RECORD_BYTES, "a record of {longest} bytes");
    let recs = audit_lines(&state);
    let actions: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "action").collect();
    assert!(!actions.is_empty());
    // The request is bounded where it is made (playbooks::api), the record again on append
    // (audit::bound): whichever cut, it is marked, and every read is either carried or counted.
    for a in &actions {
        assert!(a["trigger"]["reason"].as_str().unwrap().contains("…[truncated"), "marker, never dropped");
        let signals = a["trigger"]["signals"].as_object().unwrap();
        let omitted = signals.get(medic::playbooks::api::OMITTED_READS).and_then(Value::as_u64).unwrap_or(0);
        let carried = signals.keys().filter(|k| k.as_str() != medic::playbooks::api::OMITTED_READS).count() as u64;
        assert_eq!(carried + omitted, 64, "every read carried or counted: {signals:?}");
        assert_eq!(a["playbook"]["name"], "noisy");
    }
    assert!(actions.iter().any(|a| a["decision"] == "executed") && actions.iter().any(|a| a["decision"] == "suppressed"));
    let o = run(&["audit", "verify", "--state-dir", state.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    // The agent starts again on this log.
    let cfg = Config::parse("t.toml", "").unwrap();
    Agent::start(&cfg, Some(dir.path().join("pb")), state).unwrap().stop("again").unwrap();
}

/// Regression: a stuck playbook asking every tick for what the gate refuses wrote one record
/// per tick (3,600 an hour, each with its reads). Now: a few per hour, with counts that add up.
#[test]
fn a_stuck_playbook_writes_a_few_records_per_hour_and_the_counts_add_up() {
    let dir = tempfile::tempdir().unwrap();
    let denied = playbook(
        "stuck-denied",
        "#{ kind: \"restart_unit\", target: \"*.service\" }",
        "100",
        "0s",
        "restart_unit(\"ssh.service\", \"always\");",
    );
    let suppressed = playbook("stuck-suppressed", "#{ kind: \"notify\", target: \"*\" }", "100", "1h", "notify(\"again\");");
    let (mut agent, state) =
        library_agent(dir.path(), &[("denied.rhai", denied), ("suppressed.rhai", suppressed)], "[audit]\nrepeat_window_secs = 600\n");
    let mut decisions = std::collections::BTreeMap::<String, u64>::new();
    let mut coalesced = 0;
    for t in 0..3600 {
        let r = agent.tick_with(snapshot(t)).unwrap();
        for d in &r.decisions {
            *decisions.entry(d.0.clone()).or_default() += 1;
        }
        coalesced += r.coalesced;
    }
    let st = agent.status(1_800_000_000_000 + 3600 * 1000);
    assert!(st["repeat_windows_open"].as_u64().unwrap() <= 2, "{}", st["repeat_windows_open"]);
    agent.stop("test").unwrap();
    assert_eq!(decisions["stuck-denied"], 3600);
    assert_eq!(decisions["stuck-suppressed"], 3600);
    assert!(coalesced > 7000, "{coalesced}");
    let recs = audit_lines(&state);
    for pb in ["stuck-denied", "stuck-suppressed"] {
        let mine: Vec<&Value> = recs.iter().filter(|r| r["playbook"]["name"] == pb).collect();
        let written = mine.iter().filter(|r| r["kind"] == "action").count() as u64;
        let repeated: u64 = mine.iter().filter(|r| r["kind"] == "decision_repeated").map(|r| r["count"].as_u64().unwrap()).sum();
        // One hour at a 10-minute window: 6 windows (+1 for the executed first notify).
        assert!(mine.len() <= 14, "{pb}: {} records in an hour", mine.len());
        assert_eq!(written + repeated, decisions[pb], "{pb}: every decision is accounted for");
    }
    let rep = recs.iter().find(|r| r["kind"] == "decision_repeated" && r["playbook"]["name"] == "stuck-denied").unwrap();
    assert_eq!(rep["decision"], "denied");
    assert_eq!(rep["rule"], "policy:protected");
    assert_eq!(rep["action"]["target"], "ssh.service");
    assert!(rep["first"].is_string() && rep["last"].is_string() && rep["first_seq"].is_u64(), "{rep}");
}
