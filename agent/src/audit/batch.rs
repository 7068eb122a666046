//! Group commit: records staged in a batch share one `write`, one fdatasync of the log and one
//! anchor update ([`AuditLog::begin_batch`] … [`AuditLog::commit_batch`]). Staging issues each
//! record's `seq` and chains its hash in memory; nothing counts until the commit returns. A
//! commit that fails cuts the file back to its length before the batch and restores the state
//! (seq, chain head, checkpoint counters, tracker) saved when the first record was staged, so
//! the `seq`s it staged were never issued (the anchor, whose `max_seq` is the highest issued,
//! was not touched) and are issued again. A crash between the write and the fdatasync leaves at
//! most a prefix of the batch on disk, which tail repair at the next open treats as any torn
//! tail: the whole records that chain are kept, the rest set aside.
//!
//! A segment is rotated only between batches (a due rotation waits for the batch's commit and
//! happens before the next record), so one batch never spans two files and the cut-back above
//! is always possible; a segment may run past `segment_bytes` by at most one batch.

use super::files::io;
use super::record::Record;
use super::tracker::Tracker;
use super::{AuditError, AuditLog};
use std::io::Write;

/// What a failed commit restores: the log's state before the batch's first record.
pub(super) struct Saved {
    seq: u64,
    last_hash: String,
    good_len: u64,
    seg_first: u64,
    seg_started_ms: i64,
    since_checkpoint: u64,
    last_checkpoint_ms: i64,
    last_checkpoint_seq: u64,
    /// Cloned before the batch first changes the tracker (None: it did not).
    pub(super) tracker: Option<Tracker>,
}

/// Staged bytes kept allocated between batches, at most (a larger buffer is freed).
const KEEP_BUFFER: usize = 1 << 20;

impl AuditLog {
    /// From now on, records are staged (their `seq` issued in memory) until
    /// [`commit_batch`](Self::commit_batch) makes them durable at once or
    /// [`abort_batch`](Self::abort_batch) drops them. A record appended in a batch does not count
    /// before the commit returns.
    pub fn begin_batch(&mut self) {
        self.batching = true;
    }

    /// Whether a batch is open.
    pub fn in_batch(&self) -> bool {
        self.batching
    }

    /// Records staged and not yet committed.
    pub fn staged(&self) -> u64 {
        self.saved.as_ref().map_or(0, |s| self.seq - s.seq)
    }

    /// Writes what the batch staged with one `write`, fdatasyncs the log once and updates the
    /// anchor once; closes the batch. Returns how many records became durable. On failure none
    /// of them counts: see the module note.
    pub fn commit_batch(&mut self) -> Result<u64, AuditError> {
        self.batching = false;
        let n = self.staged();
        self.flush()?;
        Ok(n)
    }

    /// Drops what the batch staged (nothing was written) and closes it.
    pub fn abort_batch(&mut self) {
        self.batching = false;
        if let Some(saved) = self.saved.take() {
            self.restore(saved);
        }
        self.staged_bytes.clear();
    }

    /// Appends `recs` (each bounded, as [`append_bounded_at`](Self::append_bounded_at)) as one
    /// batch: one write, one fdatasync, one anchor update. Returns their `seq`s. All or none.
    pub fn append_batch(&mut self, recs: &[Record], ts_ms: i64) -> Result<Vec<u64>, AuditError> {
        self.begin_batch();
        let mut seqs = Vec::with_capacity(recs.len());
        for r in recs {
            match self.append_bounded_at(r, ts_ms) {
                Ok(s) => seqs.push(s),
                Err(e) => {
                    self.abort_batch();
                    return Err(e);
                }
            }
        }
        self.commit_batch()?;
        Ok(seqs)
    }

    /// Saves the state before the first staged record.
    pub(super) fn save_before_staging(&mut self) {
        if self.saved.is_none() {
            self.saved = Some(Saved {
                seq: self.seq,
                last_hash: self.last_hash.clone(),
                good_len: self.good_len,
                seg_first: self.seg_first,
                seg_started_ms: self.seg_started_ms,
                since_checkpoint: self.since_checkpoint,
                last_checkpoint_ms: self.last_checkpoint_ms,
                last_checkpoint_seq: self.last_checkpoint_seq,
                tracker: None,
            });
        }
    }

    /// Before the tracker learns a staged record: keeps its state for a failed commit.
    pub(super) fn save_tracker(&mut self) {
        if let Some(s) = self.saved.as_mut().filter(|s| s.tracker.is_none()) {
            s.tracker = Some(self.tracker.clone());
        }
    }

    fn restore(&mut self, s: Saved) {
        self.seq = s.seq;
        self.last_hash = s.last_hash;
        self.good_len = s.good_len;
        self.seg_first = s.seg_first;
        self.seg_started_ms = s.seg_started_ms;
        self.since_checkpoint = s.since_checkpoint;
        self.last_checkpoint_ms = s.last_checkpoint_ms;
        self.last_checkpoint_seq = s.last_checkpoint_seq;
        if let Some(t) = s.tracker {
            self.tracker = t;
        }
    }

    /// Writes the staged records (one `write`), fdatasyncs, then updates the anchor. On failure
    /// cuts the file back to before them and restores the state saved before them.
    pub(super) fn flush(&mut self) -> Result<(), AuditError> {
        let Some(saved) = self.saved.take() else { return Ok(()) };
        let t = std::time::Instant::now();
        let res = self.file.write_all(&self.staged_bytes).and_then(|_| self.file.sync_data());
        if let Some(h) = &self.fsync_seconds {
            h.observe(t.elapsed().as_secs_f64());
        }
        self.staged_bytes.clear();
        if self.staged_bytes.capacity() > KEEP_BUFFER {
            self.staged_bytes = Vec::new();
        }
        if let Err(e) = res {
            // Cut a partial write back so the next append continues a whole chain; the open
            // file is in append mode, so the next write lands at the cut.
            let cut = self.file.set_len(saved.good_len).and_then(|_| self.file.sync_data());
            if let Err(c) = cut {
                tracing::error!(message = "Audit log could not be cut back after a failed write; the next start repairs its tail.", error_code = "audit_io", error = %c);
            }
            self.restore(saved);
            return Err(io(&self.path)(e));
        }
        self.save_anchor();
        Ok(())
    }
}
