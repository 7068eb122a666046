//! `medic explain`: why a playbook did (not) act, from what the decide step keeps anyway. Per
//! playbook: when it was last evaluated and is next due, what that evaluation read and asked,
//! the gate's verdict on each request (or that it asked nothing), and for each target it could
//! act on what would block an action there *now* (`Gate::checks`: every rule, with when it
//! clears). Built only when someone asks: the agent keeps the last evaluation per playbook
//! (`LastEval`, bounded like a request's `signals`) and nothing more.

use super::{Decider, Slot};
use crate::actions::ActionKind;
use crate::gate::Mode;
use serde_json::{json, Value};

/// Targets checked per playbook when none is given (literal manifest entries, the last
/// evaluation's requests, what it ran on recently).
pub const MAX_TARGETS: usize = 32;

/// The node's mode as explain needs it: which, and until when (a TTL).
#[derive(Debug, Clone, Copy)]
pub struct ModeNow {
    pub mode: Mode,
    pub until_ms: Option<i64>,
}

fn rfc(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |t| json!(crate::audit::now_rfc3339(t)))
}

impl Decider {
    /// The answer for `playbook` (all loaded ones when `None`), checking `target` (or the
    /// playbook's own targets, see [`MAX_TARGETS`]). An unknown playbook is an error naming
    /// the loaded ones.
    pub fn explain(&self, playbook: Option<&str>, target: Option<&str>, mode: ModeNow, now: i64) -> Result<Vec<Value>, String> {
        let slots: Vec<&Slot> = self.slots.values().filter(|s| playbook.is_none_or(|p| s.pb.meta.name == p)).collect();
        if let (Some(p), true) = (playbook, slots.is_empty()) {
            return Err(format!("no playbook {p:?} is loaded (loaded: {})", self.playbook_names().join(", ")));
        }
        Ok(slots.into_iter().map(|s| self.explain_one(s, target, mode, now)).collect())
    }

    fn explain_one(&self, s: &Slot, target: Option<&str>, mode: ModeNow, now: i64) -> Value {
        let meta = &s.pb.meta;
        let last = s.last.as_ref();
        let reads: Vec<Value> = last.map(|l| l.reads.iter().map(|(k, v)| json!({ "key": k, "value": v })).collect()).unwrap_or_default();
        let requests: Vec<Value> = last
            .map(|l| {
                l.requests
                    .iter()
                    .map(|a| json!({ "kind": a.kind, "target": a.target, "decision": a.decision, "rule": a.rule, "detail": a.detail }))
                    .collect()
            })
            .unwrap_or_default();
        let pairs = self.targets_of(s, target, mode.mode);
        let mut checks = Vec::new();
        let mut blocked_by = Vec::new();
        for (kind, t) in &pairs {
            for c in self.gate.checks(meta, *kind, t, mode.mode, mode.until_ms, now) {
                let v =
                    json!({ "kind": kind, "target": t, "rule": c.rule, "blocks": c.blocks, "detail": c.detail, "until": rfc(c.until_ms) });
                if c.blocks {
                    blocked_by.push(v.clone());
                }
                checks.push(v);
            }
        }
        json!({
            "playbook": meta.name,
            "file": s.pb.file,
            "sha256": s.pb.sha256,
            "interval_secs": meta.interval_ms / 1000,
            "active_hours": meta.active,
            "breaker": self.gate.breaker_of(meta),
            "last_evaluated": rfc(last.map(|l| l.at_ms)),
            "next_due": rfc(s.next_due_ms()),
            "disabled_until": rfc(s.disabled_until.filter(|u| *u > now)),
            "last_error": last.and_then(|l| l.error.clone()),
            "reads": reads,
            "reads_omitted": last.map_or(0, |l| l.reads_omitted),
            "asked_nothing": last.is_some_and(|l| l.error.is_none() && l.requests.is_empty()),
            "requests": requests,
            "targets": pairs.iter().map(|(k, t)| json!({ "kind": k, "target": t })).collect::<Vec<_>>(),
            "blocked_by": blocked_by,
            "checks": checks,
        })
    }

    /// What to check: `target` for each kind of the manifest whose pattern matches it (all
    /// kinds when none does: the manifest then says no); else the manifest's literal targets,
    /// the last evaluation's requests and what the playbook ran on recently.
    fn targets_of(&self, s: &Slot, target: Option<&str>, mode: Mode) -> Vec<(ActionKind, String)> {
        let meta = &s.pb.meta;
        let mut v: Vec<(ActionKind, String)> = match target {
            Some(t) => {
                let kinds: Vec<ActionKind> = meta.actions.iter().filter(|c| meta.allows(c.kind, t)).map(|c| c.kind).collect();
                let kinds = if kinds.is_empty() { meta.actions.iter().map(|c| c.kind).collect() } else { kinds };
                kinds.into_iter().map(|k| (k, t.to_string())).collect()
            }
            None => {
                let effective = if meta.dry_run { Mode::DryRun } else { mode };
                let literal = meta.actions.iter().filter(|c| !c.target.contains(['*', '?', '['])).map(|c| (c.kind, c.target.clone()));
                let asked =
                    s.last.iter().flat_map(|l| l.requests.iter()).filter_map(|a| ActionKind::parse(&a.kind).map(|k| (k, a.target.clone())));
                literal.chain(asked).chain(self.gate.recent_targets(&meta.name, effective)).collect()
            }
        };
        v.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        v.dedup();
        v.truncate(MAX_TARGETS);
        v
    }
}
