//! `medic audit verify`: re-checks a whole log, across its segments, one line at a time. Every
//! line must be a canonical record of the schema whose `hash` is the SHA-256 of its canonical
//! form; `seq` goes up by one and `prev_hash` links to the previous record (the one allowed jump
//! is an `audit_rewound` record, which says what was lost); the first record is seq 1 after
//! GENESIS, or (when older segments were removed after replication) the point the anchor's base
//! names. The log must reach its anchor and the forwarder's cursor: a log cut off, or deleted
//! and begun anew, fails here even though what is left chains. Any edited, inserted, deleted or
//! reordered byte breaks one of these; the error names the first bad `seq`.
//!
//! `--checkpoint` checks a log against a checkpoint kept elsewhere (the broker's copy of an
//! `audit_checkpoint` record, or any record, or `{"seq":…,"hash":…}`): that record must be in
//! the log with that hash.

use super::chain::Chain;
use super::segments::{self, Item, Lines};
use super::{anchor, FILE_NAME};
use serde_json::{Map, Value};
use std::fmt;
use std::path::Path;

/// The first place the chain breaks.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainBreak {
    /// The `seq` the broken record has or should have had.
    pub seq: u64,
    /// 1-based line number in its segment file.
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
    pub first_seq: u64,
    pub last_seq: u64,
    pub last_hash: String,
    pub segments: usize,
    /// `audit_rewound` records: (their seq, the seq they continued after).
    pub rewinds: Vec<(u64, u64)>,
    /// `audit_chain_broken` records (their seq).
    pub chain_breaks: Vec<u64>,
}

/// A point of the chain to check a log against.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub seq: u64,
    pub hash: String,
}

impl Checkpoint {
    /// From JSON text: a record (its own `seq` and `hash`) or `{"seq":…,"hash":…}`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let v: Value = serde_json::from_str(text.trim()).map_err(|e| format!("not JSON: {e}"))?;
        let seq = v.get("seq").and_then(Value::as_u64).ok_or("no `seq`")?;
        let hash = v.get("hash").and_then(Value::as_str).ok_or("no `hash`")?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err("`hash` is not 64 hex digits".into());
        }
        Ok(Self { seq, hash: hash.to_string() })
    }
}

/// Verifies a log. `path` is a state dir, or its `audit.log` (the whole series is checked, with
/// the anchor and cursor beside it), or any other single file (checked from seq 1 alone).
pub fn verify(path: &Path) -> Result<Result<Verified, ChainBreak>, std::io::Error> {
    verify_with(path, None)
}

/// As [`verify`], also requiring `checkpoint` to be in the log.
pub fn verify_with(path: &Path, checkpoint: Option<&Checkpoint>) -> Result<Result<Verified, ChainBreak>, std::io::Error> {
    let (dir, segs) = if path.is_dir() {
        (Some(path.to_path_buf()), segments::list(path)?)
    } else if path.file_name().is_some_and(|n| n == FILE_NAME) {
        let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        (Some(dir.clone()), segments::list(&dir)?)
    } else {
        (None, vec![segments::Segment { path: path.to_path_buf(), first: Some(1), last: None }])
    };
    if segs.is_empty() && dir.is_none() {
        std::fs::metadata(path)?;
    }
    let anchor = dir.as_deref().and_then(|d| anchor::read(d).ok());
    let cursor = dir.as_deref().map_or(0, crate::forward::read_cursor);
    let n_segs = segs.len();
    let mut lines = Lines::new(segs, None);
    let mut chain = Chain::genesis();
    let mut breaks = Vec::new();
    let mut found_checkpoint = false;
    while let Some((item, _, line)) = lines.next_line()? {
        let brk = |seq: u64, reason: String| Ok(Err(ChainBreak { seq, line, reason }));
        let text = match item {
            Item::Whole(t) => t,
            Item::Torn => return brk(chain.seq + 1, "last line is torn (no newline); `medic run` sets it aside at start".into()),
            Item::TooLong => return brk(chain.seq + 1, format!("a line longer than {} bytes", segments::MAX_LINE)),
        };
        if chain.records == 0 {
            // The first record kept: seq 1, or where removed segments ended (the anchor's base).
            if let Ok(v) = super::chain::valid(text) {
                if v.seq > 1 {
                    match &anchor {
                        Some(a) if a.base_seq > 0 && a.base_hash == v.prev_hash => chain = Chain::after(a.base_seq, &a.base_hash),
                        Some(a) if a.base_seq > 0 => {
                            return brk(v.seq, format!("the log starts at seq {} but removed segments ended at seq {}", v.seq, a.base_seq))
                        }
                        _ => {}
                    }
                }
            }
        }
        let v = match chain.push(text) {
            Ok(v) => v,
            Err(reason) => return brk(chain.seq + 1, reason),
        };
        if v.kind == "audit_chain_broken" {
            breaks.push(v.seq);
        }
        if let Some(c) = checkpoint {
            if v.seq == c.seq {
                if v.hash != c.hash {
                    return brk(v.seq, format!("the checkpoint's hash for seq {} is {}, the log's is {}", c.seq, c.hash, v.hash));
                }
                found_checkpoint = true;
            }
        }
    }
    let last = chain.seq;
    let end = |reason: String| Ok(Err(ChainBreak { seq: last + 1, line: 0, reason }));
    if let Some(a) = &anchor {
        if last < a.seq || (last == a.seq && chain.hash != a.hash) {
            return end(format!(
                "the log ends at seq {last} but its anchor says seq {} ({}): records were cut off, or the log deleted or replaced",
                a.seq, a.hash
            ));
        }
    }
    if last < cursor {
        return end(format!("the log ends at seq {last} but the broker acknowledged seq {cursor}: records were cut off"));
    }
    if let Some(c) = checkpoint {
        if !found_checkpoint {
            let first = chain.first_seq.unwrap_or(0);
            let why = if c.seq > last {
                format!("the checkpoint is at seq {} but the log ends at seq {last}: records were cut off", c.seq)
            } else if c.seq < first {
                format!("the checkpoint's seq {} is before the first kept record (seq {first}): it was in a removed segment", c.seq)
            } else {
                format!("seq {} is not in the log (lost in a rewind)", c.seq)
            };
            return end(why);
        }
    }
    Ok(Ok(Verified {
        records: chain.records,
        first_seq: chain.first_seq.unwrap_or(0),
        last_seq: last,
        last_hash: chain.hash.clone(),
        segments: n_segs,
        rewinds: chain.rewinds.clone(),
        chain_breaks: breaks,
    }))
}

/// Streams every record of a state dir's log, oldest first, across segments; a line that is not
/// a record is passed as an error naming its file and line. Memory: one line at a time.
pub fn for_each_record(dir: &Path, mut f: impl FnMut(Result<Map<String, Value>, String>)) -> std::io::Result<()> {
    let mut lines = Lines::new(segments::list(dir)?, None);
    while let Some((item, path, line)) = lines.next_line()? {
        let where_ = format!("{}:{line}", path.display());
        match item {
            Item::Whole(t) => f(serde_json::from_slice(t).map_err(|e| format!("{where_}: {e}"))),
            Item::Torn => f(Err(format!("{where_}: torn line"))),
            Item::TooLong => f(Err(format!("{where_}: line too long"))),
        }
    }
    Ok(())
}
