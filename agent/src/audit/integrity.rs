//! The per-tick integrity check of the active segment (deleted, replaced, unlinked, cut off, or
//! appended to by someone else), what it sets aside or rescues before the log is reopened, and
//! the log's integrity as `medic status` shows it.

use super::canonical::now_ms;
use super::files::{io, open_private, write_private};
use super::open::{Found, TornTail};
use super::{segments, AuditError, AuditLog};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;

impl AuditLog {
    /// The per-tick check (an fstat and a stat): the active segment must still be the file at
    /// its path, linked, with the length this agent wrote. A deleted or replaced file is
    /// rescued from the open descriptor and the log reopened; bytes someone appended are set
    /// aside; a cut-off file is a rewind. Each is recorded. Also removes segments that were
    /// replicated and are past retention (at most once a minute).
    pub fn check(&mut self, now: i64) -> Result<(), AuditError> {
        let path = self.path.clone();
        let fst = rustix::fs::fstat(&self.file).map_err(|e| io(&path)(e.into()))?;
        let pst = rustix::fs::statat(rustix::fs::CWD, &path, rustix::fs::AtFlags::SYMLINK_NOFOLLOW);
        let size = fst.st_size as u64;
        let problem = match &pst {
            Err(_) => Some(("the active segment was deleted while the agent ran", true)),
            Ok(p) if (p.st_dev, p.st_ino) != (fst.st_dev, fst.st_ino) => {
                Some(("the active segment was replaced while the agent ran", true))
            }
            Ok(_) if fst.st_nlink == 0 => Some(("the active segment was unlinked while the agent ran", true)),
            Ok(_) if size < self.good_len => Some(("the active segment was cut off while the agent ran", false)),
            _ => None,
        };
        if let Some((why, gone)) = problem {
            tracing::error!(
                message = "Audit log changed under the agent.",
                message_id = crate::telemetry::ids::AUDIT_REWOUND,
                error_code = "audit_rewound",
                reason = why
            );
            let rescued = if gone { self.rescue(now) } else { None };
            self.file = open_private(&path, &self.cfg, true)?;
            let found = self.repair()?;
            self.settle(found, rescued, None, None, Some(why.to_string()))?;
        } else if size > self.good_len {
            // Bytes after the last record this agent wrote: not ours. Set them aside.
            tracing::error!(
                message = "Bytes appended to the audit log by someone else; set aside.",
                error_code = "audit_torn_tail",
                bytes = size - self.good_len
            );
            let found = self.repair_foreign()?;
            self.settle(found, None, None, None, None)?;
        }
        if now.saturating_sub(self.last_prune_ms) >= 60_000 {
            self.last_prune_ms = now;
            self.prune(now)?;
        }
        Ok(())
    }

    /// Sets aside everything after the last record this agent wrote (which it knows exactly).
    fn repair_foreign(&mut self) -> Result<Found, AuditError> {
        let (seq, hash, good_len) = (self.seq, self.last_hash.clone(), self.good_len);
        let path = self.path.clone();
        let ts = now_ms();
        let saved_as = self.dir.join(format!("audit.torn.{ts}"));
        let mut src = self.file.try_clone().map_err(io(&path))?;
        src.seek(SeekFrom::Start(good_len)).map_err(io(&path))?;
        let mut bytes = Vec::new();
        src.take(segments::MAX_LINE as u64).read_to_end(&mut bytes).map_err(io(&path))?;
        write_private(&saved_as, &self.cfg, &bytes)?;
        self.file.set_len(good_len).and_then(|_| self.file.sync_all()).map_err(io(&path))?;
        let torn = TornTail { bytes: bytes.len() as u64, saved_as, sha256: hex::encode(Sha256::digest(&bytes)) };
        Ok(Found { seq, hash, good_len, torn: Some(torn) })
    }

    /// Copies what this agent wrote to the active segment, still readable through its open
    /// descriptor, to `audit.rescued.<ms>`.
    fn rescue(&self, now: i64) -> Option<PathBuf> {
        let to = self.dir.join(format!("audit.rescued.{now}"));
        let mut src = self.file.try_clone().ok()?;
        src.seek(SeekFrom::Start(0)).ok()?;
        let mut out = open_private(&to, &self.cfg, false).ok()?;
        std::io::copy(&mut src.take(self.good_len), &mut out).ok()?;
        out.sync_all().ok()?;
        Some(to)
    }

    /// The log's integrity for `medic status`: segments, the anchor, the last rewind and chain
    /// break recorded.
    pub fn status(&self) -> Value {
        let segments = segments::list(&self.dir).map(|v| v.len()).unwrap_or(0);
        serde_json::json!({
            "segments": segments,
            "active_bytes": self.good_len,
            "anchor": { "seq": self.anchor.seq, "max_seq": self.anchor.max_seq, "base_seq": self.anchor.base_seq, "error": self.anchor_error },
            "last_checkpoint_seq": self.last_checkpoint_seq,
            "rewound": self.anchor.rewound,
            "chain_broken": self.anchor.chain_broken,
        })
    }
}
