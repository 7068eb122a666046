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

#[cfg(test)]
mod tests {
    use super::super::record::{self, Action, PlaybookRef};
    use super::super::{verify, AuditConfig, FILE_NAME};
    use super::*;
    use crate::actions::{ActionKind, ActionRequest};
    use crate::gate::{Decision, Mode, Verdict};
    use std::collections::BTreeMap;

    fn note(text: &str) -> Record {
        Record::AuditRecovered(record::AuditRecovered { since: text.into(), error: String::new(), running_actions: 0 })
    }

    /// An executed (live, non-notify) decision: the tracker holds it as unfinished.
    fn executed(target: &str) -> Record {
        let req = ActionRequest {
            kind: ActionKind::CleanFiles,
            target: target.into(),
            params: BTreeMap::new(),
            reason: "disk full".into(),
            signals: BTreeMap::new(),
        };
        let v = Verdict { decision: Decision::Executed, rule: "mode", mode: Mode::Live, detail: "the node is live".into() };
        Record::Action(Action::of(PlaybookRef::named("disk-full"), &req, &v))
    }

    fn verified(dir: &std::path::Path) -> verify::Verified {
        match verify::verify(dir).unwrap() {
            Ok(v) => v,
            Err(b) => panic!("chain broken: {b:?}"),
        }
    }

    /// A batch is one write: its records chain on from the log, in order, and the log verifies
    /// (also reopened); the tracker knows the executed action of the batch.
    #[test]
    fn a_batch_chains_on_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = AuditLog::open(dir.path(), "n").unwrap();
        log.append(&note("before")).unwrap();
        let recs: Vec<Record> = (0..50).map(|i| if i == 7 { executed("/var/tmp") } else { note(&i.to_string()) }).collect();
        let seqs = log.append_batch(&recs, now_ms()).unwrap();
        assert_eq!(seqs, (2..52).collect::<Vec<u64>>());
        assert_eq!(log.pending().iter().map(|p| p.0).collect::<Vec<_>>(), vec![9]);
        assert_eq!(super::super::anchor::read(dir.path()).unwrap().seq, 51, "the anchor follows the commit");
        log.append(&note("after")).unwrap();
        drop(log);
        assert_eq!(verified(dir.path()).last_seq, 52);
        let (log, torn) = AuditLog::open(dir.path(), "n").unwrap();
        assert!(torn.is_none());
        assert_eq!(log.last_seq(), 52);
        assert_eq!(log.pending().len(), 1);
    }

    fn now_ms() -> i64 {
        super::super::now_ms()
    }

    /// Small segments and checkpoints: a batch that fills a segment stays whole in it (with the
    /// checkpoints due inside it), the rotation comes before the next record, and a batch
    /// started on a full segment rotates first; the series verifies and reopens.
    #[test]
    fn a_batch_across_a_rotation_stays_whole_and_the_series_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = AuditConfig { segment_bytes: 4096, checkpoint_every: 7, ..AuditConfig::default() };
        let (mut log, _) = AuditLog::open_with(dir.path(), "n", &cfg, &mut |_| {}).unwrap();
        for round in 0..6 {
            let recs: Vec<Record> = (0..40).map(|i| if i % 13 == 0 { executed(&format!("/t/{round}/{i}")) } else { note("x") }).collect();
            log.append_batch(&recs, now_ms()).unwrap();
        }
        drop(log);
        let segs = super::super::segments::list(dir.path()).unwrap();
        assert!(segs.len() >= 4, "rotated between batches: {segs:?}");
        let v = verified(dir.path());
        assert_eq!(v.segments, segs.len());
        let (mut log, torn) = AuditLog::open_with(dir.path(), "n", &cfg, &mut |_| {}).unwrap();
        assert!(torn.is_none());
        assert_eq!(log.last_seq(), v.last_seq);
        assert_eq!(log.pending().len(), 6 * 4, "every executed action of every batch is unfinished");
        log.append(&note("after")).unwrap();
        drop(log);
        verified(dir.path());
    }

    /// The disk fails at the commit (the file swapped for /dev/full: ENOSPC): nothing of the
    /// batch counts. Its seqs are issued again, the chain goes on from the record before it,
    /// the tracker does not hold its executed action, and the log reopens verified.
    #[test]
    fn a_failed_commit_counts_nothing_and_the_log_reopens_intact() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = AuditLog::open(dir.path(), "n").unwrap();
        log.append(&note("before")).unwrap();
        let real = std::mem::replace(&mut log.file, std::fs::OpenOptions::new().append(true).open("/dev/full").unwrap());
        log.begin_batch();
        assert_eq!(log.append(&note("a")).unwrap(), 2);
        assert_eq!(log.append(&executed("/var/tmp")).unwrap(), 3);
        assert_eq!(log.staged(), 2);
        assert_eq!(log.pending().len(), 1, "staged: known in memory");
        let e = log.commit_batch().unwrap_err();
        assert_eq!(e.code(), "audit_io");
        assert_eq!(log.last_seq(), 1);
        assert!(log.pending().is_empty(), "the tracker is rolled back: the executed action never counted");
        assert_eq!(super::super::anchor::read(dir.path()).unwrap().max_seq, 1, "its seqs were never issued");
        log.file = real;
        assert_eq!(log.append(&note("after")).unwrap(), 2, "the chain goes on from the last durable record");
        // A batch dropped before its commit leaves nothing either.
        log.begin_batch();
        log.append(&executed("/srv")).unwrap();
        log.abort_batch();
        assert!(log.pending().is_empty());
        assert_eq!(log.append(&note("last")).unwrap(), 3);
        drop(log);
        let v = verified(dir.path());
        assert_eq!(v.last_seq, 3);
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert!(!text.contains("\"action\""), "no executed action recorded: {text}");
        let (log, torn) = AuditLog::open(dir.path(), "n").unwrap();
        assert!(torn.is_none());
        assert_eq!(log.last_seq(), 3);
    }

    /// A crash between the batch's write and its fdatasync can leave any prefix of it on disk:
    /// each such prefix opens (whole records kept, the torn rest set aside and recorded) and the
    /// chain verifies, as a torn single record always did.
    #[test]
    fn any_prefix_of_a_batch_left_by_a_crash_is_repaired_at_open() {
        let src = tempfile::tempdir().unwrap();
        let (mut log, _) = AuditLog::open(src.path(), "n").unwrap();
        log.append(&note("before")).unwrap();
        let base = std::fs::read(src.path().join(FILE_NAME)).unwrap();
        let recs: Vec<Record> = (0..5).map(|i| if i == 2 { executed("/var/tmp") } else { note(&format!("r{i}")) }).collect();
        log.append_batch(&recs, now_ms()).unwrap();
        drop(log);
        let full = std::fs::read(src.path().join(FILE_NAME)).unwrap();
        let batch = &full[base.len()..];
        for cut in (0..=batch.len()).step_by(37).chain([batch.len() - 1, batch.len()]) {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(FILE_NAME), [&base[..], &batch[..cut]].concat()).unwrap();
            let whole = batch[..cut].iter().filter(|b| **b == b'\n').count() as u64;
            let (mut log, torn) = AuditLog::open(dir.path(), "n").unwrap_or_else(|e| panic!("cut {cut}: {e}"));
            let partial = batch[..cut].last().is_some_and(|b| *b != b'\n');
            assert_eq!(torn.is_some(), partial, "cut {cut}");
            // 1 + whole records, then the anchor reset (no anchor was copied), the torn tail.
            assert!(log.last_seq() > whole, "cut {cut}");
            log.append(&note("after")).unwrap();
            drop(log);
            verified(dir.path());
        }
    }
}
