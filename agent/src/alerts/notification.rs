//! What an audit record means to a person: [`read`] turns one line of the log into the
//! [`Notification`] a sink delivers (if any) and the [`Ask`] that keeps an Alertmanager alert
//! firing (if any). Pure: a function of the line, the node and the record's own time.
//!
//! - `action` of `notify`, decided `executed` or `would_execute`: a notification (class
//!   `notify`) and an ask that starts or refreshes the alert of (playbook, subject).
//! - `action` of `notify` `suppressed` by `cooldown` or `rate_limit`, and `decision_repeated` of
//!   those: the playbook still asks (an ask that refreshes an alert, nothing delivered).
//! - `action` of another kind, `executed` or `would_execute`: class `action`.
//! - `action` decided `escalated` (a breaker opened): class `escalation`; `breaker_reset`: its end.
//! - `action_outcome` of another kind than `notify`: class `outcome`.
//! - `audit_recovered`: class `audit` (the outage it ends was delivered from memory).
//! - `playbook_unloaded` / `playbook_disabled`: the playbook's alerts resolve (it asks nothing).

use super::config::Class;
use crate::actions::{ActionKind, Status};
use crate::audit::record::Record;
use crate::gate::Decision;
use serde::Serialize;
use serde_json::Value;

/// Bytes of a summary and of a description.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Bytes of `details` (as JSON); beyond, it is sent as a string cut and marked.
pub const MAX_DETAILS_BYTES: usize = 16 * 1024;

/// One notification, as the webhook sends it (docs/AUDIT.md, "Notifications").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    /// The record's `seq` (with `node`, the key to dedupe on); null for `audit_unwritable`,
    /// which is not in the log.
    pub seq: Option<u64>,
    pub node: String,
    /// RFC 3339, the record's time.
    pub ts: String,
    #[serde(skip)]
    pub ts_ms: i64,
    pub class: Class,
    /// The record's `kind` (`action`, `action_outcome`, `breaker_reset`, `audit_recovered`), or
    /// `audit_unwritable`.
    pub kind: String,
    pub playbook: Option<String>,
    /// The action's target (a notification's subject).
    pub target: Option<String>,
    pub action: Option<String>,
    pub decision: Option<String>,
    /// `severity` of a notify call's details, else by class: notify `warning`, action and
    /// outcome `info` (a failed outcome `warning`), escalation and audit `critical`
    /// (`audit_recovered` and `breaker_reset` `info`).
    pub severity: String,
    pub summary: String,
    pub description: String,
    /// A notify call's details; an outcome's record; the audit error.
    pub details: Value,
}

/// The playbook asked for a notification at `at_ms`.
#[derive(Debug, Clone, PartialEq)]
pub struct Ask {
    pub playbook: String,
    pub subject: String,
    pub at_ms: i64,
    /// Whether it may start an alert (a notification the gate let through), or only keep one
    /// firing (a suppressed repeat).
    pub starts: bool,
}

/// What one record means to the sinks.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Read {
    pub seq: u64,
    pub ts_ms: i64,
    pub notification: Option<Notification>,
    pub ask: Option<Ask>,
    /// A playbook that stopped asking for anything (unloaded, disabled).
    pub ended: Option<String>,
    /// A breaker reset: (playbook, action, target).
    pub reset: Option<(String, String, String)>,
    /// A playbook's declared header (`playbook_loaded`): its name and META.
    pub loaded: Option<(String, Value)>,
}

fn rfc3339_ms(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis().min(i64::MAX as u128) as i64)
}

fn text(s: String) -> String {
    crate::signals::parse::bounded(s, MAX_TEXT_BYTES)
}

/// Reads one line of the audit log; None for a line that is not a record.
pub fn read(line: &str, node: &str) -> Option<Read> {
    let v: Value = serde_json::from_str(line).ok()?;
    let seq = v.get("seq")?.as_u64()?;
    let ts = v.get("ts").and_then(Value::as_str).unwrap_or_default().to_string();
    let ts_ms = rfc3339_ms(&ts).unwrap_or(0);
    let node = v.get("node").and_then(Value::as_str).unwrap_or(node).to_string();
    let mut out = Read { seq, ts_ms, ..Default::default() };
    // A record of a shape this version does not read is passed over, like the other readers do.
    let Ok(rec) = serde_json::from_value::<Record>(v.clone()) else { return Some(out) };
    let note = |class: Class, kind: &str, severity: &str, summary: String, description: String, details: Value| Notification {
        seq: Some(seq),
        node: node.clone(),
        ts: ts.clone(),
        ts_ms,
        class,
        kind: kind.to_string(),
        playbook: None,
        target: None,
        action: None,
        decision: None,
        severity: severity.to_string(),
        summary: text(summary),
        description: text(description),
        details: bounded_details(details),
    };
    match rec {
        Record::Action(a) => {
            let pb = a.playbook.name.clone();
            let subject = a.action.target.clone();
            let mut n = match (a.action.kind, a.decision) {
                (ActionKind::Notify, Decision::Executed | Decision::WouldExecute) => {
                    out.ask = Some(Ask { playbook: pb.clone(), subject: subject.clone(), at_ms: ts_ms, starts: true });
                    let details = a.action.params.get("details").cloned().unwrap_or(Value::Null);
                    let severity =
                        details.get("severity").and_then(Value::as_str).filter(|s| severity_ok(s)).unwrap_or("warning").to_string();
                    let description = details
                        .get("description")
                        .and_then(Value::as_str)
                        .map_or_else(|| if details.is_null() { String::new() } else { details.to_string() }, str::to_string);
                    note(Class::Notify, "action", &severity, subject.clone(), description, details)
                }
                (ActionKind::Notify, Decision::Suppressed) if matches!(a.rule.as_str(), "cooldown" | "rate_limit") => {
                    out.ask = Some(Ask { playbook: pb, subject, at_ms: ts_ms, starts: false });
                    return Some(out);
                }
                (_, Decision::Escalated) => note(
                    Class::Escalation,
                    "action",
                    "critical",
                    format!("{} breaker open: {} on {}", pb, a.action.kind, subject),
                    a.detail.clone(),
                    serde_json::json!({ "reason": a.trigger.reason }),
                ),
                (k, Decision::Executed | Decision::WouldExecute) if k != ActionKind::Notify => note(
                    Class::Action,
                    "action",
                    "info",
                    format!("{} {}: {} on {}", pb, a.decision.as_str(), a.action.kind, subject),
                    a.trigger.reason.clone(),
                    serde_json::json!({ "params": a.action.params, "mode": a.mode.as_str() }),
                ),
                _ => return Some(out),
            };
            n.playbook = Some(pb);
            n.target = Some(subject);
            n.action = Some(a.action.kind.as_str().to_string());
            n.decision = Some(a.decision.as_str().to_string());
            out.notification = Some(n);
        }
        Record::DecisionRepeated(r) if r.action.kind == ActionKind::Notify && matches!(r.rule.as_str(), "cooldown" | "rate_limit") => {
            let at_ms = rfc3339_ms(&r.last).unwrap_or(ts_ms);
            out.ask = Some(Ask { playbook: r.playbook.name, subject: r.action.target, at_ms, starts: false });
        }
        Record::ActionOutcome(o) if o.action.kind != ActionKind::Notify => {
            let severity = if o.outcome.status == Status::Ok { "info" } else { "warning" };
            let status = serde_json::to_value(o.outcome.status).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
            let mut n = note(
                Class::Outcome,
                "action_outcome",
                severity,
                format!("{}: {} on {} {status}", o.playbook.name, o.action.kind, o.action.target),
                o.outcome.error.clone().unwrap_or_default(),
                serde_json::json!({ "ref_seq": o.ref_seq, "outcome": o.outcome }),
            );
            n.playbook = Some(o.playbook.name);
            n.target = Some(o.action.target);
            n.action = Some(o.action.kind.as_str().to_string());
            out.notification = Some(n);
        }
        Record::BreakerReset(b) => {
            let mut n = note(
                Class::Escalation,
                "breaker_reset",
                "info",
                format!("{} breaker reset: {} on {}", b.playbook.name, b.action, b.target),
                format!("by {}: {}", b.actor, b.reason),
                Value::Null,
            );
            out.reset = Some((b.playbook.name.clone(), b.action.as_str().to_string(), b.target.clone()));
            n.playbook = Some(b.playbook.name);
            n.target = Some(b.target);
            n.action = Some(b.action.as_str().to_string());
            out.notification = Some(n);
        }
        Record::AuditRecovered(r) => {
            out.notification = Some(note(
                Class::Audit,
                "audit_recovered",
                "info",
                format!("audit log writable again on {node}"),
                format!("unwritable since {}: {}", r.since, r.error),
                serde_json::json!({ "since": r.since, "error": r.error }),
            ));
        }
        Record::PlaybookUnloaded(p) => out.ended = Some(p.playbook.name),
        Record::PlaybookDisabled(p) => out.ended = Some(p.playbook.name),
        Record::PlaybookLoaded(p) => out.loaded = Some((p.playbook.name, p.meta)),
        _ => {}
    }
    Some(out)
}

/// The audit log unwritable since `since_ms` (known only in memory: it cannot be in the log).
pub fn unwritable(node: &str, since_ms: i64, error: &str) -> Notification {
    Notification {
        seq: None,
        node: node.to_string(),
        ts: crate::audit::now_rfc3339(since_ms),
        ts_ms: since_ms,
        class: Class::Audit,
        kind: "audit_unwritable".into(),
        playbook: None,
        target: None,
        action: None,
        decision: None,
        severity: "critical".into(),
        summary: format!("AUDIT LOG NOT WRITABLE on {node}: no action is decided or started"),
        description: text(error.to_string()),
        details: serde_json::json!({ "error": error }),
    }
}

fn bounded_details(details: Value) -> Value {
    let t = details.to_string();
    if t.len() > MAX_DETAILS_BYTES {
        Value::String(crate::signals::parse::cut_marked(t, MAX_DETAILS_BYTES))
    } else {
        details
    }
}

/// Severities a notify call may give (Alertmanager routes on them); others fall back.
fn severity_ok(s: &str) -> bool {
    matches!(s, "critical" | "error" | "warning" | "info" | "page" | "ticket")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(body: Value) -> String {
        let mut v = body;
        v["seq"] = 7.into();
        v["ts"] = "2026-01-02T03:04:05.000Z".into();
        v["node"] = "n1".into();
        v.to_string()
    }

    fn action(kind: &str, decision: &str, rule: &str, params: Value) -> String {
        line(serde_json::json!({
            "kind": "action", "playbook": {"name": "pb", "sha256": null},
            "trigger": {"signals": {}, "reason": "why"}, "action": {"kind": kind, "target": "disk full", "params": params},
            "mode": "live", "decision": decision, "rule": rule, "detail": "d", "outcome": null
        }))
    }

    #[test]
    fn a_notify_let_through_is_delivered_with_its_severity_and_asks() {
        let r = read(&action("notify", "executed", "notify", serde_json::json!({"details": {"severity": "critical", "pct": 97}})), "x")
            .unwrap();
        let n = r.notification.unwrap();
        assert_eq!(
            (n.seq, n.class, n.severity.as_str(), n.summary.as_str(), n.node.as_str()),
            (Some(7), Class::Notify, "critical", "disk full", "n1")
        );
        assert_eq!(n.details["pct"], 97);
        let a = r.ask.unwrap();
        assert!(a.starts && a.playbook == "pb" && a.subject == "disk full" && a.at_ms == 1_767_323_045_000);
        let bad = read(&action("notify", "would_execute", "notify", serde_json::json!({"details": {"severity": "<b>"}})), "x").unwrap();
        assert_eq!(bad.notification.unwrap().severity, "warning");
    }

    #[test]
    fn a_coalesced_notify_still_asks_but_delivers_nothing() {
        let r = read(&action("notify", "suppressed", "cooldown", Value::Null), "x").unwrap();
        assert!(r.notification.is_none() && !r.ask.unwrap().starts);
        let rep = line(serde_json::json!({
            "kind": "decision_repeated", "playbook": {"name": "pb", "sha256": null}, "action": {"kind": "notify", "target": "disk full"},
            "decision": "suppressed", "rule": "cooldown", "mode": "live", "count": 4, "first": "2026-01-02T03:00:00.000Z",
            "last": "2026-01-02T03:04:00.000Z", "first_seq": 3, "window_secs": 600
        }));
        let a = read(&rep, "x").unwrap().ask.unwrap();
        assert_eq!((a.at_ms, a.starts), (1_767_323_040_000, false));
        let denied = read(&action("notify", "denied", "manifest", Value::Null), "x").unwrap();
        assert!(denied.ask.is_none() && denied.notification.is_none());
    }

    #[test]
    fn actions_escalations_and_recoveries_have_their_classes() {
        let r = read(&action("restart_unit", "executed", "mode", Value::Null), "x").unwrap();
        assert_eq!(r.notification.unwrap().class, Class::Action);
        let r = read(&action("restart_unit", "escalated", "breaker", Value::Null), "x").unwrap();
        let n = r.notification.unwrap();
        assert_eq!((n.class, n.severity.as_str()), (Class::Escalation, "critical"));
        let rec = line(
            serde_json::json!({"kind": "audit_recovered", "since": "2026-01-02T03:00:00.000Z", "error": "ENOSPC", "running_actions": 0}),
        );
        assert_eq!(read(&rec, "x").unwrap().notification.unwrap().class, Class::Audit);
        assert!(read("not json", "x").is_none());
        let other = read(&line(serde_json::json!({"kind": "some_future_kind"})), "x").unwrap();
        assert!(other.notification.is_none() && other.seq == 7);
    }
}
