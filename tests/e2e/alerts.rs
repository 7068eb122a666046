//! Notifications delivered from the audit log: to a real Alertmanager (Debian's
//! `prometheus-alertmanager`, started by the test on a free loopback port, no gossip), where a
//! playbook's notification fires while a condition the test controls holds and resolves when
//! it ends; to a webhook receiver (a TcpListener of the test's) that was down while records were
//! written and the agent was killed with -9 and restarted, and receives them all, in order; and
//! to hostile receivers (never answering, trickling, 500, an endless body) that cannot stall the
//! agent, its other sinks, or grow its memory; and an audit log whose filesystem is full is
//! delivered from memory, its recovery from the log.

use crate::util::{audit_lines, copy_tree, fixtures, medic, wait_until, write_config, write_playbooks, Reaped};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ALERTMANAGER: &str = "/usr/bin/prometheus-alertmanager";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A playbook that notifies (severity critical) every second while load.1 of the fixture proc
/// root is above 5.
fn load_playbook() -> String {
    crate::util::playbook_src(
        "load_high",
        "#{ kind: \"notify\", target: \"*\" }",
        "1000000",
        "0s",
        "let l = node.value(\"load.1\");\nif l != () && l > 5.0 { notify(\"load high\", #{ severity: \"critical\", alertname: \"LoadHigh\", load: l }); }",
    )
}

fn set_load(proc_root: &Path, load: &str) {
    std::fs::write(proc_root.join("loadavg"), format!("{load} 0.27 0.17 1/79 5044\n")).unwrap();
}

/// A fixture proc root, the playbooks and a config with `extra` (the `[alerts]` sinks).
fn setup(dir: &Path, playbook: &str, extra: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    copy_tree(&fixtures(), dir);
    let proc_root = dir.join("proc");
    let pbs = write_playbooks(dir, &[("p.rhai", playbook.to_string())]);
    let state = dir.join("state");
    let cfg = write_config(
        dir,
        &format!(
            "[control]\nsocket = \"{}\"\n[signals]\nproc_root = \"{}\"\nsys_root = \"{}\"\n{extra}",
            dir.join("c.sock").display(),
            proc_root.display(),
            dir.join("sys").display()
        ),
    );
    (cfg, pbs, state, proc_root)
}

fn agent(cfg: &Path, pbs: &Path, state: &Path) -> Reaped {
    Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A real Alertmanager with a route to a receiver that sends nothing.
struct Alertmanager {
    port: u16,
    child: Child,
}

impl Alertmanager {
    fn start(dir: &Path) -> Self {
        assert!(
            Path::new(ALERTMANAGER).exists(),
            "{ALERTMANAGER} missing: .ci/setup installs it (`command -v prometheus-alertmanager || need+=(prometheus-alertmanager)`)"
        );
        let conf = dir.join("am.yml");
        std::fs::write(&conf, "route:\n  receiver: none\n  group_wait: 1s\nreceivers:\n  - name: none\n").unwrap();
        let port = free_port();
        let child = Command::new(ALERTMANAGER)
            .arg(format!("--config.file={}", conf.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let am = Self { port, child };
        assert!(wait_until(20, || am.alerts().is_some()), "alertmanager did not answer on {port}");
        am
    }

    /// GET /api/v2/alerts: the alerts it holds active (resolved ones are not listed).
    fn alerts(&self) -> Option<Vec<serde_json::Value>> {
        let (_, body) = http_get(self.port, "/api/v2/alerts")?;
        serde_json::from_slice::<Vec<serde_json::Value>>(&body).ok()
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ =
            rustix::process::kill_process(rustix::process::Pid::from_raw(self.child.id() as i32).unwrap(), rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut all = Vec::new();
    s.read_to_end(&mut all).ok()?;
    let split = all.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&all[..split]).to_string();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut body = all[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    Some((status, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..end]).trim(), 16).unwrap_or(0);
        if n == 0 || b.len() < end + 2 + n {
            break;
        }
        out.extend_from_slice(&b[end + 2..end + 2 + n]);
        b = &b[end + 2 + n + 2..];
    }
    out
}

fn our_alert(alerts: &[serde_json::Value]) -> Option<serde_json::Value> {
    alerts.iter().find(|a| a["labels"]["alertname"] == "LoadHigh").cloned()
}

#[test]
fn a_notification_fires_in_alertmanager_while_asked_and_resolves_when_the_playbook_stops() {
    let dir = tempfile::tempdir().unwrap();
    let am = Alertmanager::start(dir.path());
    let extra = format!("[[alerts.alertmanager]]\nurl = \"http://127.0.0.1:{}\"\nrepost_secs = 20\n", am.port);
    let (cfg, pbs, state, proc_root) = setup(dir.path(), &load_playbook(), &extra);
    set_load(&proc_root, "9.50");
    let a = agent(&cfg, &pbs, &state);
    let mut firing = None;
    assert!(
        wait_until(40, || {
            firing = am.alerts().and_then(|v| our_alert(&v));
            firing.is_some()
        }),
        "the alert reached Alertmanager; log: {:?}",
        crate::util::kinds(&state)
    );
    let f = firing.unwrap();
    assert_eq!(f["labels"]["node"], "test-node");
    assert_eq!(f["labels"]["playbook"], "load_high");
    assert_eq!(f["labels"]["target"], "load high");
    assert_eq!(f["labels"]["severity"], "critical");
    assert_eq!(f["status"]["state"], "active");
    assert_eq!(f["annotations"]["summary"], "load high");
    assert!(f["annotations"]["description"].as_str().unwrap().contains("9.5"), "{f}");
    // Still firing some seconds later (re-posted, the playbook still asks).
    std::thread::sleep(Duration::from_secs(6));
    assert!(am.alerts().and_then(|v| our_alert(&v)).is_some(), "still firing while asked");
    // The condition ends: resolved after the automatic period (10 s at least: 2 × the 1 s
    // interval is less) plus delivery, long before the firing alert's own endsAt (3 re-posts of
    // 20 s ahead) would have expired it.
    set_load(&proc_root, "0.10");
    let ended = Instant::now();
    assert!(
        wait_until(40, || am.alerts().is_some_and(|v| our_alert(&v).is_none())),
        "resolved in Alertmanager: {:?} {:?}",
        am.alerts(),
        audit_lines(&state).iter().rev().take(4).map(|r| format!("{} {} {}", r["ts"], r["kind"], r["action"]["kind"])).collect::<Vec<_>>()
    );
    assert!(ended.elapsed() < Duration::from_secs(40));
    assert!(a.stop());
    let cursor: u64 = std::fs::read_to_string(state.join("alerts/alertmanager.cursor")).unwrap().trim().parse().unwrap();
    let notified = audit_lines(&state).iter().filter(|r| r["action"]["kind"] == "notify").count();
    assert!(notified >= 3 && cursor > 0, "notified {notified}, cursor {cursor}");
}

/// A webhook receiver: answers 200 to every POST and keeps each JSON body.
struct Receiver {
    got: Arc<Mutex<Vec<serde_json::Value>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// How a receiver misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Good,
    /// Reads the request, never answers.
    Silent,
    /// Answers one byte a second.
    Trickle,
    /// 500 with a short body.
    Error,
    /// 500 with an endless body.
    Flood,
    /// 400: refuses every batch for good.
    Reject,
}

impl Receiver {
    fn start(port: u16, mode: Mode) -> Self {
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        l.set_nonblocking(true).unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (g, st) = (got.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => {
                        let (g, st) = (g.clone(), st.clone());
                        std::thread::spawn(move || serve(s, mode, &g, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self { got, stop }
    }

    fn bodies(&self) -> Vec<serde_json::Value> {
        self.got.lock().unwrap().clone()
    }

    /// Every notification's seq, in the order received.
    fn seqs(&self) -> Vec<u64> {
        self.bodies()
            .iter()
            .flat_map(|b| b["notifications"].as_array().cloned().unwrap_or_default())
            .filter_map(|n| n["seq"].as_u64())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn serve(s: TcpStream, mode: Mode, got: &Mutex<Vec<serde_json::Value>>, stop: &std::sync::atomic::AtomicBool) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; len];
    if r.read_exact(&mut body).is_err() {
        return;
    }
    got.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null));
    let mut s = s;
    match mode {
        Mode::Good => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
        Mode::Silent => {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Mode::Trickle => {
            for b in b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" {
                if stop.load(std::sync::atomic::Ordering::Relaxed) || s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        Mode::Reject => {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbad");
        }
        Mode::Error => {
            let _ = s.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnope");
        }
        Mode::Flood => {
            let _ = s.write_all(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100000000000\r\n\r\n");
            let chunk = vec![b'x'; 1 << 16];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && s.write_all(&chunk).is_ok() {}
        }
    }
}

/// A playbook notifying every second with a new subject each time (`state` counts).
fn chatter() -> String {
    crate::util::playbook_src(
        "chatter",
        "#{ kind: \"notify\", target: \"*\" }",
        "1000000",
        "0s",
        "let n = state.get(\"n\"); if n == () { n = 0; } state.set(\"n\", n + 1); notify(`tick ${n}`, #{ n: n });",
    )
}

fn notify_seqs(state: &Path) -> Vec<u64> {
    audit_lines(state)
        .iter()
        .filter(|r| r["kind"] == "action" && r["action"]["kind"] == "notify" && r["decision"] == "executed")
        .map(|r| r["seq"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_webhook_down_through_a_kill_9_and_a_restart_receives_every_notification_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let extra = format!(
        "[[alerts.webhook]]\nname = \"hook\"\nurl = \"http://127.0.0.1:{port}/medic\"\nmax_backoff_secs = 1\ndeliver = [\"notify\"]\n"
    );
    let (cfg, pbs, state, _) = setup(dir.path(), &chatter(), &extra);
    // Nothing listens on the port: every POST is refused while records pile up.
    let a = agent(&cfg, &pbs, &state);
    assert!(wait_until(40, || notify_seqs(&state).len() >= 4), "notifications recorded");
    drop(a); // SIGKILL (Reaped's drop): no orderly stop
    let before_kill = notify_seqs(&state);
    let a = agent(&cfg, &pbs, &state);
    assert!(wait_until(40, || notify_seqs(&state).len() >= before_kill.len() + 3), "recording again after the restart");
    let rx = Receiver::start(port, Mode::Good);
    let want = notify_seqs(&state);
    assert!(
        wait_until(40, || {
            let got: std::collections::BTreeSet<u64> = rx.seqs().into_iter().collect();
            want.iter().all(|s| got.contains(s))
        }),
        "every notification recorded while the receiver was down arrives: want {want:?}, got {:?}",
        rx.seqs()
    );
    assert!(a.stop());
    // In seq order (a batch sent again after a lost answer repeats seqs, never skips back).
    let got = rx.seqs();
    let mut max = 0;
    for s in &got {
        assert!(*s >= max || got.iter().filter(|x| *x == s).count() > 1, "seq {s} after {max}: {got:?}");
        max = max.max(*s);
    }
    let first = &rx.bodies()[0];
    assert_eq!(first["node"], "test-node");
    assert_eq!(first["sink"], "hook");
    let n = &first["notifications"][0];
    assert_eq!((n["class"].as_str(), n["playbook"].as_str(), n["severity"].as_str()), (Some("notify"), Some("chatter"), Some("warning")));
    assert!(n["target"].as_str().unwrap().starts_with("tick "), "{n}");
    assert!(n["details"]["n"].is_i64(), "{n}");
    let cursor: u64 = std::fs::read_to_string(state.join("alerts/hook.cursor")).unwrap().trim().parse().unwrap();
    assert!(cursor >= *want.last().unwrap());
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap_or(0)
}

#[test]
fn hostile_receivers_neither_stall_the_agent_nor_its_other_sinks_nor_grow_its_memory() {
    let dir = tempfile::tempdir().unwrap();
    let modes =
        [("silent", Mode::Silent), ("trickle", Mode::Trickle), ("error", Mode::Error), ("flood", Mode::Flood), ("good", Mode::Good)];
    let mut receivers = Vec::new();
    let mut extra = String::new();
    for (name, mode) in modes {
        let port = free_port();
        receivers.push((name, mode, Receiver::start(port, mode)));
        extra +=
            &format!("[[alerts.webhook]]\nname = \"{name}\"\nurl = \"http://127.0.0.1:{port}/\"\ntimeout_secs = 2\nmax_backoff_secs = 2\n");
    }
    let (cfg, pbs, state, _) = setup(dir.path(), &chatter(), &extra);
    let a = agent(&cfg, &pbs, &state);
    let pid = a.0.id();
    assert!(wait_until(40, || notify_seqs(&state).len() >= 3), "the agent ticks");
    let start_rss = rss_kib(pid);
    let t = Instant::now();
    let at_start = notify_seqs(&state).len();
    std::thread::sleep(Duration::from_secs(12));
    // The agent went on recording a notification a second, and the good sink kept up.
    let recorded = notify_seqs(&state);
    assert!(recorded.len() >= at_start + 8, "recorded {} in {:?}", recorded.len() - at_start, t.elapsed());
    let good = &receivers.iter().find(|r| r.0 == "good").unwrap().2;
    let want = recorded[recorded.len() - 5];
    assert!(wait_until(10, || good.seqs().contains(&want)), "the good sink is not held up by the others: {:?}", good.seqs());
    // The 500s were retried (with back-off), the silent one was tried again after its timeout.
    let tries = |n: &str| receivers.iter().find(|r| r.0 == n).unwrap().2.bodies().len();
    assert!(tries("error") >= 3, "error sink tried {}", tries("error"));
    assert!(tries("silent") >= 2, "silent sink tried {}", tries("silent"));
    assert!(tries("flood") >= 2, "flood sink tried {}", tries("flood"));
    // An endless body is never read: memory stays where it was.
    let rss = rss_kib(pid);
    assert!(rss < start_rss + 64 * 1024, "RSS grew from {start_rss} KiB to {rss} KiB");
    // And the control socket still answers at once.
    let t = Instant::now();
    let st = crate::util::status_json(&dir.path().join("c.sock"));
    assert!(st.is_object() && t.elapsed() < Duration::from_secs(3), "{st}");
    assert!(a.stop(), "the agent stops in order with receivers hanging");
}

/// The audit log unwritable (its filesystem full): the webhook hears of it from memory, since
/// the log cannot hold it, and then of `audit_recovered` from the log once space returns.
#[test]
fn a_full_audit_log_is_delivered_from_memory_and_its_recovery_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rx = Receiver::start(port, Mode::Good);
    let extra = format!(
        "[[alerts.webhook]]\nname = \"hook\"\nurl = \"http://127.0.0.1:{port}/medic\"\nmax_backoff_secs = 1\ndeliver = [\"audit\"]\n"
    );
    let (cfg, pbs, state, _) = setup(dir.path(), &chatter(), &extra);
    let _fs = crate::util::Tmpfs::mount(&state, "size=256k");
    let a = agent(&cfg, &pbs, &state);
    assert!(wait_until(40, || notify_seqs(&state).len() >= 2), "notifications recorded");
    let kinds = |rx: &Receiver| -> Vec<String> {
        rx.bodies()
            .iter()
            .flat_map(|b| b["notifications"].as_array().cloned().unwrap_or_default())
            .filter_map(|n| n["kind"].as_str().map(str::to_string))
            .collect()
    };
    let filler = state.join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 512 * 1024]); // ENOSPC once full: the rest stays written
    assert!(wait_until(40, || kinds(&rx).iter().any(|k| k == "audit_unwritable")), "unwritable delivered: {:?}", kinds(&rx));
    let n = rx
        .bodies()
        .iter()
        .flat_map(|b| b["notifications"].as_array().cloned().unwrap_or_default())
        .find(|n| n["kind"] == "audit_unwritable")
        .unwrap();
    assert_eq!((n["severity"].as_str(), n["seq"].is_null()), (Some("critical"), true), "{n}");
    std::fs::remove_file(&filler).unwrap();
    assert!(wait_until(40, || kinds(&rx).iter().any(|k| k == "audit_recovered")), "recovery delivered: {:?}", kinds(&rx));
    let k = kinds(&rx);
    let first_down = k.iter().position(|k| k == "audit_unwritable").unwrap();
    let first_up = k.iter().position(|k| k == "audit_recovered").unwrap();
    assert!(first_down < first_up, "{k:?}");
    assert!(!k.iter().any(|k| k == "action"), "only the audit class was asked for: {k:?}");
    assert!(a.stop());
}

/// A receiver that refuses every batch for good (400) does not hold the sink: each refused batch
/// is dropped and counted and the cursor moves on, so a later receiver gets what comes after.
#[test]
fn a_batch_refused_for_good_is_dropped_and_the_sink_moves_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let rx = Receiver::start(port, Mode::Reject);
    let extra = format!(
        "[[alerts.webhook]]\nname = \"hook\"\nurl = \"http://127.0.0.1:{port}/medic\"\nmax_backoff_secs = 1\ndeliver = [\"notify\"]\n"
    );
    let (cfg, pbs, state, _) = setup(dir.path(), &chatter(), &extra);
    let a = agent(&cfg, &pbs, &state);
    let cursor = || std::fs::read_to_string(state.join("alerts/hook.cursor")).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
    assert!(wait_until(40, || notify_seqs(&state).len() >= 3), "notifications recorded");
    let third = notify_seqs(&state)[2];
    assert!(wait_until(40, || cursor() >= third), "the cursor moves past refused batches: {} < {third}", cursor());
    // Every refused notification was offered once (several may share a batch when the agent is
    // slow to start), and later batches still go out after the refusals.
    let tried = rx.seqs();
    assert!(notify_seqs(&state).iter().filter(|s| **s <= third).all(|s| tried.contains(s)), "each was tried: {tried:?}");
    assert!(wait_until(40, || rx.bodies().len() >= 2), "a later batch was tried too: {}", rx.bodies().len());
    assert!(a.stop());
}
