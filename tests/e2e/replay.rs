//! The flight recorder and `medic playbook replay`: an agent records what it samples; replaying
//! its own playbook over the recording gives back the `would_execute` decisions it recorded live
//! (same order, same targets, each within its tick); a playbook that was not loaded lists what
//! it would have done, at times inside the recording; a stretch exported to one file replays the
//! same elsewhere; a case cut from it passes `playbook test`.

use crate::util::{audit_lines, medic, playbook_src, run, text, write_config, write_playbooks, Reaped};

fn replay(args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["playbook", "replay", "--json"];
    a.extend_from_slice(args);
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect()
}

fn ms(rfc: &str) -> i64 {
    humantime::parse_rfc3339(rfc).unwrap().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

#[test]
fn replay_reproduces_the_live_decisions_and_shows_what_an_unloaded_playbook_would_have_done() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // Asks every second: would_execute, then the cooldown, and after three runs the breaker.
    let loaded = playbook_src(
        "pressure",
        "#{ kind: \"restart_unit\", target: \"replay-*.service\" }",
        "100",
        "2s",
        "if node.value(\"mem.total_bytes\") > 0 { restart_unit(\"replay-a.service\", \"memory seen\"); }",
    );
    let pb = write_playbooks(dir.path(), &[("pressure.rhai", loaded)]);
    let cfg = write_config(
        dir.path(),
        &format!(
            "[control]\nsocket = \"{}\"\n[policy]\nallowed_units = [\"replay-*\"]\nbreaker_after = 3\nbreaker_window_secs = 3600\n[audit]\nrepeat_window_secs = 0\n[recorder]\nflush_secs = 1\n",
            dir.path().join("c.sock").display()
        ),
    );
    let cfg_s = cfg.to_str().unwrap();
    let agent = Reaped(
        medic()
            .args(["run", "--config", cfg_s, "--state-dir", state.to_str().unwrap(), "--playbooks", pb.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let escalated = || audit_lines(&state).iter().any(|r| r["decision"] == "escalated");
    assert!(crate::util::wait_until(60, escalated), "the breaker never opened");
    std::thread::sleep(std::time::Duration::from_secs(2));
    // Readable while the agent runs.
    let during = replay(&["--state-dir", state.to_str().unwrap(), "--config", cfg_s, pb.to_str().unwrap()]);
    assert!(!during.is_empty(), "nothing replayed while the agent runs");
    assert!(agent.stop());

    let live: Vec<serde_json::Value> = audit_lines(&state).into_iter().filter(|r| r["kind"] == "action").collect();
    let replayed = replay(&["--state-dir", state.to_str().unwrap(), "--config", cfg_s, pb.to_str().unwrap()]);
    let key = |d: &serde_json::Value, pb: &serde_json::Value| {
        (pb.as_str().unwrap_or_default().to_string(), d["decision"].as_str().unwrap().to_string(), d["rule"].as_str().unwrap().to_string())
    };
    let live_keys: Vec<_> = live.iter().map(|r| key(r, &r["playbook"]["name"])).collect();
    let replay_keys: Vec<_> = replayed.iter().map(|d| key(d, &d["playbook"])).collect();
    assert!(live_keys.iter().filter(|k| k.1 == "would_execute").count() >= 2, "{live_keys:?}");
    assert!(live_keys.iter().any(|k| k.1 == "escalated"), "the breaker opened live: {live_keys:?}");
    // The stop can land between a tick's frame reaching the recorder and its records reaching
    // the log (nothing runs then: actions start only after the commit), so the replay may hold
    // that one last tick more; everything before it matches, in order.
    let extra = replay_keys.len().saturating_sub(live_keys.len());
    assert!(
        extra <= 1 && replay_keys[..replay_keys.len() - extra] == live_keys[..],
        "replay gives back the live decisions, in order: {replay_keys:?} vs {live_keys:?}"
    );
    for (r, d) in live.iter().zip(&replayed) {
        assert_eq!(r["action"]["target"], d["target"]);
        let lag = ms(r["ts"].as_str().unwrap()) - ms(d["ts"].as_str().unwrap());
        assert!((0..1000).contains(&lag), "recorded {lag} ms after the sample it was decided on");
    }

    // A playbook that was not loaded: what it would have done, inside the recording.
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let unloaded = playbook_src(
        "would-have",
        "#{ kind: \"restart_unit\", target: \"replay-*.service\" }",
        "100",
        "3s",
        "let used = node.value(\"mem.used_pct\");\nif used >= 0.0 { restart_unit(\"replay-b.service\", `memory at ${used}%`); }",
    );
    std::fs::write(other.join("would_have.rhai"), &unloaded).unwrap();
    let first = ms(live.first().unwrap()["ts"].as_str().unwrap()) - 1000;
    let last = ms(live.last().unwrap()["ts"].as_str().unwrap()) + 1000;
    let new = replay(&["--state-dir", state.to_str().unwrap(), "--config", cfg_s, other.join("would_have.rhai").to_str().unwrap()]);
    assert!(new.iter().any(|d| d["decision"] == "would_execute" && d["target"] == "replay-b.service"), "{new:?}");
    for d in &new {
        assert_eq!(d["playbook"], "would-have");
        let t = ms(d["ts"].as_str().unwrap());
        assert!((first..=last).contains(&t), "{d} outside the recording");
    }

    // Exported to one file, replayed as if elsewhere: the same decisions.
    let file = dir.path().join("incident.mrec");
    let o = run(&["recording", "export", "--state-dir", state.to_str().unwrap(), "--config", cfg_s, "--output", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let again = replay(&["--recording", file.to_str().unwrap(), "--config", cfg_s, pb.to_str().unwrap()]);
    assert_eq!(again, replayed);

    // A case cut from the stretch passes `playbook test`.
    let case = other.join("would_have.test.toml");
    let o = run(&[
        "playbook",
        "replay",
        "--recording",
        file.to_str().unwrap(),
        "--config",
        cfg_s,
        "--save-case",
        case.to_str().unwrap(),
        other.join("would_have.rhai").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let cut = std::fs::read_to_string(&case).unwrap();
    assert!(cut.contains("mem.used_pct") && cut.contains("replay-b.service"), "{cut}");
    let o = run(&["playbook", "test", "--config", cfg_s, other.join("would_have.rhai").to_str().unwrap()]);
    assert!(o.status.success(), "{}\n{cut}", text(&o));
}

/// Replay says plainly when there is nothing to replay, and refuses a recording that is not one.
#[test]
fn replay_of_no_recording_or_a_bad_one_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(&["playbook", "replay", "--recording", dir.path().join("none").to_str().unwrap(), "bundled"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("none"), "{}", text(&o));
    let bad = dir.path().join("bad.mrec");
    std::fs::write(&bad, b"not a recording at all").unwrap();
    let o = run(&["playbook", "replay", "--recording", bad.to_str().unwrap(), "bundled"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("bad.mrec"), "{}", text(&o));
}
