//! The flight recorder: a compact on-disk recording of every [`Snapshot`] the agent sampled
//! (node metrics, processes, units, mounts, peers, eBPF series), so that playbooks can be
//! replayed on the recorded timeline, here or on another machine.
//!
//! It owns the recording directory (`<state_dir>/recording/` by default, 0700, files 0600):
//! segment files of delta-encoded frames in deflate blocks, each block length-prefixed with a
//! CRC-32 so that a torn tail is ignored (`format.rs`); the writer with its flush, rotation and
//! retention by size and age (`writer.rs`); and the bounded reader and `export` (`reader.rs`).
//! A frame read back gives a [`Snapshot`] equal to the one recorded, floats bit for bit.

pub mod format;
pub mod reader;
pub mod writer;

use crate::signals::Snapshot;
use serde::Deserialize;
use std::path::PathBuf;

pub use reader::{export, read, ExportSummary, Frames};
pub use writer::Recorder;

/// The recording directory under the state dir when `[recorder] dir` is not set.
pub const DIR_NAME: &str = "recording";

/// One recorded tick: what was sampled, and whether an eBPF wake-up made every playbook
/// evaluate in it (due or not).
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub snap: Snapshot,
    pub forced: crate::signals::wake::Wake,
}

/// `[recorder]` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecorderConfig {
    /// Record every sample.
    pub enabled: bool,
    /// Default: `<state_dir>/recording`.
    pub dir: Option<PathBuf>,
    /// The recording directory holds at most this many bytes: the oldest segments go first.
    pub max_bytes: u64,
    /// Segments whose every frame is older than this are removed.
    pub max_age_secs: u64,
    /// Frames are written out (readable by `medic playbook replay` while the agent runs) at
    /// least this often, in seconds of the recorded clock.
    pub flush_secs: u64,
    /// A new segment file (starting with a full key frame) at least this often.
    pub segment_secs: u64,
}

impl RecorderConfig {
    pub const fn default_enabled() -> bool {
        true
    }
    /// 64 MiB: a day of a quiet node (2 MiB/h) or of a real busy one (2,000 processes, 10,000
    /// connections: 1.3 MiB/h) with room to spare; the last half hour of the adversarial
    /// synthetic node (129 MiB/h; docs/BENCHMARKS.md, "Flight recorder").
    pub const fn default_max_bytes() -> u64 {
        64 << 20
    }
    pub const fn default_max_age_secs() -> u64 {
        86_400
    }
    pub const fn default_flush_secs() -> u64 {
        10
    }
    pub const fn default_segment_secs() -> u64 {
        3_600
    }

    /// The directory to record into, given the resolved state dir.
    pub fn dir_in(&self, state_dir: &std::path::Path) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| state_dir.join(DIR_NAME))
    }

    /// A segment is closed at this size, so that retention removes an eighth of the budget at
    /// a time rather than all of it (at least 64 KiB).
    pub fn segment_bytes(&self) -> u64 {
        (self.max_bytes / 8).max(64 << 10)
    }
}

impl Default for RecorderConfig {
    fn default() -> Self {
        Self {
            enabled: Self::default_enabled(),
            dir: None,
            max_bytes: Self::default_max_bytes(),
            max_age_secs: Self::default_max_age_secs(),
            flush_secs: Self::default_flush_secs(),
            segment_secs: Self::default_segment_secs(),
        }
    }
}

/// Errors of the flight recorder.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    /// A recording file or directory could not be created, read, written or removed.
    #[error("recording {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file is not a recording segment this build reads (magic or version).
    #[error("recording {path}: not a medic recording: {reason}")]
    Format { path: PathBuf, reason: String },
    /// A block or frame inside a segment is damaged: bad CRC, too long, does not decode.
    #[error("recording {path} at byte {offset}: {reason}")]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    /// One frame encodes to more than a block may hold; it is not recorded.
    #[error("recording: a frame of {bytes} bytes is over the block limit of {limit} bytes")]
    TooLarge { bytes: usize, limit: usize },
}

impl RecorderError {
    /// Stable code for logs and status.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "recorder_io",
            Self::Format { .. } => "recorder_format",
            Self::Corrupt { .. } => "recorder_corrupt",
            Self::TooLarge { .. } => "recorder_too_large",
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}

#[cfg(test)]
mod tests;
