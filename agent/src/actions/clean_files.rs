//! `clean_files`: deletes files under a directory that match a glob and are older than an age,
//! oldest (or largest) first, until a byte target is freed. It never follows a symlink (the
//! directory itself must have none in its path; entries are examined with `AT_SYMLINK_NOFOLLOW`
//! and opened with `O_NOFOLLOW`), never crosses into another filesystem, and never works
//! outside the configured allowed roots, whatever the gate said. Each file is re-checked
//! (same inode, still a regular file) just before it is unlinked. Verified when every deleted
//! file is gone; the outcome lists what was freed.

use super::{ActionRequest, ExecContext, Outcome, Status};
use crate::playbooks::meta::glob_match;
use rustix::fs::{openat, statat, unlinkat, AtFlags, Dir, FileType, Mode, OFlags, CWD};
use serde_json::{json, Value};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const MAX_DEPTH: usize = 16;
const MAX_LISTED: usize = 50;

struct Candidate {
    parent: Arc<OwnedFd>,
    name: String,
    rel: PathBuf,
    ino: u64,
    size: u64,
    mtime: i64,
}

#[derive(Default)]
struct Walk {
    candidates: Vec<Candidate>,
    symlinks: u64,
    other_fs: u64,
    too_young: u64,
    not_matching: u64,
}

fn open_dir(parent: &OwnedFd, name: &str) -> rustix::io::Result<OwnedFd> {
    openat(parent, name, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
}

#[allow(clippy::too_many_arguments)]
fn walk(
    dir: Arc<OwnedFd>,
    rel: &Path,
    dev: u64,
    depth: usize,
    glob: &str,
    cutoff: i64,
    deadline: Instant,
    w: &mut Walk,
) -> Result<(), String> {
    if Instant::now() > deadline {
        return Err("timeout".into());
    }
    let entries = Dir::read_from(&*dir).map_err(|e| format!("{}: {e}", rel.display()))?;
    for entry in entries {
        let Ok(entry) = entry else { continue };
        let Ok(name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if name == "." || name == ".." {
            continue;
        }
        let Ok(st) = statat(&*dir, name.as_str(), AtFlags::SYMLINK_NOFOLLOW) else { continue };
        let ft = FileType::from_raw_mode(st.st_mode);
        if ft == FileType::Symlink {
            w.symlinks += 1;
        } else if st.st_dev != dev {
            w.other_fs += 1;
        } else if ft == FileType::Directory {
            if depth < MAX_DEPTH {
                if let Ok(sub) = open_dir(&dir, &name) {
                    walk(Arc::new(sub), &rel.join(&name), dev, depth + 1, glob, cutoff, deadline, w)?;
                }
            }
        } else if ft == FileType::RegularFile {
            if !glob_match(glob, &name) {
                w.not_matching += 1;
            } else if st.st_mtime >= cutoff {
                w.too_young += 1;
            } else {
                w.candidates.push(Candidate {
                    parent: dir.clone(),
                    rel: rel.join(&name),
                    name,
                    ino: st.st_ino,
                    size: st.st_size.max(0) as u64,
                    mtime: st.st_mtime,
                });
            }
        }
    }
    Ok(())
}

/// Whether `dir` lies under one of `roots` once both are canonical.
fn under_allowed_root(dir: &Path, roots: &[PathBuf]) -> bool {
    roots.iter().filter_map(|r| r.canonicalize().ok()).any(|r| dir.starts_with(r))
}

pub fn run(req: &ActionRequest, cx: &ExecContext) -> Outcome {
    let p = &req.params;
    let dir = PathBuf::from(&req.target);
    let glob = p.get("glob").and_then(Value::as_str).unwrap_or("*").to_string();
    let older = p.get("older_than_secs").and_then(Value::as_i64).unwrap_or(i64::MAX);
    let target = p.get("target_free_bytes").and_then(Value::as_u64).unwrap_or(u64::MAX);
    let largest = p.get("order").and_then(Value::as_str) == Some("largest");
    let fail = |code, msg: String| Outcome::fail(Status::Failed, code, msg, Value::Null);

    // No symlink anywhere in the directory's own path, and inside the allowed roots.
    match dir.canonicalize() {
        Ok(c) if c == dir => {}
        Ok(c) => return fail("symlink_refused", format!("{} resolves to {}: symlinks are not followed", dir.display(), c.display())),
        Err(e) => return fail("no_such_directory", format!("{}: {e}", dir.display())),
    }
    if !under_allowed_root(&dir, &cx.allowed_paths) {
        return fail("outside_allowed_roots", format!("{} is outside the allowed roots {:?}", dir.display(), cx.allowed_paths));
    }
    let top = match openat(CWD, &dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(e) => return fail("open_failed", format!("{}: {e}", dir.display())),
    };
    let dev = match rustix::fs::fstat(&top) {
        Ok(st) => st.st_dev,
        Err(e) => return fail("open_failed", format!("{}: {e}", dir.display())),
    };
    let now = crate::audit::now_ms() / 1000;
    let deadline = Instant::now() + cx.timeout;
    let mut w = Walk::default();
    if let Err(e) = walk(Arc::new(top), Path::new(""), dev, 0, &glob, now - older, deadline, &mut w) {
        let code = if e == "timeout" { Status::TimedOut } else { Status::Failed };
        return Outcome::fail(code, if code == Status::TimedOut { "timeout" } else { "walk_failed" }, e, Value::Null);
    }
    if largest {
        w.candidates.sort_by(|a, b| b.size.cmp(&a.size).then(a.mtime.cmp(&b.mtime)));
    } else {
        w.candidates.sort_by(|a, b| a.mtime.cmp(&b.mtime).then(b.size.cmp(&a.size)));
    }
    let (mut freed, mut deleted, mut failed) = (0u64, Vec::new(), Vec::new());
    for c in &w.candidates {
        if freed >= target {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        // Still the same regular file, not swapped for a symlink since the walk.
        let same = statat(&*c.parent, c.name.as_str(), AtFlags::SYMLINK_NOFOLLOW)
            .is_ok_and(|st| st.st_ino == c.ino && FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
        if !same {
            failed.push(format!("{}: changed since it was examined", c.rel.display()));
            continue;
        }
        match unlinkat(&*c.parent, c.name.as_str(), AtFlags::empty()) {
            Ok(()) => {
                freed += c.size;
                deleted.push(c);
            }
            Err(e) => failed.push(format!("{}: {e}", c.rel.display())),
        }
    }
    let gone = deleted.iter().all(|c| statat(&*c.parent, c.name.as_str(), AtFlags::SYMLINK_NOFOLLOW).is_err());
    let listed: Vec<String> = deleted.iter().take(MAX_LISTED).map(|c| c.rel.display().to_string()).collect();
    let detail = json!({
        "directory": dir.display().to_string(),
        "freed_bytes": freed,
        "deleted": deleted.len(),
        "deleted_files": listed,
        "candidates": w.candidates.len(),
        "skipped": { "symlinks": w.symlinks, "other_filesystems": w.other_fs, "too_young": w.too_young, "not_matching": w.not_matching },
        "errors": failed.iter().take(MAX_LISTED).collect::<Vec<_>>(),
        "target_reached": freed >= target,
    });
    if Instant::now() > deadline {
        return Outcome::fail(Status::TimedOut, "timeout", format!("stopped after {} file(s) at the timeout", deleted.len()), detail);
    }
    if !gone {
        return Outcome::fail(Status::Unverified, "still_present", "a deleted file is still there", detail);
    }
    if !failed.is_empty() && deleted.is_empty() {
        return Outcome::fail(Status::Failed, "unlink_failed", failed[0].clone(), detail);
    }
    Outcome::ok(detail)
}
