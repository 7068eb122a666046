//! `medic playbook replay`: playbooks (new, edited, or the loaded ones) run through the decide
//! step on a recorded timeline (`recorder`), with the recording's clock, the node's policy and
//! limits, in dry-run: what they would have asked and what the gate would have decided, with
//! times, and a summary per playbook.
//!
//! The replay starts with empty gate ledgers and an empty history at the first frame it plays,
//! as an agent started on a fresh state directory would: cooldowns and budgets spent before
//! `--from` are not known, and window aggregates are unavailable until the history reaches back
//! over their window. Frames where an eBPF event woke the agent evaluate every playbook, as they
//! did live. So over a recording made from an agent's start, replaying its own playbooks gives
//! its own dry-run decisions back (a test holds it).

use super::{Decided, Decider, Step, Timeline};
use crate::gate::Mode;
use crate::signals::history::History;
use crate::signals::Snapshot;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What one playbook would have done over the replayed stretch.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Summary {
    pub evaluations: u64,
    pub requests: u64,
    pub would_execute: u64,
    /// Refusals (`suppressed`, `denied`) by rule.
    pub refused_by_rule: BTreeMap<String, u64>,
    /// Breakers that would have opened (`escalated`), by "kind target".
    pub breakers_opened: Vec<String>,
    /// Times it would have been disabled (an error or a limit), with the first error.
    pub disabled: u64,
    pub first_error: Option<String>,
}

/// A replay in progress.
pub struct Replay {
    timeline: Timeline,
    pub summaries: BTreeMap<String, Summary>,
    pub frames: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

impl Replay {
    /// A replay of `decider`'s playbooks (gated with its gate, which holds the node's policy)
    /// over a history of the node's shape.
    pub fn new(decider: Decider, history: History) -> Self {
        let summaries = decider.slots().map(|s| (s.pb.meta.name.clone(), Summary::default())).collect();
        Self {
            timeline: Timeline { decider, history: Arc::new(history), mode: Mode::DryRun },
            summaries,
            frames: 0,
            first_ms: None,
            last_ms: None,
        }
    }

    /// The decider (its slots hold each playbook's last evaluation, for cutting a test case).
    pub fn decider(&self) -> &Decider {
        &self.timeline.decider
    }

    /// Plays one recorded frame; returns its decisions.
    pub fn feed(&mut self, snap: Snapshot, forced: crate::signals::wake::Wake) -> Step {
        let ts = snap.ts_ms;
        self.first_ms.get_or_insert(ts);
        self.last_ms = Some(ts);
        self.frames += 1;
        let step = self.timeline.tick(snap, forced);
        for name in &step.evaluated {
            self.summaries.entry(name.clone()).or_default().evaluations += 1;
        }
        for d in &step.decisions {
            self.count(d);
        }
        for (name, error, _) in &step.disabled {
            let s = self.summaries.entry(name.clone()).or_default();
            s.disabled += 1;
            s.first_error.get_or_insert_with(|| error.clone());
        }
        step
    }

    fn count(&mut self, d: &Decided) {
        let s = self.summaries.entry(d.playbook.clone()).or_default();
        s.requests += 1;
        match d.decision {
            "would_execute" | "executed" => s.would_execute += 1,
            "escalated" => s.breakers_opened.push(format!("{} {}", d.kind, d.target)),
            _ => *s.refused_by_rule.entry(d.rule.to_string()).or_default() += 1,
        }
    }
}
