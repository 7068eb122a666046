//! `start_unit`: starts a systemd unit that is not running (inactive or failed) through
//! systemd's D-Bus API (`StartUnit` with mode `fail`), then watches it: verified when it is
//! `active` within the timeout (with a new `InvocationID` when it had one). A unit already
//! active (or activating) is left alone: the outcome is ok with `already_active` in its detail.
//! The bus is the system bus unless `actions.systemd_bus` names another address.
//!
//! Playbooks ask with `start_unit(unit, reason)` (Monit's `depends on`: start the dependency
//! first). The policy is `restart_unit`'s: a protected unit is refused, and so is one outside
//! `policy.allowed_units`.

use super::request::{ask, err, Evaluation, RhaiResult};
use super::restart_unit::{open, unit_props, Opened};
use super::{ActionKind, ActionRequest, ExecContext, Outcome, Policy, Status};
use rhai::{Engine, NativeCallContext};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use zbus::zvariant::OwnedObjectPath;

async fn start(unit: &str, cx: &ExecContext) -> Outcome {
    let fail = |code, e: String| Outcome::fail(Status::Failed, code, e, Value::Null);
    let Opened { conn, mgr, path, state_before, before } = match open(unit, cx).await {
        Ok(o) => o,
        Err(out) => return out,
    };
    if state_before == "active" || state_before == "activating" || state_before == "reloading" {
        return Outcome::ok(json!({ "unit": unit, "active_state": state_before, "already_active": true }));
    }
    if let Err(e) = mgr.call::<_, _, OwnedObjectPath>("StartUnit", &(unit, "fail")).await {
        return fail("start_refused", format!("{unit}: {e}"));
    }
    let started = Instant::now();
    let mut last = (state_before.clone(), before.clone());
    while started.elapsed() < cx.timeout {
        tokio::time::sleep(Duration::from_millis(100)).await;
        match unit_props(&conn, &path).await {
            Ok((state, id)) => {
                let detail = json!({ "unit": unit, "active_state": state, "state_before": state_before, "invocation_id_before": before, "invocation_id_after": id });
                if state == "active" && id != before {
                    return Outcome::ok(detail);
                }
                // A failed unit stays `failed` until the new job runs: only a new invocation
                // that failed is this start's failure.
                if state == "failed" && id != before {
                    return Outcome::fail(Status::Failed, "unit_failed", format!("{unit} entered failed"), detail);
                }
                last = (state, id);
            }
            Err(e) => return fail("dbus_call", e.to_string()),
        }
    }
    let detail = json!({ "unit": unit, "active_state": last.0, "state_before": state_before, "invocation_id_before": before, "invocation_id_after": last.1 });
    if last.1 != before {
        return Outcome::fail(Status::Unverified, "not_active", format!("{unit} started but is {}", last.0), detail);
    }
    Outcome::fail(Status::TimedOut, "timeout", format!("{unit} did not become active within {:?}", cx.timeout), detail)
}

/// `start_unit(unit, reason)`.
pub fn register<E: Evaluation>(e: &mut Engine) {
    e.register_fn("start_unit", |ctx: NativeCallContext, unit: &str, reason: &str| -> RhaiResult<bool> {
        if unit.is_empty() || unit.contains('/') {
            return Err(err(format!("start_unit: {unit:?} is not a unit name")));
        }
        ask::<E>(&ctx, ActionKind::StartUnit, unit.to_string(), BTreeMap::new(), reason)
    });
}

/// `restart_unit`'s rules: protected units first, then `policy.allowed_units`.
pub fn policy_check(p: &Policy, req: &ActionRequest) -> Option<(&'static str, String)> {
    super::restart_unit::policy_check(p, req)
}

pub fn execute(req: &ActionRequest, cx: &ExecContext) -> Outcome {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(start(&req.target, cx)),
        Err(e) => Outcome::fail(Status::Failed, "runtime", e.to_string(), Value::Null),
    }
}
