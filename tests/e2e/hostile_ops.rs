//! Attacks on what issue 10 added, against the real `medic run`: the systemd notify socket,
//! the `/metrics` endpoint. Each test is named after the attack it pins.

use crate::util::{medic, playbook_src, status_json, wait_until, write_config, write_playbooks, Reaped};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

/// `medic_ticks_total` from a plain GET /metrics (0 when it does not answer).
fn ticks(addr: &str) -> u64 {
    let Ok(mut s) = TcpStream::connect(addr) else { return 0 };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").is_err() {
        return 0;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().find_map(|l| l.strip_prefix("medic_ticks_total ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// An agent ticking every second with a playbook that decides every tick, its metrics on
/// 127.0.0.1 (the port read back from its log), and `env` added.
fn spawn(dir: &Path, env: &[(&str, &str)]) -> (Reaped, String) {
    let src = playbook_src(
        "ops-demo",
        "#{ kind: \"restart_unit\", target: \"demo.service\" }",
        "100",
        "1s",
        "restart_unit(\"demo.service\", \"t\");",
    );
    let pbs = write_playbooks(dir, &[("demo.rhai", src)]);
    let cfg = write_config(
        dir,
        &format!(
            "[control]\nsocket = \"{}\"\n[signals.ebpf]\nenabled = false\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
            dir.join("c.sock").display()
        ),
    );
    let log = dir.join("stderr");
    let mut c = medic();
    c.args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir"])
        .arg(dir.join("state"))
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .env_remove("JOURNAL_STREAM")
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        c.env(k, v);
    }
    let agent = Reaped(c.spawn().unwrap());
    let addr = crate::util::metrics_addr(&log);
    (agent, addr)
}

/// A service manager that never reads its notify socket (stuck, or a socket someone else bound):
/// the kernel queues 10 datagrams (`net.unix.max_dgram_qlen`) and a blocking send then waits
/// for ever. The agent must drop notifications instead: it goes on ticking, answering its
/// control socket and stopping on SIGTERM.
#[test]
fn notify_socket_nobody_reads_does_not_stall_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("notify");
    let _never_read = UnixDatagram::bind(&sock).unwrap();
    let (agent, addr) = spawn(dir.path(), &[("NOTIFY_SOCKET", sock.to_str().unwrap()), ("WATCHDOG_USEC", "10000000")]);
    // STATUS= and WATCHDOG=1 each tick: well past the queue's 10 datagrams by 20 ticks.
    let mut last = 0;
    let went_on = wait_until(90, || {
        last = ticks(&addr);
        last >= 20
    });
    assert!(went_on, "the agent stopped ticking at {last} with an unread notify socket");
    let st = status_json(&dir.path().join("c.sock"));
    assert_eq!(st["mode"]["mode"], "dry-run", "the control socket answers: {st}");
    assert!(agent.stop(), "a clean stop on SIGTERM");
    let err = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(err.contains("systemd notification not sent."), "the drop is logged (once): {err}");
}

/// Slowloris on /metrics: a local user keeps every connection slot taken with idle connections,
/// opening a new one as fast as the agent drops one. Before, each new connection was answered
/// 503 while the slots were full, so a Prometheus scrape lost nearly every race; now the oldest
/// idle connection gives way to the new one, and a scraper that sends its request at once is
/// served.
#[test]
fn metrics_slowloris_holding_every_slot_does_not_lock_out_a_scraper() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let (_agent, addr) = spawn(dir.path(), &[]);
    assert!(wait_until(30, || ticks(&addr) > 0), "metrics answer");
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let attacker = {
        let (stop, addr) = (stop.clone(), addr.clone());
        std::thread::spawn(move || {
            let mut held = std::collections::VecDeque::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) = TcpStream::connect(&addr) {
                    held.push_back(s);
                }
                // Bounded on our side too: the oldest go first.
                while held.len() > 200 {
                    held.pop_front();
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let mut answered = 0;
    for _ in 0..10 {
        if ticks(&addr) > 0 {
            answered += 1;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    assert!(answered >= 8, "only {answered} of 10 scrapes answered while a client held every slot");
}

/// One journal native-protocol datagram as (field, value) pairs: `NAME=value\n`, or
/// `NAME\n<u64 LE length><value>\n` for a value that may hold newlines.
fn journal_fields(mut d: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let nl = d.iter().position(|b| *b == b'\n').expect("a field ends with a newline");
        let line = &d[..nl];
        if let Some(eq) = line.iter().position(|b| *b == b'=') {
            out.push((String::from_utf8_lossy(&line[..eq]).into_owned(), line[eq + 1..].to_vec()));
            d = &d[nl + 1..];
        } else {
            let len = u64::from_le_bytes(d[nl + 1..nl + 9].try_into().unwrap()) as usize;
            out.push((String::from_utf8_lossy(line).into_owned(), d[nl + 9..nl + 9 + len].to_vec()));
            assert_eq!(d[nl + 9 + len], b'\n');
            d = &d[nl + 10 + len..];
        }
    }
    out
}

/// A playbook author (print) and a control-socket user or MQTT publisher (a mode change's
/// reason) put a newline and `MESSAGE_ID=<ACTION_EXECUTED's id>` / `PRIORITY=0` in a logged
/// value, to forge a journal field. The real agent logs to a journal socket the test binds
/// (in a private mount namespace, at /run/systemd/journal/socket), with JOURNAL_STREAM naming
/// its stderr as systemd sets it: every value arrives length-encoded, whole, as one field, and
/// no entry gets a second MESSAGE_ID or PRIORITY.
#[test]
fn journald_field_values_cannot_forge_a_message_id_or_a_field() {
    use std::os::unix::fs::MetadataExt;
    let forged = "forged\nMESSAGE_ID=2d2b363386034211a57ba5e6341c1372\nPRIORITY=0";
    let dir = tempfile::tempdir().unwrap();
    let jdir = dir.path().join("journal");
    std::fs::create_dir(&jdir).unwrap();
    let journal = UnixDatagram::bind(jdir.join("socket")).unwrap();
    journal.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let body = format!("print({forged:?}); restart_unit(\"demo.service\", \"t\");");
    let src = playbook_src("forge-demo", "#{ kind: \"restart_unit\", target: \"demo.service\" }", "100", "1s", &body);
    let pbs = write_playbooks(dir.path(), &[("demo.rhai", src)]);
    let sock = dir.path().join("c.sock");
    let cfg = write_config(dir.path(), &format!("[control]\nsocket = \"{}\"\n[signals.ebpf]\nenabled = false\n", sock.display()));
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    let md = stderr.metadata().unwrap();
    let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && mount --bind \"$0\" /run/systemd/journal && exec \"$@\"";
    let _agent = Reaped(
        std::process::Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", script])
            .arg(&jdir)
            .arg(env!("CARGO_BIN_EXE_medic"))
            .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir"])
            .arg(dir.path().join("state"))
            .env("JOURNAL_STREAM", format!("{}:{}", md.dev(), md.ino()))
            .env_remove("NOTIFY_SOCKET")
            .env_remove("MEDIC_LOG")
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("unshare: {e}: install util-linux (bash .ci/setup)")),
    );
    let mut entries: Vec<Vec<(String, Vec<u8>)>> = Vec::new();
    let field = |e: &[(String, Vec<u8>)], k: &str| e.iter().find(|(n, _)| n == k).map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    let has = |es: &[Vec<(String, Vec<u8>)>], msg: &str| es.iter().any(|e| field(e, "MESSAGE").as_deref() == Some(msg));
    let mut buf = vec![0u8; 256 * 1024];
    let mut mode_sent = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline && !(has(&entries, "Playbook print.") && has(&entries, "Mode changed.")) {
        if let Ok(n) = journal.recv(&mut buf) {
            entries.push(journal_fields(&buf[..n]));
        }
        if !mode_sent && sock.exists() && has(&entries, "Playbook print.") {
            let o = medic().args(["mode", "live", "--ttl", "1m", "--reason", forged, "--socket", sock.to_str().unwrap()]).output().unwrap();
            mode_sent = o.status.success();
        }
    }
    let names: Vec<_> = entries.iter().filter_map(|e| field(e, "MESSAGE")).collect();
    let print = entries
        .iter()
        .find(|e| field(e, "MESSAGE").as_deref() == Some("Playbook print."))
        .unwrap_or_else(|| panic!("no print entry in {names:?}"));
    assert_eq!(field(print, "TEXT").as_deref(), Some(forged), "the value arrives whole, as one field");
    assert_eq!(field(print, "MESSAGE_ID"), None, "no MESSAGE_ID forged into a print: {print:?}");
    let mode = entries
        .iter()
        .find(|e| field(e, "MESSAGE").as_deref() == Some("Mode changed."))
        .unwrap_or_else(|| panic!("no mode entry in {names:?}"));
    assert!(field(mode, "REASON").is_some_and(|r| r.contains(forged)), "{mode:?}");
    assert_eq!(field(mode, "MESSAGE_ID").as_deref(), Some(medic::telemetry::ids::MODE_CHANGED));
    for e in &entries {
        for k in ["MESSAGE_ID", "PRIORITY", "MESSAGE"] {
            assert!(e.iter().filter(|(n, _)| n == k).count() <= 1, "{k} twice in {e:?}");
        }
    }
}

/// A playbook directory an admin left loose (owned by a user, or group/world-writable): any
/// local user could drop a playbook that root runs (run_command, signal_process in live mode).
/// Before, root loaded it without a word; now each file is refused with the reason, and loads
/// once the directory and file are root's and writable by root alone.
#[test]
fn playbooks_writable_by_others_are_refused_when_root() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let src =
        playbook_src("loose", "#{ kind: \"restart_unit\", target: \"demo.service\" }", "1", "1s", "restart_unit(\"demo.service\", \"t\");");
    let pbs = write_playbooks(dir.path(), &[("loose.rhai", src)]);
    let file = pbs.join("loose.rhai");
    let cfg = write_config(dir.path(), "");
    let validate = || {
        let o = medic().args(["validate", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap()]).output().unwrap();
        (o.status.success(), crate::util::text(&o))
    };
    let mode = |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    assert!(validate().0, "{}", validate().1);

    mode(&pbs, 0o777);
    let (ok, out) = validate();
    assert!(!ok && out.contains("refused: its directory") && out.contains("writable by its group or others"), "{out}");
    mode(&pbs, 0o755);

    mode(&file, 0o664);
    let (ok, out) = validate();
    assert!(!ok && out.contains("loose.rhai") && out.contains("mode 0664"), "{out}");
    mode(&file, 0o644);

    rustix::fs::chown(&file, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
    let (ok, out) = validate();
    assert!(!ok && out.contains("owned by uid 65534, not root"), "{out}");
    rustix::fs::chown(&file, Some(rustix::fs::Uid::ROOT), None).unwrap();
    assert!(validate().0, "{}", validate().1);
}
