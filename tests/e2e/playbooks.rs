//! Playbooks end to end: `validate` and `playbook check` point at the file, line and column of
//! each kind of mistake (a window longer than the history among them); limits stop runaway scripts without hanging, disable and record them
//! while the other playbooks still evaluate in the same tick; a running agent keeps its last
//! good set on a bad reload; the bundled playbooks and the Monit examples pass their own test cases.

use crate::util::{audit_lines, kinds, medic, run, text, write_config};

use std::time::{Duration, Instant};

fn meta(name: &str, actions: &str, extra: &str) -> String {
    format!(
        "const META = #{{ name: \"{name}\", description: \"test\", interval: \"1s\",\n    actions: [{actions}],\n    rate_limit: #{{ max: 1000, per: \"1h\" }}{extra} }};\n"
    )
}

fn notify_meta(name: &str) -> String {
    meta(name, "#{ kind: \"notify\", target: \"*\" }", ", cooldown: \"0s\"")
}

const ALWAYS_BODY: &str = "fn evaluate(node, state) { notify(\"tick\", #{ load: node.value(\"load.1\") }); }\n";

/// Each mistake, the file content, and the `line:col: ...reason` expected.
fn broken_playbooks() -> Vec<(&'static str, String, &'static str)> {
    vec![
        ("syntax.rhai", format!("{}fn evaluate(node, state) {{\n    let x = ;\n}}\n", notify_meta("syntax")), ":5:13: "),
        (
            "unknown_fn.rhai",
            format!("{}fn evaluate(node, state) {{\n    frobnicate(1);\n}}\n", notify_meta("unknown-fn")),
            ":5:5: unknown function `frobnicate`",
        ),
        (
            "unknown_method.rhai",
            format!(
                "{}fn evaluate(node, state) {{\n    let v = node.averge(\"cpu.util_pct\", \"1m\");\n}}\n",
                notify_meta("unknown-method")
            ),
            ":5:18: unknown method `averge`",
        ),
        (
            "missing_field.rhai",
            format!("// header\n{}{ALWAYS_BODY}", meta("missing-field", "#{ kind: \"notify\", target: \"*\" }", "")),
            ":2:1: META: missing field `cooldown`",
        ),
        (
            "outside_manifest.rhai",
            format!(
                "{}fn evaluate(node, state) {{\n    notify(\"x\");\n    restart_unit(\"nginx.service\", \"why not\");\n}}\n",
                notify_meta("outside")
            ),
            ":6:5: action `restart_unit` is not in this playbook's manifest",
        ),
        (
            "outside_target.rhai",
            format!(
                "{}fn evaluate(node, state) {{\n    restart_unit(\"sshd.service\", \"no\");\n}}\n",
                meta("outside-target", "#{ kind: \"restart_unit\", target: \"app-*.service\" }", ", cooldown: \"1m\"")
            ),
            ":5:5: `restart_unit` on \"sshd.service\" is outside the manifest's targets",
        ),
        (
            "long_window.rhai",
            format!("{}fn evaluate(node, state) {{\n    let v = node.avg(\"cpu.util_pct\", \"30m\");\n}}\n", notify_meta("long-window")),
            ":5:18: window \"30m\" is longer than the history (signals.history_secs = 600)",
        ),
        (
            "many_points.rhai",
            format!(
                "{}fn evaluate(node, state) {{\n    let v = node.x_of_y(\"load.1\", \">\", 1, 1, 700);\n}}\n",
                notify_meta("many-points")
            ),
            ":5:18: x_of_y over the last 700 points, but the history holds at most 601",
        ),
        ("no_meta.rhai", ALWAYS_BODY.to_string(), ":1:1: missing metadata"),
        ("import.rhai", format!("import \"os\" as os;\n{}{ALWAYS_BODY}", notify_meta("import")), ":1:"),
        ("eval.rhai", format!("{}fn evaluate(node, state) {{\n    eval(\"1\");\n}}\n", notify_meta("eval")), ":5:"),
        // Issue 9: each of these passed `playbook check`; `sleep` hung the agent, `sleep(1e20)`
        // aborted it at every start, `timestamp()` was a wall clock, and the dynamic calls
        // reached action functions the manifest did not list.
        ("sleep.rhai", body("sleep", "    sleep(3600);"), ":5:5: `sleep`: playbooks cannot wait"),
        ("sleep_huge.rhai", body("sleep-huge", "    sleep(1e20);"), ":5:5: `sleep`: playbooks cannot wait"),
        ("clock.rhai", body("clock", "    let t = timestamp();"), ":5:13: `timestamp`: the engine has no clock"),
        (
            "fn_ptr.rhai",
            body("fn-ptr", "    let f = Fn(\"restart_unit\");\n    f.call(\"nginx.service\", \"why\");"),
            ":5:13: `Fn(\"restart_unit\")`: function pointers built from names are not available",
        ),
        ("fn_computed.rhai", body("fn-computed", "    let n = \"restart\" + \"_unit\";\n    let f = Fn(n);"), ":6:13: `Fn`: "),
        ("fn_call.rhai", body("fn-call", "    let f = |x| x;\n    f.call(1);"), ":6:7: `call`: "),
        ("fn_curry.rhai", body("fn-curry", "    let f = |x| x;\n    let g = f.curry(1);"), ":6:15: `curry`: "),
        ("fn_named.rhai", body("fn-named", "    [\"x\"].map(\"restart_unit\");"), ":5:11: `map` with a function name"),
    ]
}

fn body(name: &str, body: &str) -> String {
    format!("{}fn evaluate(node, state) {{\n{body}\n}}\n", notify_meta(name))
}

#[test]
fn check_and_validate_point_at_each_mistake() {
    let dir = tempfile::tempdir().unwrap();
    for (file, src, want) in broken_playbooks() {
        let p = dir.path().join(file);
        std::fs::write(&p, &src).unwrap();
        let o = run(&["playbook", "check", p.to_str().unwrap()]);
        let out = text(&o);
        assert_eq!(o.status.code(), Some(1), "{file}: {out}");
        let expected = format!("{}{want}", p.display());
        assert!(out.contains(&expected), "{file}: expected {expected:?} in:\n{out}");
    }
    let o = run(&["validate", "--playbooks", dir.path().to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    for (file, _, want) in broken_playbooks() {
        assert!(out.contains(&format!("{}{want}", dir.path().join(file).display())), "{file}: {out}");
    }
}

#[test]
fn validate_accepts_the_bundled_set_and_rejects_a_bad_config() {
    let o = run(&["validate"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(text(&o).matches(": ok (").count(), medic::playbooks::bundled::PLAYBOOKS.len(), "{}", text(&o));
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[signals]\ninterval_secs = 1\nhistroy_secs = 60\n");
    let o = run(&["validate", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "a config error: {}", text(&o));
    assert!(text(&o).contains(&format!("{}:4:1: unknown field `histroy_secs`", cfg.display())), "{}", text(&o));
    let o = run(&["run", "--once", "--config", cfg.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "run refuses a bad config too");
}

#[test]
fn limits_stop_runaway_playbooks_and_the_others_still_evaluate() {
    let dir = tempfile::tempdir().unwrap();
    let (pbs, state) = (dir.path().join("pb"), dir.path().join("state"));
    std::fs::create_dir_all(&pbs).unwrap();
    let bad = [
        ("a_loop.rhai", "loop", "fn evaluate(node, state) { let i = 0; loop { i += 1; } }"),
        ("b_recursion.rhai", "recursion", "fn deeper(n) { deeper(n + 1) }\nfn evaluate(node, state) { deeper(0); }"),
        ("c_string.rhai", "string", "fn evaluate(node, state) { let s = \"x\"; loop { s += s; } }"),
        ("d_array.rhai", "array", "fn evaluate(node, state) { let a = []; loop { a.push(1); } }"),
        ("e_error.rhai", "error", "fn evaluate(node, state) { throw \"broken on purpose\"; }"),
        ("f_requests.rhai", "requests", "fn evaluate(node, state) { for i in 0..100 { notify(`n${i}`); } }"),
    ];
    for (file, name, body) in bad {
        std::fs::write(pbs.join(file), format!("{}{body}\n", notify_meta(name))).unwrap();
    }
    std::fs::write(pbs.join("z_always.rhai"), format!("{}{ALWAYS_BODY}", notify_meta("always"))).unwrap();

    // `playbook check` does not run scripts, so it cannot hang on them.
    let files: Vec<String> = bad.iter().map(|(f, ..)| pbs.join(f).display().to_string()).collect();
    let mut args = vec!["playbook", "check"];
    args.extend(files.iter().map(String::as_str));
    let t = Instant::now();
    assert!(run(&args).status.success());
    assert!(t.elapsed() < Duration::from_secs(30));

    // These limits, not the deadline (a debug build pushing to an array checks its size at every
    // push, which the deadline would stop first on a busy machine).
    let cfg = write_config(dir.path(), "[playbooks.limits]\ndeadline_ms = 60000\n");
    let t = Instant::now();
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
    assert!(t.elapsed() < Duration::from_secs(60), "run --once must not hang: {:?}", t.elapsed());
    let recs = audit_lines(&state);
    let disabled: Vec<(&str, &str, &str)> = recs
        .iter()
        .filter(|r| r["kind"] == "playbook_disabled")
        .map(|r| (r["playbook"]["name"].as_str().unwrap(), r["error_code"].as_str().unwrap(), r["error"].as_str().unwrap()))
        .collect();
    let code = |n: &str| disabled.iter().find(|d| d.0 == n).map(|d| d.1).unwrap_or_else(|| panic!("{n} not disabled: {disabled:?}"));
    assert_eq!(code("loop"), "limit_exceeded");
    assert_eq!(code("recursion"), "limit_exceeded");
    assert_eq!(code("string"), "limit_exceeded");
    assert_eq!(code("array"), "limit_exceeded");
    assert_eq!(code("error"), "runtime_error");
    assert_eq!(code("requests"), "runtime_error");
    assert!(disabled.iter().all(|d| d.2.contains(".rhai:")), "errors carry file:line:col: {disabled:?}");
    // The good playbook evaluated in the same tick, after the bad ones.
    assert!(recs.iter().any(|r| r["kind"] == "action" && r["playbook"]["name"] == "always"));
}

#[test]
fn a_running_agent_keeps_its_last_good_set_on_a_bad_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (pbs, state) = (dir.path().join("pb"), dir.path().join("state"));
    std::fs::create_dir_all(&pbs).unwrap();
    let pb = pbs.join("always.rhai");
    std::fs::write(&pb, format!("{}{ALWAYS_BODY}", notify_meta("always"))).unwrap();
    let cfg = write_config(dir.path(), "[signals]\ninterval_secs = 1\n");
    let child = crate::util::Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id() as i32;
    let wait_for = |what: &dyn Fn(&[serde_json::Value]) -> bool| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if what(&audit_lines(&state)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    let actions = |r: &[serde_json::Value]| r.iter().filter(|r| r["kind"] == "action").count();
    assert!(wait_for(&|r| actions(r) >= 1), "agent evaluates");
    std::fs::write(&pb, "const META = #{ name: \"always\"; broken\n").unwrap();
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::HUP).unwrap();
    assert!(wait_for(&|r| r.iter().any(|r| r["kind"] == "playbook_rejected")), "rejection recorded");
    let rejected_at = audit_lines(&state).len();
    assert!(
        wait_for(&|r| r[rejected_at..].iter().any(|r| r["kind"] == "action" && r["playbook"]["name"] == "always")),
        "old version still runs"
    );
    let rec = audit_lines(&state).into_iter().find(|r| r["kind"] == "playbook_rejected").unwrap();
    assert_eq!(rec["kept"]["name"], "always");
    assert!(rec["error"].as_str().unwrap().contains("always.rhai:1:"), "{rec}");
    assert!(child.stop());
    assert_eq!(kinds(&state).last().map(String::as_str), Some("agent_stopped"));
    assert!(run(&["audit", "verify", "--state-dir", state.to_str().unwrap()]).status.success());
}

#[test]
fn a_disabled_playbook_comes_back_after_its_backoff() {
    use medic::config::Config;
    use medic::daemon::Agent;
    use medic::signals::Snapshot;
    let dir = tempfile::tempdir().unwrap();
    let (pbs, state) = (dir.path().join("pb"), dir.path().join("state"));
    std::fs::create_dir_all(&pbs).unwrap();
    // Fails while `x` is above 0.
    std::fs::write(
        pbs.join("flaky.rhai"),
        format!(
            "{}fn evaluate(node, state) {{ if node.value(\"x\") > 0 {{ throw \"x is up\"; }} notify(\"fine\"); }}\n",
            notify_meta("flaky")
        ),
    )
    .unwrap();
    let mut cfg = Config::default();
    cfg.playbooks.disable_secs = 60;
    let mut agent = Agent::start(&cfg, Some(pbs), state.clone()).unwrap();
    let snap = |t: i64, x: f64| {
        let mut s = Snapshot { ts_ms: 4_000_000_000_000 + t * 1000, ..Default::default() };
        s.metrics.insert("x".into(), x);
        s
    };
    assert_eq!(agent.tick_with(snap(0, 1.0)).unwrap().disabled.len(), 1);
    assert!(agent.tick_with(snap(30, 0.0)).unwrap().evaluated.is_empty(), "still disabled");
    let r = agent.tick_with(snap(61, 0.0)).unwrap();
    assert_eq!(r.decisions.len(), 1, "back after 60 s");
    // A second failure in a row doubles the back-off? No: a success in between reset it.
    agent.tick_with(snap(62, 1.0)).unwrap();
    assert!(agent.tick_with(snap(100, 0.0)).unwrap().evaluated.is_empty());
    assert_eq!(agent.tick_with(snap(123, 0.0)).unwrap().decisions.len(), 1);
    agent.stop("test").unwrap();
    let k = kinds(&state);
    assert_eq!(k.iter().filter(|k| *k == "playbook_disabled").count(), 2);
    assert_eq!(k.iter().filter(|k| *k == "playbook_enabled").count(), 2);
}

#[test]
fn bundled_playbooks_pass_their_cases_and_each_has_a_firing_and_a_quiet_case() {
    let o = run(&["playbook", "test"]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
    for (file, _, tests) in medic::playbooks::bundled::PLAYBOOKS {
        let t: toml::Value = toml::from_str(tests).unwrap();
        let cases = t["case"].as_array().unwrap();
        assert!(cases.iter().any(|c| c.get("expect_none").and_then(|v| v.as_bool()) == Some(true)), "{file}: no must-not-fire case");
        assert!(cases.iter().any(|c| c.get("expect").is_some()), "{file}: no must-fire case");
    }
    // The same cases from the files on disk, and a case that fails makes the command fail.
    let o = run(&["playbook", "test", crate::util::repo().join("playbooks").to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let dir = tempfile::tempdir().unwrap();
    let src = crate::util::repo().join("playbooks");
    std::fs::copy(src.join("runaway_process.rhai"), dir.path().join("r.rhai")).unwrap();
    std::fs::write(
        dir.path().join("r.test.toml"),
        "[[case]]\nname = \"wrong on purpose\"\nduration = \"1m\"\nexpect = [{ kind = \"signal_process\" }]\n",
    )
    .unwrap();
    let o = run(&["playbook", "test", dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("FAIL") && text(&o).contains("0 passed, 1 failed"), "{}", text(&o));
}

#[test]
fn evaluation_is_deterministic() {
    use medic::playbooks::{api::State, Runtime};
    use medic::signals::{history::History, Snapshot};
    use std::sync::Arc;
    let rt = Runtime::new(Default::default());
    let (file, src, _) = medic::playbooks::bundled::PLAYBOOKS[2];
    let pb = rt.compile(file, src).unwrap();
    let play = || {
        let mut h = History::new(3_600_000, 30_000, 1000);
        let state = State::default();
        let mut out = Vec::new();
        for t in 0..40 {
            let mut s = Snapshot { ts_ms: t * 30_000, ..Default::default() };
            s.processes.push(medic::signals::process::ProcessInfo {
                pid: 9,
                name: "spin".into(),
                cmdline: "spin".into(),
                cpu_pct: Some(if t % 7 == 0 { 50.0 } else { 99.0 }),
                ..Default::default()
            });
            h.push(&s);
            out.push(rt.evaluate(&pb, Arc::new(s), Arc::new(h.clone()), &state).unwrap().requests);
        }
        out
    };
    assert_eq!(play(), play());
}

/// Runs `medic args`, failing the test (and killing it) if it has not exited within `secs`.
fn run_within(secs: u64, args: &[&str]) -> std::process::Output {
    let out = tempfile::tempdir().unwrap();
    let (o, e) = (out.path().join("out"), out.path().join("err"));
    let mut child = crate::util::Reaped(
        medic().args(args).stdout(std::fs::File::create(&o).unwrap()).stderr(std::fs::File::create(&e).unwrap()).spawn().unwrap(),
    );
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(secs), "medic {args:?} hung (killed after {secs} s)");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::process::Output { status, stdout: std::fs::read(&o).unwrap(), stderr: std::fs::read(&e).unwrap() }
}

fn mkfifo(p: &std::path::Path) {
    rustix::fs::mknodat(rustix::fs::CWD, p, rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o644), 0).unwrap();
}

/// Issue 9: a directory named `x.rhai` or a dangling symlink dropped every playbook, a FIFO named
/// `x.rhai` hung start, reload, `validate`, `playbook check` and `playbook test`.
#[test]
fn regression_one_bad_entry_in_the_playbooks_dir_dropped_all_and_a_fifo_hung_start() {
    let dir = tempfile::tempdir().unwrap();
    let (pbs, state) = (dir.path().join("pb"), dir.path().join("state"));
    std::fs::create_dir_all(&pbs).unwrap();
    std::fs::write(pbs.join("always.rhai"), format!("{}{ALWAYS_BODY}", notify_meta("always"))).unwrap();
    std::fs::create_dir(pbs.join("a_dir.rhai")).unwrap();
    std::os::unix::fs::symlink("/nonexistent/x.rhai", pbs.join("b_dangling.rhai")).unwrap();
    mkfifo(&pbs.join("c_fifo.rhai"));
    let p = pbs.to_str().unwrap();

    let o = run_within(30, &["validate", "--playbooks", p]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains(": ok (always)"), "{out}");
    for (f, why) in [("a_dir.rhai", "a directory"), ("b_dangling.rhai", "a symbolic link"), ("c_fifo.rhai", "a FIFO")] {
        assert!(out.contains(&format!("{}:1:1: {why}: playbooks must be regular files", pbs.join(f).display())), "{f}: {out}");
    }
    let o = run_within(30, &["playbook", "check", pbs.join("c_fifo.rhai").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("a FIFO"), "{}", text(&o));

    // The agent starts, loads the good one, and records each bad entry as rejected.
    let o = run_within(60, &["run", "--once", "--playbooks", p, "--state-dir", state.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let recs = audit_lines(&state);
    assert!(recs.iter().any(|r| r["kind"] == "playbook_loaded" && r["playbook"]["name"] == "always"));
    assert!(recs.iter().any(|r| r["kind"] == "action" && r["playbook"]["name"] == "always"), "the good playbook evaluates");
    let rejected: Vec<&str> = recs.iter().filter(|r| r["kind"] == "playbook_rejected").map(|r| r["file"].as_str().unwrap()).collect();
    assert_eq!(rejected.len(), 3, "{rejected:?}");

    // `playbook test` on the directory: a FIFO case file does not hang it either.
    std::fs::remove_file(pbs.join("c_fifo.rhai")).unwrap();
    std::fs::remove_dir(pbs.join("a_dir.rhai")).unwrap();
    std::fs::remove_file(pbs.join("b_dangling.rhai")).unwrap();
    mkfifo(&pbs.join("always.test.toml"));
    let o = run_within(30, &["playbook", "test", p]);
    assert!(text(&o).contains("no test cases"), "{}", text(&o));
}

/// Issue 9: a playbook allowed only `notify` read 64 keys of 60 KB and notified every tick: each
/// decision record copied every read (3.8 MB records, 1.2 GB of log in 10 s).
#[test]
fn regression_a_request_copied_every_read_into_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let (pbs, state) = (dir.path().join("pb"), dir.path().join("state"));
    std::fs::create_dir_all(&pbs).unwrap();
    let body = "fn evaluate(node, state) {\n    let k = \"\";\n    k.pad(60000, 'k');\n    for i in 0..64 { node.value(`${i}${k}`); }\n    let r = \"\";\n    r.pad(60000, 'r');\n    notify(r, #{ big: k });\n}\n";
    std::fs::write(pbs.join("greedy.rhai"), format!("{}{body}", notify_meta("greedy"))).unwrap();
    // A far deadline: a debug build on a busy machine is slow to build 60 KB strings.
    let cfg = write_config(dir.path(), "[playbooks.limits]\ndeadline_ms = 60000\n");
    let o = run_within(
        120,
        &["run", "--once", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    let log = std::fs::read_to_string(state.join("audit.log")).unwrap();
    let line = log.lines().find(|l| l.contains("\"kind\":\"action\"")).expect("the notification is recorded");
    assert!(line.len() < 64 * 1024, "record of {} bytes", line.len());
    let rec: serde_json::Value = serde_json::from_str(line).unwrap();
    let signals = rec["trigger"]["signals"].as_object().unwrap();
    let omitted = signals[medic::playbooks::api::OMITTED_READS].as_u64().unwrap();
    assert_eq!(signals.len() as u64 - 1 + omitted, 64, "every read is either carried or counted");
    assert!(rec["trigger"]["reason"].as_str().unwrap().ends_with("…[truncated]"));
}

/// Issue 9: `sleep(3600)` stopped the agent answering `medic status`/`medic mode`, `sleep(1e20)`
/// aborted it at every start; a spinning playbook ran for as long as its operations lasted.
/// Now `sleep` is refused at load, and an evaluation past `deadline_ms` is stopped, recorded
/// with `deadline` and disabled, while the agent and the other playbooks carry on.
#[test]
fn regression_a_sleeping_or_spinning_playbook_stopped_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let (pbs, state, sock) = (dir.path().join("pb"), dir.path().join("state"), dir.path().join("control.sock"));
    std::fs::create_dir_all(&pbs).unwrap();
    std::fs::write(
        pbs.join("a_spin.rhai"),
        format!("{}fn evaluate(node, state) {{ let i = 0; loop {{ i += 1; }} }}\n", notify_meta("spin")),
    )
    .unwrap();
    std::fs::write(pbs.join("b_sleep.rhai"), format!("{}fn evaluate(node, state) {{ sleep(1e20); }}\n", notify_meta("sleep"))).unwrap();
    std::fs::write(pbs.join("z_always.rhai"), format!("{}{ALWAYS_BODY}", notify_meta("always"))).unwrap();
    // Operations alone would let the spin run for minutes: the deadline is what stops it.
    let cfg = write_config(
        dir.path(),
        &format!(
            "[control]\nsocket = \"{}\"\n[signals]\ninterval_secs = 1\n[playbooks.limits]\nmax_operations = 1000000000\ndeadline_ms = 300\n",
            sock.display()
        ),
    );
    let bad_dir = tempfile::tempdir().unwrap();
    let bad = write_config(bad_dir.path(), "[playbooks.limits]\ndeadline_ms = 0\n");
    let o = run(&["validate", "--config", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "a config error exits 2");
    assert!(text(&o).contains(&format!("{}:3:1: playbooks.limits.deadline_ms: 0 is outside 10..=60000", bad.display())), "{}", text(&o));

    let child = crate::util::Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let disabled = |r: &serde_json::Value| r["kind"] == "playbook_disabled" && r["playbook"]["name"] == "spin";
    assert!(crate::util::wait_until(30, || audit_lines(&state).iter().any(disabled)), "the spin is stopped and recorded");
    let recs = audit_lines(&state);
    let rec = recs.iter().find(|r| disabled(r)).unwrap();
    assert_eq!(rec["error_code"], "deadline", "{rec}");
    assert!(rec["error"].as_str().unwrap().contains("past its deadline (playbooks.limits.deadline_ms = 300)"), "{rec}");
    let ms: u64 = rec["error"]
        .as_str()
        .unwrap()
        .split("stopped after ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((300..2000).contains(&ms), "stopped after {ms} ms");
    assert!(
        recs.iter().any(|r| r["kind"] == "playbook_rejected" && r["error"].as_str().unwrap_or("").contains("`sleep`")),
        "sleep refused at load"
    );
    // The agent answers, and the good playbook still evaluates after the spin was stopped.
    let t = Instant::now();
    assert!(run(&["status", "--json", "--socket", sock.to_str().unwrap()]).status.success());
    assert!(t.elapsed() < Duration::from_secs(5), "status took {:?}", t.elapsed());
    let at = audit_lines(&state).len();
    assert!(crate::util::wait_until(20, || audit_lines(&state)[at..]
        .iter()
        .any(|r| r["kind"] == "action" && r["playbook"]["name"] == "always")));
    assert!(child.stop(), "SIGTERM stops the agent");
    assert_eq!(kinds(&state).last().map(String::as_str), Some("agent_stopped"));
}

/// docs/FROM-MONIT.md's examples: every playbook under `playbooks/examples/` passes its cases,
/// has a case that fires and one that must not, and is named in the document (so no example
/// goes undocumented and no document names an example that is not there).
#[test]
fn monit_examples_pass_their_cases_and_each_is_in_from_monit() {
    let dir = crate::util::repo().join("playbooks").join("examples");
    let o = run(&["playbook", "test", dir.to_str().unwrap()]);
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains(" passed, 0 failed"), "{out}");
    let doc = std::fs::read_to_string(crate::util::repo().join("docs").join("FROM-MONIT.md")).unwrap();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(stem) = name.strip_suffix(".rhai") else { continue };
        n += 1;
        let cases =
            std::fs::read_to_string(dir.join(format!("{stem}.test.toml"))).unwrap_or_else(|_| panic!("{name}: no {stem}.test.toml"));
        let t: toml::Value = toml::from_str(&cases).unwrap();
        let cases = t["case"].as_array().unwrap();
        assert!(cases.iter().any(|c| c.get("expect_none").and_then(|v| v.as_bool()) == Some(true)), "{name}: no must-not-fire case");
        assert!(cases.iter().any(|c| c.get("expect").is_some()), "{name}: no must-fire case");
        assert!(doc.contains(&name), "docs/FROM-MONIT.md does not name {name}");
    }
    assert!(n >= 10, "only {n} examples");
    for w in doc.split("examples/").skip(1) {
        let f: String = w.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '.').collect();
        if f.ends_with(".rhai") {
            assert!(dir.join(&f).exists(), "docs/FROM-MONIT.md names examples/{f}, which is not there");
        }
    }
}
