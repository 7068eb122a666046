//! Segment removal: closed segments past retention (and, with replication on, acknowledged by
//! the broker) are removed oldest first, each removal recorded before it and moving the
//! anchor's base, so the chain stays verifiable from what is left.

use super::files::{io, sync_dir};
use super::record::{self, Record};
use super::{segments, AuditError, AuditLog};
use std::fs::File;

impl AuditLog {
    /// Removes closed segments, oldest first, that retention allows and (with replication on)
    /// the broker acknowledged; each removal is recorded first and moves the anchor's base.
    pub(super) fn prune(&mut self, now: i64) -> Result<(), AuditError> {
        let keep_ms = self.cfg.retain_secs.max(self.cfg.replay_secs).min(i64::MAX as u64 / 1000) as i64 * 1000;
        let cursor = if self.cfg.replicated { crate::forward::read_cursor(&self.dir) } else { u64::MAX };
        for s in segments::list(&self.dir).map_err(io(&self.dir))? {
            let (Some(first), Some(last)) = (s.first, s.last) else { break };
            let mtime = std::fs::metadata(&s.path)
                .and_then(|m| m.modified())
                .map(|t| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
                .map_err(io(&s.path))?;
            if last > cursor || now.saturating_sub(mtime) < keep_ms {
                break;
            }
            let mut f = File::open(&s.path).map_err(io(&s.path))?;
            let len = f.metadata().map_err(io(&s.path))?.len();
            let Some((v, _)) = segments::last_good(&mut f, len).map_err(io(&s.path))? else { break };
            let name = s.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let removed = record::SegmentRemoved {
                segment: name.clone(),
                first_seq: first,
                last_seq: v.seq,
                last_hash: v.hash.clone(),
                forward_cursor: self.cfg.replicated.then_some(cursor),
            };
            self.write_record(&Record::AuditSegmentRemoved(removed), now)?;
            self.anchor.base_seq = v.seq;
            self.anchor.base_hash = v.hash.clone();
            self.save_anchor();
            std::fs::remove_file(&s.path).map_err(io(&s.path))?;
            sync_dir(&self.dir)?;
            tracing::info!(message = "Audit segment removed.", segment = %name, last_seq = v.seq);
        }
        Ok(())
    }
}
