//! The audit record kinds: one [`Record`] enum, a variant per `kind` of docs/AUDIT.md, with
//! typed fields. The agent writes records only through it (serialized at the edge into the
//! `medic.audit/v1` body that the audit module bounds, envelopes, hashes and appends), and every
//! reader of the log (the gate's replay, the audit module's checkpoint tracker, start-up's
//! previous run, `audit show --playbook`) reads them back through it. To add a kind: a variant
//! here; the compiler then shows every `match` that must handle it.
//!
//! Reading is lenient: a record of a kind this version does not know parses as
//! [`Record::Unknown`], and one whose body does not fit its variant (an older version's, a hand
//! edit) is an error the readers skip, as they skipped a record missing the fields they needed.
//! Verifying the chain never depends on any of this (it works on the JSON).

use crate::actions::{ActionKind, Status};
use crate::control::mode::ModeState;
use crate::gate::{Decision, Mode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Errors reading a record through its type.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The record's body does not fit its kind's fields (an older version's, or an edited one),
    /// or it has no `kind`.
    #[error("audit record does not fit its kind: {0}")]
    Shape(String),
    /// The record could not be serialized to a JSON object (never for the kinds of this type).
    #[error("audit record not serializable: {0}")]
    Serialize(String),
}

impl RecordError {
    /// Stable code for logs and status.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Shape(_) => "audit_record_shape",
            Self::Serialize(_) => "audit_record_serialize",
        }
    }
}

/// One audit record's body, by kind (the envelope, `seq`, `ts`, `hash`..., is the log's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    AgentStarted(AgentStarted),
    AgentStopped(AgentStopped),
    PlaybookLoaded(PlaybookLoaded),
    PlaybookRejected(PlaybookRejected),
    PlaybookUnloaded(PlaybookUnloaded),
    PlaybookDisabled(PlaybookDisabled),
    PlaybookEnabled {
        playbook: PlaybookRef,
    },
    Action(Action),
    ActionOutcome(ActionOutcome),
    ModeChange(ModeChange),
    ModeExpired(ModeChange),
    ModeUnknown {
        error: String,
        mode: Mode,
    },
    BreakerReset(BreakerReset),
    Command(CommandRecord),
    CommandsRejected(CommandsRejected),
    DecisionRepeated(DecisionRepeated),
    EvaluationOverrun(EvaluationOverrun),
    AuditRecovered(AuditRecovered),
    AuditTornTail {
        torn: Torn,
    },
    AuditRewound {
        rewound: Rewound,
    },
    AuditChainBroken {
        broken: ChainBroken,
    },
    AuditAnchorReset {
        reason: String,
        found: Head,
    },
    AuditCheckpoint {
        checkpoint: Checkpoint,
    },
    AuditSegmentRemoved(SegmentRemoved),
    /// A kind this version does not know (a newer one's): kept in the log, ignored by readers.
    /// Never written.
    #[serde(other)]
    Unknown,
}

/// A playbook as every kind names it: its name and the SHA-256 of its source (null where not
/// known: a breaker reset for a playbook no longer loaded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaybookRef {
    pub name: String,
    #[serde(default)]
    pub sha256: Option<String>,
}

impl PlaybookRef {
    pub fn of(pb: &crate::playbooks::Playbook) -> Self {
        Self { name: pb.meta.name.clone(), sha256: Some(pb.sha256.clone()) }
    }

    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into(), sha256: None }
    }

    /// Reads `{name, sha256}`, or the bare name `breaker_reset` records of 0.1.0 carry.
    fn or_bare_name<'de, D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Shape {
            Ref(PlaybookRef),
            Name(String),
        }
        Ok(match Shape::deserialize(d)? {
            Shape::Ref(r) => r,
            Shape::Name(n) => Self::named(n),
        })
    }
}

/// An action as outcomes, repeats and checkpoints name it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRef {
    pub kind: ActionKind,
    pub target: String,
}

/// `previous_run` of `agent_started`: how the run before this one ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ended", rename_all = "snake_case")]
pub enum PreviousRun {
    /// The log was empty.
    None,
    /// Its last record was its `agent_stopped`.
    Clean { last_seq: u64 },
    /// Anything else; `started_seq` is its `agent_started` when within the replay window.
    Unclean { last_seq: u64, started_seq: Option<u64> },
}

/// Reads a field that an older version may have written differently as absent, rather than
/// failing the record (`agent_started` must stay readable for the previous run).
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    Ok(serde_json::from_value(Value::deserialize(d)?).ok())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStarted {
    #[serde(default)]
    pub version: String,
    #[serde(default, deserialize_with = "lenient")]
    pub previous_run: Option<PreviousRun>,
    #[serde(default, deserialize_with = "lenient")]
    pub mode: Option<Mode>,
    #[serde(default, deserialize_with = "lenient")]
    pub mode_state: Option<ModeState>,
    #[serde(default)]
    pub pid: u32,
    #[serde(default)]
    pub playbooks_dir: String,
    /// Signal family → why it is unavailable.
    #[serde(default)]
    pub unavailable: BTreeMap<String, String>,
    #[serde(default)]
    pub history_bound_bytes: u64,
    /// The history's status object (as `medic status --json` shows it).
    #[serde(default)]
    pub history: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStopped {
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub actions_still_running: u64,
    #[serde(default)]
    pub evaluation_abandoned: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaybookLoaded {
    pub playbook: PlaybookRef,
    pub file: String,
    /// The playbook's header, as it declares it.
    #[serde(default)]
    pub meta: Value,
}

/// `kept` of `playbook_rejected`: the version still running, or (the directory unreadable)
/// the names of every playbook still loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Kept {
    // First: serde would read a two-name list as a `PlaybookRef` (a struct from a sequence).
    All(Vec<String>),
    Playbook(PlaybookRef),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaybookRejected {
    pub file: String,
    pub error: String,
    #[serde(default)]
    pub kept: Option<Kept>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaybookUnloaded {
    pub playbook: PlaybookRef,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaybookDisabled {
    pub playbook: PlaybookRef,
    pub error_code: String,
    pub error: String,
    /// RFC 3339.
    pub until: String,
    pub failures: u32,
}

/// What a playbook read and why it asked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trigger {
    /// The signal values it read (`what(key, window)` → value).
    #[serde(default)]
    pub signals: Value,
    #[serde(default)]
    pub reason: String,
}

/// The action asked for, with its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionAsked {
    pub kind: ActionKind,
    pub target: String,
    #[serde(default)]
    pub params: Value,
}

/// A decision on one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    pub playbook: PlaybookRef,
    pub trigger: Trigger,
    pub action: ActionAsked,
    /// The effective mode.
    pub mode: Mode,
    pub decision: Decision,
    pub rule: String,
    #[serde(default)]
    pub detail: String,
    /// Always null: outcomes are `action_outcome` records.
    #[serde(default)]
    pub outcome: Value,
}

impl Action {
    pub fn of(playbook: PlaybookRef, req: &crate::actions::ActionRequest, v: &crate::gate::Verdict) -> Self {
        Self {
            playbook,
            trigger: Trigger { signals: serde_json::json!(req.signals), reason: req.reason.clone() },
            action: ActionAsked { kind: req.kind, target: req.target.clone(), params: serde_json::json!(req.params) },
            mode: v.mode,
            decision: v.decision,
            rule: v.rule.to_string(),
            detail: v.detail.clone(),
            outcome: Value::Null,
        }
    }
}

/// How an action ended, as recorded (`actions::Outcome`, or the `unknown` one written at start
/// for an action the previous run did not see end, which has no duration nor detail).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutcomeRecord {
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default)]
    pub error_code: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "present")]
    pub detail: Option<Value>,
}

/// A field that is there (null included) is `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl From<&crate::actions::Outcome> for OutcomeRecord {
    fn from(o: &crate::actions::Outcome) -> Self {
        Self {
            status: o.status,
            duration_ms: Some(o.duration_ms),
            error_code: o.error_code.map(str::to_string),
            error: o.error.clone(),
            verified: o.verified,
            detail: Some(o.detail.clone()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionOutcome {
    /// seq of the `executed` decision.
    pub ref_seq: u64,
    pub playbook: PlaybookRef,
    pub action: ActionRef,
    pub outcome: OutcomeRecord,
}

/// `mode_change` and `mode_expired`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModeChange {
    pub from: Mode,
    pub to: Mode,
    pub actor: String,
    pub reason: String,
    /// RFC 3339.
    #[serde(default)]
    pub expires: Option<String>,
    #[serde(default)]
    pub revert_to: Option<Mode>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BreakerReset {
    /// A bare name in 0.1.0's records (read as such, sha256 null).
    #[serde(deserialize_with = "PlaybookRef::or_bare_name")]
    pub playbook: PlaybookRef,
    pub action: ActionKind,
    pub target: String,
    pub actor: String,
    #[serde(default)]
    pub reason: String,
}

/// A fleet command from the broker, accepted or not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub topic: String,
    pub command_id: String,
    pub op: String,
    /// As claimed.
    pub actor: String,
    pub accepted: bool,
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub error_code: Option<String>,
    pub payload_bytes: u64,
    pub retained: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandsRejected {
    pub topic: String,
    pub count: u64,
    pub by_code: BTreeMap<String, u64>,
    pub since: String,
    pub until: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRepeated {
    pub playbook: PlaybookRef,
    pub action: ActionRef,
    pub decision: Decision,
    pub rule: String,
    pub mode: Mode,
    pub count: u64,
    pub first: String,
    pub last: String,
    pub first_seq: u64,
    pub window_secs: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationOverrun {
    pub playbooks: Vec<String>,
    pub started: String,
    pub running_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecovered {
    pub since: String,
    pub error: String,
    #[serde(default)]
    pub running_actions: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Torn {
    pub bytes: u64,
    pub saved_as: String,
    pub sha256: String,
    pub after_seq: u64,
}

/// A record's place in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Expected {
    pub seq: u64,
    pub hash: String,
    pub max_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lost {
    pub from_seq: u64,
    pub to_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rewound {
    /// The anchor.
    pub expected: Expected,
    /// The log's last record.
    pub found: Head,
    pub lost: Lost,
    pub forward_cursor: u64,
    pub reason: String,
    #[serde(default)]
    pub rescued: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainBroken {
    pub after_seq: u64,
    pub segment: String,
    pub line: u64,
    pub reason: String,
}

/// An open breaker carried in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarriedBreaker {
    pub mode: String,
    pub playbook: String,
    pub action: String,
    pub target: String,
    /// RFC 3339.
    pub since: String,
}

/// An executed action without an outcome, carried in a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CarriedAction {
    pub ref_seq: u64,
    pub playbook: PlaybookRef,
    pub action: ActionRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The record before it.
    pub head: Head,
    pub segment_first_seq: u64,
    #[serde(default)]
    pub open_breakers: Vec<CarriedBreaker>,
    #[serde(default)]
    pub pending: Vec<CarriedAction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegmentRemoved {
    pub segment: String,
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
    /// Null without replication.
    #[serde(default)]
    pub forward_cursor: Option<u64>,
}

impl Record {
    /// The `kind` it is written as.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::AgentStarted(_) => "agent_started",
            Self::AgentStopped(_) => "agent_stopped",
            Self::PlaybookLoaded(_) => "playbook_loaded",
            Self::PlaybookRejected(_) => "playbook_rejected",
            Self::PlaybookUnloaded(_) => "playbook_unloaded",
            Self::PlaybookDisabled(_) => "playbook_disabled",
            Self::PlaybookEnabled { .. } => "playbook_enabled",
            Self::Action(_) => "action",
            Self::ActionOutcome(_) => "action_outcome",
            Self::ModeChange(_) => "mode_change",
            Self::ModeExpired(_) => "mode_expired",
            Self::ModeUnknown { .. } => "mode_unknown",
            Self::BreakerReset(_) => "breaker_reset",
            Self::Command(_) => "command",
            Self::CommandsRejected(_) => "commands_rejected",
            Self::DecisionRepeated(_) => "decision_repeated",
            Self::EvaluationOverrun(_) => "evaluation_overrun",
            Self::AuditRecovered(_) => "audit_recovered",
            Self::AuditTornTail { .. } => "audit_torn_tail",
            Self::AuditRewound { .. } => "audit_rewound",
            Self::AuditChainBroken { .. } => "audit_chain_broken",
            Self::AuditAnchorReset { .. } => "audit_anchor_reset",
            Self::AuditCheckpoint { .. } => "audit_checkpoint",
            Self::AuditSegmentRemoved(_) => "audit_segment_removed",
            Self::Unknown => "unknown",
        }
    }

    /// The playbook the record is about, in every kind that names one.
    pub fn playbook(&self) -> Option<&PlaybookRef> {
        match self {
            Self::PlaybookLoaded(PlaybookLoaded { playbook, .. })
            | Self::PlaybookUnloaded(PlaybookUnloaded { playbook, .. })
            | Self::PlaybookDisabled(PlaybookDisabled { playbook, .. })
            | Self::PlaybookEnabled { playbook }
            | Self::Action(Action { playbook, .. })
            | Self::ActionOutcome(ActionOutcome { playbook, .. })
            | Self::BreakerReset(BreakerReset { playbook, .. })
            | Self::DecisionRepeated(DecisionRepeated { playbook, .. }) => Some(playbook),
            Self::AgentStarted(_)
            | Self::AgentStopped(_)
            | Self::PlaybookRejected(_)
            | Self::ModeChange(_)
            | Self::ModeExpired(_)
            | Self::ModeUnknown { .. }
            | Self::Command(_)
            | Self::CommandsRejected(_)
            | Self::EvaluationOverrun(_)
            | Self::AuditRecovered(_)
            | Self::AuditTornTail { .. }
            | Self::AuditRewound { .. }
            | Self::AuditChainBroken { .. }
            | Self::AuditAnchorReset { .. }
            | Self::AuditCheckpoint { .. }
            | Self::AuditSegmentRemoved(_)
            | Self::Unknown => None,
        }
    }

    /// The body as written: a JSON object with `kind` and the variant's fields.
    pub fn to_body(&self) -> Result<Map<String, Value>, RecordError> {
        match serde_json::to_value(self) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(other) => Err(RecordError::Serialize(format!("not an object: {other}"))),
            Err(e) => Err(RecordError::Serialize(e.to_string())),
        }
    }

    /// Reads a stored record (envelope fields are ignored). A kind this version does not know
    /// is [`Record::Unknown`]; a known kind whose body does not fit is an error.
    pub fn parse(rec: &Map<String, Value>) -> Result<Self, RecordError> {
        Self::deserialize(&Value::Object(rec.clone())).map_err(|e| RecordError::Shape(e.to_string()))
    }
}

/// The playbook name a stored record is about (`audit show --playbook`): through its type, so
/// every kind that names a playbook is found, whatever shape its version wrote it in.
pub fn playbook_name(rec: &Map<String, Value>) -> Option<String> {
    Record::parse(rec).ok()?.playbook().map(|p| p.name.clone())
}

/// A record read back from the log: its place, its time and its typed body.
#[derive(Debug)]
pub struct Stored {
    pub seq: u64,
    /// The `ts` as written (RFC 3339).
    pub ts: String,
    /// `ts` in ms since the epoch, when it parses.
    pub ts_ms: Option<i64>,
    pub record: Result<Record, RecordError>,
}

impl Stored {
    pub fn read(rec: &Map<String, Value>) -> Self {
        let ts = rec.get("ts").and_then(Value::as_str).unwrap_or("").to_string();
        let ts_ms = humantime::parse_rfc3339_weak(&ts)
            .ok()
            .map(|t| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis().min(i64::MAX as u128) as i64));
        Self { seq: rec.get("seq").and_then(Value::as_u64).unwrap_or(0), ts, ts_ms, record: Record::parse(rec) }
    }
}

#[cfg(test)]
mod tests {
    //! One test per kind: the record serializes to exactly the body the agent wrote before
    //! records were typed (the `json!` each call site built, copied here), so hashes of new
    //! records are computed over the same canonical form; and it reads back equal.
    use super::*;
    use serde_json::json;

    const SHA: &str = "5f1c0b7e2ad5a8c4f0e6d9b3a1c7e5f2b8d4a6c0e2f4b6d8a0c2e4f6b8d0a2c4";

    fn pb() -> PlaybookRef {
        PlaybookRef { name: "disk-full".into(), sha256: Some(SHA.into()) }
    }

    /// `rec` serializes to `kind` + `old` (the old call site's body), canonically, and parses
    /// back (also from a stored record, envelope included) to itself.
    fn same_as_before(rec: Record, kind: &str, old: Value) {
        let mut expected = old.as_object().cloned().unwrap();
        expected.insert("kind".into(), kind.into());
        let body = rec.to_body().unwrap();
        assert_eq!(crate::audit::canonical(&Value::Object(body.clone())), crate::audit::canonical(&Value::Object(expected)));
        assert_eq!(rec.kind(), kind);
        let mut stored = body;
        for (k, v) in
            [("schema", json!("medic.audit/v1")), ("seq", json!(7)), ("ts", json!("2026-01-01T00:00:00.000Z")), ("hash", json!("00"))]
        {
            stored.insert(k.into(), v);
        }
        assert_eq!(Record::parse(&stored).unwrap(), rec);
    }

    #[test]
    fn agent_started() {
        let mode = ModeState::fresh();
        let rec = Record::AgentStarted(AgentStarted {
            version: "0.2.0".into(),
            previous_run: Some(PreviousRun::Unclean { last_seq: 41, started_seq: None }),
            mode: Some(Mode::DryRun),
            mode_state: Some(mode.clone()),
            pid: 4242,
            playbooks_dir: "bundled".into(),
            unavailable: BTreeMap::from([("ebpf.tcp".to_string(), "no BTF".to_string())]),
            history_bound_bytes: 1 << 20,
            history: json!({ "series": 3, "bytes": 100 }),
        });
        same_as_before(
            rec,
            "agent_started",
            json!({
                "version": "0.2.0",
                "previous_run": { "ended": "unclean", "last_seq": 41, "started_seq": null },
                "mode": "dry-run", "mode_state": mode, "pid": 4242, "playbooks_dir": "bundled",
                "unavailable": { "ebpf.tcp": "no BTF" }, "history_bound_bytes": 1 << 20, "history": { "series": 3, "bytes": 100 },
            }),
        );
        let clean = serde_json::to_value(PreviousRun::Clean { last_seq: 9 }).unwrap();
        assert_eq!(clean, json!({ "ended": "clean", "last_seq": 9 }));
        assert_eq!(serde_json::to_value(PreviousRun::None).unwrap(), json!({ "ended": "none" }));
    }

    #[test]
    fn agent_stopped() {
        let rec = Record::AgentStopped(AgentStopped { reason: "SIGTERM".into(), actions_still_running: 0, evaluation_abandoned: None });
        same_as_before(rec, "agent_stopped", json!({ "reason": "SIGTERM", "actions_still_running": 0, "evaluation_abandoned": null }));
    }

    #[test]
    fn playbook_loaded() {
        let meta = json!({ "name": "disk-full", "interval_secs": 30, "actions": ["clean_files"] });
        let rec = Record::PlaybookLoaded(PlaybookLoaded { playbook: pb(), file: "disk-full.rhai".into(), meta: meta.clone() });
        same_as_before(
            rec,
            "playbook_loaded",
            json!({ "playbook": { "name": "disk-full", "sha256": SHA }, "file": "disk-full.rhai", "meta": meta }),
        );
    }

    #[test]
    fn playbook_rejected() {
        let rec = Record::PlaybookRejected(PlaybookRejected {
            file: "disk-full.rhai".into(),
            error: "disk-full.rhai:3:7: unknown function".into(),
            kept: Some(Kept::Playbook(pb())),
        });
        same_as_before(
            rec,
            "playbook_rejected",
            json!({ "file": "disk-full.rhai", "error": "disk-full.rhai:3:7: unknown function", "kept": { "name": "disk-full", "sha256": SHA } }),
        );
        // The directory unreadable: every playbook still loaded, by name.
        let rec = Record::PlaybookRejected(PlaybookRejected {
            file: "/etc/medic/playbooks".into(),
            error: "permission denied".into(),
            kept: Some(Kept::All(vec!["a".into(), "b".into()])),
        });
        same_as_before(
            rec,
            "playbook_rejected",
            json!({ "file": "/etc/medic/playbooks", "error": "permission denied", "kept": ["a", "b"] }),
        );
        let rec = Record::PlaybookRejected(PlaybookRejected { file: "x.rhai".into(), error: "e".into(), kept: None });
        same_as_before(rec, "playbook_rejected", json!({ "file": "x.rhai", "error": "e", "kept": null }));
    }

    #[test]
    fn playbook_unloaded() {
        let rec = Record::PlaybookUnloaded(PlaybookUnloaded { playbook: pb(), file: "disk-full.rhai".into() });
        same_as_before(rec, "playbook_unloaded", json!({ "playbook": { "name": "disk-full", "sha256": SHA }, "file": "disk-full.rhai" }));
    }

    #[test]
    fn playbook_disabled() {
        let rec = Record::PlaybookDisabled(PlaybookDisabled {
            playbook: pb(),
            error_code: "limit_exceeded".into(),
            error: "too many operations".into(),
            until: "2026-01-01T00:01:00.000Z".into(),
            failures: 2,
        });
        same_as_before(
            rec,
            "playbook_disabled",
            json!({ "playbook": { "name": "disk-full", "sha256": SHA }, "error_code": "limit_exceeded", "error": "too many operations", "until": "2026-01-01T00:01:00.000Z", "failures": 2 }),
        );
    }

    #[test]
    fn playbook_enabled() {
        same_as_before(
            Record::PlaybookEnabled { playbook: pb() },
            "playbook_enabled",
            json!({ "playbook": { "name": "disk-full", "sha256": SHA } }),
        );
    }

    #[test]
    fn action() {
        let req = crate::actions::ActionRequest {
            kind: ActionKind::CleanFiles,
            target: "/var/tmp".into(),
            params: BTreeMap::from([("older_than_secs".to_string(), json!(3600))]),
            reason: "disk 97% full".into(),
            signals: BTreeMap::from([("disk./.used_pct".to_string(), json!(97.5))]),
        };
        let v =
            crate::gate::Verdict { decision: Decision::Denied, rule: "policy:allowlist", mode: Mode::Live, detail: "not allowed".into() };
        let rec = Record::Action(Action::of(pb(), &req, &v));
        // tick.rs before: playbook, trigger {signals, reason}, action {kind, target, params},
        // mode, decision, rule, detail, outcome null.
        same_as_before(
            rec,
            "action",
            json!({
                "playbook": { "name": "disk-full", "sha256": SHA },
                "trigger": { "signals": req.signals, "reason": req.reason },
                "action": { "kind": req.kind, "target": req.target, "params": req.params },
                "mode": v.mode.as_str(), "decision": v.decision.as_str(), "rule": v.rule, "detail": v.detail, "outcome": Value::Null,
            }),
        );
    }

    #[test]
    fn action_outcome() {
        let o = crate::actions::Outcome::fail(Status::Failed, "unit_failed", "exit 1", json!({ "stderr": "x" }));
        let rec = Record::ActionOutcome(ActionOutcome {
            ref_seq: 12,
            playbook: pb(),
            action: ActionRef { kind: ActionKind::RestartUnit, target: "a.service".into() },
            outcome: (&o).into(),
        });
        same_as_before(
            rec,
            "action_outcome",
            json!({ "ref_seq": 12, "playbook": { "name": "disk-full", "sha256": SHA }, "action": { "kind": "restart_unit", "target": "a.service" }, "outcome": o }),
        );
        // Written at start for an action the previous run did not see end: no duration, no detail.
        let rec = Record::ActionOutcome(ActionOutcome {
            ref_seq: 13,
            playbook: pb(),
            action: ActionRef { kind: ActionKind::RestartUnit, target: "a.service".into() },
            outcome: OutcomeRecord {
                status: Status::Unknown,
                duration_ms: None,
                error_code: Some("agent_restarted".into()),
                error: Some("gone".into()),
                verified: false,
                detail: None,
            },
        });
        same_as_before(
            rec,
            "action_outcome",
            json!({ "ref_seq": 13, "playbook": { "name": "disk-full", "sha256": SHA }, "action": { "kind": "restart_unit", "target": "a.service" },
                "outcome": { "status": Status::Unknown, "error_code": "agent_restarted", "error": "gone", "verified": false } }),
        );
    }

    fn change() -> ModeChange {
        ModeChange {
            from: Mode::DryRun,
            to: Mode::Live,
            actor: "uid 0".into(),
            reason: "go".into(),
            expires: Some("2026-01-01T02:00:00.000Z".into()),
            revert_to: Some(Mode::DryRun),
        }
    }

    fn change_json() -> Value {
        json!({ "from": "dry-run", "to": "live", "actor": "uid 0", "reason": "go", "expires": "2026-01-01T02:00:00.000Z", "revert_to": "dry-run" })
    }

    #[test]
    fn mode_change() {
        same_as_before(Record::ModeChange(change()), "mode_change", change_json());
    }

    #[test]
    fn mode_expired() {
        same_as_before(Record::ModeExpired(change()), "mode_expired", change_json());
    }

    #[test]
    fn mode_unknown() {
        same_as_before(
            Record::ModeUnknown { error: "mode.json: EOF".into(), mode: Mode::DryRun },
            "mode_unknown",
            json!({ "error": "mode.json: EOF", "mode": "dry-run" }),
        );
    }

    #[test]
    fn breaker_reset() {
        let rec = Record::BreakerReset(BreakerReset {
            playbook: pb(),
            action: ActionKind::RestartUnit,
            target: "a.service".into(),
            actor: "uid 0".into(),
            reason: "fixed".into(),
        });
        // Before: `playbook` was the bare name; now the shape of every other kind.
        same_as_before(
            rec,
            "breaker_reset",
            json!({ "playbook": { "name": "disk-full", "sha256": SHA }, "action": "restart_unit", "target": "a.service", "actor": "uid 0", "reason": "fixed" }),
        );
    }

    /// 0.1.0 wrote `playbook` as a bare name: still read (an upgrade replays such logs).
    #[test]
    fn breaker_reset_of_0_1_0_with_a_bare_playbook_name_is_read() {
        let old = json!({ "kind": "breaker_reset", "seq": 3, "playbook": "disk-full", "action": "restart_unit", "target": "a.service", "actor": "uid 0", "reason": "r" });
        let rec = Record::parse(old.as_object().unwrap()).unwrap();
        assert_eq!(rec.playbook(), Some(&PlaybookRef::named("disk-full")));
        assert_eq!(playbook_name(old.as_object().unwrap()).as_deref(), Some("disk-full"));
    }

    #[test]
    fn command() {
        let rec = Record::Command(CommandRecord {
            topic: "medic/v1/node/n/cmd".into(),
            command_id: "c1".into(),
            op: "set_mode".into(),
            actor: "ops".into(),
            accepted: false,
            result: Value::Null,
            error: Some("bad signature".into()),
            error_code: Some("command_signature".into()),
            payload_bytes: 120,
            retained: false,
        });
        same_as_before(
            rec,
            "command",
            json!({ "topic": "medic/v1/node/n/cmd", "command_id": "c1", "op": "set_mode", "actor": "ops", "accepted": false,
                "result": null, "error": "bad signature", "error_code": "command_signature", "payload_bytes": 120, "retained": false }),
        );
        let rec = Record::Command(CommandRecord {
            topic: "t".into(),
            command_id: "c2".into(),
            op: "reload".into(),
            actor: "ops".into(),
            accepted: true,
            result: json!({ "playbooks": ["a"] }),
            error: None,
            error_code: None,
            payload_bytes: 40,
            retained: false,
        });
        same_as_before(
            rec,
            "command",
            json!({ "topic": "t", "command_id": "c2", "op": "reload", "actor": "ops", "accepted": true,
                "result": { "playbooks": ["a"] }, "error": null, "error_code": null, "payload_bytes": 40, "retained": false }),
        );
    }

    #[test]
    fn commands_rejected() {
        let rec = Record::CommandsRejected(CommandsRejected {
            topic: "t".into(),
            count: 5,
            by_code: BTreeMap::from([("command_parse".to_string(), 5)]),
            since: "a".into(),
            until: "b".into(),
        });
        same_as_before(
            rec,
            "commands_rejected",
            json!({ "topic": "t", "count": 5, "by_code": { "command_parse": 5 }, "since": "a", "until": "b" }),
        );
    }

    #[test]
    fn decision_repeated() {
        let rec = Record::DecisionRepeated(DecisionRepeated {
            playbook: pb(),
            action: ActionRef { kind: ActionKind::RestartUnit, target: "a.service".into() },
            decision: Decision::Suppressed,
            rule: "cooldown".into(),
            mode: Mode::Live,
            count: 59,
            first: "a".into(),
            last: "b".into(),
            first_seq: 100,
            window_secs: 600,
        });
        same_as_before(
            rec,
            "decision_repeated",
            json!({ "playbook": { "name": "disk-full", "sha256": SHA }, "action": { "kind": "restart_unit", "target": "a.service" },
                "decision": "suppressed", "rule": "cooldown", "mode": "live", "count": 59, "first": "a", "last": "b", "first_seq": 100, "window_secs": 600 }),
        );
    }

    #[test]
    fn evaluation_overrun() {
        let rec = Record::EvaluationOverrun(EvaluationOverrun { playbooks: vec!["spin".into()], started: "a".into(), running_ms: 2500 });
        same_as_before(rec, "evaluation_overrun", json!({ "playbooks": ["spin"], "started": "a", "running_ms": 2500 }));
    }

    #[test]
    fn audit_recovered() {
        let rec = Record::AuditRecovered(AuditRecovered { since: "a".into(), error: "ENOSPC".into(), running_actions: 1 });
        same_as_before(rec, "audit_recovered", json!({ "since": "a", "error": "ENOSPC", "running_actions": 1 }));
    }

    #[test]
    fn audit_torn_tail() {
        let torn = Torn { bytes: 10, saved_as: "/s/audit.torn.1".into(), sha256: SHA.into(), after_seq: 4 };
        same_as_before(
            Record::AuditTornTail { torn },
            "audit_torn_tail",
            json!({ "torn": { "bytes": 10, "saved_as": "/s/audit.torn.1", "sha256": SHA, "after_seq": 4 } }),
        );
    }

    #[test]
    fn audit_rewound() {
        let rewound = Rewound {
            expected: Expected { seq: 10, hash: "h10".into(), max_seq: 12 },
            found: Head { seq: 8, hash: "h8".into() },
            lost: Lost { from_seq: 9, to_seq: 12 },
            forward_cursor: 0,
            reason: "cut".into(),
            rescued: None,
        };
        same_as_before(
            Record::AuditRewound { rewound },
            "audit_rewound",
            json!({ "rewound": { "expected": { "seq": 10, "hash": "h10", "max_seq": 12 }, "found": { "seq": 8, "hash": "h8" },
                "lost": { "from_seq": 9, "to_seq": 12 }, "forward_cursor": 0, "reason": "cut", "rescued": null } }),
        );
    }

    #[test]
    fn audit_chain_broken() {
        let broken = ChainBroken { after_seq: 5, segment: "/s/audit.log".into(), line: 6, reason: "hash mismatch".into() };
        same_as_before(
            Record::AuditChainBroken { broken },
            "audit_chain_broken",
            json!({ "broken": { "after_seq": 5, "segment": "/s/audit.log", "line": 6, "reason": "hash mismatch" } }),
        );
    }

    #[test]
    fn audit_anchor_reset() {
        same_as_before(
            Record::AuditAnchorReset { reason: "no anchor".into(), found: Head { seq: 3, hash: "h".into() } },
            "audit_anchor_reset",
            json!({ "reason": "no anchor", "found": { "seq": 3, "hash": "h" } }),
        );
    }

    #[test]
    fn audit_checkpoint() {
        let checkpoint = Checkpoint {
            head: Head { seq: 999, hash: "h".into() },
            segment_first_seq: 1,
            open_breakers: vec![CarriedBreaker {
                mode: "live".into(),
                playbook: "disk-full".into(),
                action: "restart_unit".into(),
                target: "a.service".into(),
                since: "a".into(),
            }],
            pending: vec![CarriedAction {
                ref_seq: 990,
                playbook: pb(),
                action: ActionRef { kind: ActionKind::RestartUnit, target: "a.service".into() },
            }],
        };
        same_as_before(
            Record::AuditCheckpoint { checkpoint },
            "audit_checkpoint",
            json!({ "checkpoint": { "head": { "seq": 999, "hash": "h" }, "segment_first_seq": 1,
                "open_breakers": [{ "mode": "live", "playbook": "disk-full", "action": "restart_unit", "target": "a.service", "since": "a" }],
                "pending": [{ "ref_seq": 990, "playbook": { "name": "disk-full", "sha256": SHA }, "action": { "kind": "restart_unit", "target": "a.service" } }] } }),
        );
    }

    #[test]
    fn audit_segment_removed() {
        let rec = Record::AuditSegmentRemoved(SegmentRemoved {
            segment: "audit.1-9.log".into(),
            first_seq: 1,
            last_seq: 9,
            last_hash: "h".into(),
            forward_cursor: Some(9),
        });
        same_as_before(
            rec,
            "audit_segment_removed",
            json!({ "segment": "audit.1-9.log", "first_seq": 1, "last_seq": 9, "last_hash": "h", "forward_cursor": 9 }),
        );
    }

    /// A newer version's kind reads as `Unknown`; a known kind whose body does not fit is an
    /// error, never a panic.
    #[test]
    fn unknown_kinds_and_bodies_that_do_not_fit_are_not_fatal() {
        let newer = json!({ "kind": "from_the_future", "seq": 1, "anything": [1, 2] });
        assert_eq!(Record::parse(newer.as_object().unwrap()).unwrap(), Record::Unknown);
        let bad = json!({ "kind": "action", "seq": 1, "playbook": 7 });
        assert!(matches!(Record::parse(bad.as_object().unwrap()), Err(RecordError::Shape(_))));
        let none = json!({ "seq": 1 });
        assert!(Record::parse(none.as_object().unwrap()).is_err());
        assert_eq!(playbook_name(bad.as_object().unwrap()), None);
    }
}
