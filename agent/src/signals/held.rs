//! Files the sampler holds open from one sample to the next and reads again from offset 0: the
//! per-process `stat` and `statm` and the node-wide procfs and sysfs files read every tick.
//! procfs and sysfs produce a file's text anew on each read at offset 0, so a held file tells
//! exactly what a fresh open would, while the open and close it saves (a path walk and a pid
//! lookup each) were most of a sample's kernel time. A held `/proc/<pid>/…` stays bound to the
//! process it was opened for: once that process is gone the read fails (ESRCH), the file is
//! dropped and the path opened again, so a reused pid is read as the new process it is.
//!
//! Bounded: at most [`MAX_HELD`] files, and no more than a quarter of the soft `RLIMIT_NOFILE`, so the
//! agent's other files never lack a descriptor; past the bound a file is opened for each read
//! as before. The bound is low because a held procfs file is not free: the kernel keeps its
//! read buffer (a page) and its open file until it is closed, about 4.5 KiB each, so 512 held
//! files cost about 2.3 MiB of kernel memory, spent on a node's first ~250 processes, where
//! most idle nodes have all of theirs. A file not read in a sample is closed at the end of it ([`Held::sweep`]).

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Most files held open at once (2 per process: ~250 processes and the node's own files).
pub const MAX_HELD: usize = 512;

/// Largest text read through a held file; a longer one is read to this bound only by the
/// parsers that read whole files ([`super::parse::read`] has no bound of its own: procfs
/// files the sampler reads are kilobytes).
const MAX_TEXT: usize = 1 << 20;

/// Files held open across samples, keyed by path.
pub struct Held {
    files: HashMap<PathBuf, Entry>,
    /// Bumped by each [`sweep`](Self::sweep); an entry read since carries the current value.
    generation: u64,
    budget: usize,
}

struct Entry {
    file: File,
    generation: u64,
}

impl Default for Held {
    fn default() -> Self {
        Self::new()
    }
}

impl Held {
    /// Holds up to [`MAX_HELD`] files, and no more than a quarter of the soft limit on open files
    /// (the agent's own `fds_pct` stays far from any alarm: 25 % at most from these).
    pub fn new() -> Self {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
        Self::with_budget((soft / 4).min(MAX_HELD as u64) as usize)
    }

    /// Holds up to `budget` files (0: none, every read opens its file).
    pub fn with_budget(budget: usize) -> Self {
        Self { files: HashMap::new(), generation: 0, budget }
    }

    /// How many files are held now.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The whole text of `path` now. Through the held file when there is one; a read that fails
    /// there (its process exited) drops it and opens the path again, which then gives the
    /// answer (a new process's text, or the error a fresh open gives).
    pub fn read(&mut self, path: &Path) -> std::io::Result<Vec<u8>> {
        if let Some(e) = self.files.get_mut(path) {
            match read_at_zero(&e.file) {
                Ok(b) => {
                    e.generation = self.generation;
                    return Ok(b);
                }
                Err(_) => {
                    self.files.remove(path);
                }
            }
        }
        let file = File::open(path)?;
        let text = read_at_zero(&file)?;
        if self.files.len() < self.budget {
            self.files.insert(path.to_path_buf(), Entry { file, generation: self.generation });
        }
        Ok(text)
    }

    /// As [`read`](Self::read), as UTF-8 text (an error naming the file otherwise).
    pub fn read_text(&mut self, path: &Path) -> Result<String, super::parse::ParseError> {
        use super::parse::ParseError;
        let b = self.read(path).map_err(|e| ParseError::new(path, 0, "file", e.to_string()))?;
        String::from_utf8(b).map_err(|_| ParseError::new(path, 0, "content", "not valid UTF-8"))
    }

    /// Closes the files not read since the last sweep (processes that exited, mounts and
    /// interfaces gone), once per sample.
    pub fn sweep(&mut self) {
        let g = self.generation;
        self.files.retain(|_, e| e.generation == g);
        self.generation = g.wrapping_add(1);
    }
}

/// The file's text from offset 0 to its end (or [`MAX_TEXT`]): one `pread` for the small
/// files, more for a longer one.
fn read_at_zero(f: &File) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        let n = f.read_at(&mut buf[len..], len as u64)?;
        if n == 0 {
            break;
        }
        len += n;
        if len == buf.len() {
            if len >= MAX_TEXT {
                break;
            }
            buf.resize((len * 2).min(MAX_TEXT), 0);
        }
    }
    buf.truncate(len);
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_file_is_read_anew_from_offset_zero() {
        let mut h = Held::with_budget(4);
        let p = Path::new("/proc/self/stat");
        let a = h.read(p).unwrap();
        assert_eq!(h.len(), 1);
        let b = h.read(p).unwrap();
        assert!(a.starts_with(format!("{} (", std::process::id()).as_bytes()), "{}", String::from_utf8_lossy(&a));
        assert!(b.starts_with(format!("{} (", std::process::id()).as_bytes()));
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn a_held_file_of_an_exited_process_is_opened_again_by_path() {
        let mut h = Held::with_budget(4);
        let mut child = std::process::Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id();
        let p = PathBuf::from(format!("/proc/{pid}/stat"));
        assert!(h.read(&p).unwrap().starts_with(format!("{pid} (sleep)").as_bytes()));
        child.kill().unwrap();
        child.wait().unwrap();
        // Reaped: the held file fails, is dropped, and the path is opened again (gone too).
        assert!(h.read(&p).is_err());
        assert_eq!(h.len(), 0);
    }

    #[test]
    fn files_beyond_the_budget_are_read_without_being_held() {
        let mut h = Held::with_budget(1);
        h.read(Path::new("/proc/self/stat")).unwrap();
        assert!(!h.read(Path::new("/proc/self/statm")).unwrap().is_empty());
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn a_sweep_closes_the_files_not_read_since_the_last() {
        let mut h = Held::with_budget(4);
        h.read(Path::new("/proc/self/stat")).unwrap();
        h.read(Path::new("/proc/self/statm")).unwrap();
        h.sweep();
        h.read(Path::new("/proc/self/stat")).unwrap();
        h.sweep();
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn a_file_longer_than_one_page_is_read_whole() {
        let mut h = Held::with_budget(4);
        let p = Path::new("/proc/self/smaps");
        let whole = std::fs::read(p).unwrap();
        let got = h.read(p).unwrap();
        assert!(whole.len() > 4096);
        // The map of this process moves a little between reads; the length is close.
        assert!(got.len() > 4096, "{}", got.len());
        assert!(h.read(p).unwrap().len() > 4096);
    }
}
