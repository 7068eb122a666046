//! The audit log end to end: `medic run --once` writes a chain that `medic audit verify`
//! accepts; any changed byte, removed or reordered record breaks it at the right `seq`; a torn
//! tail is set aside and recorded; a second agent cannot write the same log.

use crate::util::{audit_lines, escalated, kinds, run, text};
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

// ---- Issue 9, part 3: the log survives crashes and cannot be rewound quietly. ----

use medic::audit::record::{self, Record};
use medic::audit::{AuditConfig, AuditLog};
use serde_json::Value;

/// A record with `text` in it, of a kind nothing replays (these tests are about the log).
fn note(text: String) -> Record {
    Record::AuditRecovered(record::AuditRecovered { since: "note".into(), error: text, running_actions: 0 })
}

fn verify_cmd(state: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["audit", "verify", "--state-dir", state.to_str().unwrap()];
    args.extend(extra);
    run(&args)
}

fn append_raw(state: &Path, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new().append(true).open(state.join("audit.log")).unwrap();
    std::io::Write::write_all(&mut f, bytes).unwrap();
}

/// Two of 60 real `kill -9` runs with ~900 KB records left an agent that refused to start: the
/// repair looked back only 1 MiB.
#[test]
fn agent_starts_after_a_torn_record_larger_than_1_mib() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    {
        let (mut log, _) = AuditLog::open(&state, "n").unwrap();
        for _ in 0..2 {
            log.append(&note("x".repeat(2 << 20))).unwrap();
        }
    }
    let whole = std::fs::read(state.join("audit.log")).unwrap();
    let last_start = whole[..whole.len() - 1].iter().rposition(|b| *b == b'\n').unwrap() + 1;
    // A crash half-way through a third 2 MiB record (no newline).
    let torn = whole[last_start..last_start + (1536 << 10)].to_vec();
    append_raw(&state, &torn);
    run_once(&state, None);
    let recs = audit_lines(&state);
    let t = recs.iter().find(|r| r["kind"] == "audit_torn_tail").expect("torn tail recorded");
    assert_eq!(t["torn"]["bytes"].as_u64(), Some(torn.len() as u64));
    assert_eq!(t["torn"]["after_seq"].as_u64(), Some(2));
    assert_eq!(std::fs::read(t["torn"]["saved_as"].as_str().unwrap()).unwrap(), torn);
    let o = verify_cmd(&state, &[]);
    assert!(o.status.success(), "{}", text(&o));
}

/// A whole last line that does not parse (zero-filled blocks, as a crash on some filesystems
/// leaves, followed by a newline) stopped start-up.
#[test]
fn agent_starts_when_the_last_line_is_zero_filled_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    run_once(&state, None);
    let before = audit_lines(&state).len() as u64;
    let mut junk = vec![0u8; 8192];
    junk.push(b'\n');
    junk.extend(vec![0u8; 4096]);
    junk.push(b'\n');
    append_raw(&state, &junk);
    run_once(&state, None);
    let recs = audit_lines(&state);
    let t = recs.iter().find(|r| r["kind"] == "audit_torn_tail").expect("garbage tail recorded");
    assert_eq!(t["torn"]["bytes"].as_u64(), Some(junk.len() as u64));
    assert_eq!(t["torn"]["after_seq"].as_u64(), Some(before));
    assert!(verify_cmd(&state, &[]).status.success());
}

fn seqs(state: &Path) -> Vec<u64> {
    audit_lines(state).iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// Cutting off the last records passed `medic audit verify`, and the next start reused their
/// seq values with new content (budgets and breakers refilled, the forwarder skipped them).
#[test]
fn cutting_off_records_fails_verify_and_is_recorded_without_reusing_seq() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    run_once(&state, None);
    let log = state.join("audit.log");
    let good = std::fs::read(&log).unwrap();
    let lines: Vec<&[u8]> = good.split_inclusive(|b| *b == b'\n').collect();
    let high = lines.len() as u64;
    let keep = lines.len() - 3;
    std::fs::write(&log, lines[..keep].concat()).unwrap();
    // What is left chains, but it is behind its anchor.
    let o = verify_cmd(&state, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("anchor says seq"), "{}", text(&o));
    run_once(&state, None);
    let recs = audit_lines(&state);
    let r = &recs[keep];
    assert_eq!(r["kind"], "audit_rewound", "{r}");
    assert_eq!(r["seq"].as_u64(), Some(high + 1), "seq continues after the highest issued");
    assert_eq!(r["rewound"]["found"]["seq"].as_u64(), Some(keep as u64));
    assert_eq!(r["rewound"]["lost"]["from_seq"].as_u64(), Some(keep as u64 + 1));
    assert_eq!(r["rewound"]["lost"]["to_seq"].as_u64(), Some(high));
    let s = seqs(&state);
    assert!(s.windows(2).all(|w| w[0] < w[1]) && s[keep..].iter().all(|q| *q > high), "no seq reused: {s:?}");
    let o = verify_cmd(&state, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("records a rewind"), "{}", text(&o));
}

/// Deleting the log (between runs) began a new chain at seq 1 that verified.
#[test]
fn deleting_the_log_is_detected_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    run_once(&state, None);
    let high = seqs(&state).len() as u64;
    std::fs::remove_file(state.join("audit.log")).unwrap();
    assert_eq!(verify_cmd(&state, &[]).status.code(), Some(1));
    run_once(&state, None);
    let recs = audit_lines(&state);
    assert_eq!(recs[0]["kind"], "audit_rewound");
    assert_eq!(recs[0]["seq"].as_u64(), Some(high + 1));
    assert_eq!(recs[0]["rewound"]["found"]["seq"].as_u64(), Some(0));
    assert!(verify_cmd(&state, &[]).status.success());
}

/// The forwarder's cursor ahead of the log (the broker has records the node no longer has):
/// the forwarder silently skipped the reused seq values.
#[test]
fn a_log_behind_the_forwarder_cursor_is_a_rewind() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    run_once(&state, None);
    let n = seqs(&state).len() as u64;
    std::fs::write(state.join("forward.cursor"), format!("{}\n", n + 10)).unwrap();
    let o = verify_cmd(&state, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("broker acknowledged"), "{}", text(&o));
    run_once(&state, None);
    let r = audit_lines(&state).into_iter().find(|r| r["kind"] == "audit_rewound").expect("rewind recorded");
    assert_eq!(r["seq"].as_u64(), Some(n + 11));
    assert_eq!(r["rewound"]["forward_cursor"].as_u64(), Some(n + 10));
}

/// Deleting the log while the agent ran went unnoticed: it went on appending to the deleted
/// file. Now the next tick sees it, rescues what it wrote from its open descriptor, starts a new
/// active segment with `audit_rewound`, and `medic status` shows it.
#[test]
fn deleting_the_log_while_the_agent_runs_is_detected_and_shown() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sock = dir.path().join("c.sock");
    let cfg = crate::util::write_config(dir.path(), &format!("[control]\nsocket = \"{}\"\n", sock.display()));
    let agent = crate::util::Reaped(
        crate::util::medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert!(crate::util::wait_until(30, || crate::util::status_json(&sock)["last_seq"].as_u64().is_some()));
    let before = std::fs::read(state.join("audit.log")).unwrap();
    std::fs::remove_file(state.join("audit.log")).unwrap();
    assert!(crate::util::wait_until(10, || kinds(&state).contains(&"audit_rewound".to_string())), "{:?}", kinds(&state));
    let st = crate::util::status_json(&sock);
    let rw = &st["audit"]["integrity"]["rewound"];
    assert!(rw.is_object(), "{st}");
    let r = audit_lines(&state).into_iter().find(|r| r["kind"] == "audit_rewound").unwrap();
    let rescued = std::fs::read(r["rewound"]["rescued"].as_str().expect("rescued")).unwrap();
    assert!(rescued.starts_with(&before), "the rescued copy holds what was deleted");
    let o = run(&["status", "--socket", sock.to_str().unwrap()]);
    assert!(text(&o).contains("REWOUND"), "{}", text(&o));
    assert!(agent.stop());
}

/// The agent started on a log whose chain was broken in the middle, with no check and no
/// record.
#[test]
fn a_chain_broken_in_the_middle_is_recorded_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    run_once(&state, None);
    let log = state.join("audit.log");
    let text_ = std::fs::read_to_string(&log).unwrap();
    let mut lines: Vec<String> = text_.lines().map(String::from).collect();
    // An edit that keeps the line parseable: record 3's node name.
    lines[2] = lines[2].replacen("\"node\":\"", "\"node\":\"X", 1);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    run_once(&state, None);
    let r = audit_lines(&state).into_iter().find(|r| r["kind"] == "audit_chain_broken").expect("break recorded");
    assert_eq!(r["broken"]["after_seq"].as_u64(), Some(2), "{r}");
    // verify still names the edited record.
    let o = verify_cmd(&state, &[]);
    assert!(text(&o).contains("chain broken at seq 3"), "{}", text(&o));
}

fn small(every: u64, segment_bytes: u64) -> AuditConfig {
    AuditConfig { checkpoint_every: every, segment_bytes, ..AuditConfig::default() }
}

/// Checkpoints carry the chain head; `verify --checkpoint` proves a log still holds what a
/// checkpoint (the broker's copy) says it once had, even when the anchor went with the log.
#[test]
fn verify_against_a_checkpoint_catches_a_log_cut_off_with_its_anchor() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    {
        let (mut log, _) = AuditLog::open_with(&state, "n", &small(5, 64 << 20), &mut |_| {}).unwrap();
        for i in 0..20 {
            log.append(&note(i.to_string())).unwrap();
        }
    }
    let recs = audit_lines(&state);
    let cps: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "audit_checkpoint").collect();
    assert!(cps.len() >= 3, "a checkpoint every 5 records");
    let cp = cps.last().unwrap().to_string();
    let o = verify_cmd(&state, &["--checkpoint", &cp]);
    assert!(o.status.success(), "{}", text(&o));
    // The attacker cuts the log before the checkpoint and deletes the anchor too.
    let seq = cps.last().unwrap()["seq"].as_u64().unwrap() as usize;
    let good = std::fs::read(state.join("audit.log")).unwrap();
    let lines: Vec<&[u8]> = good.split_inclusive(|b| *b == b'\n').collect();
    std::fs::write(state.join("audit.log"), lines[..seq - 3].concat()).unwrap();
    std::fs::remove_file(state.join("audit.anchor")).unwrap();
    assert!(verify_cmd(&state, &[]).status.success(), "without the checkpoint nothing can tell");
    let f = dir.path().join("cp.json");
    std::fs::write(&f, &cp).unwrap();
    let o = verify_cmd(&state, &["--checkpoint", f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("records were cut off"), "{}", text(&o));
}

/// The log never rotated. Now segments close by size, the chain runs across them, each starts
/// with a checkpoint, `show` and `verify` read across them, and a segment is removed only once
/// the forwarder's cursor is past it (and retention allows), which is recorded.
#[test]
fn segments_rotate_chain_across_and_are_removed_only_after_the_forwarder_acked_them() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = AuditConfig { segment_bytes: 4000, retain_secs: 0, replay_secs: 0, replicated: true, ..AuditConfig::default() };
    let (mut log, _) = AuditLog::open_with(&state, "n", &cfg, &mut |_| {}).unwrap();
    for i in 0..60 {
        log.append(&note(format!("{i}{}", "p".repeat(200)))).unwrap();
    }
    let segs = medic::audit::segments::list(&state).unwrap();
    assert!(segs.len() >= 4, "{segs:?}");
    for s in &segs[1..] {
        let first = medic::audit::segments::first_record(&s.path).unwrap().unwrap();
        assert_eq!(first.kind, "audit_checkpoint", "{}", s.path.display());
    }
    let o = verify_cmd(&state, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = run(&["audit", "show", "--json", "--state-dir", state.to_str().unwrap()]);
    let shown: Vec<u64> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["seq"].as_u64().unwrap()).collect();
    assert_eq!(shown, (1..=log.last_seq()).collect::<Vec<_>>());
    // Nothing acknowledged: nothing removed.
    let later = medic::audit::now_ms() + 120_000;
    log.check(later).unwrap();
    assert_eq!(medic::audit::segments::list(&state).unwrap().len(), segs.len());
    // The broker acknowledged the first segment: it goes, and that is recorded.
    let first_last = segs[0].last.unwrap();
    std::fs::write(state.join("forward.cursor"), format!("{first_last}\n")).unwrap();
    log.check(later + 120_000).unwrap();
    let now = medic::audit::segments::list(&state).unwrap();
    assert_eq!(now.len(), segs.len() - 1);
    assert!(!segs[0].path.exists());
    let mut removed = None;
    medic::audit::verify::for_each_record(&state, |r| {
        let r = r.unwrap();
        if r["kind"] == "audit_segment_removed" {
            removed = Some(r);
        }
    })
    .unwrap();
    assert_eq!(removed.expect("removal recorded")["last_seq"].as_u64(), Some(first_last));
    drop(log);
    let o = verify_cmd(&state, &[]);
    assert!(o.status.success(), "a log whose first segments were removed still verifies: {}", text(&o));
}

/// Start reads only the suffix covering `replay_secs`; an open breaker from before it still
/// holds after a restart (carried by the checkpoint that starts each segment).
#[test]
fn an_open_breaker_survives_a_restart_that_replays_only_the_last_segment() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = AuditConfig { segment_bytes: 3000, replay_secs: 0, ..AuditConfig::default() };
    {
        let (mut log, _) = AuditLog::open_with(&state, "n", &cfg, &mut |_| {}).unwrap();
        log.append(&escalated("pb", "a.service")).unwrap();
        for i in 0..40 {
            log.append(&note(format!("{i}{}", "p".repeat(200)))).unwrap();
        }
    }
    let mut replayed = 0;
    let (log, _) = AuditLog::open_with(&state, "n", &cfg, &mut |_| replayed += 1).unwrap();
    assert!(replayed < 20, "only the last segment is replayed ({replayed} records)");
    let b = log.breaker_records();
    assert_eq!(b.len(), 1, "{b:?}");
    assert!(matches!(&b[0].record, Ok(Record::Action(a)) if a.action.target == "a.service"), "{b:?}");
}

/// The state dir and its files were created with the umask's modes (0777 dirs and 0666 files
/// with umask 0), and a lock file another user made in a dir they could write kept medic out.
#[test]
fn state_dir_and_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let nobody = crate::util::Nobody::new();
    let state = nobody.home.path().join("state");
    let o = std::process::Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "sh", "-c"])
        .arg(format!("umask 0; exec {} run --once --state-dir {}", env!("CARGO_BIN_EXE_medic"), state.display()))
        .env("HOME", nobody.home.path())
        .current_dir(nobody.home.path())
        .output()
        .unwrap();
    assert!(state.join("audit.log").exists(), "{}", text(&o));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&state), 0o700);
    for f in ["audit.log", "audit.lock", "audit.anchor"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
        assert_eq!(std::fs::metadata(state.join(f)).unwrap().uid(), 65534);
    }
    // A state dir that belongs to someone else is refused (root runs this part).
    let o = run(&["run", "--once", "--state-dir", state.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("unsafe") && text(&o).contains("owned by uid 65534"), "{}", text(&o));
    // A world-writable dir of root's, where nobody made the lock file and holds it.
    let open = tempfile::tempdir().unwrap();
    std::fs::set_permissions(open.path(), PermissionsExt::from_mode(0o777)).unwrap();
    let lock = open.path().join("audit.lock");
    let mut holder = std::process::Command::new("setpriv")
        .args(["--reuid", "nobody", "--regid", "nogroup", "--clear-groups", "flock", "-o", lock.to_str().unwrap(), "sleep", "20"])
        .spawn()
        .unwrap();
    assert!(crate::util::wait_until(10, || lock.exists()));
    std::thread::sleep(std::time::Duration::from_millis(200));
    let o = run(&["run", "--once", "--state-dir", open.path().to_str().unwrap()]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(mode(open.path()), 0o700);
    assert_eq!(std::fs::metadata(&lock).unwrap().uid(), 0, "the lock file is the agent's own");
}

/// The child side of the `kill -9` test: appends records over 1 MiB through the audit API until
/// killed. A no-op unless the parent test set `MEDIC_AUDIT_CHILD_DIR`.
#[test]
fn kill9_child_writer() {
    let Some(dir) = std::env::var_os("MEDIC_AUDIT_CHILD_DIR") else { return };
    let (mut log, _) = AuditLog::open_with(Path::new(&dir), "n", &kill9_cfg(), &mut |_| {}).unwrap();
    for i in 0u64.. {
        let size = (1 << 20) + (i as usize * 7919) % (128 << 10);
        log.append(&note(format!("{i}{}", "r".repeat(size)))).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn kill9_cfg() -> AuditConfig {
    AuditConfig { segment_bytes: 3 << 20, replay_secs: 0, ..AuditConfig::default() }
}

/// Real `kill -9` at random moments of a writer of records over 1 MiB: every restart opens
/// the log (tail repaired and recorded), the chain verifies at the end, no seq is reused, and
/// the agent itself starts on it. `bench/audit_kill9.sh` runs more cycles.
#[test]
fn kill_9_at_random_moments_never_stops_the_log_from_opening() {
    kill9_cycles("audit::kill9_child_writer");
}

/// The child side of the batch `kill -9` test: commits batches of 1 to 300 records (a few of
/// them over 100 KiB, so one batch's write takes a while) until killed.
#[test]
fn kill9_child_batch_writer() {
    let Some(dir) = std::env::var_os("MEDIC_AUDIT_CHILD_DIR") else { return };
    let (mut log, _) = AuditLog::open_with(Path::new(&dir), "n", &kill9_cfg(), &mut |_| {}).unwrap();
    for i in 0u64.. {
        let n = 1 + (i as usize * 7919) % 300;
        let recs: Vec<_> = (0..n).map(|j| note(format!("{i}.{j}{}", "b".repeat(if j % 50 == 0 { 100 << 10 } else { 300 })))).collect();
        log.append_batch(&recs, medic::audit::now_ms()).unwrap();
    }
}

/// Real `kill -9` at random moments of a writer of batches (group commit: one write and one
/// fsync per batch), most often while a batch's write is under way: every restart opens the
/// log (a partly written batch repaired as any torn tail), the chain verifies, no seq is
/// reused, and the agent starts on it.
#[test]
fn kill_9_during_batches_leaves_a_log_that_verifies() {
    kill9_cycles("audit::kill9_child_batch_writer");
}

fn kill9_cycles(child_test: &str) {
    let cycles: u64 = std::env::var("MEDIC_KILL9_CYCLES").ok().and_then(|s| s.parse().ok()).unwrap_or(20);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut seed = medic::audit::now_ms() as u64 | 1;
    let mut torn = 0;
    for _ in 0..cycles {
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
            .env("MEDIC_AUDIT_CHILD_DIR", &state)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let start = medic::audit::anchor::read(&state).map_or(0, |a| a.seq);
        assert!(crate::util::wait_until(60, || medic::audit::anchor::read(&state).is_ok_and(|a| a.seq > start + 1)));
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        if seed >> 63 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5 + (seed >> 33) % 150));
        } else {
            // As soon as the file grows: most likely in the middle of a record's write.
            let len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            let (log, t) = (state.join("audit.log"), std::time::Instant::now());
            let l0 = len(&log);
            while len(&log) == l0 && t.elapsed() < std::time::Duration::from_secs(10) {}
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let (log, t) = AuditLog::open_with(&state, "n", &kill9_cfg(), &mut |_| {}).expect("the log opens after kill -9");
        torn += t.is_some() as u32;
        drop(log);
    }
    eprintln!("{cycles} kill -9 cycles, {torn} torn tails repaired");
    let o = verify_cmd(&state, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let mut seen = std::collections::BTreeSet::new();
    medic::audit::verify::for_each_record(&state, |r| assert!(seen.insert(r.unwrap()["seq"].as_u64().unwrap()), "seq reused")).unwrap();
    run_once(&state, None);
}

/// Regression: `audit show --playbook X` missed X's breaker resets, whose `playbook` was a bare
/// name where every other kind has `{name, sha256}`. A reset is now written in that shape (the
/// hash of the version loaded), and one in 0.1.0's bare-name shape is still read and listed.
#[test]
fn audit_show_playbook_lists_its_breaker_reset() {
    let dir = tempfile::tempdir().unwrap();
    let (state, pbs) = (dir.path().join("state"), dir.path().join("pb"));
    std::fs::create_dir_all(&pbs).unwrap();
    std::fs::write(pbs.join("always.rhai"), ALWAYS).unwrap();
    {
        let (mut log, _) = AuditLog::open(&state, "n").unwrap();
        log.append(&escalated("always", "x.service")).unwrap();
    }
    let cfg_path = dir.path().join("medic.toml");
    std::fs::write(&cfg_path, "node = \"n\"\n").unwrap();
    let (cfg, _) = medic::config::Config::load(Some(&cfg_path)).unwrap();
    let mut agent = medic::daemon::Agent::start(&cfg, Some(pbs), state.clone()).unwrap();
    let peer = medic::control::Peer { uid: 0, gid: 0, pid: std::process::id() as i32 };
    let req = medic::control::Request::ResetBreaker {
        playbook: "always".into(),
        action: "restart_unit".into(),
        target: "x.service".into(),
        reason: "fixed by hand".into(),
    };
    let r = agent.control(req, &peer);
    assert!(r.ok, "{r:?}");
    agent.stop("test").unwrap();
    let reset = audit_lines(&state).into_iter().find(|r| r["kind"] == "breaker_reset").unwrap();
    assert_eq!(reset["playbook"]["name"], "always", "{reset}");
    assert_eq!(reset["playbook"]["sha256"].as_str().map(str::len), Some(64), "the loaded version's hash: {reset}");

    // A breaker reset as 0.1.0 wrote it (`playbook` a bare name), chained onto the log.
    let lines = audit_lines(&state);
    let last = lines.last().unwrap();
    let mut old = serde_json::json!({
        "schema": "medic.audit/v1", "seq": last["seq"].as_u64().unwrap() + 1, "id": "0190b7a0-0000-7000-8000-000000000000",
        "ts": medic::audit::now_rfc3339(medic::audit::now_ms()), "node": "n", "kind": "breaker_reset",
        "prev_hash": last["hash"], "playbook": "old", "action": "restart_unit", "target": "y.service", "actor": "uid 0", "reason": "r",
    });
    let hash = medic::audit::record_hash(old.as_object().unwrap());
    old["hash"] = hash.into();
    append_raw(&state, format!("{}\n", medic::audit::canonical(&old)).as_bytes());
    let o = verify_cmd(&state, &[]);
    assert!(o.status.success(), "{}", text(&o));

    let s = state.to_str().unwrap();
    for (pb, target) in [("always", "x.service"), ("old", "y.service")] {
        let o = run(&["audit", "show", "--state-dir", s, "--playbook", pb, "--json"]);
        let shown: Vec<Value> = String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(shown.iter().any(|r| r["kind"] == "breaker_reset" && r["target"] == target), "--playbook {pb}: {shown:?}");
        let o = run(&["audit", "show", "--state-dir", s, "--playbook", pb]);
        assert!(text(&o).contains(&format!("breaker_reset      {pb}")), "{}", text(&o));
    }
}
