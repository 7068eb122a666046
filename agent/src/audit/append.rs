//! Appending: a record made into its body (bounded first when the agent appends), stamped with
//! `seq`, `ts`, `prev_hash` and `hash`, and staged; outside a batch it is written with one
//! `write` and fdatasync'd before the call returns, inside one at the batch's commit
//! (`batch.rs`). Also the checkpoint due every `checkpoint_every` records or `checkpoint_secs`,
//! and the rotation that closes a full or old segment and starts the next with a checkpoint
//! (between batches only).

use super::canonical::{canonical, now_ms, now_rfc3339, record_hash};
use super::files::{io, open_private, sync_dir};
use super::record::{self, Record};
use super::tracker::Tracker;
use super::{bound, segments, AuditError, AuditLog, SCHEMA};
use serde_json::{Map, Value};

impl AuditLog {
    /// Appends one record, fsync'd (in a batch: staged, durable at the batch's commit). Returns
    /// its `seq`.
    pub fn append(&mut self, rec: &Record) -> Result<u64, AuditError> {
        self.append_at(rec, now_ms())
    }

    /// As [`append`](Self::append), with the record's timestamp given (the tick's clock).
    /// Closes the segment first when it is full or old, and writes a checkpoint first when one
    /// is due (so the record asked for is still the last one written).
    pub fn append_at(&mut self, rec: &Record, ts_ms: i64) -> Result<u64, AuditError> {
        self.append_body(rec, rec.to_body()?, None, ts_ms)
    }

    /// As [`append_at`](Self::append_at), the body bounded in bytes first ([`bound`]): what
    /// the agent appends.
    pub fn append_bounded_at(&mut self, rec: &Record, ts_ms: i64) -> Result<u64, AuditError> {
        let kind = rec.kind();
        let mut body = rec.to_body()?;
        let truncated = bound::bound(&mut body, &self.node, kind);
        if let Some(from) = truncated {
            tracing::warn!(message = "Audit record truncated to its byte bound.", kind, from_bytes = from, bound = bound::MAX_RECORD_BYTES);
        }
        self.append_body(rec, body, truncated, ts_ms)
    }

    /// Appends `body`, `rec` serialized (and cut to `truncated` bytes when it was).
    fn append_body(&mut self, rec: &Record, body: Map<String, Value>, truncated: Option<usize>, ts_ms: i64) -> Result<u64, AuditError> {
        let kind = rec.kind();
        let wall = now_ms();
        let age_ms = self.cfg.segment_secs.min(i64::MAX as u64 / 1000) as i64 * 1000;
        // A batch never spans two files (batch.rs): a rotation due inside one waits for its commit.
        let rotatable = self.saved.is_none();
        if rotatable && self.good_len > 0 && (self.good_len >= self.cfg.segment_bytes || wall.saturating_sub(self.seg_started_ms) >= age_ms)
        {
            self.rotate(wall)?;
        } else if self.since_checkpoint >= self.cfg.checkpoint_every.max(1)
            || wall.saturating_sub(self.last_checkpoint_ms) >= self.cfg.checkpoint_secs.min(i64::MAX as u64 / 1000) as i64 * 1000
        {
            self.checkpoint(wall)?;
        }
        // The tracker learns what was written: the bounded body when it was cut.
        let tracked = match truncated {
            _ if !Tracker::tracks(rec) => None,
            None => Some(rec.clone()),
            Some(_) => Record::parse(&body).ok(),
        };
        let seq = self.write_body(kind, body, ts_ms, tracked)?;
        self.since_checkpoint += 1;
        Ok(seq)
    }

    /// Writes an `audit_checkpoint`: the chain head before it, open breakers and unfinished
    /// actions. Published like every record, so the broker holds proof of what the node had.
    fn checkpoint(&mut self, now: i64) -> Result<u64, AuditError> {
        let first = if self.good_len == 0 { self.seq + 1 } else { self.seg_first };
        let checkpoint = self.tracker.checkpoint(record::Head { seq: self.seq, hash: self.last_hash.clone() }, first);
        let seq = self.write_record(&Record::AuditCheckpoint { checkpoint }, now)?;
        self.since_checkpoint = 0;
        self.last_checkpoint_ms = now;
        self.last_checkpoint_seq = seq;
        Ok(seq)
    }

    /// Closes the active segment (renamed `audit.<first>-<last>.log`) and starts a new one
    /// with a checkpoint.
    fn rotate(&mut self, now: i64) -> Result<(), AuditError> {
        let closed = self.dir.join(segments::closed_name(self.seg_first, self.seq));
        std::fs::rename(&self.path, &closed).map_err(io(&closed))?;
        sync_dir(&self.dir)?;
        self.file = open_private(&self.path, &self.cfg, true)?;
        self.good_len = 0;
        self.refresh_identity();
        tracing::info!(message = "Audit segment closed.", segment = %closed.display(), last_seq = self.seq);
        self.checkpoint(now)?;
        sync_dir(&self.dir)
    }

    /// Observes each append's write and fdatasync time into `h` from now on.
    pub fn time_appends(&mut self, h: prometheus_client::metrics::histogram::Histogram) {
        self.fsync_seconds = Some(h);
    }

    /// Writes one of the log's own records (not bounded: the audit module's records are small,
    /// and a checkpoint must not be cut).
    pub(super) fn write_record(&mut self, rec: &Record, ts_ms: i64) -> Result<u64, AuditError> {
        let tracked = Tracker::tracks(rec).then(|| rec.clone());
        self.write_body(rec.kind(), rec.to_body()?, ts_ms, tracked)
    }

    fn write_body(&mut self, kind: &str, mut body: Map<String, Value>, ts_ms: i64, tracked: Option<Record>) -> Result<u64, AuditError> {
        let seq = self.seq + 1;
        body.insert("schema".into(), SCHEMA.into());
        body.insert("seq".into(), seq.into());
        body.insert("id".into(), uuid::Uuid::now_v7().to_string().into());
        body.insert("ts".into(), now_rfc3339(ts_ms).into());
        body.insert("node".into(), self.node.clone().into());
        body.insert("kind".into(), kind.into());
        body.insert("prev_hash".into(), self.last_hash.clone().into());
        let hash = record_hash(&body);
        body.insert("hash".into(), hash.clone().into());
        let ts = body.get("ts").and_then(Value::as_str).unwrap_or("").to_string();
        self.save_before_staging();
        let start = self.staged_bytes.len();
        self.staged_bytes.extend_from_slice(canonical(&Value::Object(body)).as_bytes());
        self.staged_bytes.push(b'\n');
        if self.good_len == 0 {
            self.seg_first = seq;
            self.seg_started_ms = now_ms();
        }
        self.good_len += (self.staged_bytes.len() - start) as u64;
        self.seq = seq;
        self.last_hash = hash;
        if let Some(r) = tracked {
            self.save_tracker();
            self.tracker.observe(seq, &ts, &r);
        }
        if !self.batching {
            self.flush()?;
        }
        Ok(seq)
    }
}
