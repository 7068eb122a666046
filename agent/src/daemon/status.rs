//! What the agent says about itself: `medic status` ([`Agent::status`]), the retained status
//! on the broker ([`Agent::public_status`]) and the state gauges of `/metrics`.

use super::Agent;
use crate::gate::Mode;
use serde_json::{json, Value};

impl Agent {
    /// Sets the state gauges (mode, audit, forwarder, playbooks): once a tick and on a mode change.
    pub(super) fn publish_metrics(&self) {
        let m = &self.metrics;
        let last = self.journal.audit.last_seq();
        m.mode(self.mode.mode.as_str(), self.mode.expires_ms);
        m.audit(last, self.journal.down.is_none());
        m.forwarder(self.replication.as_ref().map(|r| (r.borrow().connected, r.borrow().cursor)), last);
        let now = crate::audit::now_ms();
        m.playbooks(self.decider.slots().count(), self.decider.slots().filter(|s| s.disabled_until.is_some_and(|u| u > now)).count());
    }

    /// The retained status published on the broker: what changes rarely (not budgets or seq).
    pub fn public_status(&self) -> String {
        let st = self.status(crate::audit::now_ms());
        serde_json::json!({
            "node": st["node"], "online": true, "version": st["version"], "mode": st["mode"],
            "playbooks": st["playbooks"].as_array().map(|a| a.iter().map(|p| json!({ "name": p["name"], "sha256": p["sha256"] })).collect::<Vec<_>>()),
            "open_breakers": st["open_breakers"], "maintenance": st["maintenance"], "audit_writable": st["audit"]["writable"], "last_seq": st["last_seq"],
            "audit_rewound": st["audit"]["integrity"]["rewound"], "audit_chain_broken": st["audit"]["integrity"]["chain_broken"],
            "groups": self.groups,
        })
        .to_string()
    }

    /// What `medic status` shows.
    pub fn status(&self, now: i64) -> Value {
        let m = &self.mode;
        let playbooks: Vec<Value> = self
            .decider
            .slots()
            .map(|s| {
                let outside = crate::gate::maintenance::outside_active(&s.pb.meta.active, now);
                json!({
                    "name": s.pb.meta.name, "file": s.pb.file, "sha256": s.pb.sha256, "forced_dry_run": s.pb.meta.dry_run,
                    "active_hours": s.pb.meta.active, "inactive": outside.is_some(),
                    "active_again": outside.and_then(|h| h.until_ms).map(crate::audit::now_rfc3339),
                    "breaker": self.decider.gate().breaker_of(&s.pb.meta),
                    "disabled_until": s.disabled_until.filter(|u| *u > now).map(crate::audit::now_rfc3339),
                    "last_error": s.last_error,
                })
            })
            .collect();
        json!({
            "node": self.node,
            "version": env!("CARGO_PKG_VERSION"),
            "mode": {
                "mode": m.mode.as_str(), "since": (m.since_ms > 0).then(|| crate::audit::now_rfc3339(m.since_ms)),
                "actor": m.actor, "reason": m.reason, "expires": m.expires_ms.map(crate::audit::now_rfc3339),
                "revert_to": m.revert_to.map(Mode::as_str),
            },
            "playbooks": playbooks,
            "budget_left": self.decider.gate().budget_left(now),
            "open_breakers": self.decider.gate().open_breakers(),
            "maintenance": self.decider.gate().maintenance().status(now),
            "running_actions": self.runner.running.len(),
            "last_seq": self.journal.audit.last_seq(),
            "audit": {
                "path": self.journal.audit.path().display().to_string(),
                "writable": self.journal.down.is_none(),
                "down_since": self.journal.down.as_ref().map(|(t, _)| crate::audit::now_rfc3339(*t)),
                "error": self.journal.down.as_ref().map(|(_, e)| e.clone()),
                "integrity": self.journal.audit.status(),
            },
            "unavailable_signals": self.unavailable,
            "history": self.history_status,
            "evaluation": {
                "running_since": self.evaluating.as_ref().map(|r| crate::audit::now_rfc3339(r.since_ms)),
                "playbooks": self.evaluating.as_ref().map(|r| r.playbooks.clone()),
                "overruns": self.overruns,
            },
            "gate_ledger_keys": self.decider.gate().ledger_len(),
            "repeat_windows_open": self.journal.repeats.len(),
            "replication": self.replication.as_ref().map(|r| json!(*r.borrow())),
            "sensors": self.sensors.status(),
        })
    }
}
