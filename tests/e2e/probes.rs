//! Probes and program sensors against real servers and programs the tests start (python3
//! http.server and ssl, openssl for certificates, sh scripts run as nobody): an HTTP health
//! probe failing leads to a restart_unit decision, a certificate near expiry is seen, a
//! program's numbers become signals, and hostile servers or programs cannot stall the agent.

use crate::util::{audit_lines, medic, status_json, text, wait_until, write_config, write_playbooks, Reaped};
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

const PYTHON: &str = "/usr/bin/python3";

/// A python3 server started by the test, printing its port(s) on its first line; killed (by its
/// pid) when dropped.
struct Server {
    child: Child,
    ports: Vec<u16>,
}

impl Server {
    fn start(code: &str, args: &[&str]) -> Self {
        assert!(Path::new(PYTHON).exists(), "{PYTHON} missing: apt-get install python3 (.ci/setup)");
        let mut child = Command::new(PYTHON).arg("-c").arg(code).args(args).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let ports = line.split_whitespace().map(|p| p.parse().unwrap_or_else(|_| panic!("port line {line:?}"))).collect();
        Self { child, ports }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Answers 200 "ok" on every path, or 500 while the file argv[1] exists.
const HEALTH: &str = r#"
import http.server, os, sys
flag = sys.argv[1]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        bad = os.path.exists(flag)
        body = b"broken" if bad else b"ok"
        self.send_response(500 if bad else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;

/// Three hostile listeners: one that never answers, one that sends headers forever, one that
/// sends garbage.
const HOSTILE: &str = r#"
import socket, threading, os, time
def listener():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(64); return s
def silent(c):
    time.sleep(3600)
def headers(c):
    try:
        c.sendall(b"HTTP/1.1 200 OK\r\n")
        while True:
            c.sendall(b"X-Endless: " + b"a" * 1000 + b"\r\n")
    except OSError:
        pass
def garbage(c):
    try:
        c.sendall(os.urandom(5000)); c.close()
    except OSError:
        pass
socks = [(listener(), f) for f in (silent, headers, garbage)]
def serve(s, f):
    while True:
        c, _ = s.accept()
        threading.Thread(target=f, args=(c,), daemon=True).start()
for s, f in socks:
    threading.Thread(target=serve, args=(s, f), daemon=True).start()
print(" ".join(str(s.getsockname()[1]) for s, _ in socks), flush=True)
time.sleep(3600)
"#;

/// A TLS server (python ssl) with the certificate and key argv[1], argv[2]: handshakes, then closes.
const TLS: &str = r#"
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(16)
print(s.getsockname()[1], flush=True)
def hs(c):
    try:
        t = ctx.wrap_socket(c, server_side=True); t.recv(1); t.close()
    except Exception:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=hs, args=(c,), daemon=True).start()
"#;

fn signals_json(cfg: &Path) -> Value {
    let o = medic().args(["signals", "--json", "--config", cfg.to_str().unwrap()]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)))
}

fn errors(snap: &Value) -> String {
    snap["errors"].as_array().map(|a| a.iter().filter_map(|e| e.as_str()).collect::<Vec<_>>().join("\n")).unwrap_or_default()
}

#[test]
fn an_http_health_probe_failing_leads_to_restart_unit_and_hostile_servers_do_not_stall_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("broken");
    let web = Server::start(HEALTH, &[flag.to_str().unwrap()]);
    let hostile = Server::start(HOSTILE, &[]);
    let pb = format!(
        "const META = #{{ name: \"web-health\", description: \"restart web when its health check fails\", interval: \"1s\",\n\
         actions: [#{{ kind: \"restart_unit\", target: \"web.service\" }}], rate_limit: #{{ max: 100, per: \"1h\" }}, cooldown: \"1s\",\n\
         probes: [#{{ name: \"web\", http: \"http://127.0.0.1:{}/health\", status: 200, body: \"^ok$\", interval: \"1s\", timeout: \"900ms\" }}] }};\n\
         fn evaluate(node, state) {{\n  if node.has(\"probe.web.ok\") && node.value(\"probe.web.ok\") == 0.0 {{\n    restart_unit(\"web.service\", `health probe failing: status ${{node.value(\"probe.web.status\")}}`);\n  }}\n}}\n",
        web.ports[0]
    );
    // A playbook probing a remote address is refused at load: the config allows only local ones.
    let remote = "const META = #{ name: \"remote\", description: \"d\", interval: \"1s\", actions: [], rate_limit: #{ max: 1, per: \"1h\" }, cooldown: \"1s\",\n  probes: [#{ name: \"db\", tcp: \"192.0.2.1:5432\" }] };\nfn evaluate(node, state) {}\n";
    let pbs = write_playbooks(dir.path(), &[("web_health.rhai", pb), ("remote.rhai", remote.to_string())]);
    let state = dir.path().join("state");
    let sock = dir.path().join("control.sock");
    // The body pattern of a playbook's probe needs the operator's consent (see
    // a_playbooks_body_pattern_needs_the_config below).
    let mut extra = format!("[control]\nsocket = \"{}\"\n[probes]\nplaybook_body_patterns = true\n", sock.display());
    for (name, port) in ["silent", "headers", "garbage"].iter().zip(&hostile.ports) {
        extra.push_str(&format!(
            "[[probes.check]]\nname = \"{name}\"\nhttp = \"http://127.0.0.1:{port}/\"\ninterval_secs = 1\ntimeout_ms = 800\n"
        ));
    }
    let cfg = write_config(dir.path(), &extra);
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let agent = Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let logged = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    // Healthy: the probe reports ok, nothing is asked.
    assert!(
        wait_until(30, || status_json(&sock)["sensors"]["probe.web"]["ok"] == true),
        "probe.web never ok: {}\n{}",
        status_json(&sock),
        logged()
    );
    let rejected =
        audit_lines(&state).into_iter().find(|r| r["kind"] == "playbook_rejected").expect("the remote probe's playbook is rejected");
    assert!(rejected["error"].as_str().unwrap().contains("not a local address"), "{rejected}");
    // Broken: 500 from the server; the playbook asks for a restart (dry-run: would_execute).
    std::fs::write(&flag, "").unwrap();
    let would = || audit_lines(&state).into_iter().find(|r| r["kind"] == "action" && r["decision"] == "would_execute");
    assert!(wait_until(30, || would().is_some()), "no would_execute: {}", logged());
    let rec = would().unwrap();
    assert_eq!(rec["action"]["kind"], "restart_unit");
    assert_eq!(rec["action"]["target"], "web.service");
    let signals = &rec["trigger"]["signals"];
    assert_eq!(signals["probe.web.ok"], 0.0, "{rec}");
    assert_eq!(signals["probe.web.status"], 500.0, "{rec}");
    // The hostile servers: each probe fails within its timeout, with a reason; the agent goes on.
    let st = status_json(&sock);
    for name in ["silent", "headers", "garbage"] {
        let s = &st["sensors"][format!("probe.{name}")];
        assert_eq!(s["ok"], false, "{name}: {s}");
        assert!(s["reason"].as_str().is_some_and(|r| !r.is_empty()), "{name}: {s}");
    }
    assert!(st["sensors"]["probe.silent"]["reason"].as_str().unwrap().contains("no answer within 800 ms"), "{st}");
    let before = audit_lines(&state).len();
    std::fs::remove_file(&flag).unwrap();
    assert!(wait_until(30, || status_json(&sock)["sensors"]["probe.web"]["ok"] == true), "the probe recovers");
    assert!(status_json(&sock)["evaluation"]["overruns"].as_u64().unwrap_or(0) <= 2, "ticks keep coming");
    assert!(audit_lines(&state).len() >= before);
    // Reload (SIGHUP): the playbook now declares another probe; the old one stops and its
    // result goes, the new one starts.
    let src = std::fs::read_to_string(pbs.join("web_health.rhai")).unwrap().replace("name: \"web\"", "name: \"web2\"");
    std::fs::write(pbs.join("web_health.rhai"), src).unwrap();
    let _ = rustix::process::kill_process(agent.pid(), rustix::process::Signal::HUP);
    assert!(
        wait_until(30, || {
            let st = status_json(&sock);
            st["sensors"]["probe.web2"]["ok"] == true && st["sensors"].get("probe.web").is_none()
        }),
        "the reload swaps the probes: {}",
        status_json(&sock)
    );
    // A new playbook, loaded first by name, declares the running one's probe name at another
    // target: it cannot take over the signal web_health restarts on; it is the one rejected.
    let takeover = "const META = #{ name: \"takeover\", description: \"d\", interval: \"1s\", actions: [], rate_limit: #{ max: 1, per: \"1h\" }, cooldown: \"1s\",\n  probes: [#{ name: \"web2\", tcp: \"127.0.0.1:1\" }] };\nfn evaluate(node, state) {}\n";
    std::fs::write(pbs.join("000_takeover.rhai"), takeover).unwrap();
    let _ = rustix::process::kill_process(agent.pid(), rustix::process::Signal::HUP);
    let taken = || {
        audit_lines(&state)
            .into_iter()
            .find(|r| r["kind"] == "playbook_rejected" && r["file"].as_str().is_some_and(|f| f.ends_with("000_takeover.rhai")))
    };
    assert!(wait_until(30, || taken().is_some()), "the newcomer is rejected");
    assert!(taken().unwrap()["error"].as_str().unwrap().contains("declared differently"), "{}", taken().unwrap());
    std::thread::sleep(std::time::Duration::from_secs(2));
    let st = status_json(&sock);
    assert_eq!(st["sensors"]["probe.web2"]["ok"], true, "web_health's probe still runs its own target: {st}");
    assert!(agent.stop(), "an orderly stop");
}

#[test]
fn a_tls_certificate_near_expiry_is_seen_and_remote_targets_need_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let o = Command::new("openssl")
        // A leaf (CA:FALSE, with the name it is probed by): what ca_file verifies against itself.
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "5", "-subj", "/CN=localhost"])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-addext", "subjectAltName=DNS:localhost", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl (apt-get install openssl, .ci/setup) makes the test certificate");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let srv = Server::start(TLS, &[cert.to_str().unwrap(), key.to_str().unwrap()]);
    let cfg = write_config(
        dir.path(),
        &format!(
            "[[probes.check]]\nname = \"tls_insecure\"\ntls = \"127.0.0.1:{p}\"\ninsecure = true\n\
             [[probes.check]]\nname = \"tls_ca\"\ntls = \"127.0.0.1:{p}\"\nca_file = \"{c}\"\nserver_name = \"localhost\"\n\
             [[probes.check]]\nname = \"tls_system\"\ntls = \"127.0.0.1:{p}\"\n\
             [[probes.check]]\nname = \"https\"\nhttp = \"https://127.0.0.1:{p}/\"\ninsecure = true\n",
            p = srv.ports[0],
            c = cert.display()
        ),
    );
    let snap = signals_json(&cfg);
    let m = &snap["metrics"];
    for name in ["tls_insecure", "tls_ca", "tls_system"] {
        let days = m[format!("probe.{name}.cert_days_left")].as_f64().unwrap_or_else(|| panic!("{name}: {}", errors(&snap)));
        assert!((4.0..=5.0).contains(&days), "{name}: {days}");
    }
    assert_eq!(m["probe.tls_insecure.ok"], 1.0, "{}", errors(&snap));
    assert_eq!(m["probe.tls_ca.ok"], 1.0, "{}", errors(&snap));
    // A self-signed certificate does not verify against the system's roots: not ok, days seen.
    assert_eq!(m["probe.tls_system.ok"], 0.0);
    assert!(errors(&snap).contains("probe.tls_system"), "{}", errors(&snap));
    // The HTTP probe reaches a server that closes without answering: a failure with a reason.
    assert_eq!(m["probe.https.ok"], 0.0);
    // A non-local target is refused unless the config allows it.
    let remote = "[[probes.check]]\nname = \"db\"\ntcp = \"192.0.2.1:5432\"\n";
    let bad = write_config(dir.path(), remote);
    let o = medic().args(["validate", "--config", bad.to_str().unwrap()]).output().unwrap();
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("not a local address"), "{}", text(&o));
    for allow in ["[probes]\nallow_remote = true\n", "[probes]\nallow = [\"192.0.2.0/24\"]\n"] {
        let ok = write_config(dir.path(), &format!("{allow}{remote}"));
        let o = medic().args(["validate", "--config", ok.to_str().unwrap()]).output().unwrap();
        assert!(text(&o).lines().all(|l| !l.contains("not a local address")), "{allow}: {}", text(&o));
    }
}

#[test]
fn a_program_sensor_runs_as_nobody_is_killed_at_its_timeout_and_its_output_is_cut() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = |name: &str, body: &str| {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p.display().to_string()
    };
    let numbers =
        script("numbers", "echo \"queue 12\"\necho \"lag=3.5\"\necho \"uid $(id -u)\"\necho \"home ${HOME:-unset}\"\necho 42\nexit 3");
    let sleeper = script("sleeper", "sleep 31.25 &\nwait");
    let flood = script("flood", "echo \"first 1\"\nyes | head -c 10000000");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[[programs]]\nname = \"numbers\"\nargv = [\"{numbers}\"]\nuser = \"nobody\"\n\
             [[programs]]\nname = \"sleeper\"\nargv = [\"{sleeper}\"]\nuser = \"nobody\"\ntimeout_secs = 1\n\
             [[programs]]\nname = \"flood\"\nargv = [\"{flood}\"]\nuser = \"nobody\"\n"
        ),
    );
    let t = std::time::Instant::now();
    let snap = signals_json(&cfg);
    assert!(t.elapsed() < std::time::Duration::from_secs(20), "bounded by the timeouts");
    let m = &snap["metrics"];
    let e = errors(&snap);
    assert_eq!(m["program.numbers.queue"], 12.0, "{e}");
    assert_eq!(m["program.numbers.lag"], 3.5);
    assert_eq!(m["program.numbers.uid"], 65534.0, "runs as nobody");
    assert_eq!(m["program.numbers.value"], 42.0);
    assert!(m.get("program.numbers.home").is_none(), "a cleared environment");
    assert_eq!(m["program.numbers.exit"], 3.0);
    assert_eq!(m["program.numbers.ok"], 0.0);
    assert_eq!(m["program.sleeper.exit"], -1.0);
    assert!(e.contains("program.sleeper: killed at its timeout"), "{e}");
    let left = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .any(|p| std::fs::read(p.path().join("cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("31.25")));
    assert!(!left, "the program's whole process group is killed");
    assert_eq!(m["program.flood.first"], 1.0, "{e}");
    assert!(e.contains("program.flood: ") && e.contains("stdout cut at 65536 bytes"), "{e}");
}

/// A web service for the booted container (its root has perl-base, not python): answers 200
/// "ok", except in its first run, which degrades to 500 after three requests (a marker in /run
/// tells a restarted run from the first).
const DEGRADING_WEB: &str = r#"use IO::Socket::INET;
my $port = shift;
my $first = ! -e "/run/medic-web-ran";
open(my $m, ">", "/run/medic-web-ran"); close($m);
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $port, Listen => 16, ReuseAddr => 1) or die "listen: $!";
my $n = 0;
while (my $c = $s->accept) {
    while (my $l = <$c>) { last if $l =~ /^\r?\n$/; }
    $n++;
    my ($code, $body) = ($first && $n > 3) ? ("500 Internal Server Error", "broken") : ("200 OK", "ok");
    print $c "HTTP/1.1 $code\r\nContent-Length: " . length($body) . "\r\nConnection: close\r\n\r\n$body";
    close $c;
}
"#;

#[test]
fn in_the_booted_container_a_failing_http_probe_restarts_the_unit_live_and_recovers() {
    use medic::control::mode::ModeState;
    let c = crate::container::Container::boot(&format!("medic-probe-{}", std::process::id()));
    // A free port on the host: the container shares the host's network.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    std::fs::write(c.path("/usr/local/bin/medic-web"), DEGRADING_WEB).unwrap();
    std::fs::write(
        c.path("/etc/systemd/system/medic-web.service"),
        format!("[Unit]\nDescription=medic probe test web\n[Service]\nExecStart=/usr/bin/perl /usr/local/bin/medic-web {port}\n"),
    )
    .unwrap();
    c.sh("systemctl daemon-reload && systemctl start medic-web.service");
    let first = c.sh("systemctl show -p InvocationID --value medic-web.service");
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    ModeState { mode: medic::gate::Mode::Live, since_ms: 1, actor: "test".into(), reason: "test".into(), ..ModeState::fresh() }
        .save(&state)
        .unwrap();
    let pb = format!(
        "const META = #{{ name: \"web-health\", description: \"restart medic-web when its health check fails\", interval: \"1s\",\n\
         actions: [#{{ kind: \"restart_unit\", target: \"medic-web.service\" }}], rate_limit: #{{ max: 3, per: \"1h\" }}, cooldown: \"10m\",\n\
         probes: [#{{ name: \"web\", http: \"http://127.0.0.1:{port}/\", body: \"^ok$\", interval: \"1s\", timeout: \"900ms\" }}] }};\n\
         fn evaluate(node, state) {{\n  if node.has(\"probe.web.ok\") && node.value(\"probe.web.ok\") == 0.0 {{\n    restart_unit(\"medic-web.service\", `health probe failing: status ${{node.value(\"probe.web.status\")}}`);\n  }}\n}}\n"
    );
    let pbs = write_playbooks(dir.path(), &[("web_health.rhai", pb)]);
    let sock = dir.path().join("control.sock");
    let cfg = write_config(
        dir.path(),
        &format!(
            "[control]\nsocket = \"{}\"\n[actions]\nsystemd_bus = \"{}\"\ntimeout_secs = 20\n[probes]\nplaybook_body_patterns = true\n",
            sock.display(),
            c.bus()
        ),
    );
    let log = std::fs::File::create(dir.path().join("agent.log")).unwrap();
    let agent = Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let logged = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let outcome = || audit_lines(&state).into_iter().find(|r| r["kind"] == "action_outcome");
    assert!(wait_until(60, || outcome().is_some()), "no restart outcome: {}", logged());
    let recs = audit_lines(&state);
    let exec = recs.iter().find(|r| r["kind"] == "action").unwrap();
    assert_eq!(exec["decision"], "executed", "{exec}");
    assert_eq!(exec["trigger"]["signals"]["probe.web.ok"], 0.0, "{exec}");
    assert_eq!(exec["trigger"]["signals"]["probe.web.status"], 500.0, "{exec}");
    let out = outcome().unwrap();
    assert_eq!(out["outcome"]["status"], "ok", "{out}");
    assert_eq!(out["outcome"]["verified"], true, "{out}");
    assert_ne!(c.sh("systemctl show -p InvocationID --value medic-web.service"), first, "restarted");
    // The restarted service answers 200 again: the probe recovers and nothing more is asked.
    assert!(
        wait_until(30, || status_json(&sock)["sensors"]["probe.web"]["ok"] == true && {
            let st = status_json(&sock);
            st["sensors"]["probe.web"]["at"].is_string()
        }),
        "the probe recovers: {}",
        status_json(&sock)
    );
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(status_json(&sock)["sensors"]["probe.web"]["ok"], true, "and stays ok");
    assert_eq!(audit_lines(&state).iter().filter(|r| r["kind"] == "action" && r["decision"] == "executed").count(), 1);
    assert!(agent.stop(), "an orderly stop");
}

/// A playbook that may only notify must not read a loopback service's answers bit by bit
/// through a body pattern: on the default config its playbook is rejected at load, naming the
/// key that allows it; with the key it loads.
#[test]
fn a_playbooks_body_pattern_needs_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let pb = "const META = #{ name: \"peek\", description: \"d\", interval: \"1s\", actions: [#{ kind: \"notify\", target: \"*\" }],\n  rate_limit: #{ max: 1, per: \"1h\" }, cooldown: \"1s\",\n  probes: [#{ name: \"kv\", http: \"http://127.0.0.1:8500/v1/kv/secret\", status: 200, body: \"^a\" }] };\nfn evaluate(node, state) { notify(`bit ${node.value(\"probe.kv.ok\")}`); }\n";
    let pbs = write_playbooks(dir.path(), &[("peek.rhai", pb.to_string())]);
    for (extra, rejected) in [("", true), ("[probes]\nplaybook_body_patterns = true\n", false)] {
        let state = tempfile::tempdir().unwrap();
        let cfg = write_config(dir.path(), extra);
        let o = medic()
            .args(["run", "--once", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap()])
            .args(["--state-dir", state.path().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let recs = audit_lines(state.path());
        let rej = recs.iter().find(|r| r["kind"] == "playbook_rejected");
        assert_eq!(rej.is_some(), rejected, "{extra:?}: {recs:?}");
        if let Some(r) = rej {
            assert!(r["error"].as_str().unwrap().contains("playbook_body_patterns"), "{r}");
        }
    }
}
