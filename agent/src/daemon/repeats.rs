//! Decision coalescing: a stuck playbook asking every tick for what the gate refuses writes a
//! few records per hour, not one per tick.
//!
//! A `suppressed` or `denied` decision is written in full the first time; identical ones after
//! it (same playbook, action kind, target, decision, rule and mode) within
//! `audit.repeat_window_secs` of that first are only counted here. The count is written as one
//! `decision_repeated` record (the key, `count`, `first`/`last` time, `first_seq` of the record
//! written in full) when the window ends, when a different decision is made for the same
//! (playbook, action, target), or when the agent stops. `executed`, `would_execute` and
//! `escalated` are never coalesced: each is a run (or a breaker opening) the gate rebuilds its
//! ledgers from, and what an operator must see one by one.

use crate::audit::record::{ActionRef, DecisionRepeated, PlaybookRef};
use crate::gate::{Decision, Mode};
use std::collections::HashMap;

/// (playbook, action kind, target).
pub type Target = (String, crate::actions::ActionKind, String);

/// Most windows open at once; when full, the oldest is written out early (bounds memory under a
/// flood of unique targets).
pub const MAX_OPEN: usize = 4096;

/// One open window.
#[derive(Debug, Clone)]
pub struct Open {
    /// (decision, rule, mode).
    pub what: (Decision, &'static str, Mode),
    pub playbook: PlaybookRef,
    pub first_seq: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    /// Identical decisions after the first, not written one by one.
    pub count: u64,
}

#[derive(Debug, Default)]
pub struct Repeats {
    pub window_ms: i64,
    open: HashMap<Target, Open>,
}

/// Whether a decision may be coalesced at all.
pub fn coalescible(d: Decision) -> bool {
    matches!(d, Decision::Suppressed | Decision::Denied)
}

impl Repeats {
    pub fn new(window_secs: u64) -> Self {
        Self { window_ms: window_secs.min(86_400) as i64 * 1000, open: HashMap::new() }
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The window that must be closed before deciding `what` for `t` at `now`: one for the same
    /// target with another decision, or one that ended.
    pub fn closes(&self, t: &Target, what: (Decision, &str, Mode), now: i64) -> bool {
        self.open.get(t).is_some_and(|o| o.what != what || now - o.first_ms >= self.window_ms || now < o.first_ms)
    }

    /// Counts `t` into its open window; false when there is none (the decision is written).
    pub fn absorb(&mut self, t: &Target, now: i64) -> bool {
        match self.open.get_mut(t) {
            Some(o) => {
                o.count += 1;
                o.last_ms = o.last_ms.max(now);
                true
            }
            None => false,
        }
    }

    /// Opens a window after its first decision was written as `first_seq`. Returns the oldest
    /// window when too many are open: the caller writes it out.
    pub fn open(&mut self, t: Target, o: Open) -> Option<(Target, Open)> {
        if self.window_ms <= 0 {
            return None;
        }
        let evicted = if self.open.len() >= MAX_OPEN {
            let oldest = self.open.iter().min_by_key(|(_, o)| o.first_ms).map(|(k, _)| k.clone());
            oldest.and_then(|k| self.open.remove_entry(&k))
        } else {
            None
        };
        self.open.insert(t, o);
        evicted
    }

    pub fn take(&mut self, t: &Target) -> Option<Open> {
        self.open.remove(t)
    }

    /// Puts a window back whose record could not be written.
    pub fn restore(&mut self, t: Target, o: Open) {
        self.open.entry(t).or_insert(o);
    }

    /// Forgets the windows whose first record has a `seq` above `seq` (a batch that held it
    /// failed: it was never written).
    pub fn forget_after(&mut self, seq: u64) {
        self.open.retain(|_, o| o.first_seq <= seq);
    }

    /// The windows that ended by `now` (all of them with `now = i64::MAX`).
    pub fn ended(&self, now: i64) -> Vec<Target> {
        self.open
            .iter()
            .filter(|(_, o)| now == i64::MAX || now - o.first_ms >= self.window_ms || now < o.first_ms)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// The `decision_repeated` record of a window.
pub fn record(t: &Target, o: &Open, window_ms: i64) -> DecisionRepeated {
    DecisionRepeated {
        playbook: o.playbook.clone(),
        action: ActionRef { kind: t.1, target: t.2.clone() },
        decision: o.what.0,
        rule: o.what.1.to_string(),
        mode: o.what.2,
        count: o.count,
        first: crate::audit::now_rfc3339(o.first_ms),
        last: crate::audit::now_rfc3339(o.last_ms),
        first_seq: o.first_seq,
        window_secs: window_ms / 1000,
    }
}
