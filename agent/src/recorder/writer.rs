//! Writing a recording: frames are encoded against the previous one into an in-memory block,
//! which is compressed and appended with one `write` when it is `flush_secs` old (in the
//! recorded clock), reaches [`format::BLOCK_TARGET`], or on [`Recorder::flush`]. Segments
//! rotate by age and size; at each new segment the oldest are removed while the directory would
//! hold more than `max_bytes`, or when all their frames are older than `max_age_secs`.
//!
//! The clock is the snapshots' `ts_ms`, so tests drive rotation and retention without sleeping.

use super::format::{self, Encoder};
use super::{RecorderConfig, RecorderError};
use crate::config::secs_to_ms;
use crate::signals::Snapshot;
use flate2::write::DeflateEncoder;
use flate2::Compression;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Deflate level (zlib's default; docs/BENCHMARKS.md, "Flight recorder", compares it with 1).
pub const LEVEL: u32 = 6;

/// The segment being written.
pub(crate) struct Segment {
    path: PathBuf,
    file: File,
    start_ms: i64,
    bytes: u64,
    enc: Encoder,
    /// Encoded frames not yet written, and the time of the first of them.
    raw: Vec<u8>,
    raw_since_ms: i64,
    level: u32,
}

impl Segment {
    /// A new segment file at `path` (0600, never an existing file or a link), header written.
    pub(crate) fn create(path: &Path, start_ms: i64, level: u32) -> Result<Self, RecorderError> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(path)
            .map_err(|e| RecorderError::io(path, e))?;
        file.write_all(&format::header()).map_err(|e| RecorderError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            start_ms,
            bytes: format::HEADER_LEN,
            enc: Encoder::default(),
            raw: Vec::new(),
            raw_since_ms: start_ms,
            level,
        })
    }

    /// Encodes one frame; writes the block when it is `flush_ms` old or big enough.
    pub(crate) fn append(&mut self, snap: &Snapshot, forced: crate::signals::wake::Wake, flush_ms: i64) -> Result<(), RecorderError> {
        let rec = self.enc.encode(snap, forced);
        let bytes = postcard::to_allocvec(&rec).map_err(|e| RecorderError::io(&self.path, std::io::Error::other(e)))?;
        if bytes.len() > format::MAX_FRAME_BYTES {
            // The encoder already holds this frame: the caller must start over with a key frame.
            return Err(RecorderError::TooLarge { bytes: bytes.len(), limit: format::MAX_FRAME_BYTES });
        }
        if self.raw.is_empty() {
            self.raw_since_ms = snap.ts_ms;
        }
        self.raw.extend_from_slice(&bytes);
        if self.raw.len() >= format::BLOCK_TARGET || snap.ts_ms.saturating_sub(self.raw_since_ms) >= flush_ms {
            self.flush()?;
        }
        Ok(())
    }

    /// Compresses the frames held and appends them as one block (one `write`).
    pub(crate) fn flush(&mut self) -> Result<(), RecorderError> {
        if self.raw.is_empty() {
            return Ok(());
        }
        let mut z = DeflateEncoder::new(Vec::with_capacity(self.raw.len() / 4), Compression::new(self.level));
        let payload = z.write_all(&self.raw).and_then(|()| z.finish()).map_err(|e| RecorderError::io(&self.path, e))?;
        if payload.len() > format::MAX_BLOCK_BYTES as usize {
            return Err(RecorderError::TooLarge { bytes: payload.len(), limit: format::MAX_BLOCK_BYTES as usize });
        }
        let block = format::block(&payload);
        self.file.write_all(&block).map_err(|e| RecorderError::io(&self.path, e))?;
        self.bytes += block.len() as u64;
        self.raw.clear();
        Ok(())
    }

    /// Flushes and syncs the file.
    pub(crate) fn finish(mut self) -> Result<u64, RecorderError> {
        self.flush()?;
        self.file.sync_data().map_err(|e| RecorderError::io(&self.path, e))?;
        Ok(self.bytes)
    }
}

/// Writes a recording into a directory. Not shared: the agent owns one, on the thread that
/// samples.
pub struct Recorder {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    max_age_ms: i64,
    flush_ms: i64,
    segment_ms: i64,
    level: u32,
    seg: Option<Segment>,
}

impl Recorder {
    /// Creates `dir` (0700) if needed. Nothing is written before the first frame.
    pub fn open(dir: &Path, cfg: &RecorderConfig) -> Result<Self, RecorderError> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| RecorderError::io(dir, e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| RecorderError::io(dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            max_bytes: cfg.max_bytes,
            segment_bytes: cfg.segment_bytes(),
            max_age_ms: secs_to_ms(cfg.max_age_secs),
            flush_ms: secs_to_ms(cfg.flush_secs),
            segment_ms: secs_to_ms(cfg.segment_secs.max(1)),
            level: LEVEL,
            seg: None,
        })
    }

    /// Another deflate level (0–9) for the segments created from now on: for the benchmark.
    pub fn with_level(mut self, level: u32) -> Self {
        self.level = level.min(9);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The segment being written, if any.
    pub fn current(&self) -> Option<&Path> {
        self.seg.as_ref().map(|s| s.path.as_path())
    }

    /// Records one tick. After an error the segment is closed and the next frame starts a new
    /// one (a key frame), so one failed write never corrupts what follows.
    pub fn record(&mut self, snap: &Snapshot, forced: crate::signals::wake::Wake) -> Result<(), RecorderError> {
        let r = self.record_inner(snap, forced);
        if r.is_err() {
            self.seg = None;
        }
        r
    }

    fn record_inner(&mut self, snap: &Snapshot, forced: crate::signals::wake::Wake) -> Result<(), RecorderError> {
        let ts = snap.ts_ms;
        let rotate = self.seg.as_ref().is_some_and(|s| {
            ts.saturating_sub(s.start_ms) >= self.segment_ms
                || ts < s.start_ms
                || s.bytes >= self.segment_bytes
                || s.enc.keys() >= format::MAX_KEYS / 2
        });
        if rotate {
            self.close()?;
        }
        let seg = match &mut self.seg {
            Some(seg) => seg,
            None => {
                self.retain(ts)?;
                self.seg.insert(self.create(ts)?)
            }
        };
        seg.append(snap, forced, self.flush_ms)
    }

    /// Writes the frames held in memory as one block, readable at once.
    pub fn flush(&mut self) -> Result<(), RecorderError> {
        match self.seg.as_mut() {
            Some(seg) => seg.flush(),
            None => Ok(()),
        }
    }

    /// Flushes and closes the segment being written (the agent calls it at stop).
    pub fn close(&mut self) -> Result<(), RecorderError> {
        self.flush()?;
        if let Some(seg) = self.seg.take() {
            seg.finish()?;
        }
        Ok(())
    }

    fn create(&self, ts: i64) -> Result<Segment, RecorderError> {
        for n in 0..1000 {
            let path = self.dir.join(format::segment_name(ts, n));
            match Segment::create(&path, ts, self.level) {
                Err(RecorderError::Io { source, .. }) if source.kind() == std::io::ErrorKind::AlreadyExists => continue,
                r => return r,
            }
        }
        Err(RecorderError::io(&self.dir, std::io::Error::other("no free segment name")))
    }

    /// Removes the oldest segments while they are older than `max_age_secs` at `now_ms`, or
    /// while the directory and a new segment would hold more than `max_bytes`.
    fn retain(&self, now_ms: i64) -> Result<(), RecorderError> {
        let segs = format::list_segments(&self.dir)?;
        let mut total: u64 = segs.iter().map(|s| s.3).sum();
        let oldest_kept = now_ms.saturating_sub(self.max_age_ms);
        for (i, (_, _, path, size)) in segs.iter().enumerate() {
            // A segment ends where the next one starts (or now, for the last).
            let end = segs.get(i + 1).map_or(now_ms, |s| s.0);
            let too_old = end < oldest_kept;
            let too_big = total.saturating_add(self.segment_bytes) > self.max_bytes;
            if !too_old && !too_big {
                break;
            }
            match std::fs::remove_file(path) {
                Ok(()) => total = total.saturating_sub(*size),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => total = total.saturating_sub(*size),
                Err(e) => return Err(RecorderError::io(path, e)),
            }
        }
        Ok(())
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}
