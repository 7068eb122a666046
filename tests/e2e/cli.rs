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
