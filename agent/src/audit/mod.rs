//! Recording: the local audit log. One JSON object per line (schema `medic.audit/v1`), a per-node
//! strictly increasing `seq`, and a SHA-256 chain: each record's `hash` covers its canonical form
//! (sorted keys, no whitespace, without `hash`) including `prev_hash`, the previous record's hash.
//! A record is appended with one `write` and fsync'd before [`AuditLog::append`] returns: only
//! then does the decision it records count as made. Records of one batch
//! ([`AuditLog::begin_batch`], `batch.rs`) share one `write` and one fsync: none counts before
//! [`AuditLog::commit_batch`] returns.
//!
//! At open, a torn last line (a crash mid-write) is cut off, kept aside in
//! `audit.torn.<unix-ms>`, and recorded as an `audit_torn_tail` record, so the chain continues
//! from the last whole record and nothing is dropped silently. `verify` re-checks the whole file.
//!
//! A file per job; `AuditLog`'s methods live with theirs: `canonical.rs` (canonical form, hash,
//! timestamps), `config.rs` (`[audit]`), `files.rs` (the state dir's owner and modes),
//! `tracker.rs` (open breakers and unfinished actions carried in checkpoints), `open.rs` (lock,
//! tail repair, replay of the suffix, settling against the anchor), `append.rs` (append, fsync,
//! checkpoints, rotation), `batch.rs` (group commit: one write and fsync for many records),
//! `integrity.rs` (the per-tick check, status), `retention.rs` (segment removal). This file
//! holds the error type, the log's state and the public paths.

pub mod anchor;
pub mod bound;
pub mod chain;
pub mod record;
pub mod segments;
pub mod verify;

mod append;
mod batch;
mod canonical;
mod config;
mod files;
mod integrity;
mod open;
mod retention;
mod tracker;

pub use self::canonical::{canonical, now_ms, now_rfc3339, record_hash, Canonical};
pub use self::config::AuditConfig;
pub use self::open::TornTail;

use anchor::{Anchor, AnchorFile};
use std::fs::File;
use std::path::{Path, PathBuf};
use tracker::Tracker;

pub const SCHEMA: &str = "medic.audit/v1";
pub const FILE_NAME: &str = "audit.log";
/// `prev_hash` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Errors of the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The log file or its directory could not be opened, read, written or fsync'd.
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The last whole record does not parse, so the chain cannot be continued safely.
    #[error("audit log {path}: last record is unreadable ({reason}); run `medic audit verify`")]
    Corrupt { path: PathBuf, reason: String },
    /// Another medic holds the log.
    #[error("audit log {path} is in use by another medic process")]
    Locked { path: PathBuf },
    /// The state dir or one of its files belongs to another user (who could swap the log or
    /// hold its lock), or is not what it should be.
    #[error("{path}: unsafe: {reason}")]
    Unsafe { path: PathBuf, reason: String },
    /// A record could not be made into its JSON body.
    #[error(transparent)]
    Record(#[from] record::RecordError),
}

impl AuditError {
    /// Stable code for logs and status.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "audit_io",
            Self::Corrupt { .. } => "audit_corrupt",
            Self::Locked { .. } => "audit_locked",
            Self::Unsafe { .. } => "audit_unsafe",
            Self::Record(e) => e.code(),
        }
    }
}

/// The append side of the log, held by the running agent.
pub struct AuditLog {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    _lock: File,
    anchor_file: AnchorFile,
    anchor: Anchor,
    cfg: AuditConfig,
    node: String,
    seq: u64,
    last_hash: String,
    /// Length of the active segment up to the end of the last whole record.
    good_len: u64,
    /// First seq and first record's time (ms) of the active segment (0: it is empty).
    seg_first: u64,
    seg_started_ms: i64,
    since_checkpoint: u64,
    last_checkpoint_ms: i64,
    last_checkpoint_seq: u64,
    last_prune_ms: i64,
    tracker: Tracker,
    /// Why the anchor could not be written last (it lags the log meanwhile).
    anchor_error: Option<String>,
    /// Where each append's write + fdatasync time goes (`medic_audit_fsync_duration_seconds`).
    fsync_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
    /// A batch is open: records are staged until its commit (`batch.rs`).
    batching: bool,
    /// The staged records' lines, written at the next flush.
    staged_bytes: Vec<u8>,
    /// The state before the first staged record (Some while records are staged).
    saved: Option<batch::Saved>,
}

impl AuditLog {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_seq(&self) -> u64 {
        self.seq
    }
}
