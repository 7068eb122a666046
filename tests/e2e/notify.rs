//! systemd's notify protocol and the unclean-end record, against the real `medic run` on the
//! host: the test binds the NOTIFY_SOCKET datagram socket itself, as systemd does, and reads
//! what the agent sends; real SIGSTOP/SIGCONT/SIGHUP/SIGTERM and a real `kill -9`.

use crate::util::{audit_lines, medic, playbook_src, text, wait_until, write_config, write_playbooks, Reaped};
use rustix::process::{kill_process, Signal};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// A playbook that asks for a restart every tick: in dry-run, a `would_execute` decision.
fn demo_playbooks(dir: &Path) -> PathBuf {
    let src = playbook_src(
        "notify-demo",
        "#{ kind: \"restart_unit\", target: \"demo.service\" }",
        "100",
        "1s",
        "restart_unit(\"demo.service\", \"notify test\");",
    );
    write_playbooks(dir, &[("demo.rhai", src)])
}

fn spawn(dir: &Path, state: &Path, env: &[(&str, &str)]) -> Reaped {
    let cfg = write_config(dir, &format!("[control]\nsocket = \"{}\"\n[signals.ebpf]\nenabled = false\n", dir.join("c.sock").display()));
    let pbs = demo_playbooks(dir);
    let mut c = medic();
    c.args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stderr(std::fs::File::create(dir.join("stderr")).unwrap());
    for (k, v) in env {
        c.env(k, v);
    }
    Reaped(c.spawn().unwrap())
}

/// The service manager's end of the socket.
struct Manager(UnixDatagram);

impl Manager {
    /// The next datagram within `secs`, or None.
    fn next(&self, secs: u64) -> Option<String> {
        self.0.set_read_timeout(Some(Duration::from_secs(secs))).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = self.0.recv(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Reads until a datagram has a line starting with `what` (within `secs` each), returning
    /// it and what came before it.
    fn until(&self, what: &str, secs: u64) -> (String, Vec<String>) {
        let mut before = Vec::new();
        while let Some(m) = self.next(secs) {
            if m.lines().any(|l| l.starts_with(what)) {
                return (m, before);
            }
            before.push(m);
        }
        panic!("no {what} within {secs} s; got {before:?}");
    }

    /// Drops what is queued.
    fn drain(&self) -> Vec<String> {
        self.0.set_nonblocking(true).unwrap();
        let mut buf = vec![0u8; 4096];
        let mut out = Vec::new();
        while let Ok(n) = self.0.recv(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        self.0.set_nonblocking(false).unwrap();
        out
    }
}

fn seq_in_status(m: &str) -> u64 {
    let s = m.lines().find_map(|l| l.strip_prefix("STATUS=")).unwrap_or_else(|| panic!("no STATUS in {m:?}"));
    let seq = s.split("last seq ").nth(1).and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next()).unwrap_or("");
    seq.parse().unwrap_or_else(|_| panic!("no seq in {s:?}"))
}

#[test]
fn notify_ready_status_watchdog_sigstop_reload_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sock = dir.path().join("notify");
    let mgr = Manager(UnixDatagram::bind(&sock).unwrap());
    let agent = spawn(dir.path(), &state, &[("NOTIFY_SOCKET", sock.to_str().unwrap()), ("WATCHDOG_USEC", "4000000")]);
    let stderr = || std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default();

    // READY=1 only once the first tick's decision is in the log, with mode and seq.
    let (ready, before) = mgr.until("READY=1", 30);
    let recs = audit_lines(&state);
    let decided = recs.iter().find(|r| r["kind"] == "action").unwrap_or_else(|| panic!("READY=1 before the first decision: {recs:?}"));
    assert_eq!(decided["decision"], "would_execute");
    assert!(before.iter().all(|m| !m.contains("READY=1")));
    assert!(ready.contains("STATUS=mode dry-run; last seq "), "{ready:?}");
    let seq = seq_in_status(&ready);
    assert!(seq >= decided["seq"].as_u64().unwrap(), "{ready:?} vs {decided}");
    assert!(stderr().contains("Watchdog on"), "{}", stderr());

    // WATCHDOG=1 per completed tick.
    for _ in 0..3 {
        mgr.until("WATCHDOG=1", 5);
    }

    // A stopped process feeds nothing: no WATCHDOG=1 while it is stopped (systemd would kill it).
    kill_process(agent.pid(), Signal::STOP).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    mgr.drain();
    let during = mgr.next(3);
    assert_eq!(during, None, "a datagram from a stopped agent");
    kill_process(agent.pid(), Signal::CONT).unwrap();
    mgr.until("WATCHDOG=1", 5);

    // A mode change shows in STATUS= at the next tick, with its expiry.
    let o = medic()
        .args(["mode", "live", "--ttl", "1m", "--reason", "notify test", "--socket", dir.path().join("c.sock").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let (st, _) = mgr.until("STATUS=mode live until ", 5);
    assert!(st.contains(", then dry-run; last seq "), "{st:?}");

    // SIGHUP: RELOADING=1 with the monotonic time, then READY=1 again.
    kill_process(agent.pid(), Signal::HUP).unwrap();
    let (reloading, _) = mgr.until("RELOADING=1", 5);
    let usec: u64 = reloading.lines().find_map(|l| l.strip_prefix("MONOTONIC_USEC=")).expect("MONOTONIC_USEC").parse().unwrap();
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    assert!(usec <= now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000);
    mgr.until("READY=1", 5);

    // SIGTERM: STOPPING=1, then an orderly stop.
    kill_process(agent.pid(), Signal::TERM).unwrap();
    mgr.until("STOPPING=1", 5);
    assert!(agent.stop(), "a clean exit");
    assert_eq!(audit_lines(&state).last().unwrap()["kind"], "agent_stopped");
}

#[test]
fn no_notify_socket_means_no_notifications_and_no_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // WATCHDOG_USEC alone (no socket) must not turn anything on.
    let agent = spawn(dir.path(), &state, &[("WATCHDOG_USEC", "1000000")]);
    assert!(wait_until(30, || audit_lines(&state).iter().any(|r| r["kind"] == "action")));
    assert!(agent.stop());
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(!err.contains("Watchdog") && !err.contains("notification"), "{err}");
}

#[test]
fn watchdog_shorter_than_two_intervals_is_warned_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let sock = dir.path().join("notify");
    let mgr = Manager(UnixDatagram::bind(&sock).unwrap());
    // 1 s ticks against a 1.5 s watchdog: more than half.
    let agent = spawn(dir.path(), &state, &[("NOTIFY_SOCKET", sock.to_str().unwrap()), ("WATCHDOG_USEC", "1500000")]);
    mgr.until("READY=1", 30);
    assert!(agent.stop());
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(err.contains("Watchdog cannot be kept fed") && err.contains("watchdog_interval"), "{err}");
}

#[test]
fn kill_9_is_recorded_as_an_unclean_end_at_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let once = |state: &Path| {
        let cfg = dir.path().join("medic.toml");
        let pbs = dir.path().join("pb");
        let o = medic()
            .args(["run", "--once", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir"])
            .arg(state)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        text(&o)
    };
    let started = |state: &Path| audit_lines(state).into_iter().rev().find(|r| r["kind"] == "agent_started").unwrap();

    // The first start: there was no previous run.
    let mut agent = spawn(dir.path(), &state, &[]);
    assert!(wait_until(30, || audit_lines(&state).iter().any(|r| r["kind"] == "action")));
    assert_eq!(started(&state)["previous_run"], serde_json::json!({ "ended": "none" }));
    let first_start = started(&state)["seq"].clone();

    // kill -9: no agent_stopped; the next start says so, in the record and in the log.
    agent.0.kill().unwrap();
    agent.0.wait().unwrap();
    let last = audit_lines(&state).last().unwrap().clone();
    assert_ne!(last["kind"], "agent_stopped");
    let out = once(&state);
    let prev = &started(&state)["previous_run"];
    assert_eq!(prev["ended"], "unclean", "{prev}");
    assert_eq!(prev["last_seq"], last["seq"], "{prev}");
    assert_eq!(prev["started_seq"], first_start, "{prev}");
    assert!(out.contains("The previous run ended uncleanly"), "{out}");

    // That run stopped in order: the next start finds a clean end.
    let stopped = audit_lines(&state).last().unwrap().clone();
    assert_eq!(stopped["kind"], "agent_stopped");
    let out = once(&state);
    assert_eq!(started(&state)["previous_run"], serde_json::json!({ "ended": "clean", "last_seq": stopped["seq"] }));
    assert!(!out.contains("uncleanly"), "{out}");
    assert!(medic::audit::verify::verify(&state.join("audit.log")).unwrap().is_ok());
}

/// The agent as a real `Type=notify` service under systemd 252 in a booted container, with the
/// repository's unit (ExecStart pointed at the test binary) and a short watchdog (a drop-in).
#[test]
fn under_systemd_notify_watchdog_restart_and_journal_fields() {
    let _port = crate::container::DEFAULT_METRICS_PORT.lock().unwrap_or_else(|e| e.into_inner());
    use crate::container::Container;
    use medic::telemetry::ids;
    let bin = tempfile::tempdir().unwrap();
    std::fs::copy(env!("CARGO_BIN_EXE_medic"), bin.path().join("medic")).unwrap();
    let c =
        Container::boot_with(&format!("medic-notify-{}", std::process::id()), &[&format!("--bind-ro={}:/opt/medic", bin.path().display())]);
    let unit =
        std::fs::read_to_string(crate::util::repo().join("systemd/medic.service")).unwrap().replace("/usr/bin/medic", "/opt/medic/medic");
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="), "{unit}");
    std::fs::write(c.path("/etc/systemd/system/medic.service"), unit).unwrap();
    std::fs::create_dir_all(c.path("/etc/systemd/system/medic.service.d")).unwrap();
    // A short watchdog keeps the test quick; no core file of the aborted agent.
    std::fs::write(c.path("/etc/systemd/system/medic.service.d/test.conf"), "[Service]\nWatchdogSec=3s\nRestartSec=1s\nLimitCORE=0\n")
        .unwrap();
    std::fs::create_dir_all(c.path("/etc/medic/playbooks")).unwrap();
    std::fs::write(
        c.path("/etc/medic/medic.toml"),
        "node = \"ct\"\nplaybooks_dir = \"/etc/medic/playbooks\"\n[signals.ebpf]\nenabled = false\n",
    )
    .unwrap();
    let pbs = demo_playbooks(&c.path("/tmp"));
    for e in std::fs::read_dir(&pbs).unwrap().flatten() {
        std::fs::copy(e.path(), c.path("/etc/medic/playbooks").join(e.file_name())).unwrap();
    }
    // `systemctl start` of a Type=notify unit returns once READY=1 came.
    c.sh("systemctl daemon-reload && systemctl start medic");
    let show = || c.sh("systemctl show -p Type,WatchdogUSec,NRestarts,MainPID,ActiveState,StatusText medic");
    let first = show();
    assert!(first.contains("Type=notify") && first.contains("WatchdogUSec=3s") && first.contains("NRestarts=0"), "{first}");
    assert!(first.contains("ActiveState=active") && first.contains("StatusText=mode dry-run; last seq "), "{first}");
    let audit = || audit_lines(&c.path("/var/lib/medic"));
    assert!(audit().iter().any(|r| r["kind"] == "action"), "active before the first decision was recorded");

    // The journal: structured fields and message ids, no prefix.
    let journal = || -> Vec<serde_json::Value> {
        c.sh("journalctl -u medic -o json --no-pager").lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    };
    let with_id = |id: &str| journal().into_iter().filter(|e| e["MESSAGE_ID"] == id).collect::<Vec<_>>();
    assert!(wait_until(10, || !with_id(ids::DECISION).is_empty()), "{:?}", journal());
    let d = &with_id(ids::DECISION)[0];
    assert_eq!(d["PLAYBOOK"], "notify-demo", "{d}");
    assert_eq!(d["DECISION"], "would_execute", "{d}");
    assert_eq!(d["ACTION"], "restart_unit", "{d}");
    assert_eq!(d["ACTION_TARGET"], "demo.service", "{d}");
    assert!(d["RULE"].is_string() && d["SEQ"].is_string(), "{d}");
    assert_eq!(d["SYSLOG_IDENTIFIER"], "medic", "{d}");
    assert_eq!(with_id(ids::STARTED).len(), 1);
    let o = c.exec(&["/opt/medic/medic", "mode", "live", "--ttl", "1m", "--reason", "journal test"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(wait_until(10, || !with_id(ids::MODE_CHANGED).is_empty()));
    let m = &with_id(ids::MODE_CHANGED)[0];
    assert_eq!((m["FROM"].as_str(), m["TO"].as_str()), (Some("dry-run"), Some("live")), "{m}");
    assert!(m["EXPIRES"].is_string() && m["ACTOR"].is_string(), "{m}");
    assert!(wait_until(10, || show().contains("StatusText=mode live until ")), "{}", show());
    // Live: the demo restart executes, fails (no such unit), and after policy.breaker_after (3)
    // runs the breaker opens. Each with its id and fields, found by journalctl's own match.
    let by_match = |id: &str| -> Vec<serde_json::Value> {
        c.sh(&format!("journalctl -u medic -o json --no-pager MESSAGE_ID={id}"))
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    assert!(wait_until(20, || !by_match(ids::BREAKER_OPENED).is_empty()), "{:?}", journal());
    let b = &by_match(ids::BREAKER_OPENED)[0];
    assert_eq!((b["DECISION"].as_str(), b["PLAYBOOK"].as_str()), (Some("escalated"), Some("notify-demo")), "{b}");
    let x = &by_match(ids::ACTION_EXECUTED)[0];
    assert_eq!((x["DECISION"].as_str(), x["ACTION_TARGET"].as_str()), (Some("executed"), Some("demo.service")), "{x}");
    let f = &by_match(ids::ACTION_FAILED)[0];
    assert_eq!((f["ERROR_CODE"].as_str(), f["SEQ"].as_str()), (Some("restart_refused"), x["SEQ"].as_str()), "{f}");
    assert!(by_match(ids::DECISION).iter().all(|e| e["MESSAGE_ID"] == ids::DECISION), "journalctl's match is exact");
    // No field carries tracing-journald's default F_ prefix.
    assert!(journal().iter().all(|e| e.as_object().unwrap().keys().all(|k| !k.starts_with("F_"))));
    let o = c.exec(&["/opt/medic/medic", "mode", "dry-run", "--reason", "journal test"]);
    assert!(o.status.success(), "{}", text(&o));

    // A stopped agent feeds no watchdog: systemd aborts it and starts a new one, which records
    // the unclean end.
    let pid = |s: &str| s.lines().find_map(|l| l.strip_prefix("MainPID=")).unwrap_or("0").to_string();
    let old = pid(&first);
    c.sh(&format!("kill -STOP {old}"));
    assert!(
        wait_until(30, || {
            let s = show();
            s.contains("NRestarts=1") && s.contains("ActiveState=active") && pid(&s) != old && pid(&s) != "0"
        }),
        "{}",
        show()
    );
    let started: Vec<_> = audit().into_iter().filter(|r| r["kind"] == "agent_started").collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert_eq!(started[1]["previous_run"]["ended"], "unclean", "{}", started[1]);
    assert!(wait_until(10, || !with_id(ids::PREVIOUS_RUN_UNCLEAN).is_empty()));
    let watchdog = c.sh("journalctl -u medic --no-pager | grep -c 'Watchdog timeout' || true");
    assert_ne!(watchdog, "0", "systemd logs the watchdog timeout");

    // An orderly stop: STOPPING, then the stopped id and agent_stopped.
    c.sh("systemctl stop medic");
    assert_eq!(audit().last().unwrap()["kind"], "agent_stopped");
    assert!(wait_until(10, || !with_id(ids::STOPPED).is_empty()));
}

/// A start that fails after `agent_started` (the control socket is another agent's) records its
/// stop, so the next start does not report a crash.
#[test]
fn a_start_refused_by_a_busy_control_socket_ends_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let first = spawn(dir.path(), &dir.path().join("state"), &[]);
    assert!(wait_until(30, || dir.path().join("c.sock").exists()));
    let other = dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let state = other.join("state");
    let mut second = spawn(dir.path(), &state, &[]);
    let st = second.0.wait().unwrap();
    assert!(!st.success());
    let recs = audit_lines(&state);
    assert_eq!(recs.last().unwrap()["kind"], "agent_stopped", "{recs:?}");
    assert_eq!(recs.last().unwrap()["reason"], "the control socket could not be bound");
    assert!(first.stop());
}
