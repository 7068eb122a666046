//! Recording: the local audit log. One JSON object per line (schema `medic.audit/v1`), a per-node
//! strictly increasing `seq`, and a SHA-256 chain: each record's `hash` covers its canonical form
//! (sorted keys, no whitespace, without `hash`) including `prev_hash`, the previous record's hash.
//! A record is appended with one `write` and fsync'd before [`AuditLog::append`] returns: only
//! then does the decision it records count as made.
//!
//! At open, a torn last line (a crash mid-write) is cut off, kept aside in
//! `audit.torn.<unix-ms>`, and recorded as an `audit_torn_tail` record, so the chain continues
//! from the last whole record and nothing is dropped silently. `verify` re-checks the whole file.

pub mod bound;
pub mod verify;

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
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
}

impl AuditError {
    /// Stable code for logs and status.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "audit_io",
            Self::Corrupt { .. } => "audit_corrupt",
            Self::Locked { .. } => "audit_locked",
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
    let mut m = record.clone();
    m.remove("hash");
    hex::encode(Sha256::digest(canonical(&Value::Object(m)).as_bytes()))
}

pub fn now_rfc3339(ts_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts_ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The append side of the log, held by the running agent.
pub struct AuditLog {
    path: PathBuf,
    file: File,
    _lock: File,
    node: String,
    seq: u64,
    last_hash: String,
    /// Length of the file up to the end of the last whole record.
    good_len: u64,
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

/// Reads the tail of the log: (length up to the last newline, the last whole line).
fn last_line(file: &mut File, len: u64) -> std::io::Result<(u64, Option<String>)> {
    const CHUNK: u64 = 1 << 20;
    let start = len.saturating_sub(CHUNK);
    file.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf)?;
    let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
        return Ok((start, None));
    };
    let line_start = buf[..end].iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if line_start == 0 && start > 0 {
        // A single record longer than the chunk: read it whole.
        return Err(std::io::Error::other("last record longer than 1 MiB"));
    }
    Ok((start + end as u64 + 1, Some(String::from_utf8_lossy(&buf[line_start..end]).into_owned())))
}

impl AuditLog {
    /// Opens (creating) `<state_dir>/audit.log` for appending, takes its lock, and repairs a
    /// torn tail. The returned [`TornTail`] has already been recorded in the log.
    pub fn open(state_dir: &Path, node: &str) -> Result<(Self, Option<TornTail>), AuditError> {
        std::fs::create_dir_all(state_dir).map_err(io(state_dir))?;
        let lock_path = state_dir.join("audit.lock");
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| AuditError::Locked { path: state_dir.join(FILE_NAME) })?;
        let path = state_dir.join(FILE_NAME);
        let mut file = OpenOptions::new().create(true).read(true).append(true).open(&path).map_err(io(&path))?;
        let len = file.metadata().map_err(io(&path))?.len();
        let (mut good_len, mut last) = last_line(&mut file, len).map_err(io(&path))?;
        // A whole last line that does not parse is also a torn write (e.g. zero-filled blocks).
        if let Some(l) = &last {
            if serde_json::from_str::<Map<String, Value>>(l).is_err() {
                let before = good_len - l.len() as u64 - 1;
                let (gl, prev) = last_line(&mut file, before).map_err(io(&path))?;
                if gl != before {
                    return Err(AuditError::Corrupt { path, reason: "unparseable record before the tail".into() });
                }
                good_len = before;
                last = prev;
            }
        }
        let (seq, last_hash) = match &last {
            None => (0, GENESIS.to_string()),
            Some(l) => {
                let m: Map<String, Value> =
                    serde_json::from_str(l).map_err(|e| AuditError::Corrupt { path: path.clone(), reason: e.to_string() })?;
                let seq = m.get("seq").and_then(Value::as_u64);
                let hash = m.get("hash").and_then(Value::as_str);
                match (seq, hash) {
                    (Some(s), Some(h)) => (s, h.to_string()),
                    _ => return Err(AuditError::Corrupt { path, reason: "missing seq or hash".into() }),
                }
            }
        };
        let mut log = Self { path: path.clone(), file, _lock: lock, node: node.to_string(), seq, last_hash, good_len };
        let mut torn = None;
        if len > good_len {
            let mut bytes = Vec::new();
            log.file.seek(SeekFrom::Start(good_len)).map_err(io(&path))?;
            log.file.read_to_end(&mut bytes).map_err(io(&path))?;
            let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            let saved_as = state_dir.join(format!("audit.torn.{ts}"));
            let mut f = File::create(&saved_as).map_err(io(&saved_as))?;
            f.write_all(&bytes).and_then(|_| f.sync_all()).map_err(io(&saved_as))?;
            log.file.set_len(good_len).and_then(|_| log.file.sync_all()).map_err(io(&path))?;
            let t = TornTail { bytes: bytes.len() as u64, saved_as, sha256: hex::encode(Sha256::digest(&bytes)) };
            let mut body = Map::new();
            body.insert(
                "torn".into(),
                serde_json::json!({
                    "bytes": t.bytes, "saved_as": t.saved_as.display().to_string(), "sha256": t.sha256,
                    "after_seq": log.seq,
                }),
            );
            log.append("audit_torn_tail", body)?;
            torn = Some(t);
        }
        if len == 0 {
            // A new log: make its directory entry durable too.
            File::open(state_dir).and_then(|d| d.sync_all()).map_err(io(state_dir))?;
        }
        Ok((log, torn))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Appends one record of `kind` with the given fields, fsync'd. Returns its `seq`.
    pub fn append(&mut self, kind: &str, body: Map<String, Value>) -> Result<u64, AuditError> {
        self.append_at(kind, body, now_ms())
    }

    /// As [`append`](Self::append), with the record's timestamp given (the tick's clock).
    pub fn append_at(&mut self, kind: &str, mut body: Map<String, Value>, ts_ms: i64) -> Result<u64, AuditError> {
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
        let mut line = canonical(&Value::Object(body));
        line.push('\n');
        let res = self.file.write_all(line.as_bytes()).and_then(|_| self.file.sync_data());
        if let Err(e) = res {
            // Cut a partial write back so the next append continues a whole chain.
            let _ = self.file.set_len(self.good_len);
            return Err(AuditError::Io { path: self.path.clone(), source: e });
        }
        self.good_len += line.len() as u64;
        self.seq = seq;
        self.last_hash = hash;
        Ok(seq)
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Reads every record of a log (for `audit show`); lines that do not parse are returned as errors.
pub fn read_all(path: &Path) -> std::io::Result<Vec<Result<Map<String, Value>, String>>> {
    let text = std::fs::read(path)?;
    Ok(text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
        .map(|(i, l)| serde_json::from_slice(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect())
}
