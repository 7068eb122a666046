//! What would block an action *now*, for `medic explain`: every rule of the gate in its order
//! (see the module note of `gate`), read without changing anything, each with whether it
//! blocks, why, and when that clears. [`Gate::decide`] stops at the first rule that decides;
//! this lists them all, so an operator sees the cooldown *and* the budget behind it. A test
//! holds the two together: the first blocking check here is the rule `decide` names.

use super::{secs, BreakerKey, Gate, Mode, HOUR_MS};
use crate::actions::{ActionKind, ActionRequest};
use crate::playbooks::meta::Meta;
use serde::Serialize;

/// One rule's answer for one (kind, target).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub rule: &'static str,
    pub blocks: bool,
    pub detail: String,
    /// When it stops blocking (ms since the epoch); `None`: not by itself (an operator, the end
    /// of an action, a change of config or manifest).
    pub until_ms: Option<i64>,
}

impl Gate {
    /// Every rule's answer for `kind` on `target` asked by the playbook of `meta` now, with the
    /// node in `node_mode` (which it leaves at `mode_until`, if set).
    pub fn checks(&self, meta: &Meta, kind: ActionKind, target: &str, node_mode: Mode, mode_until: Option<i64>, now: i64) -> Vec<Check> {
        let mut out = Vec::new();
        let mut check = |rule, blocks, detail: String, until_ms| out.push(Check { rule, blocks, detail, until_ms });
        let mode = if meta.dry_run { Mode::DryRun } else { node_mode };
        match (mode, meta.dry_run) {
            (Mode::DryRun, true) => check("mode", true, "the playbook forces dry-run: it would execute, never executes".into(), None),
            (Mode::DryRun, false) => check("mode", true, "the node is in dry-run: it would execute, nothing changes".into(), mode_until),
            (Mode::Live, _) => check("mode", false, "the node is live".into(), None),
        }
        let allowed = meta.allows(kind, target);
        check(
            "manifest",
            !allowed,
            if allowed {
                format!("{kind} on {target:?} is in the manifest")
            } else {
                format!("{kind} on {target:?} is outside the manifest")
            },
            None,
        );
        let req = ActionRequest {
            kind,
            target: target.to_string(),
            params: Default::default(),
            reason: String::new(),
            signals: Default::default(),
        };
        match self.policy_refuses(&req) {
            Some((rule, why)) => check(if rule == "protected" { "policy:protected" } else { "policy:allowlist" }, true, why, None),
            None => check("policy", false, "allowed by the node's policy".into(), None),
        }
        match self.maintenance_hold(meta, kind, now) {
            Some(hold) => check("maintenance", true, hold.detail, hold.until_ms),
            None => check("maintenance", false, "no maintenance window, within the playbook's active hours".into(), None),
        }
        let key: BreakerKey = (meta.name.clone(), kind, target.to_string());
        let ledger = match mode {
            Mode::DryRun => &self.dry,
            Mode::Live => &self.live,
        };
        match ledger.last_run.get(&key).filter(|t| now - **t < meta.cooldown_ms) {
            Some(t) => check(
                "cooldown",
                true,
                format!("cooldown {}: last ran {} ago, {} left", secs(meta.cooldown_ms), secs(now - t), secs(t + meta.cooldown_ms - now)),
                Some(t + meta.cooldown_ms),
            ),
            None => check("cooldown", false, format!("cooldown {}: not running", secs(meta.cooldown_ms)), None),
        }
        let per = meta.rate_limit.per_ms;
        let runs: Vec<i64> = ledger
            .runs
            .get(&(key.0.clone(), key.2.clone()))
            .map(|r| r.iter().copied().filter(|t| *t > now - per).collect())
            .unwrap_or_default();
        let max = meta.rate_limit.max as usize;
        let full = runs.len() >= max;
        // It clears when enough of the window's runs have aged out to leave room for one.
        let until = full.then(|| runs.get(runs.len() - max).map(|t| t + per)).flatten();
        check("rate_limit", full, format!("{} of {max} per {} used", runs.len(), secs(per)), until);
        if kind == ActionKind::Notify {
            return out;
        }
        let budget_max = self.policy.budget_per_hour as usize;
        let hour: Vec<i64> = ledger.budget.iter().copied().filter(|t| *t > now - HOUR_MS).collect();
        let spent = hour.len() >= budget_max;
        let until = spent.then(|| hour.get(hour.len() - budget_max).map(|t| t + HOUR_MS)).flatten();
        check(
            "budget",
            spent,
            format!("{} of the node's {budget_max} actions per hour left", budget_max.saturating_sub(hour.len())),
            until,
        );
        if mode == Mode::Live {
            let busy = self.in_flight.contains(&(kind, target.to_string()));
            check(
                "in_flight",
                busy,
                if busy { format!("an action on {target:?} is still running") } else { "no action on it running".into() },
                None,
            );
            let full = self.running >= self.policy.max_concurrent;
            check(
                "concurrency",
                full,
                format!("{} of {} actions running (policy.max_concurrent)", self.running, self.policy.max_concurrent),
                None,
            );
        }
        let breaker = self.breaker_of(meta);
        let (window, after) = (breaker.within_ms, breaker.after as usize);
        match ledger.breakers.get(&key) {
            Some(b) if b.open_since.is_some() => check(
                "breaker_open",
                true,
                format!(
                    "breaker open since {}; `medic breaker reset` to re-arm",
                    crate::audit::now_rfc3339(b.open_since.unwrap_or_default())
                ),
                None,
            ),
            b => {
                let n = b.map_or(0, |b| b.runs.iter().filter(|t| **t > now - window).count());
                let detail = format!("{n} of {after} runs within {} before it opens", secs(window));
                check("breaker", n >= after, detail, None)
            }
        }
        out
    }

    /// The (kind, target) pairs the playbook `name` ran on recently in `mode`'s ledger: where a
    /// cooldown, a rate window or a breaker may be holding it.
    pub fn recent_targets(&self, name: &str, mode: Mode) -> Vec<(ActionKind, String)> {
        let ledger = match mode {
            Mode::DryRun => &self.dry,
            Mode::Live => &self.live,
        };
        let mut v: Vec<(ActionKind, String)> =
            ledger.last_run.keys().chain(ledger.breakers.keys()).filter(|k| k.0 == name).map(|k| (k.1, k.2.clone())).collect();
        v.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
        v.dedup();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PolicyConfig;

    fn meta(cooldown_ms: i64) -> Meta {
        let src = format!(
            "const META = #{{ name: \"p\", description: \"d\", interval: \"1s\", actions: [#{{ kind: \"notify\", target: \"*\" }}], rate_limit: #{{ max: 2, per: \"1h\" }}, cooldown: \"{}s\" }};\nfn evaluate(node, state) {{}}",
            cooldown_ms / 1000
        );
        crate::playbooks::Runtime::new(Default::default()).compile("p.rhai", &src).expect("compiles").meta
    }

    fn notify_x() -> ActionRequest {
        ActionRequest {
            kind: ActionKind::Notify,
            target: "x".into(),
            params: Default::default(),
            reason: String::new(),
            signals: Default::default(),
        }
    }

    /// The first blocking check is the rule `decide` names, at every step of a run of requests
    /// (cooldown, then rate limit), and nothing blocks when `decide` lets it through.
    #[test]
    fn the_first_blocking_check_is_the_rule_decide_names() {
        let mut gate = Gate::for_fixtures(PolicyConfig::default());
        let m = meta(60_000);
        let req = notify_x();
        for t in [0, 10_000, 61_000, 70_000, 130_000, 3_700_000] {
            let now = 1_700_000_000_000 + t;
            let checks = gate.checks(&m, ActionKind::Notify, "x", Mode::Live, None, now);
            let first = checks.iter().find(|c| c.blocks).map(|c| c.rule);
            let v = gate.decide(&m, &req, Mode::Live, now);
            match first {
                Some(rule) => assert_eq!(rule, v.rule, "at {t}: {checks:?}"),
                None => assert_eq!(v.rule, "notify", "at {t}: {checks:?}"),
            }
        }
    }

    #[test]
    fn a_cooldown_says_when_it_clears() {
        let mut gate = Gate::for_fixtures(PolicyConfig::default());
        let m = meta(300_000);
        let req = notify_x();
        let t0 = 1_700_000_000_000;
        gate.decide(&m, &req, Mode::DryRun, t0);
        let c = gate.checks(&m, ActionKind::Notify, "x", Mode::DryRun, None, t0 + 100_000);
        let cd = c.iter().find(|c| c.rule == "cooldown").expect("a cooldown check");
        assert!(cd.blocks, "{c:?} {}", m.cooldown_ms);
        assert_eq!(cd.until_ms, Some(t0 + 300_000));
        assert!(cd.detail.contains("3m 20s left"), "{}", cd.detail);
        assert_eq!(gate.recent_targets("p", Mode::DryRun), vec![(ActionKind::Notify, "x".to_string())]);
    }
}
