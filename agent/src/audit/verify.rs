//! `medic audit verify`: re-checks a whole log. Every line must be a canonical record of the
//! schema, `seq` must go up by one from 1, `prev_hash` must be the previous record's `hash`, and
//! `hash` must be the SHA-256 of the record's canonical form. Any edited, inserted, deleted or
//! reordered byte breaks one of these; the error names the first bad `seq`.

use super::{canonical, record_hash, GENESIS, SCHEMA};
use serde_json::{Map, Value};
use std::fmt;
use std::io::BufRead;
use std::path::Path;

/// The first place the chain breaks.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainBreak {
    /// The `seq` the broken record has or should have had.
    pub seq: u64,
    /// 1-based line number in the file.
    pub line: u64,
    pub reason: String,
}

impl fmt::Display for ChainBreak {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "chain broken at seq {} (line {}): {}", self.seq, self.line, self.reason)
    }
}

/// Summary of a good log.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub records: u64,
    pub last_hash: String,
}

pub fn verify(path: &Path) -> Result<Result<Verified, ChainBreak>, std::io::Error> {
    let file = std::fs::File::open(path)?;
    let mut reader = std::io::BufReader::new(file);
    let mut prev = GENESIS.to_string();
    let mut expected = 1u64;
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        line_no += 1;
        let brk = |reason: String| Ok(Err(ChainBreak { seq: expected, line: line_no, reason }));
        if buf.last() != Some(&b'\n') {
            return brk("last line is torn (no newline); `medic run` sets it aside at start".into());
        }
        let text = &buf[..buf.len() - 1];
        let rec: Map<String, Value> = match serde_json::from_slice(text) {
            Ok(r) => r,
            Err(e) => return brk(format!("not a JSON record: {e}")),
        };
        if rec.get("schema").and_then(Value::as_str) != Some(SCHEMA) {
            return brk(format!("schema is not {SCHEMA}"));
        }
        let seq = rec.get("seq").and_then(Value::as_u64);
        if seq != Some(expected) {
            return brk(format!("seq is {}, expected {expected}", seq.map_or("missing".into(), |s| s.to_string())));
        }
        if rec.get("prev_hash").and_then(Value::as_str) != Some(prev.as_str()) {
            return brk("prev_hash does not match the previous record's hash (a record was removed, inserted or reordered)".into());
        }
        let hash = record_hash(&rec);
        if rec.get("hash").and_then(Value::as_str) != Some(hash.as_str()) {
            return brk("hash does not match the record's content (the record was altered)".into());
        }
        if canonical(&Value::Object(rec)).as_bytes() != text {
            return brk("record is not in canonical form (bytes were altered)".into());
        }
        prev = hash;
        expected += 1;
    }
    Ok(Ok(Verified { records: expected - 1, last_hash: prev }))
}
