//! `restart_unit`: restarts a systemd unit through systemd's D-Bus API (`RestartUnit` with mode
//! `replace`), then watches the unit: verified when it is `active` again with a new
//! `InvocationID` (a restart that systemd merged into another job, or that left the unit
//! inactive, is not verified). The bus is the system bus unless `actions.systemd_bus` names
//! another address (tests use a container's).
//!
//! Playbooks ask with `restart_unit(unit, reason)`. The policy refuses a protected unit
//! ([`super::protect::PROTECTED_UNITS`], `policy.protected_units`) and one outside
//! `policy.allowed_units` (config keys: `allowed_units`, `protected_units`).

use super::glob::glob_match;
use super::request::{ask, err, Evaluation, RhaiResult};
use super::{protect, ActionKind, ActionRequest, ExecContext, Outcome, Policy, Status};
use rhai::{Engine, NativeCallContext};
use std::collections::BTreeMap;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use zbus::zvariant::OwnedObjectPath;

const DEST: &str = "org.freedesktop.systemd1";

async fn connect(bus: Option<&str>) -> zbus::Result<zbus::Connection> {
    match bus {
        Some(addr) => zbus::connection::Builder::address(addr)?.build().await,
        None => zbus::Connection::system().await,
    }
}

pub(super) async fn unit_props(conn: &zbus::Connection, path: &OwnedObjectPath) -> zbus::Result<(String, String)> {
    let unit = zbus::Proxy::new(conn, DEST, path.as_str(), "org.freedesktop.systemd1.Unit").await?;
    let state: String = unit.get_property("ActiveState").await?;
    let id: Vec<u8> = unit.get_property("InvocationID").await?;
    Ok((state, hex::encode(id)))
}

/// A unit looked up on systemd's bus, with its state and invocation before the job.
pub(super) struct Opened {
    pub conn: zbus::Connection,
    pub mgr: zbus::Proxy<'static>,
    pub path: OwnedObjectPath,
    pub state_before: String,
    pub before: String,
}

/// Connects, loads `unit` and reads its state: what `restart_unit` and `start_unit` do before
/// their job; a failure is the action's outcome.
pub(super) async fn open(unit: &str, cx: &ExecContext) -> Result<Opened, Outcome> {
    let fail = |code, e: String| Outcome::fail(Status::Failed, code, e, Value::Null);
    let conn = connect(cx.systemd_bus.as_deref()).await.map_err(|e| fail("dbus_connect", format!("cannot reach systemd's bus: {e}")))?;
    let mgr = zbus::Proxy::new(&conn, DEST, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager")
        .await
        .map_err(|e| fail("dbus_call", e.to_string()))?;
    let path: OwnedObjectPath = mgr.call("LoadUnit", &(unit,)).await.map_err(|e| fail("no_such_unit", format!("{unit}: {e}")))?;
    let (state_before, before) = unit_props(&conn, &path).await.map_err(|e| fail("dbus_call", e.to_string()))?;
    Ok(Opened { conn, mgr, path, state_before, before })
}

async fn restart(unit: &str, cx: &ExecContext) -> Outcome {
    let fail = |code, e: String| Outcome::fail(Status::Failed, code, e, Value::Null);
    let Opened { conn, mgr, path, state_before, before } = match open(unit, cx).await {
        Ok(o) => o,
        Err(out) => return out,
    };
    if let Err(e) = mgr.call::<_, _, OwnedObjectPath>("RestartUnit", &(unit, "replace")).await {
        return fail("restart_refused", format!("{unit}: {e}"));
    }
    let start = Instant::now();
    let mut last = (state_before.clone(), before.clone());
    while start.elapsed() < cx.timeout {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match unit_props(&conn, &path).await {
            Ok((state, id)) => {
                let detail = json!({ "unit": unit, "active_state": state, "invocation_id_before": before, "invocation_id_after": id, "state_before": state_before });
                if state == "active" && !id.is_empty() && id != before {
                    return Outcome::ok(detail);
                }
                if state == "failed" {
                    return Outcome::fail(Status::Failed, "unit_failed", format!("{unit} entered failed"), detail);
                }
                last = (state, id);
            }
            Err(e) => return fail("dbus_call", e.to_string()),
        }
    }
    let detail = json!({ "unit": unit, "active_state": last.0, "invocation_id_before": before, "invocation_id_after": last.1 });
    if last.1 != before && !last.1.is_empty() {
        return Outcome::fail(Status::Unverified, "not_active", format!("{unit} restarted but is {}", last.0), detail);
    }
    Outcome::fail(Status::TimedOut, "timeout", format!("{unit} did not come back within {:?}", cx.timeout), detail)
}

/// `restart_unit(unit, reason)`.
pub fn register<E: Evaluation>(e: &mut Engine) {
    e.register_fn("restart_unit", |ctx: NativeCallContext, unit: &str, reason: &str| -> RhaiResult<bool> {
        if unit.is_empty() || unit.contains('/') {
            return Err(err(format!("restart_unit: {unit:?} is not a unit name")));
        }
        ask::<E>(&ctx, ActionKind::RestartUnit, unit.to_string(), BTreeMap::new(), reason)
    });
}

/// Protected units first, then the allowlist.
pub fn policy_check(p: &Policy, req: &ActionRequest) -> Option<(&'static str, String)> {
    let u = req.target.as_str();
    if protect::unit_protected(u, p.protected_units) {
        return Some(("protected", format!("{u} is protected")));
    }
    if !p.allowed_units.iter().any(|pat| glob_match(pat, u)) {
        return Some(("allowlist", format!("{u} is not in policy.allowed_units {:?}", p.allowed_units)));
    }
    None
}

pub fn execute(req: &ActionRequest, cx: &ExecContext) -> Outcome {
    // Executors run on their own threads; zbus's async API gets a small runtime of its own.
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(restart(&req.target, cx)),
        Err(e) => Outcome::fail(Status::Failed, "runtime", e.to_string(), Value::Null),
    }
}
