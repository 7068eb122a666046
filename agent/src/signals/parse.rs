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

/// Parses one whitespace-separated field as a number, naming it on failure.
pub fn num<T: std::str::FromStr>(file: &Path, line: usize, field: &str, text: Option<&str>) -> Result<T, ParseError> {
    let Some(text) = text else {
        return Err(ParseError::new(file, line, field, "missing (line truncated?)"));
    };
    text.parse::<T>().map_err(|_| ParseError::new(file, line, field, format!("expected a number, found {text:?}")))
}

/// Reads a seq_file-backed procfs file (`/proc/net/tcp`) with as few `read` calls as possible.
/// Each call makes the kernel walk its table from the start, and a seq_file read fills the
/// buffer as far as the content goes, so a short read means the end: the usual extra read that
/// returns 0 would cost one more full walk.
pub fn read_seq(path: &Path) -> Result<String, ParseError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| ParseError::new(path, 0, "file", e.to_string()))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut len = 0;
    loop {
        let n = f.read(&mut buf[len..]).map_err(|e| ParseError::new(path, 0, "file", e.to_string()))?;
        len += n;
        if n == 0 || len < buf.len() {
            break;
        }
        buf.resize(buf.len() * 2, 0);
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|_| ParseError::new(path, 0, "content", "not valid UTF-8"))
}
