//! The anchor: what the log must at least contain, kept outside it in `<state_dir>/audit.anchor`
//! and fsync'd after every append. It holds the last record's `seq` and `hash`, the highest
//! `seq` ever issued, the active segment's inode and expected length, the point the oldest kept
//! segment starts after (`base`, moved when a replicated segment is removed), and the last
//! rewind and chain break found (shown by `medic status` until a newer one replaces them).
//!
//! A log behind its anchor (records cut off, the file deleted or replaced) is never continued
//! silently: see `AuditLog::open`. The anchor is one fixed-size block rewritten in place with a
//! checksum, so a torn write of it is detected rather than believed.

use super::GENESIS;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const ANCHOR_FILE: &str = "audit.anchor";
const BLOCK: usize = 4096;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anchor {
    pub seq: u64,
    pub hash: String,
    /// The highest `seq` ever issued on this node (equal to `seq` unless a rewind happened).
    pub max_seq: u64,
    /// The active segment's device and inode, and its length after the last append.
    pub dev: u64,
    pub ino: u64,
    pub len: u64,
    /// The oldest kept segment starts after this record (0 and GENESIS: nothing was removed).
    pub base_seq: u64,
    pub base_hash: String,
    /// The last rewind recorded (`audit_rewound`), if any: a summary for status.
    #[serde(default)]
    pub rewound: Option<serde_json::Value>,
    /// The last chain break recorded (`audit_chain_broken`), if any.
    #[serde(default)]
    pub chain_broken: Option<serde_json::Value>,
}

impl Anchor {
    pub fn fresh() -> Self {
        Self {
            seq: 0,
            hash: GENESIS.into(),
            max_seq: 0,
            dev: 0,
            ino: 0,
            len: 0,
            base_seq: 0,
            base_hash: GENESIS.into(),
            rewound: None,
            chain_broken: None,
        }
    }
}

/// Why an anchor could not be used.
#[derive(Debug, Clone, PartialEq)]
pub enum Read {
    Missing,
    /// Present but torn or edited (bad checksum or JSON).
    Invalid(String),
}

#[derive(Serialize, Deserialize)]
struct Stored {
    anchor: Anchor,
    sha256: String,
}

fn sum(a: &Anchor) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(a).unwrap_or_default()))
}

/// Reads the anchor of a state dir.
pub fn read(dir: &Path) -> Result<Anchor, Read> {
    let text = match std::fs::read(dir.join(ANCHOR_FILE)) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Read::Missing),
        Err(e) => return Err(Read::Invalid(e.to_string())),
    };
    let s: Stored = serde_json::from_slice(text.trim_ascii()).map_err(|e| Read::Invalid(format!("not an anchor: {e}")))?;
    if sum(&s.anchor) != s.sha256 {
        return Err(Read::Invalid("checksum does not match (torn or edited)".into()));
    }
    Ok(s.anchor)
}

/// The open anchor file, rewritten in place.
pub struct AnchorFile {
    path: PathBuf,
    file: File,
}

impl AnchorFile {
    pub fn open(dir: &Path, mode: u32) -> std::io::Result<Self> {
        let path = dir.join(ANCHOR_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(mode)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)?;
        Ok(Self { path, file })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes and fsyncs the anchor (one block, padded).
    pub fn write(&self, a: &Anchor) -> std::io::Result<()> {
        let mut b = serde_json::to_vec(&Stored { anchor: a.clone(), sha256: sum(a) }).map_err(std::io::Error::other)?;
        if b.len() + 1 > BLOCK {
            // The summaries are bounded, so this does not happen; never write a torn anchor.
            return Err(std::io::Error::other("anchor longer than one block"));
        }
        b.resize(BLOCK - 1, b' ');
        b.push(b'\n');
        self.file.write_all_at(&b, 0)?;
        self.file.sync_data()
    }
}
