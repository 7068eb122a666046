//! Shared helpers for the procfs parsers: reading a file under an injectable root and turning
//! malformed content into a [`ParseError`] that names the file, the line and the field.

use std::fmt;
use std::path::{Path, PathBuf};

/// A procfs/sysfs file that could not be read or did not have the expected shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    /// The file that was read (under the injected root).
    pub file: PathBuf,
    /// 1-based line number; 0 when the whole file is at fault (missing, unreadable, empty).
    pub line: usize,
    /// The field that was expected (e.g. `MemTotal`, `column 4`).
    pub field: String,
    /// What was wrong with it.
    pub reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}: {}", self.file.display(), self.field, self.reason)
        } else {
            write!(f, "{}:{}: {}: {}", self.file.display(), self.line, self.field, self.reason)
        }
    }
}

impl std::error::Error for ParseError {}

impl ParseError {
    pub fn new(file: &Path, line: usize, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self { file: file.to_path_buf(), line, field: field.into(), reason: reason.into() }
    }
}

/// Reads a whole (small) procfs file as text. procfs files are never large except the ones we
/// do not read this way (`/proc/net/tcp` on a busy host is read line by line by its parser).
pub fn read(path: &Path) -> Result<String, ParseError> {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8(bytes).map_err(|_| ParseError::new(path, 0, "content", "not valid UTF-8")),
        Err(e) => Err(ParseError::new(path, 0, "file", e.to_string())),
    }
}

/// Reads a file the kernel produces in one piece (`/proc/<pid>/stat`, a sysfs attribute) in
/// three system calls: open, one read, close. `std::fs::read` also stats it and probes, since
/// such files report a size of 0: per process and per tick, that was most of a sample's cost.
/// A file that fills the 4 KiB buffer is read again the ordinary way.
pub fn read_one_piece(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = [0u8; 4096];
    let n = std::fs::File::open(path)?.read(&mut buf)?;
    if n < buf.len() {
        Ok(buf[..n].to_vec())
    } else {
        std::fs::read(path)
    }
}

/// Longest command line handed to playbooks, in bytes. A process's command line is whatever it
/// was started with (up to the kernel's ARG_MAX, megabytes), so anyone who can start a process
/// could otherwise push a playbook over its string limit and get it disabled.
pub const MAX_CMDLINE: usize = 4096;
/// Longest name (process, unit, device, filesystem type) handed to playbooks, in bytes.
pub const MAX_NAME: usize = 256;
/// Longest path (mount point) handed to playbooks: the kernel's PATH_MAX.
pub const MAX_PATH: usize = 4096;
/// What replaces the cut-off end of a value longer than its bound.
pub const TRUNCATED: &str = "…[truncated]";

/// `s` cut to at most `max` bytes (on a character boundary) with [`TRUNCATED`] at the end when
/// it was longer, so a playbook can see that it was cut.
pub fn bounded(s: String, max: usize) -> String {
    if s.len() <= max {
        return s;
    }
    cut_marked(s, max)
}

/// `s` cut to at most `max` bytes including [`TRUNCATED`], which it always ends with.
pub fn cut_marked(mut s: String, max: usize) -> String {
    let mut end = max.saturating_sub(TRUNCATED.len()).min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(TRUNCATED);
    s
}

/// Parses one whitespace-separated field as a number, naming it on failure.
pub fn num<T: std::str::FromStr>(file: &Path, line: usize, field: &str, text: Option<&str>) -> Result<T, ParseError> {
    let Some(text) = text else {
        return Err(ParseError::new(file, line, field, "missing (line truncated?)"));
    };
    text.parse::<T>().map_err(|_| ParseError::new(file, line, field, format!("expected a number, found {text:?}")))
}

/// Reads a seq_file-backed procfs file (`/proc/net/tcp`) to its end. A seq_file `read`
/// returns at most one buffer's worth (about 26 sockets of /proc/net/tcp), however large the
/// caller's buffer, so a short read is *not* the end: only a read that returns 0 is. (Stopping
/// at the first short read cut busy tables to their first lines.)
pub fn read_seq(path: &Path) -> Result<String, ParseError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| ParseError::new(path, 0, "file", e.to_string()))?;
    let mut buf = Vec::with_capacity(256 * 1024);
    f.read_to_end(&mut buf).map_err(|e| ParseError::new(path, 0, "file", e.to_string()))?;
    String::from_utf8(buf).map_err(|_| ParseError::new(path, 0, "content", "not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_values_are_cut_on_a_char_boundary_and_marked() {
        assert_eq!(bounded("short".into(), 10), "short");
        let cut = bounded("é".repeat(100), 50);
        assert!(cut.len() <= 50 && cut.ends_with(TRUNCATED), "{cut}");
        assert_eq!(cut_marked("ab".into(), 50), format!("ab{TRUNCATED}"), "marked even when short");
        assert!(cut_marked("x".repeat(100), 20).len() <= 20);
    }
}
