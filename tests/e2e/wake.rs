//! Wake-ups: a change that matters evaluates at once, not at the next tick, and only the
//! playbooks that read it. Each agent here ticks once a minute, so only a wake-up can evaluate
//! again within the seconds a test waits: the tests show that one happened (and what it woke),
//! never how fast (that is bench/reaction.sh's job). A storm of wake-ups still goes through
//! every gate rule.

use crate::util::{audit_lines, medic, write_config, Nft, Reaped};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A 64 MiB tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: PathBuf) -> Self {
        std::fs::create_dir_all(&at).unwrap();
        let ok = std::process::Command::new("mount").args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"]).arg(&at).status().unwrap();
        assert!(ok.success(), "mount tmpfs at {}", at.display());
        Tmpfs(at)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn fill(path: &Path, mib: usize) {
    std::fs::write(path, vec![7u8; mib << 20]).unwrap();
}

/// An agent ticking once a minute on `pbs`, dry-run, with `extra` config.
fn agent(dir: &Path, pbs: &Path, extra: &str) -> (Reaped, PathBuf) {
    let state = dir.join("state");
    let cfg = write_config(
        dir,
        &format!("[control]\nsocket = \"{}\"\n{extra}[signals]\ninterval_secs = 60\nhistory_secs = 600\n", dir.join("c.sock").display()),
    );
    let child = medic()
        .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let a = Reaped(child);
    let t = Instant::now();
    while audit_lines(&state).iter().all(|r| r["kind"] != "playbook_loaded") && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // The first tick (at start) is past; no playbook is due again for a minute.
    std::thread::sleep(Duration::from_millis(500));
    (a, state)
}

fn actions(state: &Path, playbook: &str) -> Vec<serde_json::Value> {
    audit_lines(state).into_iter().filter(|r| r["kind"] == "action" && r["playbook"]["name"] == playbook).collect()
}

fn wait_for(what: impl Fn() -> bool) -> bool {
    let t = Instant::now();
    while !what() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    what()
}

fn playbook(name: &str, interval: &str, limits: &str, body: &str) -> String {
    format!(
        "const META = #{{ name: \"{name}\", description: \"t\", interval: \"{interval}\", actions: [#{{ kind: \"notify\", target: \"*\" }}, #{{ kind: \"restart_unit\", target: \"*.service\" }}],\n  {limits} }};\nfn evaluate(node, state) {{\n{body}\n}}\n"
    )
}

/// A mount passing 50 % wakes the playbook that reads disks at once, and not the one that reads
/// only CPU; a new busy loop wakes the one that reads processes, whose `cpu_pct` is the share
/// the scheduler measured.
#[test]
fn a_filling_mount_and_a_new_busy_loop_wake_only_the_playbooks_that_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = Tmpfs::mount(dir.path().join("mnt"));
    let mp = mnt.0.display().to_string();
    let pbs = dir.path().join("pb");
    std::fs::create_dir_all(&pbs).unwrap();
    let free = "rate_limit: #{ max: 1000, per: \"1h\" }, cooldown: \"0s\"";
    std::fs::write(
        pbs.join("disk.rhai"),
        playbook(
            "disk",
            "1m",
            free,
            &format!("  let u = node.value(\"disk.{mp}.used_pct\");\n  if u != () && u >= 50 {{ notify(\"full\", #{{ used: u }}); }}"),
        ),
    )
    .unwrap();
    std::fs::write(
        pbs.join("spin.rhai"),
        playbook(
            "spin",
            "1m",
            free,
            "  for p in node.processes(\"cpu_pct\", \">=\", 95) {\n    if p.name == \"medic-spin\" { notify(`spin ${p.pid}`, #{ cpu: p.cpu_pct }); }\n  }",
        ),
    )
    .unwrap();
    // Reads only node CPU, which wakes nothing: evaluated at start and then once a minute.
    std::fs::write(
        pbs.join("cpu.rhai"),
        playbook("cpu", "1m", free, "  let u = node.value(\"cpu.util_pct\");\n  notify(\"cpu\", #{ u: u });"),
    )
    .unwrap();
    let (agent, state) = agent(dir.path(), &pbs, "");
    assert_eq!(actions(&state, "cpu").len(), 1, "evaluated once, at start");
    assert!(actions(&state, "disk").is_empty());

    fill(&mnt.0.join("big"), 40);
    assert!(wait_for(|| !actions(&state, "disk").is_empty()), "a mount passing 50 % woke the disk playbook before its minute");

    let spin = dir.path().join("medic-spin");
    std::os::unix::fs::symlink("/bin/sh", &spin).unwrap();
    // At the highest priority, so that it gets a whole core while other tests load the machine
    // (`nice` execs it: same pid, named medic-spin).
    let mut busy = std::process::Command::new("nice").args(["-n", "-20"]).arg(&spin).args(["-c", "while :; do :; done"]).spawn().unwrap();
    let woke = wait_for(|| !actions(&state, "spin").is_empty());
    let _ = busy.kill();
    let _ = busy.wait();
    assert!(woke, "a new busy loop woke the process playbook before its minute");
    let rec = &actions(&state, "spin")[0];
    assert_eq!(rec["action"]["target"], format!("spin {}", busy.id()), "{rec}");
    let cpu = rec["action"]["params"]["details"]["cpu"].as_f64();
    assert!(cpu.is_some_and(|c| c >= 95.0), "cpu_pct from the scheduler's window: {rec}");
    assert_eq!(actions(&state, "cpu").len(), 1, "the playbook that reads only node CPU was woken by neither");
    assert!(agent.stop());
}

/// Dozens of wake-ups in a few seconds (a mount's usage swinging across 50 %): every woken
/// evaluation's requests are gated like any other, so cooldowns, rate limits and the node's
/// budget hold exactly.
#[test]
fn a_wake_up_storm_still_respects_cooldowns_rate_limits_and_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = Tmpfs::mount(dir.path().join("mnt"));
    let mp = mnt.0.display().to_string();
    let pbs = dir.path().join("pb");
    std::fs::create_dir_all(&pbs).unwrap();
    let limits = "rate_limit: #{ max: 2, per: \"1h\" }, cooldown: \"3s\"";
    let body = format!(
        "  let u = node.value(\"disk.{mp}.used_pct\");\n  if u != () && u >= 50 {{\n    for i in 1..=4 {{ restart_unit(`storm-${{i}}.service`, \"swinging\"); }}\n  }}"
    );
    std::fs::write(pbs.join("storm.rhai"), playbook("storm", "1h", limits, &body)).unwrap();
    // Every decision written (no coalescing), a budget of 5 for the node.
    let (agent, state) = agent(dir.path(), &pbs, "[audit]\nrepeat_window_secs = 0\n[policy]\nbudget_per_hour = 5\n");
    let big = mnt.0.join("big");
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(8) {
        fill(&big, 40);
        std::thread::sleep(Duration::from_millis(250));
        std::fs::remove_file(&big).unwrap();
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_millis(500));
    let recs = actions(&state, "storm");
    let evaluations = recs.iter().filter(|r| r["action"]["target"] == "storm-1.service").count();
    assert!(evaluations >= 8, "the storm woke many evaluations: {evaluations}");
    let ran: Vec<&serde_json::Value> = recs.iter().filter(|r| r["decision"] == "would_execute").collect();
    assert!(ran.len() <= 5, "the node's budget of 5 holds: {}", ran.len());
    for i in 1..=4 {
        let target = format!("storm-{i}.service");
        let times: Vec<i64> =
            ran.iter().filter(|r| r["action"]["target"] == target.as_str()).map(|r| chrono_ms(r["ts"].as_str().unwrap())).collect();
        assert!(times.len() <= 2, "{target}: rate limit of 2 holds: {times:?}");
        assert!(times.windows(2).all(|w| w[1] - w[0] >= 3000), "{target}: cooldown of 3 s holds: {times:?}");
    }
    let rules: std::collections::BTreeSet<&str> =
        recs.iter().filter(|r| r["decision"] == "suppressed").filter_map(|r| r["rule"].as_str()).collect();
    for rule in ["cooldown", "rate_limit", "budget"] {
        assert!(rules.contains(rule), "some woken requests were held by {rule}: {rules:?}");
    }
    assert!(agent.stop());
}

/// A retransmit burst after a second and more of busy traffic: the tick it wakes takes the TCP
/// rates over the fast watch's last window, so the playbook sees the burst at its true share.
/// Over the whole interval since the previous sample (here the start, 60 s ticks) the thousands
/// of segments sent before it would hide it (well under 1 %).
#[test]
fn a_retransmit_burst_is_seen_at_its_share_of_the_last_moments_not_of_the_whole_interval() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let pbs = dir.path().join("pb");
    std::fs::create_dir_all(&pbs).unwrap();
    let free = "rate_limit: #{ max: 1000, per: \"1h\" }, cooldown: \"0s\"";
    let body = "  let p = node.value(\"tcp.retrans_pct\");\n  if p != () && p > 5 { notify(\"storm\", #{ pct: p, per_s: node.value(\"tcp.retrans_segs_per_s\") }); }";
    std::fs::write(pbs.join("storm.rhai"), playbook("storm", "1m", free, body)).unwrap();
    let (agent, state) = agent(dir.path(), &pbs, "");
    let srv = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = srv.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in srv.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = c;
                let mut buf = [0u8; 65536];
                while c.read(&mut buf).is_ok_and(|n| n > 0) {}
            });
        }
    });
    let mut conns: Vec<std::net::TcpStream> = (0..64).map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    for c in &conns {
        c.set_nodelay(true).unwrap();
    }
    let snmp_out = || -> u64 {
        let t = std::fs::read_to_string("/proc/net/snmp").unwrap();
        let rows: Vec<Vec<&str>> = t.lines().filter(|l| l.starts_with("Tcp:")).map(|l| l.split_whitespace().collect()).collect();
        let i = rows[0].iter().position(|n| *n == "OutSegs").unwrap();
        rows[1][i].parse().unwrap()
    };
    let before = snmp_out();
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        for c in &mut conns {
            let _ = c.write_all(&[b'x'; 100]);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let sent = snmp_out() - before;
    // Every segment to the port is now lost: each connection's unacknowledged data is
    // retransmitted after its RTO (64 at once: a burst that wakes the tcp playbooks).
    let _rule = Nft::drop_port(port);
    for c in &mut conns {
        let _ = c.write_all(&[b'y'; 100]);
    }
    assert!(sent > 5000, "busy traffic before the burst: {sent} segments");
    assert!(
        wait_for(|| !actions(&state, "storm").is_empty()),
        "a retransmit burst woke the tcp playbook at a share above 5 %: {:?}",
        audit_lines(&state).iter().rev().take(8).collect::<Vec<_>>()
    );
    let rec = &actions(&state, "storm")[0];
    let pct = rec["action"]["params"]["details"]["pct"].as_f64().unwrap();
    assert!(pct > 20.0, "the share over the last moments, not diluted by the {sent} segments before: {rec}");
    drop(conns);
    assert!(agent.stop());
}

/// Milliseconds since the epoch of an audit record's RFC 3339 `ts`.
fn chrono_ms(ts: &str) -> i64 {
    let t: jiff::Timestamp = ts.parse().unwrap();
    t.as_millisecond()
}
