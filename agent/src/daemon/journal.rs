//! The agent's side of the audit log: every record goes through [`Journal::record`], which
//! bounds it in bytes (`audit::bound`), appends and fsyncs it (or, inside a batch the tick opened
//! with [`Journal::begin`], stages it for [`Journal::commit`]'s one fsync), and on failure puts
//! the agent in its fail-closed state (nothing decided or started until a record can be written again, see
//! the daemon's module note). Also the coalescing of repeated refusals (`repeats`), which must
//! write their summary through the same path.

use super::repeats;
use crate::audit::record::Record;
use crate::audit::{AuditError, AuditLog};
use crate::telemetry::ids;

pub(super) struct Journal {
    pub audit: AuditLog,
    /// Since when (ms) and why records cannot be written.
    pub down: Option<(i64, String)>,
    pub repeats: repeats::Repeats,
}

impl Journal {
    pub fn new(audit: AuditLog, repeats: repeats::Repeats) -> Self {
        Self { audit, down: None, repeats }
    }

    /// Appends a record; on failure the agent falls back to observing (see the module note).
    /// Every record is bounded in bytes first (`audit::bound`).
    pub fn record(&mut self, rec: &Record, ts: i64) -> Result<u64, AuditError> {
        match self.audit.append_bounded_at(rec, ts) {
            Ok(seq) => Ok(seq),
            Err(e) => {
                if self.down.is_none() {
                    tracing::error!(message = "AUDIT LOG NOT WRITABLE: no action will be decided or started until it is.", message_id = ids::AUDIT_UNWRITABLE, error_code = e.code(), error = %e);
                    self.down = Some((ts, e.to_string()));
                }
                Err(e)
            }
        }
    }

    /// Opens a batch: the records that follow are staged, and count only once [`commit`](Self::commit)
    /// returns.
    pub fn begin(&mut self) {
        self.audit.begin_batch();
    }

    /// Makes the batch durable (one write, one fsync, one anchor update). On failure nothing
    /// staged counts: the agent goes down as for a failed record, and the coalescing windows the
    /// batch opened (their first record was never written) are forgotten.
    pub fn commit(&mut self, ts: i64) -> Result<u64, AuditError> {
        let before = self.audit.last_seq() - self.audit.staged();
        match self.audit.commit_batch() {
            Ok(n) => Ok(n),
            Err(e) => {
                self.repeats.forget_after(before);
                if self.down.is_none() {
                    tracing::error!(message = "AUDIT LOG NOT WRITABLE: no action will be decided or started until it is.", message_id = ids::AUDIT_UNWRITABLE, error_code = e.code(), error = %e);
                    self.down = Some((ts, e.to_string()));
                }
                Err(e)
            }
        }
    }

    /// Writes out a coalescing window (if it counted anything) and closes it.
    pub fn close_repeat(&mut self, t: &repeats::Target, now: i64) -> Result<(), AuditError> {
        let Some(o) = self.repeats.take(t) else { return Ok(()) };
        self.write_repeat(t.clone(), o, now)
    }

    pub fn write_repeat(&mut self, t: repeats::Target, o: repeats::Open, now: i64) -> Result<(), AuditError> {
        if o.count == 0 {
            return Ok(());
        }
        let rec = Record::DecisionRepeated(repeats::record(&t, &o, self.repeats.window_ms));
        match self.record(&rec, now) {
            Ok(seq) => {
                tracing::info!(message = "Repeated decision.", seq, playbook = %t.0, action = %t.1, action_target = %t.2, decision = o.what.0.as_str(), rule = o.what.1, count = o.count);
                Ok(())
            }
            Err(e) => {
                self.repeats.restore(t, o);
                Err(e)
            }
        }
    }
}
