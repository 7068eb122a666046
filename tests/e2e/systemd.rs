//! `restart_unit` against a real systemd: the test boots a Debian root (made by
//! `.ci/prepare-rootfs`) with systemd-nspawn, systemd as PID 1, starts a unit in it, and the
//! agent, on the host, restarts that unit over the container's system bus. The test reads the
//! unit's InvocationID inside the container: changed in live mode, unchanged in dry-run. This
//! test does not skip: without the root it fails and says how to make it.

use crate::util::audit_lines;
use medic::config::Config;
use medic::control::mode::ModeState;
use medic::daemon::Agent;
use medic::gate::Mode;
use medic::signals::Snapshot;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn rootfs() -> PathBuf {
    let root = PathBuf::from(std::env::var("MEDIC_TEST_ROOTFS").unwrap_or_else(|_| "/var/cache/medic-test/bookworm".into()));
    assert!(
        root.join("lib/systemd/systemd").exists(),
        "no Debian root at {}: run `bash .ci/prepare-rootfs` (as root) first",
        root.display()
    );
    root
}

/// A booted container; halted and cleaned up on drop.
struct Container {
    name: String,
    nspawn: Child,
    leader: i32,
}

fn cgroup_dirs(name: &str) -> [PathBuf; 2] {
    [PathBuf::from(format!("/sys/fs/cgroup/unified/nspawn-{name}")), PathBuf::from(format!("/sys/fs/cgroup/systemd/nspawn-{name}"))]
}

fn remove_tree(dir: &Path) {
    // Depth-first: cgroup directories are removed with rmdir, children before parents.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Container {
    fn boot(name: &str) -> Self {
        let root = rootfs();
        for d in cgroup_dirs(name) {
            remove_tree(&d);
            std::fs::create_dir_all(&d).unwrap();
        }
        let script = format!(
            "for h in unified systemd; do echo $$ > /sys/fs/cgroup/$h/nspawn-{name}/cgroup.procs; done; \
             exec systemd-nspawn --quiet --boot --directory={} --machine={name} --register=no --keep-unit \
             --console=read-only --capability=all --system-call-filter='bpf perf_event_open' --volatile=overlay",
            root.display()
        );
        let nspawn = Command::new("setsid")
            .args(["bash", "-c", &script])
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-nspawn (apt-get install systemd-container)");
        let mut c = Self { name: name.into(), nspawn, leader: 0 };
        let t = Instant::now();
        while c.leader == 0 && t.elapsed() < Duration::from_secs(30) {
            c.leader = find_leader(c.nspawn.id() as i32).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(c.leader > 0, "container {name} did not start");
        let t = Instant::now();
        loop {
            let o = c.exec(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "container {name} not running: {state}");
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(cmd)
            .output()
            .unwrap()
    }

    fn sh(&self, script: &str) -> String {
        let o = self.exec(&["sh", "-c", script]);
        assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn bus(&self) -> String {
        format!("unix:path=/proc/{}/root/run/dbus/system_bus_socket", self.leader)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // An orderly halt, then the host cgroup directories.
        let pid = rustix::process::Pid::from_raw(self.nspawn.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Ok(None) = self.nspawn.try_wait() {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        for d in cgroup_dirs(&self.name) {
            remove_tree(&d);
        }
    }
}

/// The container's PID 1: a child of nspawn whose innermost pid is 1.
fn find_leader(nspawn: i32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).map(|v| v.trim().parse::<i32>().unwrap_or(0));
        let nspid_last =
            status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last().map(str::to_string));
        if ppid == Some(nspawn) && nspid_last.as_deref() == Some("1") {
            return Some(pid);
        }
    }
    None
}

const UNIT: &str = "[Unit]\nDescription=medic test unit\n[Service]\nExecStart=/bin/sleep infinity\n";

fn restart_once(c: &Container, mode: Mode, dir: &Path) -> serde_json::Value {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    ModeState { mode, since_ms: 1, actor: "test".into(), reason: "test".into(), ..ModeState::fresh() }.save(&state).unwrap();
    let pbs = dir.join("pb");
    std::fs::create_dir_all(&pbs).unwrap();
    std::fs::write(
        pbs.join("r.rhai"),
        "const META = #{ name: \"restart-demo\", description: \"t\", interval: \"1s\", actions: [#{ kind: \"restart_unit\", target: \"medic-demo.service\" }],\n  rate_limit: #{ max: 5, per: \"1h\" }, cooldown: \"1m\" };\nfn evaluate(node, state) { restart_unit(\"medic-demo.service\", \"test\"); }\n",
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
    c.sh(&format!(
        "printf '{UNIT}' > /etc/systemd/system/medic-demo.service && systemctl daemon-reload && systemctl start medic-demo.service"
    ));
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
