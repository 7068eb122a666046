//! The audit log as the forwarder's spool: the cursor (`<state_dir>/forward.cursor`, the
//! highest `seq` the broker acknowledged with every one before it, written atomically) and
//! reading the records after a `seq` across the log's segments, through rotations.

use std::path::{Path, PathBuf};

pub const CURSOR_FILE: &str = "forward.cursor";

/// The last `seq` acknowledged (with all before it); 0 when nothing was.
pub fn read_cursor(state_dir: &Path) -> u64 {
    std::fs::read_to_string(state_dir.join(CURSOR_FILE)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

pub(super) fn write_cursor(state_dir: &Path, seq: u64) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = state_dir.join(format!(".{CURSOR_FILE}.tmp"));
    // Private whatever the umask (the state dir's files are 0600).
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(format!("{seq}\n").as_bytes())?;
    // Durable before it replaces the old one: a crash then leaves the old cursor or the new
    // one, never an empty file that would re-send the whole log. Written at most every 200 ms.
    f.sync_all()?;
    std::fs::rename(&tmp, state_dir.join(CURSOR_FILE))
}

/// Reads records after a `seq`, across the log's segments (see `audit::segments`): a closed
/// segment is read to its end, then the next one; the active one through an open descriptor,
/// so a rotation (a rename) loses nothing. Lines are read with a bounded buffer.
pub(crate) struct Tail {
    dir: PathBuf,
    path: PathBuf,
    reader: std::io::BufReader<std::fs::File>,
    /// (device, inode) when reading the active segment; None for a closed one.
    active: Option<(u64, u64)>,
    /// The last `seq` returned (or the one to start after).
    last: u64,
    /// The start of a line not yet whole (the agent is writing it).
    partial: Vec<u8>,
    /// A whole record read but not yet durable (its `seq` is past the anchor's): the agent
    /// writes a tick's records, then fsyncs them once, and a commit that fails cuts them off
    /// again; a record is handed on only once the anchor says it is durable.
    held: Option<(u64, String)>,
    /// The last `seq` handed on.
    emitted: u64,
}

impl Tail {
    /// Positioned after the record with `seq`: in the first closed segment that holds a later
    /// one, else in the active segment.
    pub(crate) fn after(dir: &Path, seq: u64) -> std::io::Result<Self> {
        use crate::audit::segments;
        let segs = segments::list(dir)?;
        let seg = segs
            .iter()
            .find(|s| s.last.is_some_and(|l| l > seq))
            .or_else(|| segs.iter().find(|s| s.first.is_none()))
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no audit log"))?;
        let f = std::fs::File::open(&seg.path)?;
        let active = if seg.first.is_none() {
            let st = rustix::fs::fstat(&f)?;
            Some((st.st_dev, st.st_ino))
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            path: seg.path.clone(),
            reader: std::io::BufReader::new(f),
            active,
            last: seq,
            partial: Vec::new(),
            held: None,
            emitted: seq,
        })
    }

    /// The active segment is shorter than what was read of it: a failed commit cut records
    /// off (they were never durable, and their `seq`s are issued again).
    fn cut_back(&mut self) -> bool {
        use std::io::Seek;
        if self.active.is_none() {
            return false;
        }
        let Ok(pos) = self.reader.stream_position() else { return false };
        rustix::fs::fstat(self.reader.get_ref()).is_ok_and(|st| (st.st_size as u64) < pos)
    }

    /// Whether the active segment read is still the file at `audit.log`.
    fn still_active(&self) -> bool {
        let st = rustix::fs::stat(self.dir.join(crate::audit::FILE_NAME));
        matches!((st, self.active), (Ok(st), Some(id)) if (st.st_dev, st.st_ino) == id)
    }

    /// Up to `max` whole, durable records after the last one returned.
    pub(crate) fn next(&mut self, max: usize) -> std::io::Result<Vec<(u64, String)>> {
        use crate::audit::segments::{read_line, Line, MAX_LINE};
        if self.cut_back() {
            *self = Self::after(&self.dir, self.emitted)?;
        }
        // Without a readable anchor, every whole record counts as durable (as before batches).
        let durable = crate::audit::anchor::read(&self.dir).ok().map(|a| a.seq);
        let mut out = Vec::new();
        if let Some((seq, line)) = self.held.take() {
            if durable.is_some_and(|d| seq > d) {
                self.held = Some((seq, line));
                return Ok(out);
            }
            self.emitted = seq;
            out.push((seq, line));
        }
        let mut buf = Vec::new();
        let mut drained_after_rotation = false;
        while out.len() < max {
            let (kind, _) = read_line(&mut self.reader, &mut buf, MAX_LINE)?;
            match kind {
                Line::Whole => {
                    let line = if self.partial.is_empty() {
                        String::from_utf8_lossy(&buf).into_owned()
                    } else {
                        self.partial.extend_from_slice(&buf);
                        String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned()
                    };
                    if let Some(seq) = seq_of(&line).filter(|s| *s > self.last) {
                        self.last = seq;
                        if durable.is_some_and(|d| seq > d) {
                            self.held = Some((seq, line));
                            break;
                        }
                        self.emitted = seq;
                        out.push((seq, line));
                    }
                }
                Line::TooLong => self.partial.clear(),
                Line::Torn => self.partial.extend_from_slice(&buf),
                Line::Eof => {
                    if self.active.is_some() {
                        if self.still_active() {
                            break;
                        }
                        if !drained_after_rotation {
                            // Rotated: what was written before the rename is read first.
                            drained_after_rotation = true;
                            continue;
                        }
                    }
                    // The end of a closed (or rotated) segment: on to the next one.
                    let next = Self::after(&self.dir, self.last)?;
                    if next.path == self.path && next.active.is_none() {
                        tracing::warn!(message = "Audit segment ends before the seq its name says; run `medic audit verify`.", segment = %self.path.display(), seq = self.last);
                        break;
                    }
                    *self = next;
                    drained_after_rotation = false;
                }
            }
        }
        Ok(out)
    }
}

/// The `seq` of the last record written (from the audit log's anchor: no read of the log).
pub(crate) fn last_seq(state_dir: &Path) -> u64 {
    crate::audit::anchor::read(state_dir).map_or(0, |a| a.seq)
}

fn seq_of(line: &str) -> Option<u64> {
    // Canonical records have sorted keys; parse rather than guess at positions.
    serde_json::from_str::<serde_json::Value>(line).ok()?.get("seq")?.as_u64()
}
