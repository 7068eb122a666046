//! `/metrics`: the real `medic run` serving Prometheus text on 127.0.0.1 (a port the kernel
//! picks), parsed by the Prometheus project's own Python parser (Debian's
//! python3-prometheus-client, installed by .ci/setup), and kept answering under hostile clients.

use crate::util::{audit_lines, medic, playbook_src, run, status_json, text, wait_until, write_config, write_playbooks, Reaped};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The system Python, where Debian installs prometheus_client.
const PYTHON: &str = "/usr/bin/python3";

/// Parses an exposition with `prometheus_client`'s text parser (or its OpenMetrics parser) into
/// `{family: {"type": t, "samples": [[name, {labels}, value], ...]}}`.
fn parse(body: &str, openmetrics: bool) -> serde_json::Map<String, Value> {
    let module = if openmetrics { "prometheus_client.openmetrics.parser" } else { "prometheus_client.parser" };
    let script = format!(
        "import sys, json\n\
         try:\n    from {module} import text_string_to_metric_families as p\n\
         except ImportError as e:\n    sys.exit(f'{{e}}: install python3-prometheus-client (bash .ci/setup)')\n\
         out = {{}}\n\
         for f in p(sys.stdin.read()):\n    out[f.name] = {{'type': f.type, 'samples': [[s.name, s.labels, s.value] for s in f.samples]}}\n\
         print(json.dumps(out))\n"
    );
    let mut child = std::process::Command::new(PYTHON)
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PYTHON}: {e}: install python3 and python3-prometheus-client (bash .ci/setup)"));
    child.stdin.take().unwrap().write_all(body.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "the Prometheus parser refused the exposition: {}\n{body}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice::<Value>(&o.stdout).unwrap().as_object().unwrap().clone()
}

/// One HTTP/1.1 exchange; returns (status, headers, body).
fn http(addr: &str, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out).to_string();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn scrape(addr: &str) -> serde_json::Map<String, Value> {
    let (status, head, body) = http(addr, b"GET /metrics HTTP/1.1\r\nHost: medic\r\n\r\n");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    parse(&body, false)
}

/// The samples named `sample` of `family`, as (labels, value).
fn samples(m: &serde_json::Map<String, Value>, family: &str, sample: &str) -> Vec<(Value, f64)> {
    let f = m.get(family).unwrap_or_else(|| panic!("{family} missing: {:?}", m.keys().collect::<Vec<_>>()));
    f["samples"].as_array().unwrap().iter().filter(|s| s[0] == sample).map(|s| (s[1].clone(), s[2].as_f64().unwrap())).collect()
}

fn value(m: &serde_json::Map<String, Value>, family: &str, sample: &str, labels: &[(&str, &str)]) -> f64 {
    samples(m, family, sample)
        .into_iter()
        .find(|(l, _)| labels.iter().all(|(k, v)| l[k] == *v))
        .unwrap_or_else(|| panic!("{sample}{labels:?} missing in {:?}", m.get(family)))
        .1
}

fn kind(m: &serde_json::Map<String, Value>, family: &str) -> String {
    m.get(family).unwrap_or_else(|| panic!("{family} missing")).get("type").unwrap().as_str().unwrap().to_string()
}

/// A running agent with its metrics address (read from its log: port 0 is asked for).
struct Agent {
    _proc: Reaped,
    addr: String,
    state: PathBuf,
    sock: PathBuf,
}

fn start(dir: &Path, extra: &str, pbs: &[(&str, String)]) -> Agent {
    let pbs = write_playbooks(dir, pbs);
    let state = dir.join("state");
    let sock = dir.join("c.sock");
    let cfg = write_config(dir, &format!("[control]\nsocket = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n{extra}", sock.display()));
    let log = dir.join("stderr.log");
    let proc = Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let addr = crate::util::metrics_addr(&log);
    Agent { _proc: proc, addr, state, sock }
}

#[test]
fn metrics_are_served_and_parsed_by_the_prometheus_text_parser() {
    let dir = tempfile::tempdir().unwrap();
    let pb = playbook_src(
        "talker",
        "#{ kind: \"run_command\", target: \"/bin/true\" }",
        "1000",
        "0s",
        "run_command(\"/bin/true\", [], \"say something\");",
    );
    let broken = playbook_src("broken", "", "1", "0s", "throw \"broken on purpose\";");
    let extra = "bpf_stats = true\n[policy]\ncommands = [{ path = \"/bin/true\" }]\n";
    let a = start(dir.path(), extra, &[("talker.rhai", pb), ("broken.rhai", broken)]);
    let s = a.sock.to_str().unwrap();
    let o = run(&["mode", "live", "--reason", "metrics test", "--ttl", "1h", "--socket", s]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(wait_until(30, || audit_lines(&a.state).iter().any(|r| r["kind"] == "action_outcome")), "an action ran and ended");
    let first = scrape(&a.addr);
    std::thread::sleep(Duration::from_millis(2500));
    let m = scrape(&a.addr);

    // Build, ticks, timings.
    assert_eq!(kind(&m, "medic_build_info"), "gauge");
    assert_eq!(value(&m, "medic_build_info", "medic_build_info", &[("version", env!("CARGO_PKG_VERSION")), ("ebpf", "embedded")]), 1.0);
    assert_eq!(kind(&m, "medic_ticks"), "counter");
    let (t0, t1) = (value(&first, "medic_ticks", "medic_ticks_total", &[]), value(&m, "medic_ticks", "medic_ticks_total", &[]));
    assert!(t0 >= 1.0 && t1 > t0, "ticks grow: {t0} then {t1}");
    for h in ["medic_tick_duration_seconds", "medic_sample_duration_seconds", "medic_audit_fsync_duration_seconds"] {
        assert_eq!(kind(&m, h), "histogram", "{h}");
        assert!(value(&m, h, &format!("{h}_count"), &[]) >= 1.0, "{h}");
        assert!(value(&m, h, &format!("{h}_bucket"), &[("le", "+Inf")]) >= 1.0, "{h}");
    }
    let pbl = [("playbook", "talker")];
    assert!(value(&m, "medic_playbook_evaluation_duration_seconds", "medic_playbook_evaluation_duration_seconds_count", &pbl) >= 1.0);
    assert_eq!(value(&m, "medic_playbooks_loaded", "medic_playbooks_loaded", &[]), 2.0);
    assert_eq!(value(&m, "medic_playbooks_disabled", "medic_playbooks_disabled", &[]), 1.0);
    let recs = audit_lines(&a.state);
    let off = recs.iter().find(|r| r["kind"] == "playbook_disabled").expect("the broken playbook is disabled");
    let code = off["error_code"].as_str().unwrap();
    let failed = [("playbook", "broken"), ("error_code", code)];
    assert_eq!(value(&m, "medic_playbook_failures", "medic_playbook_failures_total", &failed), 1.0);

    // Decisions as recorded, with their labels; the executed action's outcome.
    let recs = audit_lines(&a.state);
    let d = recs.iter().find(|r| r["kind"] == "action").expect("a decision in the log");
    let (dec, rule) = (d["decision"].as_str().unwrap(), d["rule"].as_str().unwrap());
    assert!(value(&m, "medic_decisions", "medic_decisions_total", &[("playbook", "talker"), ("decision", dec), ("rule", rule)]) >= 1.0);
    assert!(value(&m, "medic_actions", "medic_actions_total", &[("kind", "run_command"), ("outcome", "ok")]) >= 1.0);
    assert!(value(&m, "medic_action_duration_seconds", "medic_action_duration_seconds_count", &[("kind", "run_command")]) >= 1.0);

    // The audit log: writable, and its last seq (read until the log and the metric agree).
    assert_eq!(value(&m, "medic_audit_writable", "medic_audit_writable", &[]), 1.0);
    let agree = wait_until(20, || {
        let m = scrape(&a.addr);
        let seq = value(&m, "medic_audit_last_seq", "medic_audit_last_seq", &[]);
        audit_lines(&a.state).last().and_then(|r| r["seq"].as_f64()) == Some(seq)
    });
    assert!(agree, "medic_audit_last_seq is the log's last seq");

    // Mode and its expiry (the TTL of 1 h).
    assert_eq!(value(&m, "medic_mode", "medic_mode", &[("mode", "live")]), 1.0);
    assert_eq!(value(&m, "medic_mode", "medic_mode", &[("mode", "dry-run")]), 0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let exp = value(&m, "medic_mode_expiry_timestamp_seconds", "medic_mode_expiry_timestamp_seconds", &[]);
    assert!((exp - now - 3600.0).abs() < 120.0, "expiry {exp}, now {now}");

    // Forwarder off here.
    assert_eq!(value(&m, "medic_forwarder_enabled", "medic_forwarder_enabled", &[]), 0.0);
    assert_eq!(value(&m, "medic_forwarder_connected", "medic_forwarder_connected", &[]), 0.0);
    assert_eq!(value(&m, "medic_forwarder_lag_records", "medic_forwarder_lag_records", &[]), 0.0);

    // eBPF: all four families, their programs counted (bpf_stats on), ring drops known.
    assert_eq!(value(&m, "medic_ebpf_families_loaded", "medic_ebpf_families_loaded", &[]), 4.0);
    for f in ["tcp", "sock", "sched", "block"] {
        assert_eq!(value(&m, "medic_ebpf_family_loaded", "medic_ebpf_family_loaded", &[("family", f)]), 1.0, "{f}");
    }
    for f in ["tcp", "sock"] {
        assert!(value(&m, "medic_ebpf_ring_drops", "medic_ebpf_ring_drops_total", &[("family", f)]) >= 0.0);
    }
    assert_eq!(value(&m, "medic_ebpf_stats_enabled", "medic_ebpf_stats_enabled", &[]), 1.0);
    let sw = [("family", "sched"), ("program", "runq_switch")];
    assert!(value(&m, "medic_ebpf_program_runs", "medic_ebpf_program_runs_total", &sw) > 0.0, "sched_switch runs all the time");
    assert!(value(&m, "medic_ebpf_program_run_seconds", "medic_ebpf_program_run_seconds_total", &sw) > 0.0);
    let programs = samples(&m, "medic_ebpf_program_runs", "medic_ebpf_program_runs_total");
    assert!(programs.iter().any(|(l, _)| l["family"] == "block") && programs.iter().any(|(l, _)| l["family"] == "tcp"), "{programs:?}");

    // The process.
    assert!(value(&m, "process_cpu_seconds", "process_cpu_seconds_total", &[]) > 0.0);
    let rss = value(&m, "process_resident_memory_bytes", "process_resident_memory_bytes", &[]);
    assert!(rss > 1e6 && rss < 1e9, "rss {rss}");
    assert!(value(&m, "process_open_fds", "process_open_fds", &[]) > 3.0);

    // The same registry as OpenMetrics, for a client that asks for it, through its own parser.
    let (status, head, body) = http(&a.addr, b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("application/openmetrics-text"), "{head}");
    let om = parse(&body, true);
    assert_eq!(kind(&om, "medic_ticks"), "counter");
    assert_eq!(kind(&om, "medic_tick_duration_seconds"), "histogram");
}

#[test]
fn metrics_endpoint_survives_hostile_clients_and_the_agent_keeps_ticking() {
    let dir = tempfile::tempdir().unwrap();
    let a = start(dir.path(), "[signals.ebpf]\nenabled = false\n", &[]);
    let ticks = |m: &serde_json::Map<String, Value>| value(m, "medic_ticks", "medic_ticks_total", &[]);
    let before = ticks(&scrape(&a.addr));

    // Other paths, methods and garbage are answered, not served.
    assert_eq!(http(&a.addr, b"GET / HTTP/1.1\r\n\r\n").0, 404);
    assert_eq!(http(&a.addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").0, 405);
    assert_eq!(http(&a.addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n").0, 400);
    // A request bigger than the bound: 431 (or the connection cut), never buffered whole.
    let mut big = b"GET /metrics HTTP/1.1\r\n".to_vec();
    big.extend(std::iter::repeat_n(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".as_slice(), 2000).flatten());
    big.extend(b"\r\n");
    let mut s = TcpStream::connect(&a.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&big); // the server may close before taking it all
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let out = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");

    // Clients that connect and say nothing, and one that sends a byte at a time, more than the
    // endpoint serves at once: the loop goes on (the control socket answers, ticks go on).
    let mut held: Vec<TcpStream> = (0..40).filter_map(|_| TcpStream::connect(&a.addr).ok()).collect();
    let mut slow = TcpStream::connect(&a.addr).unwrap();
    for b in b"GET /metr" {
        let _ = slow.write_all(&[*b]);
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = status_json(&a.sock);
    assert_eq!(st["mode"]["mode"], "dry-run", "the control socket answers while /metrics is flooded: {st}");
    // The held connections give way to a new one (or pass their deadline): /metrics answers.
    let answered = wait_until(30, || http(&a.addr, b"GET /metrics HTTP/1.1\r\n\r\n").0 == 200);
    assert!(answered, "/metrics answers while slow clients hold connections");
    let mut m = scrape(&a.addr);
    let went_on = wait_until(30, || {
        m = scrape(&a.addr);
        ticks(&m) > before + 3.0
    });
    assert!(went_on, "ticks went on: {before} then {}", ticks(&m));
    assert!(value(&m, "medic_metrics_http_refused", "medic_metrics_http_refused_total", &[]) >= 1.0);
    for code in ["400", "404", "405"] {
        assert!(value(&m, "medic_metrics_http_errors", "medic_metrics_http_errors_total", &[("status", code)]) >= 1.0, "{code}");
    }
    // The held connections were closed by the agent, not left open.
    let mut buf = [0u8; 64];
    for c in held.iter_mut().take(5) {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert!(c.read(&mut buf).is_ok(), "closed or answered");
    }
}

#[test]
fn metrics_bind_failure_is_logged_and_the_agent_runs_on() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let sock = dir.path().join("c.sock");
    let cfg = write_config(
        dir.path(),
        &format!("[control]\nsocket = \"{}\"\n[signals.ebpf]\nenabled = false\n[metrics]\nlisten = \"{addr}\"\n", sock.display()),
    );
    let log = dir.path().join("stderr.log");
    let _agent = Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--state-dir", dir.path().join("state").to_str().unwrap()])
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    assert!(wait_until(30, || status_json(&sock)["mode"]["mode"] == "dry-run"), "the agent runs without metrics");
    let t = std::fs::read_to_string(&log).unwrap();
    assert!(t.contains("error_code=\"metrics_bind_failed\"") || t.contains("error_code=metrics_bind_failed"), "{t}");
    assert!(t.contains(&addr.to_string()), "{t}");
}
