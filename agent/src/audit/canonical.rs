//! The form a record takes on disk: canonical JSON (object keys sorted at every level, no
//! whitespace), the SHA-256 `hash` computed over it, and the clock and RFC 3339 timestamps
//! records carry in `ts`. Shared by writing, the chain rule and verification.

use serde::Serialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

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

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A record's `ts` in ms since the epoch, if it has a readable one.
pub(super) fn ts_ms(rec: &Map<String, Value>) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(rec.get("ts")?.as_str()?).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64))
}
