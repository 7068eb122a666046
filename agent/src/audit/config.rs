//! `[audit]` in the config: segment size and age, retention, the replay window at start,
//! checkpoint frequency, and the two settings the agent fills in (replication, control group).

/// `[audit]` in the config: segments, retention, the replay window and checkpoints.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Identical decisions that did not execute (same playbook, action, target, decision, rule
    /// and mode) within this many seconds of the first are written once, then counted into one
    /// `decision_repeated` record when the window ends. 0: every decision is written.
    pub repeat_window_secs: u64,
    /// A segment is closed when it reaches this size…
    pub segment_bytes: u64,
    /// …or this age (of its first record).
    pub segment_secs: u64,
    /// A closed segment is removed only when older than this (and, with `[mqtt] enabled`, once
    /// the broker acknowledged its last record).
    pub retain_secs: u64,
    /// At start the agent replays (and verifies) the segments covering this many seconds back:
    /// at least the longest gate window (cooldown, rate limit, budget, breaker) of any playbook.
    /// Open breakers and unfinished actions from before it come from the checkpoint that starts
    /// every segment.
    pub replay_secs: u64,
    /// An `audit_checkpoint` record (the chain head, open breakers, unfinished actions) every
    /// this many records…
    pub checkpoint_every: u64,
    /// …or this many seconds, whichever comes first.
    pub checkpoint_secs: u64,
    /// Set by the agent: segments wait for the forwarder's acknowledgement before removal.
    #[serde(skip)]
    pub replicated: bool,
    /// Set by the agent: the control group, which may read the log (dir 0750, files 0640).
    #[serde(skip)]
    pub group: Option<u32>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            repeat_window_secs: 600,
            segment_bytes: 64 << 20,
            segment_secs: 86_400,
            retain_secs: 7 * 86_400,
            replay_secs: 86_400,
            checkpoint_every: 1000,
            checkpoint_secs: 600,
            replicated: false,
            group: None,
        }
    }
}
