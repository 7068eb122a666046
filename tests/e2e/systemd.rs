//! `restart_unit` against a real systemd: the test boots a Debian root (made by
//! `.ci/prepare-rootfs`) with systemd-nspawn, systemd as PID 1, starts a unit in it, and the
//! agent, on the host, restarts that unit over the container's system bus. The test reads the
//! unit's InvocationID inside the container: changed in live mode, unchanged in dry-run. This
//! test does not skip: without the root it fails and says how to make it.

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
