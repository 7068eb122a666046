//! Maintenance windows and a playbook's own breaker, with a live agent: during a
//! `[[maintenance]]` window a live request is `suppressed` by the `maintenance` rule (`medic
//! status` and `medic explain` show the window and its end), after it the request runs, and a
//! playbook whose breaker opens after 2 runs escalates before one left with the node's 3. And
//! `medic playbook test --config` gates the cases with the config's windows.

use crate::util::{medic, playbook_src, repo, run, status_json, text, wait_until, write_config, write_playbooks, Reaped};
use std::time::{Duration, SystemTime};

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn actions(state: &std::path::Path) -> Vec<serde_json::Value> {
    crate::util::audit_lines(state).into_iter().filter(|r| r["kind"] == "action").collect()
}

fn cleaner(name: &str, dir: &std::path::Path, breaker: &str) -> String {
    let src = playbook_src(
        name,
        "#{ kind: \"clean_files\", target: \"*\" }",
        "100",
        "0s",
        &format!("clean_files(\"{}\", #{{ glob: \"*.gz\", older_than: \"7d\" }}, \"cleanup\");", dir.display()),
    );
    src.replacen("cooldown: \"0s\"", &format!("cooldown: \"0s\"{breaker}"), 1)
}

#[test]
fn a_live_request_in_a_window_is_suppressed_then_runs_after_it_and_a_playbook_breaker_opens_first() {
    let dir = tempfile::tempdir().unwrap();
    let (state, sock) = (dir.path().join("state"), dir.path().join("c.sock"));
    let (tight, loose) = (dir.path().join("allowed/tight"), dir.path().join("allowed/loose"));
    for d in [&tight, &loose] {
        std::fs::create_dir_all(d).unwrap();
        let f = d.join("old.log.gz");
        std::fs::write(&f, vec![b'x'; 4096]).unwrap();
        let st = std::process::Command::new("touch").arg("-d").arg("10 days ago").arg(&f).status().unwrap();
        assert!(st.success(), "touch (coreutils) sets the file's mtime");
    }
    let pbs = write_playbooks(
        dir.path(),
        &[
            ("tight.rhai", cleaner("tight", &tight, ", breaker: #{ after: 2, within: \"10m\" }")),
            ("loose.rhai", cleaner("loose", &loose, "")),
        ],
    );
    // A one-off window that started a minute ago and ends in 20 s.
    let now = SystemTime::now();
    let end = now + Duration::from_secs(20);
    let cfg = write_config(
        dir.path(),
        &format!(
            "[control]\nsocket = \"{}\"\n[policy]\nallowed_paths = [\"{}\"]\n[[maintenance]]\nname = \"deploy\"\nstart = \"{}\"\nend = \"{}\"\n",
            sock.display(),
            dir.path().join("allowed").display(),
            rfc3339(now - Duration::from_secs(60)),
            rfc3339(end)
        ),
    );
    let agent = Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--state-dir", state.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let s = sock.to_str().unwrap();
    assert!(wait_until(15, || status_json(&sock).is_object()), "the agent answers");
    let o = run(&["mode", "live", "--reason", "maintenance test", "--socket", s]);
    assert!(o.status.success(), "{}", text(&o));
    // Live, in the window: suppressed by `maintenance`, naming the window and its end; nothing deleted.
    assert!(wait_until(15, || actions(&state).iter().any(|a| a["mode"] == "live" && a["rule"] == "maintenance")));
    assert!(SystemTime::now() < end, "the agent took too long to start for the window");
    let held = actions(&state).into_iter().find(|a| a["mode"] == "live" && a["rule"] == "maintenance").unwrap();
    assert_eq!(held["decision"], "suppressed", "{held}");
    assert!(held["detail"].as_str().unwrap_or_default().contains("\"deploy\""), "{held}");
    assert!(tight.join("old.log.gz").exists() && loose.join("old.log.gz").exists());
    let st = status_json(&sock);
    let w = &st["maintenance"][0];
    assert_eq!((w["name"].as_str(), w["active"].as_bool()), (Some("deploy"), Some(true)), "{st}");
    assert!(w["until"].as_str().is_some_and(|u| u.starts_with(&rfc3339(end)[..19])), "{w}");
    let o = run(&["status", "--socket", s]);
    assert!(text(&o).contains("deploy") && text(&o).contains("ACTIVE until"), "{}", text(&o));
    let o = run(&["explain", "--json", "--socket", s, "tight"]);
    let ex: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|_| panic!("{}", text(&o)));
    let m = ex["blocked_by"].as_array().unwrap().iter().find(|c| c["rule"] == "maintenance").cloned().unwrap_or_else(|| panic!("{ex}"));
    assert!(m["until"].as_str().is_some_and(|u| u.starts_with(&rfc3339(end)[..19])), "{m}");
    assert_eq!(ex["breaker"]["after"], 2, "{ex}");

    // After the window: it runs. The tight playbook escalates at its third request (2 runs), the
    // loose one only at its fourth (the node's 3).
    assert!(wait_until(40, || {
        let a = actions(&state);
        ["tight", "loose"].iter().all(|p| a.iter().any(|r| r["playbook"]["name"] == *p && r["decision"] == "escalated"))
    }));
    assert!(!tight.join("old.log.gz").exists(), "the first run after the window cleaned");
    let live_after: Vec<serde_json::Value> =
        actions(&state).into_iter().filter(|a| a["mode"] == "live" && a["rule"] != "maintenance").collect();
    let seq = |p: &str| -> Vec<String> {
        live_after
            .iter()
            .filter(|a| a["playbook"]["name"] == p && a["rule"] != "in_flight")
            .map(|a| a["decision"].as_str().unwrap_or_default().to_string())
            .take_while(|d| d != "suppressed")
            .collect()
    };
    assert_eq!(seq("tight"), ["executed", "executed", "escalated"], "{live_after:?}");
    assert_eq!(seq("loose"), ["executed", "executed", "executed", "escalated"], "{live_after:?}");
    assert_eq!(status_json(&sock)["maintenance"][0]["active"], false);
    assert!(agent.stop());
}

#[test]
fn playbook_test_with_a_config_window_holds_the_cases_requests_while_the_clock_is_inside() {
    let dir = tempfile::tempdir().unwrap();
    let pb = dir.path().join("pb");
    std::fs::create_dir_all(&pb).unwrap();
    std::fs::copy(repo().join("playbooks/examples/memory_restart_breaker.rhai"), pb.join("m.rhai")).unwrap();
    // Friday 21:56:30 UTC (high memory for 2.5 minutes at 21:59); the freeze starts at 22:00: one restart before it, held after.
    std::fs::write(
        pb.join("m.test.toml"),
        "[[case]]\nname = \"the freeze holds the restart\"\nstart = \"2026-11-27T21:56:30Z\"\nduration = \"30m\"\nexpect = [\n  { kind = \"restart_unit\", decision = \"would_execute\", min = 1, max = 1 },\n  { kind = \"restart_unit\", decision = \"suppressed\", rule = \"maintenance\", min = 1 },\n]\n[[case.timeline]]\nat = \"0s\"\nprocesses = [{ pid = 10, name = \"myapp\", unit = \"myapp.service\", rss_bytes = 900000000 }]\n",
    )
    .unwrap();
    let cfg = dir.path().join("medic.toml");
    std::fs::write(&cfg, "[[maintenance]]\nname = \"friday-freeze\"\ndays = [\"fri\"]\nfrom = \"22:00\"\nto = \"06:00\"\n").unwrap();
    let o = run(&["playbook", "test", "--config", cfg.to_str().unwrap(), pb.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("1 passed, 0 failed"), "{}", text(&o));
    // Without the window the same case sees no maintenance rule: the config is what held it.
    std::fs::write(&cfg, "").unwrap();
    let o = run(&["playbook", "test", "--config", cfg.to_str().unwrap(), pb.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("maintenance"), "{}", text(&o));
}
