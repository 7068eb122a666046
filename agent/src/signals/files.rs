//! File signals: for each declared file (a playbook's META `files`, the config's
//! `[[files.watch]]`), what `lstat` says of it and, for paths the operator allowed
//! (`files.content_paths`), what its content says: whether its hash changed since the last
//! sample and how many new lines match a pattern.
//!
//! Metric keys, `<name>` being the declared name: `file.<name>.exists` (0/1), `.size` (bytes),
//! `.age_secs` (since its mtime), `.mode` (permission bits, e.g. 420 for 0644), `.uid`, `.gid`;
//! with `hash`, `.changed` (1 when the SHA-256 of the content differs from the previous sample's;
//! 0 on the first); with `pattern`, `.matches` (lines matching among the bytes appended since the
//! previous sample, read from the start again after a truncation or a rotation, at most the last
//! `tail` bytes; on the first sample the last `tail` bytes).
//!
//! Why it is safe: metadata comes from `lstat` (a symlink is reported as itself, never followed;
//! a FIFO or a device is never opened). Content is read only of a regular file with one link,
//! opened with `O_NOFOLLOW | O_NONBLOCK`, the same inode as the `lstat`, whose real path (read back
//! from the open fd, so a symlinked directory cannot smuggle `/etc/shadow` in) matches
//! `files.content_paths` (default `/var/log/*`): a playbook that may only `notify` cannot learn
//! anything of a secret file but its size and times. Bounded: at most `files.max_files` files; a
//! file above `files.max_hash_bytes` is not hashed (`unavailable` says so); a tail is at most
//! [`MAX_TAIL_BYTES`]; one sample reads at most [`READ_BUDGET_BYTES`] of content (what is left
//! waits for the next sample); hashing is skipped when size, mtime, ctime and inode are unchanged.

use super::Snapshot;
use crate::actions::glob::glob_match;
use regex::bytes::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Longest `tail` (bytes of a file scanned for a pattern in one sample).
pub const MAX_TAIL_BYTES: u64 = 1 << 20;
/// The `tail` when none is given.
pub const DEFAULT_TAIL_BYTES: u64 = 64 << 10;
/// Most content bytes one sample reads, all files together (hashes and tails).
pub const READ_BUDGET_BYTES: u64 = 64 << 20;
/// Longest pattern, in bytes; its compiled form is bounded too ([`REGEX_SIZE_LIMIT`]).
pub const MAX_PATTERN: usize = 1024;
/// Compiled size limit of a pattern (the regex crate matches in linear time; this bounds memory).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Longest declared name.
pub const MAX_NAME: usize = 64;

/// Why a declared file was refused.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum FileError {
    /// The name is empty, too long or not letters, digits, `-` and `_`.
    #[error("{0:?} must be 1 to 64 letters, digits, '-' or '_'")]
    Name(String),
    /// The path is not absolute, too long, or has a NUL byte.
    #[error("{0:?} must be an absolute path (at most 4096 bytes)")]
    Path(String),
    /// The pattern does not compile (or is over its bounds).
    #[error("{0}")]
    Pattern(String),
    /// The tail is zero, above 1 MiB, or not a size.
    #[error("{0}")]
    Tail(String),
}

impl FileError {
    /// Stable code, the same in logs and records.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Name(_) => "file_name",
            Self::Path(_) => "file_path",
            Self::Pattern(_) => "file_pattern",
            Self::Tail(_) => "file_tail",
        }
    }

    /// The field at fault as the config spells it (`[[files.watch]]`); META spells the last
    /// `tail`.
    pub fn field(&self) -> &'static str {
        match self {
            Self::Name(_) => "name",
            Self::Path(_) => "path",
            Self::Pattern(_) => "pattern",
            Self::Tail(_) => "tail_bytes",
        }
    }
}

/// One declared file, checked.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub name: String,
    pub path: PathBuf,
    #[serde(default)]
    pub hash: bool,
    #[serde(default)]
    pub pattern: Option<String>,
    #[serde(default = "default_tail")]
    pub tail_bytes: u64,
}

const fn default_tail() -> u64 {
    DEFAULT_TAIL_BYTES
}

impl FileSpec {
    /// Checks every field (the pattern compiles within its bounds).
    pub fn check(&self) -> Result<(), FileError> {
        let n = &self.name;
        if n.is_empty() || n.len() > MAX_NAME || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(FileError::Name(n.clone()));
        }
        let p = self.path.as_os_str().as_encoded_bytes();
        if !self.path.is_absolute() || p.len() > super::parse::MAX_PATH || p.contains(&0) {
            return Err(FileError::Path(self.path.display().to_string()));
        }
        if let Some(pat) = &self.pattern {
            compile(pat)?;
        }
        if self.tail_bytes == 0 || self.tail_bytes > MAX_TAIL_BYTES {
            return Err(FileError::Tail(format!("{} bytes: must be 1 B to 1 MiB", self.tail_bytes)));
        }
        Ok(())
    }
}

fn compile(pat: &str) -> Result<Regex, FileError> {
    if pat.len() > MAX_PATTERN {
        return Err(FileError::Pattern(format!("longer than {MAX_PATTERN} bytes")));
    }
    RegexBuilder::new(pat)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| FileError::Pattern(e.to_string().lines().last().unwrap_or("invalid").trim().to_string()))
}

/// A size as playbooks write it: `65536`, `"64KiB"`, `"1MiB"`, `"512B"`.
pub fn parse_size(s: &str) -> Result<u64, FileError> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        u => return Err(FileError::Tail(format!("{s:?}: unknown unit {u:?} (B, KiB, MiB)"))),
    };
    let n: u64 = num.parse().map_err(|_| FileError::Tail(format!("{s:?} is not a size")))?;
    Ok(n.saturating_mul(mult))
}

/// The config's `[files]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Globs (`*` crosses `/`) of the real paths whose content (hash, pattern) may be read.
    pub content_paths: Vec<String>,
    /// Most declared files watched, config and playbooks together.
    pub max_files: usize,
    /// Files larger than this are not hashed.
    pub max_hash_bytes: u64,
    /// Files watched whatever the playbooks declare.
    pub watch: Vec<FileSpec>,
}

/// Upper bound of `files.max_files`.
pub const MAX_FILES_LIMIT: usize = 4096;
/// Upper bound of `files.max_hash_bytes` (1 GiB).
pub const MAX_HASH_LIMIT: u64 = 1 << 30;

impl Default for FilesConfig {
    fn default() -> Self {
        Self { content_paths: vec!["/var/log/*".into()], max_files: 256, max_hash_bytes: 16 << 20, watch: Vec::new() }
    }
}

/// The files the loaded playbooks declare, handed over at start and at each reload; the sampler
/// picks a new list up at its next sample (it may be on the worker when a reload happens).
#[derive(Debug, Clone, Default)]
pub struct Declared(Arc<Mutex<(u64, Vec<Origin>)>>);

/// A declared file with who declared it (`config`, `playbook <name>`).
pub type Origin = (String, FileSpec);

impl Declared {
    /// Replaces the list: `(playbook name, spec)` pairs.
    pub fn set(&self, specs: Vec<Origin>) {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if g.1 != specs {
            g.0 += 1;
            g.1 = specs;
        }
    }

    fn take_if_newer(&self, seen: u64) -> Option<(u64, Vec<Origin>)> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        (g.0 != seen).then(|| (g.0, g.1.clone()))
    }
}

/// What says a file's content may have changed: dev, ino, size, mtime and ctime (ns).
type Stamp = (u64, u64, u64, i128, i128);

/// What is remembered of one file between samples.
#[derive(Debug, Default, Clone)]
struct Memo {
    /// (dev, ino, size, mtime ns, ctime ns) when last hashed, and the hash.
    hashed: Option<(Stamp, [u8; 32])>,
    /// (dev, ino, offset): where the pattern scan continues.
    tail: Option<(u64, u64, u64)>,
}

struct Watch {
    spec: FileSpec,
    regex: Option<Regex>,
    memo: Memo,
}

/// The file family's state, held by the sampler.
pub struct Files {
    config: FilesConfig,
    declared: Declared,
    seen: u64,
    watches: Vec<Watch>,
    /// Refusals found when the list was built (duplicates, over the count), reported each sample.
    notes: BTreeMap<String, String>,
}

impl Files {
    pub fn new(config: FilesConfig) -> Self {
        let mut f = Self { config, declared: Declared::default(), seen: u64::MAX, watches: Vec::new(), notes: BTreeMap::new() };
        f.rebuild(Vec::new());
        f.seen = 0;
        f
    }

    /// The handle through which playbooks' declarations reach this family.
    pub fn declared(&self) -> Declared {
        self.declared.clone()
    }

    fn rebuild(&mut self, from_playbooks: Vec<Origin>) {
        let mut old: HashMap<(String, PathBuf), Memo> =
            self.watches.drain(..).map(|w| ((w.spec.name.clone(), w.spec.path.clone()), w.memo)).collect();
        self.notes.clear();
        let mut by_name: BTreeMap<String, String> = BTreeMap::new();
        let all = self.config.watch.iter().map(|s| ("config".to_string(), s.clone())).chain(from_playbooks);
        let mut dropped = 0usize;
        for (origin, spec) in all {
            if let Err(e) = spec.check() {
                self.notes.insert(format!("file.{}", spec.name), format!("declared by {origin}: {e}"));
                continue;
            }
            if let Some(first) = by_name.get(&spec.name) {
                let same = self.watches.iter().any(|w| w.spec == spec);
                if !same {
                    self.notes
                        .insert(format!("file.{}", spec.name), format!("declared by {first} and differently by {origin}: {first}'s kept"));
                }
                continue;
            }
            if self.watches.len() >= self.config.max_files {
                dropped += 1;
                continue;
            }
            by_name.insert(spec.name.clone(), origin);
            let regex = spec.pattern.as_deref().and_then(|p| compile(p).ok());
            let memo = old.remove(&(spec.name.clone(), spec.path.clone())).unwrap_or_default();
            self.watches.push(Watch { spec, regex, memo });
        }
        if dropped > 0 {
            self.notes
                .insert("files".into(), format!("{dropped} declared files beyond files.max_files ({}) not watched", self.config.max_files));
        }
    }

    /// Number of files watched now.
    pub fn len(&self) -> usize {
        self.watches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.watches.is_empty()
    }

    /// Reads every watched file into `s` (at `s.ts_ms`).
    pub fn sample(&mut self, s: &mut Snapshot) {
        if let Some((seen, list)) = self.declared.take_if_newer(self.seen) {
            self.seen = seen;
            self.rebuild(list);
        }
        for (k, v) in &self.notes {
            s.unavailable.insert(k.clone(), v.clone());
        }
        let mut budget = READ_BUDGET_BYTES;
        for w in &mut self.watches {
            read_one(w, &self.config, s, &mut budget);
        }
    }
}

fn content_allowed(globs: &[String], path: &Path) -> bool {
    let Some(p) = path.to_str() else { return false };
    // No `..` tricks: the path must already be the normal form of itself.
    !p.split('/').any(|c| c == ".." || c == ".") && globs.iter().any(|g| glob_match(g, p))
}

fn ns(secs: i64, nsec: u64) -> i128 {
    secs as i128 * 1_000_000_000 + nsec as i128
}

fn read_one(w: &mut Watch, cfg: &FilesConfig, s: &mut Snapshot, budget: &mut u64) {
    let name = w.spec.name.clone();
    let key = |k: &str| format!("file.{name}.{k}");
    let st = match rustix::fs::lstat(&w.spec.path) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) | Err(rustix::io::Errno::NOTDIR) => {
            s.metrics.insert(key("exists"), 0.0);
            w.memo = Memo::default();
            return;
        }
        Err(e) => {
            s.unavailable.insert(key("exists"), format!("{}: {e}", w.spec.path.display()));
            return;
        }
    };
    let mtime = ns(st.st_mtime, st.st_mtime_nsec as u64);
    let now_ns = s.ts_ms as i128 * 1_000_000;
    s.metrics.insert(key("exists"), 1.0);
    s.metrics.insert(key("size"), st.st_size as f64);
    s.metrics.insert(key("age_secs"), ((now_ns - mtime).max(0) / 1_000_000) as f64 / 1000.0);
    s.metrics.insert(key("mode"), (st.st_mode & 0o7777) as f64);
    s.metrics.insert(key("uid"), st.st_uid as f64);
    s.metrics.insert(key("gid"), st.st_gid as f64);
    if !w.spec.hash && w.regex.is_none() {
        return;
    }
    let refuse = |s: &mut Snapshot, why: String| {
        s.unavailable.insert(key("content"), why);
    };
    let ftype = rustix::fs::FileType::from_raw_mode(st.st_mode);
    if ftype != rustix::fs::FileType::RegularFile {
        return refuse(s, format!("{} is not a regular file ({ftype:?}): content not read", w.spec.path.display()));
    }
    if !content_allowed(&cfg.content_paths, &w.spec.path) {
        return refuse(s, format!("{} is not under files.content_paths: content not read", w.spec.path.display()));
    }
    use rustix::fs::OFlags;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match rustix::fs::open(&w.spec.path, flags, rustix::fs::Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => return refuse(s, format!("{}: open: {e}", w.spec.path.display())),
    };
    let Ok(fst) = rustix::fs::fstat(&fd) else { return refuse(s, "fstat failed".into()) };
    if rustix::fs::FileType::from_raw_mode(fst.st_mode) != rustix::fs::FileType::RegularFile
        || fst.st_ino != st.st_ino
        || fst.st_dev != st.st_dev
    {
        return refuse(s, format!("{} changed between stat and open: content not read", w.spec.path.display()));
    }
    if fst.st_nlink > 1 {
        return refuse(s, format!("{} has {} hard links: content not read", w.spec.path.display(), fst.st_nlink));
    }
    // The real path of what was opened: a symlinked directory on the way is resolved here.
    let real = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default();
    if !content_allowed(&cfg.content_paths, &real) {
        return refuse(
            s,
            format!("{} resolves to {}, not under files.content_paths: content not read", w.spec.path.display(), real.display()),
        );
    }
    let file = std::fs::File::from(fd);
    let size = fst.st_size.max(0) as u64;
    let (dev, ino) = (fst.st_dev, fst.st_ino);
    if w.spec.hash {
        let stamp = (dev, ino, size, ns(fst.st_mtime, fst.st_mtime_nsec), ns(fst.st_ctime, fst.st_ctime_nsec));
        if size > cfg.max_hash_bytes {
            s.unavailable.insert(key("changed"), format!("{size} bytes, above files.max_hash_bytes ({}): not hashed", cfg.max_hash_bytes));
            w.memo.hashed = None;
        } else if w.memo.hashed.is_some_and(|(st, _)| st == stamp) {
            s.metrics.insert(key("changed"), 0.0);
        } else if size > *budget {
            s.unavailable.insert(key("changed"), "this sample's read budget is spent: hashed at a later sample".into());
        } else {
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 64 << 10];
            let mut r = (&file).take(cfg.max_hash_bytes.saturating_add(1));
            let mut read = 0u64;
            let ok = loop {
                match r.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => {
                        read += n as u64;
                        h.update(&buf[..n]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break false,
                }
            };
            *budget = budget.saturating_sub(read);
            if !ok || read > cfg.max_hash_bytes {
                s.unavailable.insert(key("changed"), "read failed or the file grew past files.max_hash_bytes".into());
                w.memo.hashed = None;
            } else {
                let digest: [u8; 32] = h.finalize().into();
                let changed = w.memo.hashed.is_some_and(|(_, d)| d != digest);
                s.metrics.insert(key("changed"), if changed { 1.0 } else { 0.0 });
                w.memo.hashed = Some((stamp, digest));
            }
        }
    }
    if let Some(re) = &w.regex {
        // Continue where the last scan ended on the same file; from the start after a rotation
        // (a new inode) or a truncation (smaller than where we were); the first time, the tail.
        let start = match w.memo.tail {
            Some((d, i, off)) if d == dev && i == ino && off <= size => off,
            Some(_) => 0,
            None => size.saturating_sub(w.spec.tail_bytes),
        };
        let from = start.max(size.saturating_sub(w.spec.tail_bytes));
        let want = (size - from).min(*budget);
        let mut buf = vec![0u8; want as usize];
        let mut got = 0usize;
        while got < buf.len() {
            match file.read_at(&mut buf[got..], from + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        buf.truncate(got);
        *budget = budget.saturating_sub(got as u64);
        // Whole lines only: a line still being written is read again next time, unless the
        // region is a full tail with no newline at all (then it is taken as it is).
        let full = got as u64 >= w.spec.tail_bytes;
        let (mut body, end): (&[u8], u64) = match buf.iter().rposition(|b| *b == b'\n') {
            Some(i) => (&buf[..=i], from + i as u64 + 1),
            None if full => (&buf[..], from + got as u64),
            None => (&[], from),
        };
        if from > start || (w.memo.tail.is_none() && from > 0) {
            // Skipped ahead to the last `tail` bytes: the first line is a fragment.
            if let Some(i) = body.iter().position(|b| *b == b'\n') {
                body = &body[i + 1..];
            }
        }
        let n = body.split(|b| *b == b'\n').filter(|l| !l.is_empty() && re.is_match(l)).count();
        s.metrics.insert(key("matches"), n as f64);
        w.memo.tail = Some((dev, ino, end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn spec(name: &str, path: &Path, hash: bool, pattern: Option<&str>) -> FileSpec {
        FileSpec { name: name.into(), path: path.into(), hash, pattern: pattern.map(String::from), tail_bytes: DEFAULT_TAIL_BYTES }
    }

    fn files(dir: &Path, watch: Vec<FileSpec>) -> Files {
        Files::new(FilesConfig { content_paths: vec![format!("{}/*", dir.display())], watch, ..Default::default() })
    }

    fn sample(f: &mut Files, ts_ms: i64) -> Snapshot {
        let mut s = Snapshot { ts_ms, ..Default::default() };
        f.sample(&mut s);
        s
    }

    #[test]
    fn stat_signals_and_a_content_change_are_seen() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("app.conf");
        std::fs::write(&p, "a = 1\n").unwrap();
        let mut f = files(d.path(), vec![spec("conf", &p, true, None), spec("gone", &d.path().join("nope"), true, None)]);
        let s = sample(&mut f, crate::audit::now_ms());
        assert_eq!(s.metric("file.conf.exists"), Some(1.0));
        assert_eq!(s.metric("file.conf.size"), Some(6.0));
        assert_eq!(s.metric("file.conf.changed"), Some(0.0), "{s:?}");
        assert_eq!(s.metric("file.gone.exists"), Some(0.0));
        assert!(s.metric("file.conf.age_secs").unwrap() < 60.0);
        assert_eq!(sample(&mut f, crate::audit::now_ms()).metric("file.conf.changed"), Some(0.0));
        // Same size, new content: the ctime moves, so it is hashed again.
        std::fs::write(&p, "a = 2\n").unwrap();
        assert_eq!(sample(&mut f, crate::audit::now_ms()).metric("file.conf.changed"), Some(1.0));
        assert_eq!(sample(&mut f, crate::audit::now_ms()).metric("file.conf.changed"), Some(0.0));
        std::os::unix::fs::chown(&p, Some(1234), Some(4321)).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
        let s = sample(&mut f, crate::audit::now_ms());
        assert_eq!(s.metric("file.conf.mode"), Some(0o640 as f64));
        assert_eq!((s.metric("file.conf.uid"), s.metric("file.conf.gid")), (Some(1234.0), Some(4321.0)));
        assert_eq!(s.metric("file.conf.changed"), Some(0.0), "a metadata change is not a content change");
    }

    #[test]
    fn a_file_above_the_hash_bound_is_not_hashed_and_says_so() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("big");
        std::fs::write(&p, vec![b'x'; 2048]).unwrap();
        let cfg = FilesConfig {
            content_paths: vec![format!("{}/*", d.path().display())],
            max_hash_bytes: 1024,
            watch: vec![spec("big", &p, true, None)],
            ..Default::default()
        };
        let s = sample(&mut Files::new(cfg), 1);
        assert_eq!(s.metric("file.big.changed"), None);
        assert!(s.unavailable["file.big.changed"].contains("max_hash_bytes"), "{:?}", s.unavailable);
        assert_eq!(s.metric("file.big.size"), Some(2048.0));
    }

    #[test]
    fn a_pattern_counts_new_lines_and_starts_again_after_truncation_and_rotation() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("app.log");
        std::fs::write(&p, "ERROR old\nok\n").unwrap();
        let mut f = files(d.path(), vec![spec("log", &p, false, Some("ERROR|FATAL"))]);
        assert_eq!(sample(&mut f, 1).metric("file.log.matches"), Some(1.0), "the first sample reads the tail");
        assert_eq!(sample(&mut f, 2).metric("file.log.matches"), Some(0.0));
        let mut w = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        w.write_all(b"FATAL one\nfine\nERROR two\nERROR half").unwrap();
        assert_eq!(sample(&mut f, 3).metric("file.log.matches"), Some(2.0), "the line being written waits");
        w.write_all(b" done\n").unwrap();
        assert_eq!(sample(&mut f, 4).metric("file.log.matches"), Some(1.0));
        // Truncated (copytruncate): from the start.
        std::fs::write(&p, "ERROR after truncate\n").unwrap();
        assert_eq!(sample(&mut f, 5).metric("file.log.matches"), Some(1.0));
        // Rotated (a new inode), even if larger: from the start.
        std::fs::rename(&p, d.path().join("app.log.1")).unwrap();
        std::fs::write(&p, "FATAL new\nERROR new\nERROR after truncate plus more\n").unwrap();
        assert_eq!(sample(&mut f, 6).metric("file.log.matches"), Some(3.0));
    }

    #[test]
    fn a_burst_larger_than_the_tail_counts_only_the_tail() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("app.log");
        std::fs::write(&p, "").unwrap();
        let mut sp = spec("log", &p, false, Some("ERROR"));
        sp.tail_bytes = 100;
        let mut f = files(d.path(), vec![sp]);
        assert_eq!(sample(&mut f, 1).metric("file.log.matches"), Some(0.0));
        std::fs::write(&p, "ERROR 123456789\n".repeat(100)).unwrap();
        // 100 bytes: the last 6 whole lines of 16 bytes (the first fragment dropped).
        assert_eq!(sample(&mut f, 2).metric("file.log.matches"), Some(6.0));
    }

    #[test]
    fn content_outside_content_paths_is_refused_even_through_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let secret_dir = tempfile::tempdir().unwrap();
        let secret = secret_dir.path().join("shadow");
        std::fs::write(&secret, "root:$6$secret\n").unwrap();
        std::os::unix::fs::symlink(&secret, d.path().join("link")).unwrap();
        std::os::unix::fs::symlink(secret_dir.path(), d.path().join("dirlink")).unwrap();
        let other = secret_dir.path().join("gshadow");
        std::fs::write(&other, "root:*::\n").unwrap();
        std::fs::hard_link(&other, d.path().join("hard")).unwrap();
        let mut f = files(
            d.path(),
            vec![
                spec("direct", &secret, true, Some("root")),
                spec("link", &d.path().join("link"), true, Some("root")),
                spec("dirlink", &d.path().join("dirlink/shadow"), true, Some("root")),
                spec("hard", &d.path().join("hard"), true, Some("root")),
                spec("dots", &d.path().join("../x/shadow"), true, None),
            ],
        );
        let s = sample(&mut f, 1);
        for n in ["direct", "link", "dirlink", "hard"] {
            assert_eq!(s.metric(&format!("file.{n}.exists")), Some(1.0), "{n}: stat-only signals stay");
            assert_eq!(s.metric(&format!("file.{n}.changed")), None, "{n}");
            assert_eq!(s.metric(&format!("file.{n}.matches")), None, "{n}");
            assert!(s.unavailable.contains_key(&format!("file.{n}.content")), "{n}: {:?}", s.unavailable);
        }
        assert!(s.unavailable["file.dirlink.content"].contains("resolves to"), "{:?}", s.unavailable);
        assert!(s.unavailable["file.hard.content"].contains("hard links"));
    }

    #[test]
    fn a_fifo_is_never_opened() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &p, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
        let mut f = files(d.path(), vec![spec("fifo", &p, true, Some("x"))]);
        let s = sample(&mut f, 1);
        assert_eq!(s.metric("file.fifo.exists"), Some(1.0));
        assert!(s.unavailable["file.fifo.content"].contains("not a regular file"));
    }

    #[test]
    fn declared_files_are_bounded_and_duplicates_reported() {
        let d = tempfile::tempdir().unwrap();
        let mut f = files(d.path(), vec![spec("a", &d.path().join("a"), false, None)]);
        let many: Vec<_> =
            (0..1000).map(|i| ("playbook p".to_string(), spec(&format!("f{i}"), &d.path().join(format!("{i}")), false, None))).collect();
        let mut list = many.clone();
        list.push(("playbook q".into(), spec("a", &d.path().join("other"), false, None)));
        f.declared().set(list);
        let s = sample(&mut f, 1);
        assert_eq!(f.len(), 256);
        assert!(s.unavailable["files"].contains("745 declared files beyond files.max_files (256)"), "{:?}", s.unavailable["files"]);
        assert!(s.unavailable["file.a"].contains("declared by config and differently by playbook q"));
        assert_eq!(s.metrics.keys().filter(|k| k.ends_with(".exists")).count(), 256);
    }

    #[test]
    fn specs_are_checked() {
        let ok = spec("x", Path::new("/var/log/x"), false, Some("a+"));
        assert_eq!(ok.check(), Ok(()));
        let bad = |f: &dyn Fn(&mut FileSpec)| {
            let mut s = ok.clone();
            f(&mut s);
            s.check().unwrap_err().code()
        };
        assert_eq!(bad(&|s| s.name = "a.b".into()), "file_name");
        assert_eq!(bad(&|s| s.path = "rel/x".into()), "file_path");
        assert_eq!(bad(&|s| s.pattern = Some("(".into())), "file_pattern");
        assert_eq!(bad(&|s| s.pattern = Some("a{1000}{1000}".into())), "file_pattern");
        assert_eq!(bad(&|s| s.tail_bytes = (1 << 20) + 1), "file_tail");
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("1GiB").is_err());
    }
}
