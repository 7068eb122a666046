//! The command line as a user meets it: help that explains, `signals` in both forms, defaults
//! that work for a non-root user with no config, usage errors with exit code 2.

use crate::util::{fixtures, run, text, write_config};

#[test]
fn help_lists_every_command() {
    let o = run(&["--help"]);
    assert!(o.status.success());
    let out = text(&o);
    for c in ["run", "validate", "playbook", "signals", "audit", "dry-run"] {
        assert!(out.contains(c), "{c} missing from --help:\n{out}");
    }
    let o = run(&["run", "--help"]);
    for f in ["--config", "--playbooks", "--state-dir", "--once"] {
        assert!(text(&o).contains(f), "{f}");
    }
    assert_eq!(run(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(run(&["playbook", "check"]).status.code(), Some(2), "check needs a file");
}

#[test]
fn signals_prints_a_snapshot_in_text_and_json() {
    let o = run(&["signals", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in ["cpu.util_pct", "mem.available_bytes", "load.1", "sock.tcp.established", "tcp.retrans_segs"] {
        assert!(v["metrics"].get(k).is_some(), "{k} missing");
    }
    assert!(v["processes"].as_array().unwrap().iter().any(|p| p["name"] == "medic"), "medic sees itself");
    let o = run(&["signals"]);
    let out = text(&o);
    assert!(out.contains("# metrics") && out.contains("cpu.util_pct") && out.contains("# processes"), "{out}");
}

#[test]
fn run_once_on_a_fixture_tree_with_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let proc_root = fixtures().join("proc");
    let cfg = write_config(
        dir.path(),
        &format!("state_dir = \"{}\"\n[signals]\nproc_root = \"{}\"\n", dir.path().join("s").display(), proc_root.display()),
    );
    let o = run(&["run", "--once", "--config", cfg.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let log = std::fs::read_to_string(dir.path().join("s/audit.log")).unwrap();
    assert!(log.contains("\"node\":\"test-node\""));
}

#[test]
fn defaults_work_for_a_non_root_user_without_a_config() {
    let nobody = crate::util::Nobody::new();
    let o = nobody.run(&["run", "--once"]);
    assert!(o.status.success(), "{}", text(&o));
    let state = nobody.home.path().join(".local/state/medic");
    assert!(state.join("audit.log").exists());
    let o = nobody.run(&["audit", "verify"]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn the_packaged_config_is_valid_and_documents_the_defaults() {
    let path = crate::util::repo().join("packaging/medic.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let cfg = medic::config::Config::parse(&path.display().to_string(), &text).unwrap();
    assert_eq!(cfg.local_playbooks_dir.as_deref(), Some(std::path::Path::new("/etc/medic/playbooks")));
    assert_eq!(cfg.playbooks_dir, None, "the packaged config adds to the bundled playbooks");
    assert_eq!(cfg.control.group.as_deref(), Some("medic"));
    // Uncommenting every default must give the defaults back.
    let uncommented: String = text
        .lines()
        .map(|l| l.strip_prefix("# ").filter(|r| r.contains(" = ") && !r.starts_with("e.g.")).unwrap_or(l))
        .map(|l| format!("{}\n", l.split("  #").next().unwrap()))
        .collect();
    let all = medic::config::Config::parse("uncommented", &uncommented).unwrap();
    assert_eq!(all, cfg, "a commented default differs from the real one:\n{uncommented}");
    // The `## ` examples (probes, programs, maintenance windows) are valid when copied.
    let examples: String = text.lines().map(|l| format!("{}\n", l.strip_prefix("## ").unwrap_or(l))).collect();
    let ex = medic::config::Config::parse("examples", &examples).unwrap();
    assert_eq!((ex.maintenance.len(), ex.programs.len()), (2, 1), "{examples}");
}

/// Regression: a SIGTERM while the agent was starting (opening the log, loading the eBPF
/// programs: about a second) killed it by the default action, with no `agent_stopped` record.
#[test]
fn sigterm_while_starting_stops_the_agent_cleanly() {
    for delay_ms in [50, 300, 700] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), &format!("[control]\nsocket = \"{}\"\n", dir.path().join("c.sock").display()));
        let state = dir.path().join("state");
        let child = crate::util::medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let agent = crate::util::Reaped(child);
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        assert!(agent.stop(), "SIGTERM {delay_ms} ms after start: a clean exit");
        let kinds = crate::util::kinds(&state);
        assert!(kinds.is_empty() || kinds.last().map(String::as_str) == Some("agent_stopped"), "{delay_ms} ms: {kinds:?}");
    }
}

/// Regression: a bad config exited 1 from `run`, 3 from `status`, and was ignored by `signals`.
/// Now every command that reads the config fails the same way: exit 2, naming file:line:col.
#[test]
fn a_bad_config_gives_exit_code_2_from_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[signals]\nintervl_secs = 1\n");
    let c = cfg.to_str().unwrap();
    let pb = crate::util::repo().join("playbooks/close_wait_leak.rhai");
    let where_ = format!("{}:3:1: unknown field `intervl_secs`", cfg.display());
    let missing = dir.path().join("missing.toml");
    for args in [
        vec!["run", "--once", "--config", c],
        vec!["status", "--config", c],
        vec!["signals", "--config", c],
        vec!["validate", "--config", c],
        vec!["playbook", "test", "--config", c],
        vec!["playbook", "check", "--config", c, pb.to_str().unwrap()],
        vec!["audit", "verify", "--config", c],
        vec!["breaker", "list", "--config", c],
    ] {
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(&where_), "{args:?}: {}", text(&o));
        let mut args = args.clone();
        let i = args.iter().position(|a| *a == c).unwrap();
        args[i] = missing.to_str().unwrap();
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "a missing --config: {args:?}: {}", text(&o));
        assert!(text(&o).contains("missing.toml"), "{args:?}: {}", text(&o));
    }
    // Unlike a usage or config error, an agent that is not there is operational: 3.
    std::fs::create_dir(dir.path().join("g")).unwrap();
    let good = write_config(&dir.path().join("g"), "");
    let o = run(&["status", "--config", good.to_str().unwrap(), "--socket", dir.path().join("none.sock").to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
}

/// What `playbook test` and `check` say first: the config they judged against.
fn default_config_line() -> String {
    let d = std::path::Path::new(medic::config::DEFAULT_CONFIG);
    if d.exists() {
        format!("using config {}", d.display())
    } else {
        format!("using built-in defaults (no {})", d.display())
    }
}

#[test]
fn playbook_test_gates_against_the_node_policy_from_config() {
    let pb = crate::util::repo().join("playbooks/close_wait_leak.rhai");
    let p = pb.to_str().unwrap();
    let o = run(&["playbook", "test", p]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with(&default_config_line()), "{}", text(&o));
    // The node allows only db.service: the case that restarts api.service is refused there, so
    // it must fail here.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[policy]\nallowed_units = [\"db.service\"]\n");
    let o = run(&["playbook", "test", "--config", cfg.to_str().unwrap(), p]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.starts_with(&format!("using config {}\n", cfg.display())), "{out}");
    assert!(out.contains("FAIL") && out.contains("denied (policy:allowlist)"), "{out}");
}

#[test]
fn playbook_check_and_validate_compile_with_the_limits_from_config() {
    let dir = tempfile::tempdir().unwrap();
    // Within the default expression depth (64), beyond a node's 8.
    let deep = (0..12).fold("1".to_string(), |e, i| format!("({i} + {e})"));
    let src = crate::util::playbook_src("deep", "", "1", "1m", &format!("    let x = {deep};\n    x"));
    let pbs = crate::util::write_playbooks(dir.path(), &[("deep.rhai", src)]);
    let f = pbs.join("deep.rhai");
    let o = run(&["playbook", "check", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).starts_with(&default_config_line()), "{}", text(&o));
    let cfg = write_config(dir.path(), "[playbooks.limits]\nmax_expr_depth = 8\n");
    let o = run(&["playbook", "check", "--config", cfg.to_str().unwrap(), f.to_str().unwrap()]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.starts_with(&format!("using config {}\n", cfg.display())) && out.contains(&f.display().to_string()), "{out}");
    // `validate` judges the same file the same way.
    let o = run(&["validate", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}
