//! Process trees and limits against real processes and a real agent (`medic run`, dry-run):
//! a zombie pile-up under a real parent is named by its pid in the audit record, and the counts
//! agree with `ps`; a real fd leaker near its real soft limit (`ulimit -Sn 256`) is asked a
//! signal by a playbook that writes no limit; and, over 1,000 real processes, every `fds`,
//! `fd_limit`, `ppid` and `state` medic reports agrees with /proc and `ps`.

use crate::util::{audit_lines, medic, playbook_src, run, text, wait_until, write_config, write_playbooks, Reaped};
use std::process::{Command, Stdio};

const PYTHON: &str = "/usr/bin/python3";

/// Children of `pid` by state letter, from `ps` (not from medic's own reading of /proc).
fn ps_children(pid: u32) -> Vec<(String, u32)> {
    let o = Command::new("ps").args(["-e", "-o", "stat=,ppid="]).output().expect("ps (procps; .ci/setup installs it)");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .filter(|(_, ppid)| *ppid == pid)
        .collect()
}

/// Runs an agent over `playbook` (dry-run, the default) until `done` holds on its audit log.
fn agent_until(playbook: String, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let pb = write_playbooks(dir.path(), &[("procs.rhai", playbook)]);
    let cfg = write_config(dir.path(), &format!("[control]\nsocket = \"{}\"\n", dir.path().join("c.sock").display()));
    let agent = Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--state-dir", state.to_str().unwrap(), "--playbooks", pb.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let ok = wait_until(60, || done(&audit_lines(&state)));
    assert!(agent.stop(), "the agent stopped cleanly");
    let lines = audit_lines(&state);
    assert!(ok, "the agent never recorded what was expected: {lines:#?}");
    lines
}

fn actions<'a>(lines: &'a [serde_json::Value], kind: &'a str, pid: u32) -> impl Iterator<Item = &'a serde_json::Value> {
    lines.iter().filter(move |r| {
        r["kind"] == "action"
            && r["action"]["kind"] == kind
            && (r["action"]["params"]["pid"] == pid || r["action"]["params"]["details"]["pid"] == pid)
    })
}

#[test]
fn a_zombie_pile_up_names_its_parent() {
    // A real parent that forks 60 children which exit at once, and never waits for them.
    let parent = Reaped(
        Command::new(PYTHON)
            .args(["-c", "import os, time\nfor _ in range(60):\n    if os.fork() == 0:\n        os._exit(0)\ntime.sleep(600)\n"])
            .spawn()
            .expect("/usr/bin/python3 (.ci/setup: apt-get install python3)"),
    );
    let pid = parent.0.id();
    assert!(wait_until(20, || ps_children(pid).iter().filter(|(s, _)| s.starts_with('Z')).count() == 60), "{:?}", ps_children(pid));

    let body = format!(
        "for p in node.processes(\"zombie_children\", \">=\", 50) {{\n  if p.pid == {pid} {{\n    let z = node.processes_in(\"Z\").to_array().filter(|c| c.ppid == p.pid).len();\n    notify(`${{p.name}} (pid ${{p.pid}}) is not reaping its children`, #{{ pid: p.pid, zombies: p.zombie_children, children: p.children, listed: z }});\n    signal_process(p.pid, \"TERM\", \"zombies\");\n  }}\n}}"
    );
    let src =
        playbook_src("zombies", "#{ kind: \"notify\", target: \"*\" }, #{ kind: \"signal_process\", target: \"*\" }", "100", "1h", &body);
    let lines = agent_until(src, |l| actions(l, "notify", pid).count() > 0 && actions(l, "signal_process", pid).count() > 0);

    let n = actions(&lines, "notify", pid).next().unwrap();
    assert_eq!(n["action"]["target"], format!("python3 (pid {pid}) is not reaping its children"));
    let d = &n["action"]["params"]["details"];
    let ps = ps_children(pid);
    let ps_zombies = ps.iter().filter(|(s, _)| s.starts_with('Z')).count();
    assert_eq!((d["zombies"].as_u64(), d["children"].as_u64(), d["listed"].as_u64()), (Some(60), Some(60), Some(60)), "{d}");
    assert_eq!((ps_zombies, ps.len()), (60, 60), "the signals agree with ps -o stat,ppid");
    // The trigger carries the reads that named it.
    assert_eq!(n["trigger"]["signals"]["processes(zombie_children>=50)"], 1.0, "{}", n["trigger"]);
    assert!(n["trigger"]["signals"]["processes_in(Z)"].as_f64().is_some_and(|z| z >= 60.0), "{}", n["trigger"]);
    let s = actions(&lines, "signal_process", pid).next().unwrap();
    assert_eq!((s["decision"].as_str(), s["action"]["params"]["signal"].as_str()), (Some("would_execute"), Some("TERM")), "{s}");
    drop(parent);
}

/// The soft "Max open files" of a process as /proc/<pid>/limits shows it (the test's own reading).
fn limits_soft_nofile(pid: u32) -> Option<u64> {
    let t = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    t.lines().find(|l| l.starts_with("Max open files"))?.split_whitespace().nth(3)?.parse().ok()
}

fn fd_count(pid: u32) -> Option<u64> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64)
}

#[test]
fn an_fd_leaker_near_its_real_limit_is_signalled() {
    // Soft limit 256 by `ulimit -Sn`, then 240 fds open in all.
    let leaker = Reaped(
        Command::new("/bin/sh")
            .args(["-c", &format!("ulimit -Sn 256 && exec {PYTHON} -c 'import os, time\nwhile len(os.listdir(\"/proc/self/fd\")) < 241:\n    os.open(\"/dev/null\", os.O_RDONLY)\ntime.sleep(600)\n'")])
            .spawn()
            .unwrap(),
    );
    let pid = leaker.0.id();
    assert!(wait_until(20, || fd_count(pid) == Some(240)), "{:?}", fd_count(pid));
    assert_eq!(limits_soft_nofile(pid), Some(256));

    // No limit written: 90% of whatever the process's own limit is.
    let body = format!(
        "for p in node.processes(\"fds_pct\", \">\", 90) {{ if p.pid == {pid} {{ signal_process(p.pid, \"TERM\", `${{p.fds}} of ${{p.fd_limit}} fds (${{p.fds_pct}}%)`); }} }}"
    );
    let src = playbook_src("fds", "#{ kind: \"signal_process\", target: \"*\" }", "100", "1h", &body);
    let lines = agent_until(src, |l| actions(l, "signal_process", pid).count() > 0);
    let r = actions(&lines, "signal_process", pid).next().unwrap();
    assert_eq!(r["decision"], "would_execute", "{r}");
    assert_eq!(r["trigger"]["reason"], "240 of 256 fds (93.75%)", "{r}");
    assert_eq!(r["trigger"]["signals"]["processes(fds_pct>90)"], 1.0, "{r}");
    drop(leaker);
}

#[test]
fn fds_limits_parents_and_states_agree_with_procfs_and_ps_over_1000_processes() {
    // 1,000 real children, child i holding i % 40 extra fds under a soft limit of 512 + i % 7,
    // each killed with its parent (PR_SET_PDEATHSIG).
    let script = "import ctypes, os, resource, sys, time\nlibc = ctypes.CDLL(None)\nfor i in range(1000):\n    if os.fork() == 0:\n        libc.prctl(1, 9)\n        resource.setrlimit(resource.RLIMIT_NOFILE, (512 + i % 7, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))\n        for _ in range(i % 40):\n            os.open('/dev/null', os.O_RDONLY)\n        time.sleep(600)\n        os._exit(0)\nprint('ready', flush=True)\ntime.sleep(600)\n";
    let parent = Reaped(Command::new(PYTHON).args(["-c", script]).stdout(Stdio::null()).spawn().unwrap());
    let pid = parent.0.id();
    assert!(wait_until(60, || ps_children(pid).len() == 1000), "{} children", ps_children(pid).len());
    // Every child settled: its extra fds open (they sleep once done).
    std::thread::sleep(std::time::Duration::from_secs(2));

    let o = run(&["signals", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let snap: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let procs = snap["processes"].as_array().unwrap();
    let ps = Command::new("ps").args(["-e", "-o", "pid=,ppid=,stat="]).output().unwrap();
    let ps: std::collections::HashMap<u64, (u64, char)> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((f.first()?.parse().ok()?, (f.get(1)?.parse().ok()?, f.get(2)?.chars().next()?)))
        })
        .collect();
    let mine: Vec<&serde_json::Value> = procs.iter().filter(|p| p["ppid"] == pid).collect();
    assert_eq!(mine.len(), 1000, "every child seen with its parent");
    let mut checked = 0;
    for p in &mine {
        let child = p["pid"].as_u64().unwrap() as u32;
        assert_eq!(p["fds"].as_u64(), fd_count(child), "fds of {child}");
        assert_eq!(p["fd_limit"].as_u64(), limits_soft_nofile(child), "fd_limit of {child}");
        let (ppid, stat) = ps[&(child as u64)];
        assert_eq!((p["ppid"].as_u64(), p["state"].as_str()), (Some(ppid), Some(stat.to_string().as_str())), "ps for {child}");
        checked += 1;
    }
    assert_eq!(checked, 1000);
    // The tree as `medic signals --json` shows it: the parent's children, and each child's fds_pct.
    let me = procs.iter().find(|p| p["pid"] == pid).expect("the parent is listed");
    assert_eq!(me["children"].as_u64(), Some(1000), "{me}");
    for p in &mine {
        let want = p["fds"].as_f64().unwrap() * 100.0 / p["fd_limit"].as_f64().unwrap();
        assert!((p["fds_pct"].as_f64().unwrap() - want).abs() < 1e-9, "{p}");
    }
    // The spread is real: not every child has the same count or limit.
    let distinct = |f: &str| mine.iter().map(|p| p[f].as_u64()).collect::<std::collections::BTreeSet<_>>().len();
    assert!(distinct("fds") >= 40 && distinct("fd_limit") == 7, "{} {}", distinct("fds"), distinct("fd_limit"));
    drop(parent);
}
