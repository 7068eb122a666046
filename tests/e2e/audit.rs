//! The audit log end to end: `medic run --once` writes a chain that `medic audit verify`
//! accepts; any changed byte, removed or reordered record breaks it at the right `seq`; a torn
//! tail is set aside and recorded; a second agent cannot write the same log.

use crate::util::{audit_lines, kinds, run, text};
use medic::audit::verify::verify;
use std::path::Path;

const ALWAYS: &str = r#"
const META = #{ name: "always", description: "asks every tick", interval: "1s",
    actions: [#{ kind: "notify", target: "*" }], rate_limit: #{ max: 1000, per: "1h" }, cooldown: "0s" };
fn evaluate(node, state) { notify("tick", #{ load: node.value("load.1") }); }
"#;

fn run_once(state: &Path, playbooks: Option<&Path>) {
    let mut args = vec!["run", "--once", "--state-dir", state.to_str().unwrap()];
    if let Some(p) = playbooks {
        args.extend(["--playbooks", p.to_str().unwrap()]);
    }
    let o = run(&args);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn run_once_writes_a_chain_that_verifies_and_any_changed_byte_breaks_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    run_once(&state, None);
    let o = run(&["audit", "verify", "--state-dir", state.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(kinds(&state).first().map(String::as_str), Some("agent_started"));
    assert_eq!(kinds(&state).last().map(String::as_str), Some("agent_stopped"));
    assert!(kinds(&state).iter().filter(|k| *k == "playbook_loaded").count() >= 5);

    let log = state.join("audit.log");
    let good = std::fs::read(&log).unwrap();
    let lines: Vec<&[u8]> = good.split_inclusive(|b| *b == b'\n').collect();
    let start: usize = lines[..2].iter().map(|l| l.len()).sum();
    let len = lines[2].len() - 1; // every byte of record 3 but its newline
    for i in start..start + len {
        let mut bad = good.clone();
        bad[i] = if bad[i] == b'0' {
            b'1'
        } else if bad[i] ^ 1 == b'\n' {
            b'x'
        } else {
            bad[i] ^ 1
        };
        std::fs::write(&log, &bad).unwrap();
        let brk = verify(&log).unwrap().expect_err("a changed byte must break the chain");
        assert_eq!(brk.seq, 3, "byte {} of record 3 changed: {brk}", i - start);
    }
    // The command names the seq and exits non-zero.
    let mut bad = good.clone();
    bad[start + len / 2] ^= 1;
    std::fs::write(&log, &bad).unwrap();
    let o = run(&["audit", "verify", "--state-dir", state.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("chain broken at seq 3"), "{}", text(&o));

    // A removed record and two swapped records.
    let removed: Vec<u8> = lines.iter().enumerate().filter(|(i, _)| *i != 1).flat_map(|(_, l)| l.to_vec()).collect();
    std::fs::write(&log, removed).unwrap();
    assert_eq!(verify(&log).unwrap().unwrap_err().seq, 2);
    let mut swapped: Vec<&[u8]> = lines.clone();
    swapped.swap(3, 4);
    std::fs::write(&log, swapped.concat()).unwrap();
    assert_eq!(verify(&log).unwrap().unwrap_err().seq, 4);
}

#[test]
fn torn_tail_is_set_aside_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    run_once(&state, None);
    let before = audit_lines(&state).len() as u64;
    let torn = br#"{"schema":"medic.audit/v1","seq":99,"ki"#;
    let mut f = std::fs::OpenOptions::new().append(true).open(state.join("audit.log")).unwrap();
    std::io::Write::write_all(&mut f, torn).unwrap();
    drop(f);
    // verify sees the torn line…
    assert!(verify(&state.join("audit.log")).unwrap().is_err());
    // …the next start sets it aside and records that, and the chain is whole again.
    run_once(&state, None);
    let recs = audit_lines(&state);
    let t = recs.iter().find(|r| r["kind"] == "audit_torn_tail").expect("torn tail recorded");
    assert_eq!(t["seq"].as_u64(), Some(before + 1));
    assert_eq!(t["torn"]["bytes"].as_u64(), Some(torn.len() as u64));
    assert_eq!(t["torn"]["after_seq"].as_u64(), Some(before));
    let saved = std::fs::read(t["torn"]["saved_as"].as_str().unwrap()).unwrap();
    assert_eq!(saved, torn);
    assert!(verify(&state.join("audit.log")).unwrap().is_ok());
}

#[test]
fn a_second_agent_cannot_write_the_same_log() {
    let dir = tempfile::tempdir().unwrap();
    let (_log, _) = medic::audit::AuditLog::open(dir.path(), "n").unwrap();
    let o = run(&["run", "--once", "--state-dir", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("in use by another medic process"), "{}", text(&o));
}

#[test]
fn show_filters_by_playbook_and_time_and_prints_json() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pbs) = (dir.path().join("state"), dir.path().join("pb"));
    std::fs::create_dir_all(&pbs).unwrap();
    std::fs::write(pbs.join("always.rhai"), ALWAYS).unwrap();
    run_once(&state, Some(&pbs));
    let s = state.to_str().unwrap();
    let o = run(&["audit", "show", "--state-dir", s, "--playbook", "always"]);
    let out = text(&o);
    assert!(out.contains("always: notify \"tick\" → executed (notify)"), "{out}");
    assert!(!out.contains("agent_started"), "{out}");
    let o = run(&["audit", "show", "--state-dir", s, "--json"]);
    let first: serde_json::Value = serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(first["schema"], "medic.audit/v1");
    let o = run(&["audit", "show", "--state-dir", s, "--since", "2999-01-01T00:00:00Z"]);
    assert!(o.stdout.is_empty());
    let action = audit_lines(&state).into_iter().find(|r| r["kind"] == "action").unwrap();
    assert_eq!(action["decision"], "executed");
    assert_eq!(action["mode"], "dry-run");
    assert!(action["trigger"]["signals"].get("load.1").is_some(), "trigger carries what was read: {action}");
    assert_eq!(action["playbook"]["sha256"].as_str().unwrap().len(), 64);
}
