//! The signal history on a busy node: with `signals.max_series` full of short-lived processes,
//! the series playbooks read keep their history and the playbooks decide on time; a refused
//! series is counted, named in `medic status` (JSON and text) and in the `agent_started` record,
//! and logged.

use crate::util::{audit_lines, medic, run, text, wait_until, write_config, write_playbooks};
use medic::config::Config;
use medic::daemon::Agent;
use medic::signals::process::{units_of, ProcessInfo};
use medic::signals::Snapshot;
use std::process::Stdio;

fn playbook(name: &str, body: &str) -> String {
    crate::util::playbook_src(name, "#{ kind: \"notify\", target: \"*\" }", "1000", "1h", body)
}

fn process(pid: i64, name: &str, cpu: f64, fds: u64) -> ProcessInfo {
    ProcessInfo {
        pid,
        name: name.into(),
        cmdline: format!("/usr/bin/{name}"),
        unit: Some(format!("{name}.service")),
        cpu_pct: Some(cpu),
        rss_bytes: 10_000_000,
        fds: Some(fds),
        threads: 1,
        start_time: 1_700_000_000,
        state: "S".into(),
        ..Default::default()
    }
}

/// The bugs: with `max_series = 600` and 120 short-lived processes a second, a fd leaker was
/// acted on minutes late, an inode playbook never fired while its mount sat at 93 %, and there
/// was no decision at all. Each playbook here must decide at the first tick its window is
/// covered: a key named in the source (`proc.${pid}.fds`) and a node-wide key appearing after
/// the cap filled, and a key built at run time (read from the first evaluation on).
#[test]
fn with_the_cap_full_of_short_lived_processes_playbooks_still_decide_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let pbs = write_playbooks(
        dir.path(),
        &[
            (
                "fd_leak.rhai",
                playbook(
                    "fd-leak",
                    "for p in node.processes(\"fds\", \">=\", 1000) {\n  if node.sustained(`proc.${p.pid}.fds`, \">=\", 1000, \"2m\") == true { notify(`fd leak in ${p.name}`); }\n}",
                ),
            ),
            ("inodes.rhai", playbook("inodes", "if node.sustained(\"disk./var.inodes_used_pct\", \">=\", 90, \"2m\") == true { notify(\"inodes /var\"); }")),
            (
                "spin.rhai",
                playbook(
                    "spin",
                    "for p in node.processes(\"cpu_pct\", \">=\", 95) {\n  let key = \"proc.\" + p.pid + \".cpu_pct\";\n  if node.sustained(key, \">=\", 95, \"2m\") == true { notify(`spin in ${p.name}`); }\n}",
                ),
            ),
        ],
    );
    let cfg = Config::parse("test.toml", "[signals]\nmax_series = 600\n").unwrap();
    let mut agent = Agent::start(&cfg, Some(pbs), dir.path().join("state")).unwrap();
    let t0 = 1_800_000_000_000;
    let mut first: std::collections::BTreeMap<String, i64> = Default::default();
    for t in 0..=135i64 {
        let mut s = Snapshot { ts_ms: t0 + t * 1000, ..Default::default() };
        // First in the list, so they reach the cap first: 120 new processes a second, each
        // living 2 seconds (960 series for a cap of 600; their `fds` and `cpu_pct` series are
        // read too, the playbooks' reads being generalised to every process).
        for born in (t - 1).max(0)..=t {
            for i in 0..120 {
                s.processes.push(process(100_000 + born * 120 + i, "short", 1.0, 5));
            }
        }
        s.processes.push(process(4343, "spinner", 99.0, 8));
        if t >= 10 {
            s.processes.push(process(4242, "leaker", 2.0, 1000 + t as u64 * 7));
            s.metrics.insert("disk./var.inodes_used_pct".into(), 93.0);
        }
        s.metrics.insert("cpu.util_pct".into(), 40.0);
        s.units = units_of(&s.processes);
        let report = agent.tick_with(s).unwrap();
        for (pb, _, target, ..) in report.decisions {
            first.entry(format!("{pb}: {target}")).or_insert(t);
        }
    }
    let want: std::collections::BTreeMap<String, i64> =
        [("spin: spin in spinner", 120), ("fd-leak: fd leak in leaker", 130), ("inodes: inodes /var", 130)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
    assert_eq!(first, want, "each decides at the first tick its 2-minute window is covered");
    let h = &agent.status(t0 + 135_000)["history"];
    assert!(h["series"].as_u64().unwrap() <= 600, "{h}");
    assert!(h["refused"].as_u64().unwrap() > 0, "the cap was full: {h}");
    let read = ["proc.4242.fds", "proc.4343.cpu_pct", "disk./var.inodes_used_pct"];
    let refused: Vec<&str> = h["last_refused"].as_array().unwrap().iter().filter_map(|k| k.as_str()).collect();
    assert!(!refused.is_empty() && refused.iter().all(|k| !read.contains(k)), "never a key a playbook reads: {h}");
    let evicted: Vec<&str> = h["last_evicted"].as_array().unwrap().iter().filter_map(|k| k.as_str()).collect();
    assert!(evicted.iter().all(|k| k.starts_with("proc.")), "only unread per-process series make room: {h}");
    assert!(h["evicted_exited"].as_u64().unwrap() > 0, "{h}");
    agent.stop("test").unwrap();
}

/// A refused series must be visible: in `medic status --json`, in its text, in the
/// `agent_started` record and in the log.
#[test]
fn a_refused_series_shows_in_medic_status_and_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let pbs = write_playbooks(
        dir.path(),
        &[("load.rhai", playbook("load", "if node.sustained(\"load.1\", \">=\", 0, \"5s\") == true { notify(\"load\"); }"))],
    );
    let state = dir.path().join("state");
    let sock = dir.path().join("control.sock");
    // This host has more processes than 10 series hold.
    let cfg = write_config(dir.path(), &format!("[control]\nsocket = \"{}\"\n[signals]\nmax_series = 10\n", sock.display()));
    let log = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let agent = crate::util::Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    let status = || crate::util::status_json(&sock);
    assert!(wait_until(20, || status()["history"]["refused"].as_u64() > Some(0)), "{}", status());
    let h = status()["history"].clone();
    assert_eq!(h["max_series"], 10);
    assert!(h["series"].as_u64().unwrap() <= 10, "{h}");
    assert!(h["refusing_now"].as_u64().unwrap() > 0, "{h}");
    assert!(!h["last_refused"].as_array().unwrap().is_empty(), "{h}");
    assert!(h["bound_bytes"].as_u64().unwrap() > 0 && h["bytes"].as_u64().unwrap() > 0, "{h}");
    // The playbook's node-wide key is kept whatever the processes.
    assert!(wait_until(20, || audit_lines(&state).iter().any(|r| r["kind"] == "action" && r["action"]["target"] == "load")));
    let o = run(&["status", "--socket", sock.to_str().unwrap()]);
    let out = text(&o);
    assert!(out.contains("of 10 series") && out.contains("FULL:") && out.contains("last refused: "), "{out}");
    let started = audit_lines(&state).into_iter().find(|r| r["kind"] == "agent_started").unwrap();
    assert_eq!(started["history"]["max_series"], 10, "{started}");
    assert!(started["history"]["refused"].as_u64().unwrap() > 0, "the first sample already overflowed: {started}");
    assert!(started["history_bound_bytes"].as_u64().unwrap() > 0);
    assert!(agent.stop());
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(log.contains("Signal history full") && log.contains("history_series_refused"), "{log}");
    assert_eq!(log.matches("history_series_refused").count(), 1, "at most one warning a minute: {log}");
}

/// `sustained`, `x_of_y` and the window aggregates are `()` until the history covers their
/// window, and a playbook can tell that from `false`; `if ()` is an error that disables the
/// playbook with its file and line, not a silent `false`.
#[test]
fn window_aggregates_over_short_history_are_unavailable_not_false() {
    let dir = tempfile::tempdir().unwrap();
    let meta = |name: &str| {
        format!(
            "const META = #{{ name: \"{name}\", description: \"test\", interval: \"1s\", actions: [#{{ kind: \"notify\", target: \"*\" }}],\n  rate_limit: #{{ max: 1000, per: \"1h\" }}, cooldown: \"0s\" }};\n"
        )
    };
    let tell = "fn evaluate(node, state) {\n  let s = node.sustained(\"x\", \">\", 0, \"1m\");\n  let a = node.avg(\"x\", \"1m\");\n  let y = node.x_of_y(\"x\", \">\", 0, 30, 30);\n  notify(`${node.now()}: sustained ${if s == () { \"unavailable\" } else { s }}, avg ${if a == () { \"unavailable\" } else { a }}, x_of_y ${if y == () { \"unavailable\" } else { y }}`);\n}\n";
    let bare = "fn evaluate(node, state) {\n  if node.sustained(\"x\", \">\", 0, \"1m\") { notify(\"sustained\"); }\n}\n";
    let pbs =
        write_playbooks(dir.path(), &[("tell.rhai", format!("{}{tell}", meta("tell"))), ("bare.rhai", format!("{}{bare}", meta("bare")))]);
    let mut agent = Agent::start(&Config::default(), Some(pbs), dir.path().join("state")).unwrap();
    let t0 = 1_800_000_000;
    let mut said = Vec::new();
    let mut disabled = Vec::new();
    for t in 0..=60 {
        let mut s = Snapshot { ts_ms: (t0 + t) * 1000, ..Default::default() };
        s.metrics.insert("x".into(), 1.0);
        let r = agent.tick_with(s).unwrap();
        said.extend(r.decisions.into_iter().filter(|d| d.0 == "tell").map(|d| d.2));
        disabled.extend(r.disabled);
    }
    assert_eq!(said.len(), 61);
    assert_eq!(said[0], format!("{t0}: sustained unavailable, avg unavailable, x_of_y unavailable"));
    assert_eq!(said[29], format!("{}: sustained unavailable, avg unavailable, x_of_y true", t0 + 29));
    assert_eq!(said[59], format!("{}: sustained unavailable, avg unavailable, x_of_y true", t0 + 59));
    assert_eq!(said[60], format!("{}: sustained true, avg 1.0, x_of_y true", t0 + 60));
    assert_eq!(disabled.len(), 1, "{disabled:?}");
    assert!(disabled[0].0 == "bare" && disabled[0].1.contains("bare.rhai:4:"), "{disabled:?}");
    agent.stop("test").unwrap();
}
