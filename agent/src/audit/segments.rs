//! The log on disk is a series of segments: closed ones named
//! `audit.<first seq>-<last seq>.log` (20 digits each, so names sort in order) and the active
//! one, `audit.log`. This module lists them, streams their lines with a bounded buffer (so memory
//! never grows with the log or with a garbage line), and finds the last whole record of a file
//! by scanning back from its end (tail repair), whatever the size of records or of the garbage.

use super::chain::{self, Valid};
use super::FILE_NAME;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The longest line read as a record. Records are bounded far below this (docs/AUDIT.md);
/// a longer line is garbage and is skipped without being held in memory.
pub const MAX_LINE: usize = 64 << 20;

/// One segment file.
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    pub path: PathBuf,
    /// From the name, for a closed segment; None for the active one.
    pub first: Option<u64>,
    pub last: Option<u64>,
}

/// The name of a closed segment.
pub fn closed_name(first: u64, last: u64) -> String {
    format!("audit.{first:020}-{last:020}.log")
}

fn parse_closed(name: &str) -> Option<(u64, u64)> {
    let mid = name.strip_prefix("audit.")?.strip_suffix(".log")?;
    let (a, b) = mid.split_once('-')?;
    if a.len() != 20 || b.len() != 20 {
        return None;
    }
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Closed segments in `seq` order, then the active one if it exists.
pub fn list(dir: &Path) -> std::io::Result<Vec<Segment>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some((first, last)) = parse_closed(&name) {
            v.push(Segment { path: e.path(), first: Some(first), last: Some(last) });
        }
    }
    v.sort_by_key(|s| s.first);
    let active = dir.join(FILE_NAME);
    if active.exists() {
        v.push(Segment { path: active, first: None, last: None });
    }
    Ok(v)
}

/// What one bounded read of a line gave.
#[derive(Debug, PartialEq)]
pub enum Line {
    /// A whole line is in the buffer (without its newline).
    Whole,
    /// A line longer than [`MAX_LINE`] was skipped to its newline.
    TooLong,
    /// Bytes with no newline at the end of the file (a torn tail); they are in the buffer
    /// unless longer than [`MAX_LINE`].
    Torn,
    Eof,
}

/// Reads one line into `buf` (cleared first), holding at most `max` bytes of it.
pub fn read_line<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, max: usize) -> std::io::Result<(Line, u64)> {
    buf.clear();
    let mut n = 0u64;
    let mut too_long = false;
    loop {
        let chunk = r.fill_buf()?;
        if chunk.is_empty() {
            let kind = if n == 0 { Line::Eof } else { Line::Torn };
            if too_long {
                buf.clear();
            }
            return Ok((kind, n));
        }
        let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        let body = if done { take - 1 } else { take };
        if !too_long {
            if buf.len() + body > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(&chunk[..body]);
            }
        }
        r.consume(take);
        n += take as u64;
        if done {
            return Ok((if too_long { Line::TooLong } else { Line::Whole }, n));
        }
    }
}

/// The position of the last `\n` before `end`, scanning back in chunks.
fn newline_before(f: &mut File, end: u64) -> std::io::Result<Option<u64>> {
    const CHUNK: u64 = 64 << 10;
    let mut hi = end;
    let mut buf = vec![0u8; CHUNK as usize];
    while hi > 0 {
        let lo = hi.saturating_sub(CHUNK);
        let b = &mut buf[..(hi - lo) as usize];
        f.seek(SeekFrom::Start(lo))?;
        f.read_exact(b)?;
        if let Some(i) = b.iter().rposition(|c| *c == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

/// The line in `[start, end)` if it is a valid record (and not longer than [`MAX_LINE`]).
fn valid_at(f: &mut File, start: u64, end: u64) -> std::io::Result<Option<Valid>> {
    if end - start > MAX_LINE as u64 {
        return Ok(None);
    }
    let mut b = vec![0u8; (end - start) as usize];
    f.seek(SeekFrom::Start(start))?;
    f.read_exact(&mut b)?;
    Ok(chain::valid(&b).ok())
}

/// The last whole record of a file that chains: a valid record whose predecessor in the file is
/// a valid record it follows (or that is the file's first line). Returns it with the length of
/// the file up to its newline; everything after is a torn or garbage tail. None: no such record
/// (the whole file is garbage, or empty).
pub fn last_good(f: &mut File, len: u64) -> std::io::Result<Option<(Valid, u64)>> {
    // `end` is the position of a newline ending a candidate line.
    let mut end = newline_before(f, len)?;
    while let Some(e) = end {
        let before = newline_before(f, e)?;
        let start = before.map_or(0, |b| b + 1);
        if let Some(v) = valid_at(f, start, e)? {
            let chains = match before {
                None => true,
                Some(b) => {
                    let pstart = newline_before(f, b)?.map_or(0, |p| p + 1);
                    valid_at(f, pstart, b)?.is_some_and(|p| chain::follows(p.seq, &p.hash, &v))
                }
            };
            if chains {
                return Ok(Some((v, e + 1)));
            }
        }
        end = before;
    }
    Ok(None)
}

/// The first line of a file, if it is a valid record.
pub fn first_record(path: &Path) -> std::io::Result<Option<Valid>> {
    let mut r = BufReader::new(File::open(path)?);
    let mut buf = Vec::new();
    match read_line(&mut r, &mut buf, MAX_LINE)?.0 {
        Line::Whole => Ok(chain::valid(&buf).ok()),
        _ => Ok(None),
    }
}

/// Streams the lines of segments in order, each with its segment and line number. The active
/// segment can be limited to a length (the part tail repair kept).
pub struct Lines {
    segs: std::vec::IntoIter<Segment>,
    cur: Option<(PathBuf, std::io::Take<BufReader<File>>)>,
    active_limit: Option<u64>,
    line_no: u64,
    path: PathBuf,
    buf: Vec<u8>,
}

/// One item of [`Lines`].
pub enum Item<'a> {
    Whole(&'a [u8]),
    TooLong,
    Torn,
}

impl Lines {
    pub fn new(segs: Vec<Segment>, active_limit: Option<u64>) -> Self {
        Self { segs: segs.into_iter(), cur: None, active_limit, line_no: 0, path: PathBuf::new(), buf: Vec::new() }
    }

    /// The next line; None at the end of the last segment.
    pub fn next_line(&mut self) -> std::io::Result<Option<(Item<'_>, &Path, u64)>> {
        loop {
            if self.cur.is_none() {
                let Some(s) = self.segs.next() else { return Ok(None) };
                let f = File::open(&s.path)?;
                let limit = if s.first.is_none() { self.active_limit.unwrap_or(u64::MAX) } else { u64::MAX };
                self.path = s.path.clone();
                self.line_no = 0;
                self.cur = Some((s.path, BufReader::with_capacity(256 << 10, f).take(limit)));
            }
            let Some((_, r)) = self.cur.as_mut() else { continue };
            let (kind, _) = read_line(r, &mut self.buf, MAX_LINE)?;
            match kind {
                Line::Eof => {
                    self.cur = None;
                    continue;
                }
                Line::Whole => {
                    self.line_no += 1;
                    return Ok(Some((Item::Whole(&self.buf), &self.path, self.line_no)));
                }
                Line::TooLong => {
                    self.line_no += 1;
                    return Ok(Some((Item::TooLong, &self.path, self.line_no)));
                }
                Line::Torn => {
                    self.line_no += 1;
                    return Ok(Some((Item::Torn, &self.path, self.line_no)));
                }
            }
        }
    }
}
