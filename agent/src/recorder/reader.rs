//! Reading a recording (a directory of segments, or one segment file such as an export), while
//! the agent may still be writing it, and exporting a stretch of it as one self-contained file.
//!
//! Every length read from a file is bounded before anything is allocated for it (a block by
//! [`format::MAX_BLOCK_BYTES`] and by what the file holds, its inflated frames by
//! [`format::MAX_RAW_BYTES`], a segment's key table by [`format::MAX_KEYS`]). A block cut short at
//! the end of a file (a crash mid-write, or the block the agent is writing now) ends that segment
//! quietly; a damaged block is an error naming file and offset, and reading goes on with the next
//! segment, which starts with a key frame.

use super::format::{self, Decoder};
use super::writer::Segment;
use super::{Frame, RecorderError};
use flate2::read::DeflateDecoder;
use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// Frames of a recording in order, those within `[from_ms, to_ms]`.
pub struct Frames {
    segments: VecDeque<PathBuf>,
    from_ms: i64,
    to_ms: i64,
    cur: Option<SegmentReader>,
}

/// Reads the recording at `path`: a directory of segments (oldest first) or one segment file.
pub fn read(path: &Path, from_ms: Option<i64>, to_ms: Option<i64>) -> Result<Frames, RecorderError> {
    let (from_ms, to_ms) = (from_ms.unwrap_or(i64::MIN), to_ms.unwrap_or(i64::MAX));
    let meta = std::fs::metadata(path).map_err(|e| RecorderError::io(path, e))?;
    let segments = if meta.is_dir() {
        let all = format::list_segments(path)?;
        // A segment ends where the next one starts: skip those wholly outside the range.
        (0..all.len())
            .filter(|&i| all.get(i + 1).is_none_or(|next| next.0 > from_ms) && all[i].0 <= to_ms)
            .map(|i| all[i].2.clone())
            .collect()
    } else {
        VecDeque::from([path.to_path_buf()])
    };
    Ok(Frames { segments, from_ms, to_ms, cur: None })
}

impl Iterator for Frames {
    type Item = Result<Frame, RecorderError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let Some(cur) = self.cur.as_mut() else {
                let path = self.segments.pop_front()?;
                match SegmentReader::open(&path) {
                    Ok(Some(r)) => self.cur = Some(r),
                    Ok(None) => {}
                    Err(e) => return Some(Err(e)),
                }
                continue;
            };
            match cur.next_frame() {
                Ok(Some(f)) if f.snap.ts_ms < self.from_ms || f.snap.ts_ms > self.to_ms => {}
                Ok(Some(f)) => return Some(Ok(f)),
                Ok(None) => self.cur = None,
                Err(e) => {
                    self.cur = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// One segment being read.
struct SegmentReader {
    path: PathBuf,
    /// The segment's format version (its frames' shape).
    version: u32,
    file: BufReader<File>,
    /// Where the next block starts.
    offset: u64,
    /// Where the block in `raw` started, for errors.
    block_offset: u64,
    raw: Vec<u8>,
    pos: usize,
    dec: Decoder,
}

/// Reads until `buf` is full or the file ends; how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl SegmentReader {
    /// `None` for a segment removed meanwhile (retention) or not yet holding its header.
    fn open(path: &Path) -> Result<Option<Self>, RecorderError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RecorderError::io(path, e)),
        };
        let mut file = BufReader::new(file);
        let mut h = [0u8; format::HEADER_LEN as usize];
        let n = read_full(&mut file, &mut h).map_err(|e| RecorderError::io(path, e))?;
        if n == 0 {
            return Ok(None);
        }
        let version = format::check_header(path, &h[..n])?;
        Ok(Some(Self {
            version,
            path: path.to_path_buf(),
            file,
            offset: format::HEADER_LEN,
            block_offset: format::HEADER_LEN,
            raw: Vec::new(),
            pos: 0,
            dec: Decoder::default(),
        }))
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> RecorderError {
        RecorderError::Corrupt { path: self.path.clone(), offset, reason: reason.into() }
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, RecorderError> {
        while self.pos >= self.raw.len() {
            if !self.next_block()? {
                return Ok(None);
            }
        }
        let (rec, rest) = format::take_frame(self.version, &self.raw[self.pos..])
            .map_err(|e| self.corrupt(self.block_offset, format!("frame does not decode: {e}")))?;
        self.pos = self.raw.len() - rest.len();
        let (snap, forced) = self.dec.apply(rec).map_err(|r| self.corrupt(self.block_offset, r))?;
        Ok(Some(Frame { snap, forced }))
    }

    /// Reads the next block into `raw`; `false` at the end of the segment (or a torn tail).
    fn next_block(&mut self) -> Result<bool, RecorderError> {
        let io = |e| RecorderError::io(&self.path, e);
        let mut h = [0u8; format::BLOCK_HEADER_LEN as usize];
        if read_full(&mut self.file, &mut h).map_err(io)? < h.len() {
            return Ok(false);
        }
        let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
        let crc = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
        if len == 0 {
            // Zeros where a block should start: a file extended but never written (power loss).
            return Ok(false);
        }
        if len > format::MAX_BLOCK_BYTES {
            return Err(self.corrupt(self.offset, format!("block of {len} bytes, over the limit of {}", format::MAX_BLOCK_BYTES)));
        }
        let file_len = self.file.get_ref().metadata().map_err(|e| RecorderError::io(&self.path, e))?.len();
        if self.offset + format::BLOCK_HEADER_LEN + u64::from(len) > file_len {
            return Ok(false);
        }
        let mut payload = vec![0u8; len as usize];
        if read_full(&mut self.file, &mut payload).map_err(|e| RecorderError::io(&self.path, e))? < payload.len() {
            return Ok(false);
        }
        if crc32fast::hash(&payload) != crc {
            return Err(self.corrupt(self.offset, "block checksum mismatch"));
        }
        self.raw.clear();
        self.pos = 0;
        let mut z = DeflateDecoder::new(&payload[..]).take(format::MAX_RAW_BYTES as u64 + 1);
        if let Err(e) = z.read_to_end(&mut self.raw) {
            return Err(self.corrupt(self.offset, format!("block does not inflate: {e}")));
        }
        if self.raw.len() > format::MAX_RAW_BYTES {
            return Err(self.corrupt(self.offset, format!("block inflates past {} bytes", format::MAX_RAW_BYTES)));
        }
        self.block_offset = self.offset;
        self.offset += format::BLOCK_HEADER_LEN + u64::from(len);
        Ok(true)
    }
}

/// What [`export`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ExportSummary {
    pub frames: u64,
    pub bytes: u64,
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
}

/// Writes the frames of the recording at `src` within `[from_ms, to_ms]` into `dest` as one
/// segment (key frame first) that [`read`] accepts, for replay on another machine. `dest` is
/// written beside itself and renamed into place (0600); a damaged block in `src` fails the
/// export rather than leaving a silent gap.
pub fn export(src: &Path, from_ms: Option<i64>, to_ms: Option<i64>, dest: &Path) -> Result<ExportSummary, RecorderError> {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let mut summary = ExportSummary { frames: 0, bytes: 0, first_ms: None, last_ms: None };
    let mut seg: Option<Segment> = None;
    let result = (|| {
        for f in read(src, from_ms, to_ms)? {
            let f = f?;
            let s = match &mut seg {
                Some(s) => s,
                None => seg.insert(Segment::create(&tmp, f.snap.ts_ms, super::writer::LEVEL)?),
            };
            s.append(&f.snap, f.forced, i64::MAX)?;
            summary.frames += 1;
            summary.first_ms.get_or_insert(f.snap.ts_ms);
            summary.last_ms = Some(f.snap.ts_ms);
        }
        let s = match seg.take() {
            Some(s) => s,
            None => Segment::create(&tmp, 0, super::writer::LEVEL)?,
        };
        summary.bytes = s.finish()?;
        std::fs::rename(&tmp, dest).map_err(|e| RecorderError::io(dest, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| summary)
}
