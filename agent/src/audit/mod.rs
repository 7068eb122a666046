//! Recording: the local audit log. One JSON object per line (schema `medic.audit/v1`), a per-node
//! strictly increasing `seq`, and a SHA-256 chain: each record's `hash` covers its canonical form
//! (sorted keys, no whitespace, without `hash`) including `prev_hash`, the previous record's hash.
//! A record is appended with one `write` and fsync'd before [`AuditLog::append`] returns: only
//! then does the decision it records count as made.
//!
//! At open, a torn last line (a crash mid-write) is cut off, kept aside in
//! `audit.torn.<unix-ms>`, and recorded as an `audit_torn_tail` record, so the chain continues
//! from the last whole record and nothing is dropped silently. `verify` re-checks the whole file.

pub mod anchor;
pub mod bound;
pub mod chain;
pub mod record;
pub mod segments;
pub mod verify;

use crate::actions::ActionKind;
use crate::gate::Decision;
use anchor::{Anchor, AnchorFile};
use chain::Chain;
use record::{ActionRef, PlaybookRef, Record, Stored};
use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

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

/// Serializes a JSON value with object keys sorted at every level, whatever serde_json's map
/// ordering is: the canonical form the hash is computed over.
pub struct Canonical<'a>(pub &'a Value);

impl Serialize for Canonical<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::{SerializeMap, SerializeSeq};
        match self.0 {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut map = s.serialize_map(Some(keys.len()))?;
                for k in keys {
                    map.serialize_entry(k, &Canonical(&m[k]))?;
                }
                map.end()
            }
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(&Canonical(v))?;
                }
                seq.end()
            }
            other => other.serialize(s),
        }
    }
}

pub fn canonical(v: &Value) -> String {
    serde_json::to_string(&Canonical(v)).unwrap_or_default()
}

/// SHA-256 (hex) of the record's canonical form without its `hash` field.
pub fn record_hash(record: &Map<String, Value>) -> String {
    let without: Map<String, Value> = record.iter().filter(|(k, _)| *k != "hash").map(|(k, v)| (k.clone(), v.clone())).collect();
    hex::encode(Sha256::digest(canonical(&Value::Object(without)).as_bytes()))
}

pub fn now_rfc3339(ts_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts_ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

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

impl AuditConfig {
    fn file_mode(&self) -> u32 {
        if self.group.is_some() {
            0o640
        } else {
            0o600
        }
    }
    fn dir_mode(&self) -> u32 {
        if self.group.is_some() {
            0o750
        } else {
            0o700
        }
    }
}

/// What the log holds that outlives the replay window: executed actions without an outcome yet
/// and open breakers. Kept up to date from every record appended (and replayed), and written
/// into each `audit_checkpoint`, so a start replays a bounded suffix and still knows them.
#[derive(Debug, Default, Clone)]
struct Tracker {
    /// seq of an executed decision → its playbook and action.
    pending: BTreeMap<u64, (PlaybookRef, ActionRef)>,
    /// (mode, playbook, action kind, target) → open since (RFC 3339).
    breakers: BTreeMap<(String, String, String, String), String>,
}

/// At most this many open breakers and unfinished actions are carried in a checkpoint.
const MAX_CARRIED: usize = 4096;

impl Tracker {
    /// Whether a record of this kind changes what the tracker holds.
    fn tracks(rec: &Record) -> bool {
        matches!(rec, Record::Action(_) | Record::ActionOutcome(_) | Record::BreakerReset(_))
    }

    /// `ts`: the record's time as written (an escalation opens its breaker then).
    fn observe(&mut self, seq: u64, ts: &str, rec: &Record) {
        match rec {
            Record::Action(a) => match a.decision {
                Decision::Executed if a.action.kind != ActionKind::Notify => {
                    let action = ActionRef { kind: a.action.kind, target: a.action.target.clone() };
                    self.pending.insert(seq, (a.playbook.clone(), action));
                }
                Decision::Escalated => {
                    let key =
                        (a.mode.as_str().to_string(), a.playbook.name.clone(), a.action.kind.as_str().to_string(), a.action.target.clone());
                    if self.breakers.len() < MAX_CARRIED || self.breakers.contains_key(&key) {
                        self.breakers.insert(key, ts.to_string());
                    }
                }
                _ => {}
            },
            Record::ActionOutcome(o) => {
                self.pending.remove(&o.ref_seq);
            }
            Record::BreakerReset(r) => {
                let (pb, kind, target) = (&r.playbook.name, r.action.as_str(), &r.target);
                self.breakers.retain(|k, _| !(&k.1 == pb && k.2 == kind && &k.3 == target));
            }
            _ => {}
        }
    }

    fn checkpoint(&self, head: record::Head, segment_first_seq: u64) -> record::Checkpoint {
        let pending = self
            .pending
            .iter()
            .take(MAX_CARRIED)
            .map(|(seq, (pb, a))| record::CarriedAction { ref_seq: *seq, playbook: pb.clone(), action: a.clone() })
            .collect();
        let open_breakers = self
            .breakers
            .iter()
            .map(|((mode, pb, kind, target), since)| record::CarriedBreaker {
                mode: mode.clone(),
                playbook: pb.clone(),
                action: kind.clone(),
                target: target.clone(),
                since: since.clone(),
            })
            .collect();
        record::Checkpoint { head, segment_first_seq, open_breakers, pending }
    }

    fn seed(&mut self, checkpoint: &record::Checkpoint) {
        for p in &checkpoint.pending {
            self.pending.insert(p.ref_seq, (p.playbook.clone(), p.action.clone()));
        }
        for b in &checkpoint.open_breakers {
            let key = (b.mode.clone(), b.playbook.clone(), b.action.clone(), b.target.clone());
            self.breakers.entry(key).or_insert_with(|| b.since.clone());
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
}

/// What was found torn at open.
#[derive(Debug, Clone)]
pub struct TornTail {
    pub bytes: u64,
    pub saved_as: PathBuf,
    pub sha256: String,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io { path: path.to_path_buf(), source }
}

/// Cuts a reason to a length that fits the anchor and a status line.
fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

/// Creates the state dir 0700 (0750 with the control group) whatever the umask, and refuses
/// one that belongs to another user: whoever owns it could swap the log or hold its lock.
fn secure_dir(dir: &Path, cfg: &AuditConfig) -> Result<(), AuditError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(cfg.dir_mode()).create(dir).map_err(io(dir))?;
    }
    let md = std::fs::metadata(dir).map_err(io(dir))?;
    let me = rustix::process::geteuid().as_raw();
    if !md.is_dir() || md.uid() != me {
        return Err(AuditError::Unsafe {
            path: dir.to_path_buf(),
            reason: format!("owned by uid {}, not by the user running medic (uid {me})", md.uid()),
        });
    }
    if md.mode() & 0o7777 != cfg.dir_mode() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(cfg.dir_mode())).map_err(io(dir))?;
    }
    if let Some(g) = cfg.group.filter(|g| *g != md.gid()) {
        rustix::fs::chown(dir, None, Some(rustix::process::Gid::from_raw(g))).map_err(|e| io(dir)(e.into()))?;
    }
    Ok(())
}

/// Opens (creating) a file of the state dir with the log's mode, never through a symlink, and
/// makes sure it is ours with that mode.
fn open_private(path: &Path, cfg: &AuditConfig, append: bool) -> Result<File, AuditError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let mut o = OpenOptions::new();
    o.create(true).read(true).mode(cfg.file_mode()).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(false);
    }
    let f = o.open(path).map_err(io(path))?;
    let md = f.metadata().map_err(io(path))?;
    if md.uid() != rustix::process::geteuid().as_raw() || !md.is_file() {
        return Err(AuditError::Unsafe { path: path.to_path_buf(), reason: format!("owned by uid {}, or not a file", md.uid()) });
    }
    if md.mode() & 0o7777 != cfg.file_mode() {
        f.set_permissions(std::fs::Permissions::from_mode(cfg.file_mode())).map_err(io(path))?;
    }
    if let Some(g) = cfg.group.filter(|g| *g != md.gid()) {
        rustix::fs::fchown(&f, None, Some(rustix::process::Gid::from_raw(g))).map_err(|e| io(path)(e.into()))?;
    }
    Ok(f)
}

/// Writes a new private file with `bytes`, fsync'd.
fn write_private(path: &Path, cfg: &AuditConfig, bytes: &[u8]) -> Result<(), AuditError> {
    let mut f = open_private(path, cfg, false)?;
    f.set_len(0).and_then(|_| f.write_all(bytes)).and_then(|_| f.sync_all()).map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

fn ts_ms(rec: &Map<String, Value>) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(rec.get("ts")?.as_str()?).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
}

/// What the active segment holds after tail repair.
struct Found {
    seq: u64,
    hash: String,
    good_len: u64,
    torn: Option<TornTail>,
}

impl AuditLog {
    /// Opens `<state_dir>` with the default `[audit]` settings and no replay (tests, tools).
    pub fn open(state_dir: &Path, node: &str) -> Result<(Self, Option<TornTail>), AuditError> {
        Self::open_with(state_dir, node, &AuditConfig::default(), &mut |_| {})
    }

    /// Opens (creating) the log in `state_dir` for appending, takes its lock, repairs a torn
    /// tail, replays the suffix of the log that covers `replay_secs` through `replay` (verifying
    /// its chain), and compares what it found with the anchor and the forwarder's cursor. What
    /// it finds wrong is recorded before this returns: `audit_rewound`, `audit_torn_tail`,
    /// `audit_chain_broken`, `audit_anchor_reset`.
    pub fn open_with(
        state_dir: &Path,
        node: &str,
        cfg: &AuditConfig,
        replay: &mut dyn FnMut(&Stored),
    ) -> Result<(Self, Option<TornTail>), AuditError> {
        secure_dir(state_dir, cfg)?;
        let lock_path = state_dir.join("audit.lock");
        let lock = match open_private(&lock_path, cfg, false) {
            // A lock file someone else made (in a dir they could write once): replace it.
            Err(AuditError::Unsafe { .. }) => {
                std::fs::remove_file(&lock_path).map_err(io(&lock_path))?;
                open_private(&lock_path, cfg, false)?
            }
            other => other?,
        };
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| AuditError::Locked { path: state_dir.join(FILE_NAME) })?;
        let path = state_dir.join(FILE_NAME);
        let created = !path.exists();
        let file = open_private(&path, cfg, true)?;
        let stored = anchor::read(state_dir);
        let anchor_file = AnchorFile::open(state_dir, cfg.file_mode()).map_err(io(state_dir))?;
        let _ = open_private(anchor_file.path(), cfg, false)?;
        let mut log = Self {
            dir: state_dir.to_path_buf(),
            path,
            file,
            _lock: lock,
            anchor_file,
            anchor: stored.clone().unwrap_or_else(|_| Anchor::fresh()),
            cfg: cfg.clone(),
            node: node.to_string(),
            seq: 0,
            last_hash: GENESIS.into(),
            good_len: 0,
            seg_first: 0,
            seg_started_ms: now_ms(),
            since_checkpoint: 0,
            last_checkpoint_ms: now_ms(),
            last_checkpoint_seq: 0,
            last_prune_ms: 0,
            tracker: Tracker::default(),
            anchor_error: None,
            fsync_seconds: None,
        };
        let found = log.repair()?;
        let broken = log.replay_suffix(found.good_len, replay)?;
        let anchor_problem = match stored {
            Ok(_) => None,
            Err(anchor::Read::Missing) if found.seq == 0 && found.torn.is_none() => None,
            Err(anchor::Read::Missing) => Some("no anchor (the first start of a version with anchors, or it was deleted)".to_string()),
            Err(anchor::Read::Invalid(e)) => Some(format!("anchor unreadable: {e}")),
        };
        let torn = log.settle(found, None, anchor_problem, broken, None)?;
        if created {
            sync_dir(state_dir)?;
        }
        Ok((log, torn))
    }

    /// Tail repair of the active segment: keeps everything up to the last whole record that
    /// chains and sets the rest aside (`audit.torn.<ms>`), whatever its size or content.
    fn repair(&mut self) -> Result<Found, AuditError> {
        let path = self.path.clone();
        let len = self.file.metadata().map_err(io(&path))?.len();
        let mut r = self.file.try_clone().map_err(io(&path))?;
        let good = segments::last_good(&mut r, len).map_err(io(&path))?;
        let (mut seq, mut hash, good_len) = match &good {
            Some((v, gl)) => (v.seq, v.hash.clone(), *gl),
            None => (0, GENESIS.to_string(), 0),
        };
        if good.is_none() {
            // Nothing whole in the active segment: the chain head is the last closed segment's
            // last record, else the point removed segments ended at.
            let closed = segments::list(&self.dir).map_err(io(&self.dir))?;
            match closed.iter().rev().find(|s| s.first.is_some()) {
                Some(s) => {
                    let mut f = File::open(&s.path).map_err(io(&s.path))?;
                    let l = f.metadata().map_err(io(&s.path))?.len();
                    if let Some((v, _)) = segments::last_good(&mut f, l).map_err(io(&s.path))? {
                        (seq, hash) = (v.seq, v.hash);
                    }
                }
                None => (seq, hash) = (self.anchor.base_seq, self.anchor.base_hash.clone()),
            }
        }
        let mut torn = None;
        if len > good_len {
            let ts = now_ms();
            let saved_as = self.dir.join(format!("audit.torn.{ts}"));
            let mut out = open_private(&saved_as, &self.cfg, false)?;
            let mut src = self.file.try_clone().map_err(io(&path))?;
            src.seek(SeekFrom::Start(good_len)).map_err(io(&path))?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n = 0u64;
            loop {
                let k = src.read(&mut buf).map_err(io(&path))?;
                if k == 0 {
                    break;
                }
                hasher.update(&buf[..k]);
                out.write_all(&buf[..k]).map_err(io(&saved_as))?;
                n += k as u64;
            }
            out.sync_all().map_err(io(&saved_as))?;
            self.file.set_len(good_len).and_then(|_| self.file.sync_all()).map_err(io(&path))?;
            torn = Some(TornTail { bytes: n, saved_as, sha256: hex::encode(hasher.finalize()) });
        }
        self.seq = seq;
        self.last_hash = hash.clone();
        self.good_len = good_len;
        match segments::first_record(&self.path).map_err(io(&path))? {
            Some(v) if good_len > 0 => {
                self.seg_first = v.seq;
                self.seg_started_ms = ts_ms(&v.rec).unwrap_or_else(now_ms);
            }
            _ => {
                self.seg_first = 0;
                self.seg_started_ms = now_ms();
            }
        }
        Ok(Found { seq, hash, good_len, torn })
    }

    /// Replays the segments covering `replay_secs` (the active one up to `good_len`) through
    /// `replay`, verifying their chain, and learns open breakers and unfinished actions (from
    /// the checkpoint that starts the first of them, then from the records). Returns the first
    /// break found, if any. Memory: one line at a time.
    fn replay_suffix(&mut self, good_len: u64, replay: &mut dyn FnMut(&Stored)) -> Result<Option<record::ChainBroken>, AuditError> {
        let segs = segments::list(&self.dir).map_err(io(&self.dir))?;
        let window_start = now_ms().saturating_sub(self.cfg.replay_secs.min(i64::MAX as u64 / 1000) as i64 * 1000);
        let mut start = 0;
        for (i, s) in segs.iter().enumerate().rev() {
            let first = segments::first_record(&s.path).map_err(io(&s.path))?;
            if first.is_some_and(|v| ts_ms(&v.rec).is_some_and(|t| t <= window_start)) {
                start = i;
                break;
            }
        }
        let mut lines = segments::Lines::new(segs[start..].to_vec(), Some(good_len));
        let mut chain = Chain::loose();
        let mut broken: Option<record::ChainBroken> = None;
        while let Some((item, path, line_no)) = lines.next_line().map_err(io(&self.dir))? {
            let path = path.display().to_string();
            let res = match item {
                segments::Item::Whole(text) => match chain.push(text) {
                    Ok(v) => Ok(v),
                    Err(reason) => Err((reason, chain::valid(text).ok())),
                },
                segments::Item::TooLong => Err((format!("a line longer than {} bytes", segments::MAX_LINE), None)),
                segments::Item::Torn => Err(("a torn line inside the log".to_string(), None)),
            };
            let v = match res {
                Ok(v) => v,
                Err((reason, v)) => {
                    if broken.is_none() {
                        broken = Some(record::ChainBroken { after_seq: chain.seq, segment: path, line: line_no, reason: short(&reason) });
                    }
                    let Some(v) = v else { continue };
                    chain.accept(&v);
                    v
                }
            };
            let stored = Stored::read(&v.rec);
            match &stored.record {
                Ok(Record::AuditCheckpoint { checkpoint }) if chain.records == 1 => self.tracker.seed(checkpoint),
                Ok(r) => self.tracker.observe(stored.seq, &stored.ts, r),
                // Skipped for the ledgers, as a record without the fields they need always was.
                Err(e) => tracing::debug!(message = "Audit record not read through its kind.", seq = stored.seq, error = %e),
            }
            replay(&stored);
        }
        Ok(broken)
    }

    /// Compares what the log holds (after repair) with the anchor and the forwarder's cursor,
    /// and records what is wrong: a rewind first (it continues `seq` after the highest ever
    /// issued), then a torn tail, a chain break, an anchor that had to be made anew.
    fn settle(
        &mut self,
        found: Found,
        rescued: Option<PathBuf>,
        anchor_problem: Option<String>,
        broken: Option<record::ChainBroken>,
        detected: Option<String>,
    ) -> Result<Option<TornTail>, AuditError> {
        let cursor = crate::forward::read_cursor(&self.dir);
        let a = self.anchor.clone();
        let high = a.max_seq.max(cursor).max(found.seq);
        let why = if found.seq < a.seq {
            Some(format!(
                "the log ends at seq {} but its anchor says {}: records were cut off, or the file deleted or replaced",
                found.seq, a.seq
            ))
        } else if found.seq == a.seq && found.hash != a.hash {
            Some(format!("seq {} has another hash than the anchor's: the log was replaced", found.seq))
        } else if found.seq < cursor {
            Some(format!("the broker acknowledged seq {cursor} but the log ends at seq {}", found.seq))
        } else {
            None
        };
        self.refresh_identity();
        if let Some(why) = why {
            let why = match &detected {
                Some(d) => format!("{d}; {why}"),
                None => why,
            };
            tracing::error!(message = "AUDIT LOG REWOUND: records are missing; seq continues after the highest issued.", message_id = crate::telemetry::ids::AUDIT_REWOUND, error_code = "audit_rewound", found_seq = found.seq, anchor_seq = a.seq, forward_cursor = cursor, reason = %why);
            self.seq = high;
            let rewound = record::Rewound {
                expected: record::Expected { seq: a.seq, hash: a.hash.clone(), max_seq: a.max_seq },
                found: record::Head { seq: found.seq, hash: found.hash.clone() },
                lost: record::Lost { from_seq: found.seq + 1, to_seq: high },
                forward_cursor: cursor,
                reason: why.clone(),
                rescued: rescued.as_ref().map(|p| p.display().to_string()),
            };
            let seq = self.write_record(&Record::AuditRewound { rewound }, now_ms())?;
            self.anchor.rewound = Some(serde_json::json!({
                "seq": seq, "ts": now_rfc3339(now_ms()), "lost_from_seq": found.seq + 1, "lost_to_seq": high, "reason": short(&why),
            }));
        }
        if let Some(t) = &found.torn {
            let torn =
                record::Torn { bytes: t.bytes, saved_as: t.saved_as.display().to_string(), sha256: t.sha256.clone(), after_seq: found.seq };
            self.write_record(&Record::AuditTornTail { torn }, now_ms())?;
        }
        if let Some(b) = broken {
            tracing::error!(message = "AUDIT CHAIN BROKEN in the replayed part of the log.", message_id = crate::telemetry::ids::AUDIT_CHAIN_BROKEN, error_code = "audit_chain_broken", after_seq = b.after_seq, segment = %b.segment, line = b.line, reason = %b.reason);
            let (after_seq, reason) = (b.after_seq, b.reason.clone());
            let seq = self.write_record(&Record::AuditChainBroken { broken: b }, now_ms())?;
            self.anchor.chain_broken = Some(serde_json::json!({
                "seq": seq, "ts": now_rfc3339(now_ms()), "after_seq": after_seq, "reason": reason,
            }));
        }
        if let Some(p) = anchor_problem {
            tracing::warn!(message = "Audit anchor made anew.", error_code = "audit_anchor_reset", reason = %p);
            let rec = Record::AuditAnchorReset { reason: p, found: record::Head { seq: found.seq, hash: found.hash.clone() } };
            self.write_record(&rec, now_ms())?;
        }
        self.save_anchor();
        Ok(found.torn)
    }

    fn refresh_identity(&mut self) {
        if let Ok(st) = rustix::fs::fstat(&self.file) {
            self.anchor.dev = st.st_dev;
            self.anchor.ino = st.st_ino;
        }
    }

    /// Brings the anchor up to the last record and fsyncs it. A failure is kept for status:
    /// the anchor then lags, which the next start accepts (a log ahead of its anchor).
    fn save_anchor(&mut self) {
        self.anchor.seq = self.seq;
        self.anchor.hash = self.last_hash.clone();
        self.anchor.max_seq = self.anchor.max_seq.max(self.seq);
        self.anchor.len = self.good_len;
        match self.anchor_file.write(&self.anchor) {
            Ok(()) => self.anchor_error = None,
            Err(e) => {
                if self.anchor_error.is_none() {
                    tracing::error!(message = "Audit anchor not writable.", error_code = "audit_anchor_io", error = %e);
                }
                self.anchor_error = Some(e.to_string());
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Executed actions the log has no outcome for: (seq, playbook, action).
    pub fn pending(&self) -> Vec<(u64, PlaybookRef, ActionRef)> {
        self.tracker.pending.iter().map(|(s, (p, a))| (*s, p.clone(), a.clone())).collect()
    }

    /// Open breakers as `escalated` decisions, for `Gate::replay`: the ones opened before the
    /// replayed suffix come from its checkpoint.
    pub fn breaker_records(&self) -> Vec<Stored> {
        self.tracker
            .breakers
            .iter()
            .filter_map(|((mode, pb, kind, target), since)| {
                let action = record::Action {
                    playbook: PlaybookRef::named(pb.clone()),
                    trigger: record::Trigger { signals: Value::Null, reason: String::new() },
                    action: record::ActionAsked { kind: ActionKind::parse(kind)?, target: target.clone(), params: Value::Null },
                    mode: crate::gate::Mode::parse(mode)?,
                    decision: Decision::Escalated,
                    rule: "breaker".into(),
                    detail: String::new(),
                    outcome: Value::Null,
                };
                let ts_ms = humantime::parse_rfc3339_weak(since)
                    .ok()
                    .map(|t| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64));
                Some(Stored { seq: 0, ts: since.clone(), ts_ms, record: Ok(Record::Action(action)) })
            })
            .collect()
    }

    /// Appends one record, fsync'd. Returns its `seq`.
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
        if self.good_len > 0 && (self.good_len >= self.cfg.segment_bytes || wall.saturating_sub(self.seg_started_ms) >= age_ms) {
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
    fn write_record(&mut self, rec: &Record, ts_ms: i64) -> Result<u64, AuditError> {
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
        let mut line = canonical(&Value::Object(body));
        line.push('\n');
        let t = std::time::Instant::now();
        let res = self.file.write_all(line.as_bytes()).and_then(|_| self.file.sync_data());
        if let Some(h) = &self.fsync_seconds {
            h.observe(t.elapsed().as_secs_f64());
        }
        if let Err(e) = res {
            // Cut a partial write back so the next append continues a whole chain.
            let _ = self.file.set_len(self.good_len);
            return Err(AuditError::Io { path: self.path.clone(), source: e });
        }
        if self.good_len == 0 {
            self.seg_first = seq;
            self.seg_started_ms = now_ms();
        }
        self.good_len += line.len() as u64;
        self.seq = seq;
        self.last_hash = hash;
        if let Some(r) = tracked {
            self.tracker.observe(seq, &ts, &r);
        }
        self.save_anchor();
        Ok(seq)
    }

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

    /// Removes closed segments, oldest first, that retention allows and (with replication on)
    /// the broker acknowledged; each removal is recorded first and moves the anchor's base.
    fn prune(&mut self, now: i64) -> Result<(), AuditError> {
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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn note(text: &str) -> Record {
        Record::AuditRecovered(record::AuditRecovered { since: text.into(), error: String::new(), running_actions: 0 })
    }

    /// Garbage a crash (or a disk) can leave after the last whole record.
    fn garbage() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            // zero-filled blocks
            (1usize..9000).prop_map(|n| vec![0u8; n]),
            // newlines
            (1usize..4).prop_map(|n| vec![b'\n'; n]),
            // a prefix of a record
            (1usize..300).prop_map(|n| br#"{"hash":"00","kind":"note","node":"n","prev_hash":"00","schema":"medic.audit/v1","seq":4}"#
                .iter()
                .cycle()
                .take(n)
                .copied()
                .collect()),
            // anything
            proptest::collection::vec(any::<u8>(), 1..600),
        ];
        proptest::collection::vec(piece, 1..5).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(48), ..ProptestConfig::default() })]

        /// Any garbage appended to a valid log: it opens, keeps every whole record, sets the
        /// rest aside (recorded), and the chain goes on.
        #[test]
        fn tail_repair_keeps_every_whole_record_whatever_the_garbage(junk in garbage(), n in 1u64..5) {
            let dir = tempfile::tempdir().unwrap();
            {
                let (mut log, _) = AuditLog::open(dir.path(), "n").unwrap();
                for i in 0..n {
                    log.append(&note(&i.to_string())).unwrap();
                }
            }
            let path = dir.path().join(FILE_NAME);
            let whole = std::fs::read(&path).unwrap();
            let mut f = OpenOptions::new().append(true).open(&path).unwrap();
            f.write_all(&junk).unwrap();
            drop(f);
            let (mut log, torn) = AuditLog::open(dir.path(), "n").expect("opens whatever the tail");
            let torn = torn.expect("the garbage is set aside");
            prop_assert_eq!(torn.bytes, junk.len() as u64);
            prop_assert_eq!(std::fs::read(&torn.saved_as).unwrap(), junk);
            log.append(&note("after")).unwrap();
            drop(log);
            let now = std::fs::read(&path).unwrap();
            prop_assert!(now.starts_with(&whole), "every whole record kept");
            let v = verify::verify(&path).unwrap();
            prop_assert!(v.is_ok(), "{:?}", v);
            prop_assert_eq!(v.unwrap().last_seq, n + 2);
        }
    }
}
