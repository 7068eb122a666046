//! The journal's MESSAGE_IDs: one fixed 128-bit id (32 lowercase hex digits, as
//! `journalctl --new-id128` prints them) per important event, so that
//! `journalctl -u medic MESSAGE_ID=<id>` finds every occurrence whatever the wording of the
//! message. An id never changes once released; a new event gets a new id. docs/OPERATIONS.md
//! ("Logs and journald") lists them with their fields: keep the two in step (a unit test checks
//! that every id here is named there).

/// The agent started (the `agent_started` record is written). Fields: NODE, MODE, PLAYBOOKS, AUDIT.
pub const STARTED: &str = "fe9dc23df3804aef90b96779bf40c2c8";
/// The agent stopped in order (`agent_stopped` recorded). Fields: REASON, SEQ.
pub const STOPPED: &str = "5542eefd1e3e490bbdfc47fa53c9340b";
/// The previous run ended without `agent_stopped` (kill -9, a watchdog abort, a crash, power
/// loss). Fields: LAST_SEQ, STARTED_SEQ.
pub const PREVIOUS_RUN_UNCLEAN: &str = "66a94671640c44e2854ac00a3fb7de38";
/// A decision to execute an action was recorded (live mode); the action starts now. Fields:
/// SEQ, PLAYBOOK, ACTION, ACTION_TARGET, DECISION, RULE.
pub const ACTION_EXECUTED: &str = "2d2b363386034211a57ba5e6341c1372";
/// Any other decision recorded: would_execute (dry-run), suppressed, denied. Same fields.
pub const DECISION: &str = "6a9bb830c5b54ce7a9d7eb57a8ad8dbd";
/// An executed action ended well. Fields: SEQ, PLAYBOOK, ACTION, ACTION_TARGET, STATUS.
pub const ACTION_SUCCEEDED: &str = "614696f2f016489ab691400ca25160d8";
/// An executed action failed, timed out or could not be verified. Fields as ACTION_SUCCEEDED,
/// plus ERROR_CODE.
pub const ACTION_FAILED: &str = "ce355a77f9fa45e390225864c56ae763";
/// A circuit breaker opened: the request was escalated instead of executed. Fields as DECISION.
pub const BREAKER_OPENED: &str = "be9142a2a90b4c7c9bb9a7257fdedf99";
/// The mode changed (a command, or a TTL expiry). Fields: FROM, TO, ACTOR, REASON, EXPIRES.
pub const MODE_CHANGED: &str = "c81e399133b742fda2f98ddad14916bd";
/// The audit log cannot be written: nothing is decided or started until it can. Fields:
/// ERROR_CODE, ERROR.
pub const AUDIT_UNWRITABLE: &str = "fffd187701b341f19e8eb44ba0b549f1";
/// The audit log is writable again (`audit_recovered`). Fields: DOWN_SINCE.
pub const AUDIT_RECOVERED: &str = "2f8dc822a306493dbfde07efaa20f4d1";
/// The audit log was rewound or replaced under the agent (records missing). Fields:
/// ERROR_CODE, REASON.
pub const AUDIT_REWOUND: &str = "28c7d5fc5250466d936e965d91ac3cf9";
/// The hash chain is broken in the replayed part of the log. Fields: ERROR_CODE, DETAIL.
pub const AUDIT_CHAIN_BROKEN: &str = "aea6b0a37394446a912c2ee59d6dcf00";
/// A playbook was rejected at (re)load; its last good version, if any, stays. Fields: ERROR.
pub const PLAYBOOK_REJECTED: &str = "cb952f00e0554da09dbec1aa8844877f";
/// A playbook failed at evaluation and is disabled for a back-off. Fields: PLAYBOOK,
/// ERROR_CODE, ERROR, FOR_SECS.
pub const PLAYBOOK_DISABLED: &str = "c847d54c5d1d48ca896b3436a1605948";
/// An evaluation overran its tick (ticks are skipped until it ends). Fields: PLAYBOOKS, RUNNING_MS.
pub const EVALUATION_OVERRUN: &str = "914e2ce5cd6a451da4dd4cbda82e6097";

/// Every id with its name, for docs and tests.
pub const ALL: &[(&str, &str)] = &[
    ("STARTED", STARTED),
    ("STOPPED", STOPPED),
    ("PREVIOUS_RUN_UNCLEAN", PREVIOUS_RUN_UNCLEAN),
    ("ACTION_EXECUTED", ACTION_EXECUTED),
    ("DECISION", DECISION),
    ("ACTION_SUCCEEDED", ACTION_SUCCEEDED),
    ("ACTION_FAILED", ACTION_FAILED),
    ("BREAKER_OPENED", BREAKER_OPENED),
    ("MODE_CHANGED", MODE_CHANGED),
    ("AUDIT_UNWRITABLE", AUDIT_UNWRITABLE),
    ("AUDIT_RECOVERED", AUDIT_RECOVERED),
    ("AUDIT_REWOUND", AUDIT_REWOUND),
    ("AUDIT_CHAIN_BROKEN", AUDIT_CHAIN_BROKEN),
    ("PLAYBOOK_REJECTED", PLAYBOOK_REJECTED),
    ("PLAYBOOK_DISABLED", PLAYBOOK_DISABLED),
    ("EVALUATION_OVERRUN", EVALUATION_OVERRUN),
];

#[cfg(test)]
mod tests {
    use super::ALL;

    #[test]
    fn ids_are_distinct_128_bit_hex_and_documented() {
        let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/OPERATIONS.md")).unwrap_or_default();
        let mut seen = std::collections::BTreeSet::new();
        for (name, id) in ALL {
            assert_eq!(id.len(), 32, "{name}");
            assert!(id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{name}");
            assert!(seen.insert(*id), "{name} repeats an id");
            assert!(docs.contains(id), "{name} ({id}) is not listed in docs/OPERATIONS.md");
        }
    }
}
