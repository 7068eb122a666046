//! Acting safely, on real processes, files and commands the tests start: live mode over the
//! control socket, each executor, the gate's refusals, dry-run leaving the host as it was
//! (checked on the host, not in logs), a flood bounded by limits and the breaker, a `kill -9`
//! between the write-ahead record and the outcome, and a full state filesystem.

use crate::util::{audit_lines, medic, run, text, wait_until, write_playbooks};
use medic::config::Config;
use medic::control::mode::ModeState;
use medic::daemon::Agent;
use medic::gate::Mode;
use medic::signals::Snapshot;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

/// A long-running process with a name of our choosing (a copy of a binary).
fn named_process(dir: &Path, name: &str, bin: &str, args: &[&str]) -> Child {
    let exe = dir.join(name);
    std::fs::copy(bin, &exe).unwrap();
    Command::new(&exe).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap()
}

fn start_ticks(pid: u32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].split_whitespace().nth(19).map(str::to_string)
}

fn alive(child: &mut Child) -> bool {
    child.try_wait().unwrap().is_none()
}

fn playbook(name: &str, actions: &str, body: &str) -> String {
    crate::util::playbook_src(name, actions, "100", "0s", body)
}

fn set_mode(state: &Path, mode: Mode) {
    std::fs::create_dir_all(state).unwrap();
    ModeState { mode, since_ms: 1, actor: "test".into(), reason: "test".into(), ..ModeState::fresh() }.save(state).unwrap();
}

fn agent(dir: &Path, pbs: &[(&str, String)], mode: Mode, cfg: &str) -> (Agent, PathBuf) {
    let state = dir.join("state");
    set_mode(&state, mode);
    let cfg = Config::parse("test.toml", cfg).unwrap();
    let pb = write_playbooks(dir, pbs);
    (Agent::start(&cfg, Some(pb), state.clone()).unwrap(), state)
}

fn actions(state: &Path) -> Vec<Value> {
    audit_lines(state).into_iter().filter(|r| r["kind"] == "action").collect()
}

fn outcomes(state: &Path) -> Vec<Value> {
    audit_lines(state).into_iter().filter(|r| r["kind"] == "action_outcome").collect()
}

fn snapshot(t: i64) -> Snapshot {
    Snapshot { ts_ms: 1_800_000_000_000 + t * 1000, ..Default::default() }
}

#[test]
fn live_mode_over_the_socket_signals_a_runaway_and_dry_run_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut spin = named_process(dir.path(), "spin-live", "/usr/bin/yes", &[]);
    let ticks = start_ticks(spin.id());
    let pb = playbook(
        "stop-spin",
        "#{ kind: \"signal_process\", target: \"spin-*\" }",
        "for p in node.processes() { if p.name == \"spin-live\" { signal_process(p.pid, \"TERM\", \"spinning\"); } }",
    );
    let pbs = write_playbooks(dir.path(), &[("stop_spin.rhai", pb)]);
    let state = dir.path().join("state");
    let sock = dir.path().join("control.sock");
    let cfg =
        crate::util::write_config(dir.path(), &format!("[control]\nsocket = \"{}\"\n[signals]\nsocket_scan_every = 1\n", sock.display()));
    let agent = crate::util::Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let s = sock.to_str().unwrap();
    // Dry-run (a fresh install): the decision is recorded, the process lives on, unchanged.
    assert!(wait_until(20, || actions(&state).iter().filter(|a| a["decision"] == "would_execute").count() >= 2));
    assert!(alive(&mut spin), "dry-run must not signal");
    assert_eq!(start_ticks(spin.id()), ticks, "same process");
    let o = run(&["status", "--json", "--socket", s]);
    let st: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    assert_eq!(st["mode"]["mode"], "dry-run");
    // Live, with a TTL.
    let o = run(&["mode", "live", "--reason", "test the runaway stop", "--ttl", "1h", "--socket", s]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(wait_until(20, || !alive(&mut spin)), "live mode signals the runaway");
    assert!(wait_until(20, || outcomes(&state).iter().any(|o| o["outcome"]["status"] == "ok")));
    let recs = audit_lines(&state);
    let change = recs.iter().find(|r| r["kind"] == "mode_change").unwrap();
    assert_eq!(change["to"], "live");
    assert_eq!(change["reason"], "test the runaway stop");
    assert!(change["actor"].as_str().unwrap().starts_with("uid=0(root) pid="), "actor from peer credentials: {change}");
    assert!(change["expires"].as_str().is_some());
    let exec = recs.iter().find(|r| r["kind"] == "action" && r["decision"] == "executed").unwrap();
    let out = recs.iter().find(|r| r["kind"] == "action_outcome").unwrap();
    assert_eq!(out["ref_seq"], exec["seq"]);
    assert!(out["seq"].as_u64() > exec["seq"].as_u64(), "the decision was recorded before the action ended");
    assert_eq!(out["outcome"]["verified"], true);
    let o = run(&["status", "--socket", s]);
    assert!(text(&o).contains("mode:     live, reverts to dry-run at"), "{}", text(&o));
    // Back to dry-run.
    assert!(run(&["mode", "dry-run", "--reason", "done", "--socket", s]).status.success());
    assert!(agent.stop(), "an orderly stop");
    assert!(run(&["audit", "verify", "--state-dir", state.to_str().unwrap()]).status.success());
    let m: Value = serde_json::from_str(&std::fs::read_to_string(state.join("mode.json")).unwrap()).unwrap();
    assert_eq!(m["mode"], "dry-run", "mode persisted");
}

#[test]
fn a_ttl_reverts_by_itself_and_records_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, state) = agent(dir.path(), &[], Mode::DryRun, "");
    let peer = medic::control::Peer { uid: 0, gid: 0, pid: std::process::id() as i32 };
    let r = a.control(medic::control::Request::SetMode { mode: "live".into(), reason: "window".into(), ttl_secs: Some(1) }, &peer);
    assert!(r.ok, "{r:?}");
    assert_eq!(a.mode().mode, Mode::Live);
    std::thread::sleep(Duration::from_millis(1100));
    a.tick(medic::audit::now_ms()).unwrap();
    assert_eq!(a.mode().mode, Mode::DryRun);
    let rec = audit_lines(&state).into_iter().find(|r| r["kind"] == "mode_expired").expect("expiry recorded");
    assert_eq!((rec["from"].as_str(), rec["to"].as_str()), (Some("live"), Some("dry-run")));
    // An unknown mode or an empty reason changes nothing.
    assert!(!a.control(medic::control::Request::SetMode { mode: "yolo".into(), reason: "x".into(), ttl_secs: None }, &peer).ok);
    assert!(!a.control(medic::control::Request::SetMode { mode: "live".into(), reason: " ".into(), ttl_secs: None }, &peer).ok);
    assert_eq!(a.mode().mode, Mode::DryRun);
}

#[test]
fn a_peer_that_is_not_root_or_in_the_group_is_refused() {
    let peer = medic::control::Peer { uid: 65534, gid: 65534, pid: 1 };
    assert!(!peer.allowed(None));
    assert!(!peer.allowed(Some("root")));
    assert!(peer.allowed(Some("nogroup")), "its own primary group, when configured");
    assert!(medic::control::Peer { uid: 0, gid: 0, pid: 1 }.allowed(None));
}

fn old_file(p: &Path, bytes: usize, age_days: u64) {
    std::fs::write(p, vec![b'x'; bytes]).unwrap();
    let f = std::fs::File::options().write(true).open(p).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(age_days * 86_400)).unwrap();
}

fn clean_setup(root: &Path) -> (PathBuf, PathBuf) {
    let allowed = root.join("allowed");
    let logs = allowed.join("logs");
    let outside = root.join("outside");
    std::fs::create_dir_all(logs.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    old_file(&logs.join("a.log.gz"), 1000, 30);
    old_file(&logs.join("sub/b.log.gz"), 2000, 20);
    old_file(&logs.join("fresh.log.gz"), 500, 0);
    old_file(&logs.join("live.log"), 500, 30);
    old_file(&outside.join("precious.log.gz"), 700, 30);
    std::os::unix::fs::symlink(outside.join("precious.log.gz"), logs.join("link.log.gz")).unwrap();
    std::os::unix::fs::symlink(&outside, logs.join("linkdir")).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("escape")).unwrap();
    (allowed, outside)
}

fn clean_playbook(dirs: &[&Path]) -> String {
    let calls: String = dirs
        .iter()
        .map(|d| {
            format!(
                "clean_files(\"{}\", #{{ glob: \"*.gz\", older_than: \"7d\", target_free_bytes: 1000000 }}, \"cleanup\");\n",
                d.display()
            )
        })
        .collect();
    playbook("cleaner", "#{ kind: \"clean_files\", target: \"*\" }", &calls)
}

#[test]
fn clean_files_deletes_old_matching_files_and_refuses_symlinks_and_foreign_paths() {
    for mode in [Mode::DryRun, Mode::Live] {
        let dir = tempfile::tempdir().unwrap();
        let (allowed, outside) = clean_setup(dir.path());
        let logs = allowed.join("logs");
        let foreign = dir.path().join("outside");
        let pb = clean_playbook(&[&logs, &allowed.join("escape"), &foreign]);
        let cfg = format!("[policy]\nallowed_paths = [\"{}\"]\n", allowed.display());
        let (mut a, state) = agent(dir.path(), &[("c.rhai", pb)], mode, &cfg);
        a.tick_with(snapshot(0)).unwrap();
        a.wait_actions(Duration::from_secs(20));
        let acts = actions(&state);
        let decision = |target: &Path| acts.iter().find(|r| r["action"]["target"] == target.display().to_string()).unwrap().clone();
        // A path outside the allowed roots: denied by policy, whatever the mode.
        assert_eq!(decision(&foreign)["decision"], "denied");
        assert_eq!(decision(&foreign)["rule"], "policy:allowlist");
        // Untouched in every mode: the symlink's target, fresh files, files not matching.
        assert!(outside.join("precious.log.gz").exists());
        assert!(logs.join("link.log.gz").symlink_metadata().is_ok(), "a symlink is never followed nor removed");
        assert!(logs.join("fresh.log.gz").exists() && logs.join("live.log").exists());
        if mode == Mode::DryRun {
            assert_eq!(decision(&logs)["decision"], "would_execute");
            assert!(logs.join("a.log.gz").exists() && logs.join("sub/b.log.gz").exists(), "dry-run deletes nothing");
            assert!(outcomes(&state).is_empty());
        } else {
            assert_eq!(decision(&logs)["decision"], "executed");
            assert!(!logs.join("a.log.gz").exists() && !logs.join("sub/b.log.gz").exists());
            let outs = outcomes(&state);
            let ok = outs.iter().find(|o| o["action"]["target"] == logs.display().to_string()).unwrap();
            assert_eq!(ok["outcome"]["status"], "ok");
            assert_eq!(ok["outcome"]["detail"]["freed_bytes"], 3000);
            assert_eq!(ok["outcome"]["detail"]["skipped"]["symlinks"], 2);
            assert_eq!(ok["outcome"]["detail"]["skipped"]["too_young"], 1);
            // A directory that is a symlink out of the allowed root: the executor refuses it.
            let esc = outs.iter().find(|o| o["action"]["target"] == allowed.join("escape").display().to_string()).unwrap();
            assert_eq!(esc["outcome"]["status"], "failed");
            assert_eq!(esc["outcome"]["error_code"], "symlink_refused");
        }
        a.stop("test").unwrap();
        assert!(medic::audit::verify::verify(&state.join("audit.log")).unwrap().is_ok());
    }
}

#[test]
fn protected_processes_are_refused_and_a_process_is_signalled_only_in_live_mode() {
    for mode in [Mode::DryRun, Mode::Live] {
        let dir = tempfile::tempdir().unwrap();
        let name = if mode == Mode::Live { "victim-live" } else { "victim-dry" };
        let mut victim = named_process(dir.path(), name, "/bin/sleep", &["300"]);
        let ticks = start_ticks(victim.id());
        let me = std::process::id();
        let body = format!(
            "signal_process(1, \"TERM\", \"pid 1\");\nsignal_process({me}, \"KILL\", \"medic itself\");\nfor p in node.processes() {{ if p.name == \"{name}\" {{ signal_process(p.pid, \"TERM\", \"test\"); }} }}"
        );
        let pb = playbook("killer", "#{ kind: \"signal_process\", target: \"*\" }", &body);
        let (mut a, state) = agent(dir.path(), &[("k.rhai", pb)], mode, "");
        a.tick(medic::audit::now_ms()).unwrap();
        a.wait_actions(Duration::from_secs(20));
        let acts = actions(&state);
        let by_pid = |pid: u32| acts.iter().find(|r| r["action"]["params"]["pid"] == pid).cloned();
        let init = by_pid(1).expect("pid 1 request recorded");
        assert_eq!((init["decision"].as_str(), init["rule"].as_str()), (Some("denied"), Some("policy:protected")));
        // The test process is medic's library here: its own pid is protected too.
        let own = by_pid(me).expect("own pid request recorded");
        assert_eq!(own["decision"], "denied");
        let v = by_pid(victim.id()).expect("victim request recorded");
        if mode == Mode::DryRun {
            assert_eq!(v["decision"], "would_execute");
            assert!(alive(&mut victim));
            assert_eq!(start_ticks(victim.id()), ticks, "the same process, untouched");
            let _ = victim.kill();
        } else {
            assert_eq!(v["decision"], "executed");
            assert!(wait_until(10, || !alive(&mut victim)));
            let out = outcomes(&state).into_iter().find(|o| o["ref_seq"] == v["seq"]).unwrap();
            assert_eq!(out["outcome"]["status"], "ok");
            assert_eq!(out["outcome"]["detail"]["exited"], true);
        }
        let _ = victim.wait();
        a.stop("test").unwrap();
    }
}

#[test]
fn only_allowlisted_commands_run_with_a_timeout_and_bounded_output() {
    let dir = tempfile::tempdir().unwrap();
    let body = "run_command(\"/bin/echo\", [\"hello\", \"world\"], \"greet\");\nrun_command(\"/bin/rm\", [\"-rf\", \"/tmp/x\"], \"no\");\nrun_command(\"/bin/sleep\", [\"5\"], \"slow\");\nrun_command(\"/bin/echo\", [\"--evil\", \"x\"], \"args do not match\");";
    let pb = playbook("cmd", "#{ kind: \"run_command\", target: \"/bin/*\" }", body);
    let cfg = "[policy]\ncommands = [\n  { path = \"/bin/echo\", args = [\"hello\", \"*\"] },\n  { path = \"/bin/sleep\", args = [\"*\"], timeout_secs = 1 },\n]\n";
    let (mut a, state) = agent(dir.path(), &[("c.rhai", pb)], Mode::Live, cfg);
    a.tick_with(snapshot(0)).unwrap();
    a.wait_actions(Duration::from_secs(20));
    let acts = actions(&state);
    let d = |t: &str, first: &str| {
        acts.iter().find(|r| r["action"]["target"] == t && r["action"]["params"]["args"][0] == first).unwrap().clone()
    };
    assert_eq!(d("/bin/rm", "-rf")["decision"], "denied");
    assert_eq!(d("/bin/rm", "-rf")["rule"], "policy:allowlist");
    assert_eq!(d("/bin/echo", "--evil")["decision"], "denied");
    let outs = outcomes(&state);
    let o = |t: &str| outs.iter().find(|o| o["action"]["target"] == t).unwrap()["outcome"].clone();
    assert_eq!(o("/bin/echo")["status"], "ok");
    assert_eq!(o("/bin/echo")["detail"]["stdout"], "hello world\n");
    assert_eq!(o("/bin/echo")["detail"]["user"], "nobody");
    assert_eq!(o("/bin/sleep")["status"], "timed_out");
    assert_eq!(o("/bin/sleep")["error_code"], "timeout");
    a.stop("test").unwrap();
}

/// A playbook that asks every tick for an action that does not help.
fn flood_playbook() -> String {
    "const META = #{ name: \"flood\", description: \"asks every tick\", interval: \"1s\",\n  actions: [#{ kind: \"run_command\", target: \"/bin/true\" }],\n  rate_limit: #{ max: 5, per: \"10m\" }, cooldown: \"30s\" };\nfn evaluate(node, state) { run_command(\"/bin/true\", [], \"still broken\"); }\n".into()
}

#[test]
fn a_flood_gets_no_more_than_its_bounds_and_the_breaker_opens() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[policy]\nbreaker_after = 3\nbreaker_window_secs = 3600\nbudget_per_hour = 20\ncommands = [{ path = \"/bin/true\" }]\n";
    let (mut a, state) = agent(dir.path(), &[("f.rhai", flood_playbook())], Mode::Live, cfg);
    // Ten minutes of simulated time, a tick a second; each action finishes before the next tick.
    for t in 0..600 {
        a.tick_with(snapshot(t)).unwrap();
        a.wait_actions(Duration::from_secs(10));
    }
    let acts = actions(&state);
    let count = |d: &str| acts.iter().filter(|r| r["decision"] == d).count();
    assert_eq!(count("executed"), 3, "breaker_after = 3: the fourth allowed run escalates");
    assert_eq!(count("escalated"), 1);
    let rules: std::collections::BTreeSet<&str> =
        acts.iter().filter(|r| r["decision"] == "suppressed").map(|r| r["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["breaker_open", "cooldown"].into_iter().collect());
    let executed_at: Vec<&str> = acts.iter().filter(|r| r["decision"] == "executed").map(|r| r["ts"].as_str().unwrap()).collect();
    assert_eq!(executed_at.len(), 3);
    // The breaker survives a restart; so does the spent budget.
    a.stop("restart").unwrap();
    // Repeated refusals are written once, then counted (`decision_repeated`, written at stop at
    // the latest).
    let repeated: u64 = audit_lines(&state).iter().filter(|r| r["kind"] == "decision_repeated").map(|r| r["count"].as_u64().unwrap()).sum();
    assert_eq!(acts.len() as u64 + repeated, 600, "every request is decided and recorded, in full or in a count");
    assert!(acts.len() < 20, "{} records for 600 decisions", acts.len());
    let cfg = Config::parse("t.toml", cfg).unwrap();
    let mut a = Agent::start(&cfg, Some(dir.path().join("pb")), state.clone()).unwrap();
    let st = a.status(1_800_000_000_000 + 700_000);
    assert_eq!(st["open_breakers"].as_array().unwrap().len(), 1, "{st}");
    assert_eq!(st["budget_left"]["live"], 17);
    a.tick_with(snapshot(700)).unwrap();
    let last = actions(&state).pop().unwrap();
    assert_eq!((last["decision"].as_str(), last["rule"].as_str()), (Some("suppressed"), Some("breaker_open")));
    // An operator re-arms it; the next request runs.
    let peer = medic::control::Peer { uid: 0, gid: 0, pid: std::process::id() as i32 };
    let r = a.control(
        medic::control::Request::ResetBreaker {
            playbook: "flood".into(),
            action: "run_command".into(),
            target: "/bin/true".into(),
            reason: "fixed".into(),
        },
        &peer,
    );
    assert!(r.ok, "{r:?}");
    a.tick_with(snapshot(701)).unwrap();
    assert_eq!(actions(&state).pop().unwrap()["decision"], "executed");
    a.stop("test").unwrap();
    assert!(medic::audit::verify::verify(&state.join("audit.log")).unwrap().is_ok());
}

#[test]
fn a_budget_caps_the_whole_node() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[policy]\nbudget_per_hour = 2\nbreaker_after = 100\ncommands = [{ path = \"/bin/true\" }]\n";
    let many = (0..4).map(|i| (format!("p{i}.rhai"), flood_playbook().replace("\"flood\"", &format!("\"flood{i}\"")))).collect::<Vec<_>>();
    let refs: Vec<(&str, String)> = many.iter().map(|(f, s)| (f.as_str(), s.clone())).collect();
    let (mut a, state) = agent(dir.path(), &refs, Mode::Live, cfg);
    // Four playbooks, the same command: one runs per tick (in flight), until the budget is spent.
    for t in 0..4 {
        a.tick_with(snapshot(t)).unwrap();
        a.wait_actions(Duration::from_secs(10));
    }
    let acts = actions(&state);
    assert_eq!(acts.iter().filter(|r| r["decision"] == "executed").count(), 2);
    assert!(acts.iter().filter(|r| r["rule"] == "budget").count() >= 2, "{acts:?}");
    assert_eq!(a.status(1_800_000_004_000)["budget_left"]["live"], 0);
    a.stop("test").unwrap();
}

#[test]
fn kill_9_between_the_write_ahead_record_and_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    set_mode(&state, Mode::Live);
    let marker = "47.123";
    let pb = format!(
        "const META = #{{ name: \"slow\", description: \"t\", interval: \"1s\", actions: [#{{ kind: \"run_command\", target: \"/bin/sleep\" }}],\n  rate_limit: #{{ max: 1, per: \"1h\" }}, cooldown: \"1h\" }};\nfn evaluate(node, state) {{ run_command(\"/bin/sleep\", [\"{marker}\"], \"slow\"); }}\n"
    );
    let pbs = write_playbooks(dir.path(), &[("slow.rhai", pb)]);
    let cfg = crate::util::write_config(
        dir.path(),
        &format!(
            "[control]\nsocket = \"{}\"\n[policy]\ncommands = [{{ path = \"/bin/sleep\", args = [\"*\"], timeout_secs = 120 }}]\n",
            dir.path().join("c.sock").display()
        ),
    );
    let mut agent = crate::util::Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(20, || actions(&state).iter().any(|r| r["decision"] == "executed")));
    agent.0.kill().unwrap(); // SIGKILL
    agent.0.wait().unwrap();
    // End the command the agent started, by its pid.
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if cmd == format!("/bin/sleep\0{marker}\0").as_bytes() {
            let pid = e.file_name().to_str().unwrap().parse().unwrap();
            let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::KILL);
        }
    }
    let exec_seq = actions(&state).into_iter().find(|r| r["decision"] == "executed").unwrap()["seq"].clone();
    assert!(outcomes(&state).is_empty());
    let o = run(&[
        "run",
        "--once",
        "--config",
        cfg.to_str().unwrap(),
        "--playbooks",
        pbs.to_str().unwrap(),
        "--state-dir",
        state.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let outs = outcomes(&state);
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0]["ref_seq"], exec_seq);
    assert_eq!(outs[0]["outcome"]["status"], "unknown");
    assert_eq!(outs[0]["outcome"]["error_code"], "agent_restarted");
    // The cooldown was not reset by the restart: no second execution.
    assert_eq!(actions(&state).iter().filter(|r| r["decision"] == "executed").count(), 1);
    assert!(run(&["audit", "verify", "--state-dir", state.to_str().unwrap()]).status.success());
}

#[test]
fn a_full_state_dir_stops_acting_until_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _fs = crate::util::Tmpfs::mount(&state, "size=256k");
    set_mode(&state, Mode::Live);
    let pb = playbook(
        "stop-victim",
        "#{ kind: \"signal_process\", target: \"victim-*\" }",
        "for p in node.processes() { if p.name == \"victim-full\" { signal_process(p.pid, \"TERM\", \"test\"); } }",
    );
    // A notice every tick uses up the last page's slack once the filesystem is full.
    let beat = playbook("beat", "#{ kind: \"notify\", target: \"*\" }", "notify(\"beat\");");
    let pbs = write_playbooks(dir.path(), &[("v.rhai", pb), ("beat.rhai", beat)]);
    let sock = dir.path().join("c.sock");
    let cfg =
        crate::util::write_config(dir.path(), &format!("[control]\nsocket = \"{}\"\n[signals]\nsocket_scan_every = 1\n", sock.display()));
    let agent = medic()
        .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
        .env("MEDIC_LOG", "error")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let agent = crate::util::Reaped(agent);
    let s = sock.to_str().unwrap();
    assert!(wait_until(20, || run(&["status", "--json", "--socket", s]).status.success()));
    // Fill the filesystem; once records fail, start the process the playbook wants to stop.
    let filler = state.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 512 * 1024]); // fails with ENOSPC once full
    assert!(wait_until(20, || {
        let o = run(&["status", "--json", "--socket", s]);
        serde_json::from_slice::<Value>(&o.stdout).is_ok_and(|v| v["audit"]["writable"] == false)
    }));
    let mut victim = named_process(dir.path(), "victim-full", "/bin/sleep", &["300"]);
    // Decisions cannot be recorded, so none is made and the victim lives.
    std::thread::sleep(Duration::from_secs(4));
    assert!(alive(&mut victim), "no action while records cannot be written");
    let o = run(&["status", "--socket", s]);
    assert!(text(&o).contains("NOT WRITABLE"), "{}", text(&o));
    // Space returns: acting resumes, and the outage is on record.
    std::fs::remove_file(&filler).unwrap();
    assert!(wait_until(20, || !alive(&mut victim)), "acting resumes when space returns");
    let recs = audit_lines(&state);
    let rec = recs.iter().position(|r| r["kind"] == "audit_recovered").expect("the outage is recorded");
    let exec =
        recs.iter().position(|r| r["kind"] == "action" && r["decision"] == "executed" && r["action"]["kind"] == "signal_process").unwrap();
    assert!(rec < exec);
    agent.stop();
    let _ = victim.wait();
    assert!(medic::audit::verify::verify(&state.join("audit.log")).unwrap().is_ok());
}

#[test]
fn a_command_runs_only_in_live_mode_and_a_forced_dry_run_playbook_never_acts() {
    use std::os::unix::fs::PermissionsExt;
    for (mode, forced) in [(Mode::DryRun, false), (Mode::Live, true), (Mode::Live, false)] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        std::fs::create_dir_all(&out).unwrap();
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o777)).unwrap();
        let marker = out.join("ran");
        let meta_extra = if forced { ", dry_run: true" } else { "" };
        let pb = format!(
            "const META = #{{ name: \"touch\", description: \"t\", interval: \"1s\", actions: [#{{ kind: \"run_command\", target: \"/usr/bin/touch\" }}],\n  rate_limit: #{{ max: 5, per: \"1h\" }}, cooldown: \"1h\"{meta_extra} }};\nfn evaluate(node, state) {{ run_command(\"/usr/bin/touch\", [\"{}\"], \"t\"); }}\n",
            marker.display()
        );
        let cfg = format!("[policy]\ncommands = [{{ path = \"/usr/bin/touch\", args = [\"{}/*\"] }}]\n", out.display());
        let (mut a, state) = agent(dir.path(), &[("t.rhai", pb)], mode, &cfg);
        a.tick_with(snapshot(0)).unwrap();
        a.wait_actions(Duration::from_secs(10));
        let d = actions(&state).pop().unwrap();
        if mode == Mode::Live && !forced {
            assert_eq!(d["decision"], "executed");
            assert!(marker.exists(), "live mode ran the command");
            let meta = std::fs::metadata(&marker).unwrap();
            assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534, "as the entry's user (nobody)");
        } else {
            assert_eq!(d["decision"], "would_execute", "{d}");
            assert_eq!(d["mode"], "dry-run");
            assert!(!marker.exists(), "dry-run (node or forced by the playbook) runs nothing");
        }
        a.stop("test").unwrap();
    }
}
