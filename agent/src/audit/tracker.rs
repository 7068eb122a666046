//! The checkpoint tracker: what the log holds that outlives the replay window (executed actions
//! without an outcome yet, open breakers), learnt from every record appended or replayed,
//! seeded from the checkpoint that starts a segment, and written into each `audit_checkpoint`;
//! and what the agent asks of it (`pending`, `breaker_records`).

use super::record::{self, ActionRef, PlaybookRef, Record, Stored};
use super::AuditLog;
use crate::actions::ActionKind;
use crate::gate::Decision;
use serde_json::Value;
use std::collections::BTreeMap;

/// What the log holds that outlives the replay window: executed actions without an outcome yet
/// and open breakers. Kept up to date from every record appended (and replayed), and written
/// into each `audit_checkpoint`, so a start replays a bounded suffix and still knows them.
#[derive(Debug, Default, Clone)]
pub(super) struct Tracker {
    /// seq of an executed decision → its playbook and action.
    pub(super) pending: BTreeMap<u64, (PlaybookRef, ActionRef)>,
    /// (mode, playbook, action kind, target) → open since (RFC 3339).
    pub(super) breakers: BTreeMap<(String, String, String, String), String>,
}

/// At most this many open breakers and unfinished actions are carried in a checkpoint.
const MAX_CARRIED: usize = 4096;

impl Tracker {
    /// Whether a record of this kind changes what the tracker holds.
    pub(super) fn tracks(rec: &Record) -> bool {
        matches!(rec, Record::Action(_) | Record::ActionOutcome(_) | Record::BreakerReset(_))
    }

    /// `ts`: the record's time as written (an escalation opens its breaker then).
    pub(super) fn observe(&mut self, seq: u64, ts: &str, rec: &Record) {
        match rec {
            Record::Action(a) => match a.decision {
                Decision::Executed if a.action.kind != ActionKind::Notify => {
                    let action = ActionRef { kind: a.action.kind, target: a.action.target.clone() };
                    self.pending.insert(seq, (a.playbook.clone(), action));
                }
                Decision::Escalated => {
                    let key =
                        (a.mode.as_str().to_string(), a.playbook.name.clone(), a.action.kind.as_str().to_string(), a.action.target.clone());
                    if self.breakers.len() < MAX_CARRIED || self.breakers.contains_key(&key) {
                        self.breakers.insert(key, ts.to_string());
                    }
                }
                _ => {}
            },
            Record::ActionOutcome(o) => {
                self.pending.remove(&o.ref_seq);
            }
            Record::BreakerReset(r) => {
                let (pb, kind, target) = (&r.playbook.name, r.action.as_str(), &r.target);
                self.breakers.retain(|k, _| !(&k.1 == pb && k.2 == kind && &k.3 == target));
            }
            _ => {}
        }
    }

    pub(super) fn checkpoint(&self, head: record::Head, segment_first_seq: u64) -> record::Checkpoint {
        let pending = self
            .pending
            .iter()
            .take(MAX_CARRIED)
            .map(|(seq, (pb, a))| record::CarriedAction { ref_seq: *seq, playbook: pb.clone(), action: a.clone() })
            .collect();
        let open_breakers = self
            .breakers
            .iter()
            .map(|((mode, pb, kind, target), since)| record::CarriedBreaker {
                mode: mode.clone(),
                playbook: pb.clone(),
                action: kind.clone(),
                target: target.clone(),
                since: since.clone(),
            })
            .collect();
        record::Checkpoint { head, segment_first_seq, open_breakers, pending }
    }

    pub(super) fn seed(&mut self, checkpoint: &record::Checkpoint) {
        for p in &checkpoint.pending {
            self.pending.insert(p.ref_seq, (p.playbook.clone(), p.action.clone()));
        }
        for b in &checkpoint.open_breakers {
            let key = (b.mode.clone(), b.playbook.clone(), b.action.clone(), b.target.clone());
            self.breakers.entry(key).or_insert_with(|| b.since.clone());
        }
    }
}

impl AuditLog {
    /// Executed actions the log has no outcome for: (seq, playbook, action).
    pub fn pending(&self) -> Vec<(u64, PlaybookRef, ActionRef)> {
        self.tracker.pending.iter().map(|(s, (p, a))| (*s, p.clone(), a.clone())).collect()
    }

    /// Open breakers as `escalated` decisions, for `Gate::replay`: the ones opened before the
    /// replayed suffix come from its checkpoint.
    pub fn breaker_records(&self) -> Vec<Stored> {
        self.tracker
            .breakers
            .iter()
            .filter_map(|((mode, pb, kind, target), since)| {
                let action = record::Action {
                    playbook: PlaybookRef::named(pb.clone()),
                    trigger: record::Trigger { signals: Value::Null, reason: String::new() },
                    action: record::ActionAsked { kind: ActionKind::parse(kind)?, target: target.clone(), params: Value::Null },
                    mode: crate::gate::Mode::parse(mode)?,
                    decision: Decision::Escalated,
                    rule: "breaker".into(),
                    detail: String::new(),
                    outcome: Value::Null,
                };
                let ts_ms = humantime::parse_rfc3339_weak(since)
                    .ok()
                    .map(|t| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64));
                Some(Stored { seq: 0, ts: since.clone(), ts_ms, record: Ok(Record::Action(action)) })
            })
            .collect()
    }
}
