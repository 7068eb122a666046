//! `medic explain` against a running agent: the cooldown that holds a playbook that fired once
//! (with the time left), the values read by one that did not fire, and a target the manifest
//! does not allow.

use crate::util::{medic, playbook_src, run, text, wait_until, write_config, write_playbooks, Reaped};

fn explain(sock: &std::path::Path, args: &[&str]) -> Vec<serde_json::Value> {
    let mut a = vec!["explain", "--json", "--socket", sock.to_str().unwrap()];
    a.extend_from_slice(args);
    let o = run(&a);
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect()
}

#[test]
fn explain_names_the_cooldown_of_a_playbook_that_fired_and_the_reads_of_one_that_did_not() {
    let dir = tempfile::tempdir().unwrap();
    let (state, sock) = (dir.path().join("state"), dir.path().join("c.sock"));
    let fired = playbook_src(
        "fired-once",
        "#{ kind: \"notify\", target: \"*\" }",
        "10",
        "1h",
        "if node.value(\"mem.total_bytes\") > 0 { notify(\"memory seen\"); }",
    );
    let quiet = playbook_src(
        "quiet",
        "#{ kind: \"notify\", target: \"*\" }",
        "10",
        "1m",
        "let used = node.value(\"mem.used_pct\");\nlet total = node.value(\"mem.total_bytes\");\nif used > 1000.0 { notify(\"impossible\"); }",
    );
    let pb = write_playbooks(dir.path(), &[("fired.rhai", fired), ("quiet.rhai", quiet)]);
    let cfg = write_config(dir.path(), &format!("[control]\nsocket = \"{}\"\n", sock.display()));
    let agent = Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--state-dir", state.to_str().unwrap(), "--playbooks", pb.to_str().unwrap()])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Two evaluations of each: the first notify executed, the second suppressed by the cooldown.
    assert!(wait_until(30, || {
        let o = run(&["explain", "--json", "--socket", sock.to_str().unwrap(), "fired-once"]);
        let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        p["requests"].as_array().is_some_and(|r| r.iter().any(|r| r["rule"] == "cooldown"))
    }));
    let fired = explain(&sock, &["fired-once"]).remove(0);
    assert_eq!(fired["playbook"], "fired-once");
    assert!(fired["last_evaluated"].is_string() && fired["next_due"].is_string(), "{fired}");
    let cd = fired["blocked_by"].as_array().unwrap().iter().find(|b| b["rule"] == "cooldown").cloned().unwrap_or_else(|| panic!("{fired}"));
    assert_eq!(cd["kind"], "notify");
    assert_eq!(cd["target"], "memory seen");
    assert!(cd["detail"].as_str().unwrap().contains("left"), "{cd}");
    let until = humantime::parse_rfc3339(cd["until"].as_str().unwrap()).unwrap();
    let left = until.duration_since(std::time::SystemTime::now()).unwrap().as_secs();
    assert!((3500..=3600).contains(&left), "cooldown clears in {left}s: {cd}");
    let r = &fired["requests"][0];
    assert_eq!((r["decision"].as_str(), r["rule"].as_str()), (Some("suppressed"), Some("cooldown")), "{fired}");
    assert!(fired["reads"].as_array().unwrap().iter().any(|r| r["key"] == "mem.total_bytes" && r["value"].as_f64() > Some(0.0)), "{fired}");

    let quiet = explain(&sock, &["quiet"]).remove(0);
    assert_eq!(quiet["asked_nothing"], true, "{quiet}");
    assert!(quiet["requests"].as_array().unwrap().is_empty());
    let keys: Vec<&str> = quiet["reads"].as_array().unwrap().iter().filter_map(|r| r["key"].as_str()).collect();
    assert_eq!(keys, ["mem.total_bytes", "mem.used_pct"], "{quiet}");
    let used = quiet["reads"][1]["value"].as_f64().expect("a value");
    assert!((0.0..=100.0).contains(&used));

    // A target outside the manifest is blocked by it; every playbook is listed without a name.
    let all = explain(&sock, &[]);
    assert_eq!(all.len(), 2);
    let o = run(&["explain", "--socket", sock.to_str().unwrap(), "fired-once"]);
    assert!(text(&o).contains("blocked now: notify memory seen by cooldown"), "{}", text(&o));
    let o = run(&["explain", "--socket", sock.to_str().unwrap(), "no-such"]);
    assert!(!o.status.success() && text(&o).contains("no playbook \"no-such\" is loaded"), "{}", text(&o));
    assert!(agent.stop());
}
