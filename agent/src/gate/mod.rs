//! The gate: the single place that decides what becomes of an action request. Rules run in a
//! fixed order and the first that decides names itself in the audit record:
//!
//! 1. `manifest`: the request is outside the playbook's capability manifest → `denied`;
//! 2. `cooldown`: the same (playbook, action, target) ran less than the cooldown ago → `suppressed`;
//! 3. `rate_limit`: the playbook already ran `max` times on this target within `per` → `suppressed`;
//! 4. `mode`: the node is in dry-run (always, in this release) or the playbook forces dry-run
//!    → `would_execute`; a `notify` only records, so it is `executed` whatever the mode.
//!
//! `would_execute` counts against cooldowns and rate limits exactly as an execution would, so
//! dry-run shows what live mode would do. Time comes from the caller (the snapshot's clock), so
//! the same requests at the same times always get the same decisions.

use crate::actions::{ActionKind, ActionRequest};
use crate::playbooks::meta::Meta;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};

/// The node's mode. Only dry-run exists until live mode lands with the safe executors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    #[serde(rename = "dry-run")]
    DryRun,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        "dry-run"
    }
}

/// What became of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Executed,
    WouldExecute,
    Suppressed,
    Denied,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::WouldExecute => "would_execute",
            Self::Suppressed => "suppressed",
            Self::Denied => "denied",
        }
    }
}

/// A decision, the rule that made it, and a sentence for humans.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub decision: Decision,
    pub rule: &'static str,
    pub detail: String,
}

/// Cooldown and rate-limit memory (in memory; persisted across restarts with live mode).
#[derive(Debug, Default)]
pub struct Gate {
    last_run: HashMap<(String, ActionKind, String), i64>,
    runs: HashMap<(String, String), VecDeque<i64>>,
}

fn secs(ms: i64) -> String {
    humantime::format_duration(std::time::Duration::from_millis(ms.max(0) as u64 / 1000 * 1000)).to_string()
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn decide(&mut self, meta: &Meta, req: &ActionRequest, mode: Mode, now_ms: i64) -> Verdict {
        let verdict = |decision, rule, detail: String| Verdict { decision, rule, detail };
        if !meta.allows(req.kind, &req.target) {
            let allowed: Vec<String> = meta.actions.iter().filter(|c| c.kind == req.kind).map(|c| c.target.clone()).collect();
            return verdict(
                Decision::Denied,
                "manifest",
                format!("{} on {:?} is outside the manifest (allowed targets: {:?})", req.kind, req.target, allowed),
            );
        }
        let ckey = (meta.name.clone(), req.kind, req.target.clone());
        if let Some(last) = self.last_run.get(&ckey) {
            let since = now_ms - last;
            if since < meta.cooldown_ms {
                return verdict(
                    Decision::Suppressed,
                    "cooldown",
                    format!("cooldown {}: last ran {} ago", secs(meta.cooldown_ms), secs(since)),
                );
            }
        }
        let rkey = (meta.name.clone(), req.target.clone());
        let window = self.runs.entry(rkey).or_default();
        while window.front().is_some_and(|t| *t <= now_ms - meta.rate_limit.per_ms) {
            window.pop_front();
        }
        if window.len() >= meta.rate_limit.max as usize {
            return verdict(
                Decision::Suppressed,
                "rate_limit",
                format!("rate limit {} per {} reached", meta.rate_limit.max, secs(meta.rate_limit.per_ms)),
            );
        }
        window.push_back(now_ms);
        self.last_run.insert(ckey, now_ms);
        if req.kind == ActionKind::Notify {
            return verdict(Decision::Executed, "notify", "a notification only records; nothing on the host changes".into());
        }
        let why = match (mode, meta.dry_run) {
            (_, true) => "the playbook forces dry-run",
            (Mode::DryRun, false) => "the node is in dry-run",
        };
        verdict(Decision::WouldExecute, "mode", format!("{}: nothing was changed", why))
    }
}
