//! The chain rule, in one place, for everything that reads the log: `medic audit verify`, the
//! agent's start (which verifies the suffix it replays), and tail repair (which looks for the
//! last record that chains). A record is *valid* when it parses, has the schema, its `hash` is
//! the SHA-256 of its canonical form and its bytes are that canonical form. It *chains* when its
//! `seq` is one more than the previous record's and its `prev_hash` is that record's `hash`; the
//! one allowed jump in `seq` is an `audit_rewound` record, which continues after the highest
//! `seq` ever issued so that no `seq` is reused after records were lost.

use super::{canonical, record_hash, GENESIS, SCHEMA};
use serde_json::{Map, Value};

/// A record that passed the validity checks (not yet the chain checks).
#[derive(Debug, Clone)]
pub struct Valid {
    pub seq: u64,
    pub prev_hash: String,
    pub hash: String,
    pub kind: String,
    pub rec: Map<String, Value>,
}

/// Checks one line (without its newline) on its own: parse, schema, hash, canonical bytes.
pub fn valid(text: &[u8]) -> Result<Valid, String> {
    let rec: Map<String, Value> = serde_json::from_slice(text).map_err(|e| format!("not a JSON record: {e}"))?;
    if rec.get("schema").and_then(Value::as_str) != Some(SCHEMA) {
        return Err(format!("schema is not {SCHEMA}"));
    }
    let seq = rec.get("seq").and_then(Value::as_u64).ok_or("seq is missing")?;
    let prev_hash = rec.get("prev_hash").and_then(Value::as_str).ok_or("prev_hash is missing")?.to_string();
    let hash = record_hash(&rec);
    if rec.get("hash").and_then(Value::as_str) != Some(hash.as_str()) {
        return Err("hash does not match the record's content (the record was altered)".into());
    }
    if canonical(&Value::Object(rec.clone())).as_bytes() != text {
        return Err("record is not in canonical form (bytes were altered)".into());
    }
    let kind = rec.get("kind").and_then(Value::as_str).unwrap_or("").to_string();
    Ok(Valid { seq, prev_hash, hash, kind, rec })
}

/// Whether `next` may follow `prev` (the chain rule above).
pub fn follows(prev_seq: u64, prev_hash: &str, next: &Valid) -> bool {
    next.prev_hash == prev_hash && (next.seq == prev_seq + 1 || (next.kind == "audit_rewound" && next.seq > prev_seq))
}

/// A running chain check over records in order.
#[derive(Debug, Clone)]
pub struct Chain {
    /// `seq` and `hash` of the last record accepted (0 and [`GENESIS`] before the first).
    pub seq: u64,
    pub hash: String,
    /// The first record may start anywhere (a suffix of the log, or a log whose first segments
    /// were removed after replication): its own `prev_hash` and `seq` are taken as given.
    loose_start: bool,
    pub records: u64,
    pub first_seq: Option<u64>,
    /// `audit_rewound` records met: (their seq, the seq they continued after).
    pub rewinds: Vec<(u64, u64)>,
}

impl Chain {
    /// From the beginning: the first record must be seq 1 after [`GENESIS`].
    pub fn genesis() -> Self {
        Self { seq: 0, hash: GENESIS.into(), loose_start: false, records: 0, first_seq: None, rewinds: Vec::new() }
    }

    /// After a known record.
    pub fn after(seq: u64, hash: &str) -> Self {
        Self { seq, hash: hash.into(), ..Self::genesis() }
    }

    /// From wherever the first record is.
    pub fn loose() -> Self {
        Self { loose_start: true, ..Self::genesis() }
    }

    /// Checks the next line; on success returns the record.
    pub fn push(&mut self, text: &[u8]) -> Result<Valid, String> {
        let v = valid(text)?;
        let first = self.records == 0;
        let starts_anywhere = first && self.loose_start;
        if !starts_anywhere && !follows(self.seq, &self.hash, &v) {
            if v.prev_hash != self.hash {
                return Err(format!(
                    "seq {}: prev_hash does not match the previous record's hash (a record was removed, inserted or reordered)",
                    v.seq
                ));
            }
            return Err(format!("seq is {}, expected {}", v.seq, self.seq + 1));
        }
        if v.kind == "audit_rewound" && !first {
            self.rewinds.push((v.seq, self.seq));
        }
        self.accept(&v);
        Ok(v)
    }

    /// Takes `v` as the new head (after a break, to go on checking from it).
    pub fn accept(&mut self, v: &Valid) {
        self.first_seq.get_or_insert(v.seq);
        self.seq = v.seq;
        self.hash = v.hash.clone();
        self.records += 1;
    }
}
