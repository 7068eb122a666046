//! `restart_unit` against a real systemd: the test boots a Debian root (made by
//! `.ci/prepare-rootfs`) with systemd-nspawn, systemd as PID 1, starts a unit in it, and the
//! agent, on the host, restarts that unit over the container's system bus. The test reads the
//! unit's InvocationID inside the container: changed in live mode, unchanged in dry-run. The
//! shipped unit: its `systemd-analyze security` score, and the agent installed in the container
//! and run by systemd under it, every action and eBPF family working. These tests do not skip:
//! without the root or systemd-analyze they fail and say how to get them.

use crate::container::Container;
use crate::util::audit_lines;
use medic::config::Config;
use medic::control::mode::ModeState;
use medic::daemon::Agent;
use medic::gate::Mode;
use medic::signals::Snapshot;
use std::path::Path;
use std::time::Duration;

const UNIT: &str = "[Unit]\nDescription=medic test unit\n[Service]\nExecStart=/bin/sleep infinity\n";

fn restart_once(c: &Container, mode: Mode, dir: &Path) -> serde_json::Value {
    act_once(c, mode, dir, "restart_unit")
}

/// One tick of an agent on the host whose playbook asks `kind(\"medic-demo.service\")`, acting
/// over the container's bus; the decision and outcome records.
fn act_once(c: &Container, mode: Mode, dir: &Path, kind: &str) -> serde_json::Value {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    ModeState { mode, since_ms: 1, actor: "test".into(), reason: "test".into(), ..ModeState::fresh() }.save(&state).unwrap();
    let pbs = dir.join("pb");
    std::fs::create_dir_all(&pbs).unwrap();
    std::fs::write(
        pbs.join("r.rhai"),
        format!("const META = #{{ name: \"act-demo\", description: \"t\", interval: \"1s\", actions: [#{{ kind: \"{kind}\", target: \"medic-demo.service\" }}],\n  rate_limit: #{{ max: 5, per: \"1h\" }}, cooldown: \"1m\" }};\nfn evaluate(node, state) {{ {kind}(\"medic-demo.service\", \"test\"); }}\n"),
    )
    .unwrap();
    let cfg = Config::parse("t.toml", &format!("[actions]\nsystemd_bus = \"{}\"\ntimeout_secs = 20\n", c.bus())).unwrap();
    let mut agent = Agent::start(&cfg, Some(pbs), state.clone()).unwrap();
    agent.tick_with(Snapshot { ts_ms: medic::audit::now_ms(), ..Default::default() }).unwrap();
    agent.wait_actions(Duration::from_secs(30));
    agent.stop("test").unwrap();
    assert!(medic::audit::verify::verify(&state.join("audit.log")).unwrap().is_ok());
    let recs = audit_lines(&state);
    let decision = recs.iter().find(|r| r["kind"] == "action").cloned().unwrap();
    let outcome = recs.iter().find(|r| r["kind"] == "action_outcome").cloned().unwrap_or_default();
    serde_json::json!({ "decision": decision, "outcome": outcome })
}

#[test]
fn restart_unit_restarts_a_real_unit_in_live_mode_only() {
    let c = Container::boot(&format!("medic-test-{}", std::process::id()));
    std::fs::write(c.path("/etc/systemd/system/medic-demo.service"), UNIT).unwrap();
    c.sh("systemctl daemon-reload && systemctl start medic-demo.service");
    let id = || c.sh("systemctl show -p InvocationID --value medic-demo.service");
    let first = id();
    assert_eq!(first.len(), 32, "{first}");

    // Dry-run: decided and recorded, the unit untouched.
    let dir = tempfile::tempdir().unwrap();
    let r = restart_once(&c, Mode::DryRun, dir.path());
    assert_eq!(r["decision"]["decision"], "would_execute");
    assert_eq!(id(), first, "dry-run must not restart the unit");

    // Live: restarted, verified by a new InvocationID, which the test sees inside the container.
    let dir = tempfile::tempdir().unwrap();
    let r = restart_once(&c, Mode::Live, dir.path());
    assert_eq!(r["decision"]["decision"], "executed", "{r}");
    let out = &r["outcome"]["outcome"];
    assert_eq!(out["status"], "ok", "{r}");
    assert_eq!(out["verified"], true);
    let second = id();
    assert_ne!(second, first, "the unit was restarted");
    assert_eq!(out["detail"]["invocation_id_after"], second);
    assert_eq!(out["detail"]["invocation_id_before"], first);
    assert_eq!(c.sh("systemctl is-active medic-demo.service"), "active");

    // A unit that does not exist fails with a stable code.
    let dir = tempfile::tempdir().unwrap();
    c.sh("systemctl stop medic-demo.service && rm /etc/systemd/system/medic-demo.service && systemctl daemon-reload");
    let r = restart_once(&c, Mode::Live, dir.path());
    assert_eq!(r["outcome"]["outcome"]["status"], "failed", "{r}");
    assert_eq!(r["outcome"]["outcome"]["error_code"], "restart_refused", "{r}");
}

#[test]
fn start_unit_starts_a_stopped_unit_in_live_mode_only() {
    let c = Container::boot(&format!("medic-start-{}", std::process::id()));
    std::fs::write(c.path("/etc/systemd/system/medic-demo.service"), UNIT).unwrap();
    c.sh("systemctl daemon-reload");
    let state = || c.exec(&["systemctl", "is-active", "medic-demo.service"]).stdout;
    let state = || String::from_utf8_lossy(&state()).trim().to_string();
    assert_eq!(state(), "inactive");

    // Dry-run: decided and recorded, the unit still stopped.
    let dir = tempfile::tempdir().unwrap();
    let r = act_once(&c, Mode::DryRun, dir.path(), "start_unit");
    assert_eq!(r["decision"]["decision"], "would_execute", "{r}");
    assert_eq!(r["decision"]["action"]["kind"], "start_unit", "{r}");
    assert_eq!(state(), "inactive", "dry-run must not start the unit");

    // Live: started, verified active with an invocation it did not have.
    let dir = tempfile::tempdir().unwrap();
    let r = act_once(&c, Mode::Live, dir.path(), "start_unit");
    assert_eq!(r["decision"]["decision"], "executed", "{r}");
    let out = &r["outcome"]["outcome"];
    assert_eq!((&out["status"], &out["verified"]), (&"ok".into(), &true.into()), "{r}");
    assert_eq!(out["detail"]["state_before"], "inactive", "{r}");
    assert_eq!(state(), "active");
    let id = c.sh("systemctl show -p InvocationID --value medic-demo.service");
    assert_eq!(out["detail"]["invocation_id_after"], id);

    // Already active: left alone (same invocation), ok.
    let dir = tempfile::tempdir().unwrap();
    let r = act_once(&c, Mode::Live, dir.path(), "start_unit");
    assert_eq!(r["outcome"]["outcome"]["detail"]["already_active"], true, "{r}");
    assert_eq!(c.sh("systemctl show -p InvocationID --value medic-demo.service"), id);

    // A failed unit is started again (Monit's `depends on`: bring the dependency back).
    std::fs::write(c.path("/etc/systemd/system/medic-demo.service"), "[Service]\nExecStart=/bin/false\n").unwrap();
    c.sh("systemctl daemon-reload && systemctl restart medic-demo.service; sleep 1; true");
    assert_eq!(state(), "failed");
    std::fs::write(c.path("/etc/systemd/system/medic-demo.service"), UNIT).unwrap();
    c.sh("systemctl daemon-reload");
    let dir = tempfile::tempdir().unwrap();
    let r = act_once(&c, Mode::Live, dir.path(), "start_unit");
    assert_eq!(r["outcome"]["outcome"]["status"], "ok", "{r}");
    assert_eq!(r["outcome"]["outcome"]["detail"]["state_before"], "failed", "{r}");
    assert_eq!(state(), "active");

    // A unit that does not exist fails with a stable code.
    c.sh("systemctl stop medic-demo.service && rm /etc/systemd/system/medic-demo.service && systemctl daemon-reload");
    let dir = tempfile::tempdir().unwrap();
    let r = act_once(&c, Mode::Live, dir.path(), "start_unit");
    assert_eq!(r["outcome"]["outcome"]["status"], "failed", "{r}");
    assert_eq!(r["outcome"]["outcome"]["error_code"], "start_refused", "{r}");
}

// ---- The shipped unit: its hardening score, and every action working under it ----

fn analyze_security(unit: &Path) -> (f64, String) {
    let o = std::process::Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(unit)
        .output()
        .expect("systemd-analyze (apt-get install systemd; .ci/setup installs it)");
    let (out, err) = (String::from_utf8_lossy(&o.stdout).to_string(), String::from_utf8_lossy(&o.stderr).to_string());
    let line = out.lines().find(|l| l.contains("Overall exposure level for")).unwrap_or_else(|| panic!("no score in:\n{out}{err}"));
    let score = line.rsplit(':').next().and_then(|v| v.split_whitespace().next()).and_then(|v| v.parse().ok());
    (score.unwrap_or_else(|| panic!("unreadable score: {line}")), err)
}

#[test]
fn shipped_unit_exposure_is_at_most_4() {
    let (score, err) = analyze_security(&crate::util::repo().join("systemd/medic.service"));
    // A misspelt or unknown setting is only a warning to systemd, and silently unhardened.
    assert!(err.trim().is_empty(), "systemd-analyze warned about the unit:\n{err}");
    assert!(score <= 4.0, "systemd-analyze security --offline=true systemd/medic.service: {score} > 4.0");
}

/// The directories the unit lets medic write besides its own state and runtime dirs.
fn read_write_paths(unit: &str) -> Vec<std::path::PathBuf> {
    unit.lines().filter_map(|l| l.strip_prefix("ReadWritePaths=")).flat_map(|v| v.split_whitespace()).map(Into::into).collect()
}

#[test]
fn unit_lets_clean_files_write_every_allowed_path_of_the_shipped_config() {
    let repo = crate::util::repo();
    let unit = std::fs::read_to_string(repo.join("systemd/medic.service")).unwrap();
    let rw = read_write_paths(&unit);
    let text = std::fs::read_to_string(repo.join("packaging/medic.toml")).unwrap();
    let cfg = Config::parse("packaging/medic.toml", &text).unwrap();
    for p in &cfg.policy.allowed_paths {
        assert!(
            rw.iter().any(|w| p.starts_with(w)),
            "policy.allowed_paths has {} but the unit's ReadWritePaths= ({rw:?}) do not",
            p.display()
        );
    }
}

/// `base` (a TOML text) with `lines` put right under the table header `table`.
fn with_keys(base: &str, table: &str, lines: &str) -> String {
    let at = base.find(&format!("\n{table}\n")).unwrap_or_else(|| panic!("packaging/medic.toml has no {table}")) + table.len() + 2;
    format!("{}{lines}\n{}", &base[..at], &base[at..])
}

/// A playbook asking for one action every tick; a cooldown of an hour makes it run once in
/// each mode (dry-run and live keep separate ledgers).
fn once_playbook(name: &str, kind: &str, target: &str, body: &str) -> String {
    crate::util::playbook_src(name, &format!("#{{ kind: \"{kind}\", target: \"{target}\" }}"), "1", "1h", body)
}

/// The body of `GET /metrics` on 127.0.0.1:`port`.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("/metrics on port {port}: {e}"));
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    conn.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or(text)
}

/// The agent installed as an operator would (binary, the shipped unit as it is, the shipped
/// config with this test's policy, test playbooks), started by systemd in a booted container.
/// Every action kind acts in live mode and is verified, every eBPF family loads, and the
/// control socket answers root and belongs to the `medic` group: each capability, system call
/// and path the unit grants is used here, so a setting that takes one away fails this test.
#[test]
fn under_the_hardened_unit_every_action_acts_and_every_ebpf_family_loads() {
    let bin = env!("CARGO_BIN_EXE_medic");
    let c = Container::boot_with(&format!("medic-unit-{}", std::process::id()), &[&format!("--bind-ro={bin}:/usr/bin/medic")]);
    let repo = crate::util::repo();
    let journal = || c.exec(&["journalctl", "-u", "medic", "--no-pager", "-o", "cat"]).stdout;
    let journal = || String::from_utf8_lossy(&journal()).to_string();

    // The unit as shipped; a drop-in with test knobs only (more logging), never the sandbox.
    std::fs::copy(repo.join("systemd/medic.service"), c.path("/etc/systemd/system/medic.service")).unwrap();
    std::fs::create_dir_all(c.path("/etc/systemd/system/medic.service.d")).unwrap();
    std::fs::write(c.path("/etc/systemd/system/medic.service.d/test.conf"), "[Service]\nEnvironment=MEDIC_LOG=debug\n").unwrap();
    // The shipped config with this test's policy: one allowed command, run as `nobody`.
    let base = std::fs::read_to_string(repo.join("packaging/medic.toml")).unwrap();
    let cfg = with_keys(&base, "[policy]", "commands = [{ path = \"/usr/bin/id\", args = [], user = \"nobody\", timeout_secs = 10 }]");
    // The clean_files target is on the container's overlayfs root, where a file reports its
    // layer's device, not the directory's (clean_files tells mounts apart by mount id).
    let cfg = with_keys(&cfg, "[policy]", "allowed_paths = [\"/var/log\", \"/var/log/medic-test\"]");
    let cfg = with_keys(&cfg, "[policy]", "protected_processes = [\"tail\"]");
    assert!(cfg.contains("group = \"medic\""), "the packaged config names the control group");
    // Replication to a broker on the host (the container shares its network), over IPv6 first.
    let broker_dir = tempfile::tempdir().unwrap();
    let mut broker = crate::mqtt::Broker::listening_on(broker_dir.path(), &["127.0.0.1", "::1"]);
    broker.start();
    // /metrics on a free loopback port (the container shares the host's network).
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = with_keys(&cfg, "[metrics]", &format!("listen = \"127.0.0.1:{metrics_port}\""));
    let cfg = with_keys(&cfg, "[mqtt]", &format!("enabled = true\nhost = \"::1\"\nport = {}", broker.port));
    std::fs::create_dir_all(c.path("/etc/medic/playbooks")).unwrap();
    std::fs::write(c.path("/etc/medic/medic.toml"), cfg).unwrap();
    let pbs = [
        ("restart.rhai", once_playbook("t-restart", "restart_unit", "medic-demo.service", "restart_unit(\"medic-demo.service\", \"test\");")),
        (
            "signal.rhai",
            once_playbook(
                "t-signal",
                "signal_process",
                "*",
                "for p in node.processes() { if (p.unit == \"medic-victim.service\" && p.tcp.listen == 1) || p.unit == \"medic-guarded.service\" { signal_process(p.pid, \"TERM\", \"test\"); } }",
            ),
        ),
        (
            "clean.rhai",
            once_playbook(
                "t-clean",
                "clean_files",
                "/var/log/medic-test",
                "clean_files(\"/var/log/medic-test\", #{ glob: \"*.log\", older_than: \"1d\", target_free_bytes: 1073741824 }, \"test\");",
            ),
        ),
        ("command.rhai", once_playbook("t-command", "run_command", "/usr/bin/id", "run_command(\"/usr/bin/id\", [], \"test\");")),
        ("start.rhai", once_playbook("t-start", "start_unit", "medic-dep.service", "start_unit(\"medic-dep.service\", \"test\");")),
    ];
    for (f, src) in &pbs {
        std::fs::write(c.path(&format!("/etc/medic/playbooks/{f}")), src).unwrap();
    }
    // Targets owned by other users than medic's (root): a demo unit, a process of `nobody` in
    // its own unit, and old files of `nobody` in a directory only `nobody` may write
    // (CAP_DAC_OVERRIDE) and in a sticky one under it (CAP_FOWNER).
    std::fs::write(c.path("/etc/systemd/system/medic-demo.service"), UNIT).unwrap();
    // A dependency installed but stopped, for start_unit.
    std::fs::write(c.path("/etc/systemd/system/medic-dep.service"), UNIT).unwrap();
    c.sh("groupadd --system medic && systemctl daemon-reload && systemctl start medic-demo.service");
    // The victim holds a listening socket (passed by its socket unit) that medic must see as
    // its own: readlink of another user's /proc/<pid>/fd/N needs CAP_SYS_PTRACE. So does its
    // /proc/<pid>/exe: without it medic could not tell that a guarded process runs a protected
    // executable, and would signal it.
    std::fs::write(c.path("/etc/systemd/system/medic-victim.socket"), "[Socket]\nListenStream=127.0.0.1:7777\n").unwrap();
    std::fs::write(c.path("/etc/systemd/system/medic-victim.service"), "[Service]\nUser=nobody\nExecStart=/bin/sleep infinity\n").unwrap();
    c.sh("systemctl daemon-reload && systemctl start medic-victim.socket && systemctl start medic-victim.service");
    c.sh("systemd-run --unit=medic-guarded -p User=nobody /usr/bin/tail -f /dev/null");
    c.sh("mkdir /var/log/medic-test && mkdir /var/log/medic-test/sticky \
         && for f in a b sticky/c; do head -c 4096 /dev/zero > /var/log/medic-test/$f.log; done \
         && touch -d '3 days ago' /var/log/medic-test/*.log /var/log/medic-test/sticky/*.log \
         && chown -R nobody:nogroup /var/log/medic-test && chmod 0755 /var/log/medic-test \
         && chmod 1777 /var/log/medic-test/sticky");
    let demo_before = c.sh("systemctl show -p InvocationID --value medic-demo.service");

    let o = c.exec(&["systemctl", "start", "medic.service"]);
    assert!(o.status.success(), "systemctl start medic: {}\n{}", crate::util::text(&o), journal());
    assert!(
        crate::util::wait_until(60, || c.exec(&["systemctl", "is-active", "medic.service"]).stdout.starts_with(b"active")),
        "medic did not become active:\n{}",
        journal()
    );
    // The sandbox is the shipped one (the drop-in loosened nothing).
    let show = c.sh("systemctl show medic.service -p CapabilityBoundingSet -p ProtectProc -p NoNewPrivileges -p ProtectSystem");
    assert!(
        show.contains("ProtectProc=invisible") && show.contains("NoNewPrivileges=yes") && show.contains("ProtectSystem=strict"),
        "{show}"
    );
    assert!(!show.contains("cap_sys_admin"), "{show}");

    // The control socket answers root, and belongs to the medic group (CAP_CHOWN).
    let status = || -> serde_json::Value {
        let o = c.exec(&["medic", "status", "--json"]);
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("medic status --json: {e}: {}\n{}", crate::util::text(&o), journal()))
    };
    // Type=simple is active before the socket is bound (Type=notify only once ready): poll.
    crate::util::wait_until(60, || c.exec(&["medic", "status", "--json"]).status.success());
    let s = status();
    assert_eq!(s["mode"]["mode"], "dry-run", "{s}");
    assert_eq!(c.sh("stat -c '%G %a' /run/medic/control.sock /var/lib/medic /var/lib/medic/audit.log"), "medic 660\nmedic 750\nmedic 640");
    // UMask=0077 leaves the group its access: a member may ask, anyone else is refused.
    c.sh("useradd --no-create-home --groups medic medic-op");
    // No --socket: a user without an agent of their own talks to the system agent's socket.
    let as_user = |user: &str| c.exec(&["runuser", "-u", user, "--", "medic", "status", "--json"]);
    let member = as_user("medic-op");
    assert!(member.status.success(), "a member of the medic group: {}", crate::util::text(&member));
    let other = as_user("nobody");
    assert!(!other.status.success() && crate::util::text(&other).contains("ermission denied"), "{}", crate::util::text(&other));
    // Every eBPF family loaded (and every other signal family read): none is unavailable, and
    // the agent holds the programs.
    assert_eq!(s["unavailable_signals"], serde_json::json!({}), "signal families unavailable under the unit:\n{}", journal());
    let metrics = scrape(metrics_port);
    assert!(metrics.lines().any(|l| l == "medic_ebpf_families_loaded 4"), "/metrics:\n{metrics}");
    let pid = c.sh("systemctl show -p MainPID --value medic.service");
    let progs = c.sh(&format!("ls -l /proc/{pid}/fd | grep -c 'anon_inode:bpf-prog' || true"));
    assert!(progs.parse::<u32>().unwrap_or(0) >= 4, "bpf programs held by medic: {progs}");

    // Live: each action runs once, as the sandboxed daemon, and is verified.
    c.sh("medic mode live --reason 'hardened unit test'");
    let state = c.path("/var/lib/medic");
    let outcomes = || -> Vec<serde_json::Value> { audit_lines(&state).into_iter().filter(|r| r["kind"] == "action_outcome").collect() };
    let done = crate::util::wait_until(60, || outcomes().len() >= 5);
    let recs = audit_lines(&state);
    let all = serde_json::Value::Array(recs.clone());
    assert!(done, "four live outcomes expected:\n{all:#}\n{}", journal());
    for kind in ["restart_unit", "signal_process", "clean_files", "run_command", "start_unit"] {
        let executed = recs.iter().find(|r| r["kind"] == "action" && r["decision"] == "executed" && r["action"]["kind"] == kind);
        let executed = executed.unwrap_or_else(|| panic!("no executed {kind}:\n{all:#}"));
        let outcome = recs.iter().find(|r| r["kind"] == "action_outcome" && r["ref_seq"] == executed["seq"]);
        let outcome = outcome.unwrap_or_else(|| panic!("no outcome of {kind}:\n{all:#}"));
        assert_eq!(outcome["outcome"]["status"], "ok", "{kind}: {outcome:#}\n{}", journal());
        assert_eq!(outcome["outcome"]["verified"], true, "{kind}: {outcome:#}");
    }
    // The guarded process was recognised by its executable and left alone.
    let guarded = recs.iter().find(|r| r["kind"] == "action" && r["decision"] == "denied" && r["action"]["kind"] == "signal_process");
    let guarded = guarded.unwrap_or_else(|| panic!("the guarded process was not denied:\n{all:#}"));
    assert_eq!(guarded["rule"], "policy:protected", "{guarded:#}");
    assert!(guarded.to_string().contains("/usr/bin/tail"), "protected by its executable: {guarded:#}");
    assert_eq!(c.sh("systemctl is-active medic-guarded.service"), "active");
    // And what they did is there to see.
    assert_ne!(c.sh("systemctl show -p InvocationID --value medic-demo.service"), demo_before);
    assert_eq!(c.sh("systemctl is-active medic-dep.service"), "active", "start_unit started the stopped dependency");
    assert_eq!(c.sh("systemctl is-active medic-victim.service || true"), "inactive");
    assert_eq!(c.sh("find /var/log/medic-test -type f | wc -l"), "0");
    let cmd = recs.iter().find(|r| r["kind"] == "action_outcome" && r["outcome"]["detail"]["command"] == "/usr/bin/id").unwrap();
    assert!(cmd["outcome"]["detail"]["stdout"].as_str().unwrap_or("").starts_with("uid=65534(nobody)"), "{cmd:#}");

    // The audit log replicates (AF_INET6), and again after a restart onto the IPv4 address (AF_INET).
    let replicated = |host: &str| {
        crate::util::wait_until(30, || {
            let r = &status()["replication"];
            r["connected"] == true && r["broker"].as_str().unwrap_or("").contains(host) && r["cursor"].as_u64() >= s["last_seq"].as_u64()
        })
    };
    assert!(replicated("::1"), "no replication over IPv6: {}\n{}", status(), journal());
    let conf = std::fs::read_to_string(c.path("/etc/medic/medic.toml")).unwrap().replace("host = \"::1\"", "host = \"127.0.0.1\"");
    std::fs::write(c.path("/etc/medic/medic.toml"), conf).unwrap();
    // A reload (ExecReload: validate, then SIGHUP) and a restart work under the sandbox too.
    c.sh("systemctl reload medic.service && systemctl is-active medic.service");
    c.sh("systemctl restart medic.service");
    crate::util::wait_until(60, || c.exec(&["medic", "status", "--json"]).status.success());
    assert!(replicated("127.0.0.1"), "no replication over IPv4: {}\n{}", status(), journal());

    // Nothing the sandbox refused degraded medic quietly (the TCP table over netlink, not
    // its /proc fallback; no failed read or write): no warning but the mode change.
    let log = journal();
    let bad: Vec<&str> = log.lines().filter(|l| (l.contains(" WARN ") || l.contains(" ERROR ")) && !l.contains("Mode changed.")).collect();
    assert!(bad.is_empty(), "warnings under the hardened unit:\n{}", bad.join("\n"));

    // An orderly stop, recorded.
    c.sh("systemctl stop medic.service");
    assert_eq!(crate::util::kinds(&state).last().map(String::as_str), Some("agent_stopped"), "{}", journal());
}
