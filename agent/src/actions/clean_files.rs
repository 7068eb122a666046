//! `clean_files`: deletes files under a directory that match a glob and are older than an age,
//! oldest (or largest) first, until a byte target is freed.
//!
//! It never reaches outside the allowed root the directory lies under, whatever happens to the
//! tree while it works. The root is opened once (no symlink anywhere in its path), and
//! everything after is resolved *beneath that fd*: the requested directory with `openat2`
//! (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV`; on a kernel without `openat2`,
//! one component at a time with `O_NOFOLLOW | O_DIRECTORY`), every subdirectory by one
//! component from its parent's fd. A directory swapped for a symlink mid-way fails to open
//! instead of being followed. It never crosses a mount, bind mounts of the same filesystem
//! included: every directory and file is compared with the root by mount id (`statx`
//! `STATX_MNT_ID`), not only by device. Each file is re-checked (same inode, still a regular
//! file, its directory still beneath the root) just before it is unlinked. The record names the
//! directory really opened (read back from `/proc/self/fd`), not the one asked for. Verified
//! when every deleted file is gone; the outcome lists what was freed.
//!
//! Playbooks ask with `clean_files(dir, #{ older_than, glob, target_free_bytes, order }, reason)`
//! (`older_than` required). The policy refuses a directory outside `policy.allowed_paths` (config
//! key: `allowed_paths`), read exactly as the executor reads it ([`plain`], [`allowed_root`]).

use super::glob::glob_match;
use super::request::{ask, duration_ms, err, Evaluation, RhaiResult};
use super::{ActionKind, ActionRequest, ExecContext, Outcome, Policy, Status};
use rhai::{Engine, Map, NativeCallContext};
use std::collections::BTreeMap;
use rustix::fs::{openat, openat2, statx, unlinkat, AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, StatxFlags, CWD};
use serde_json::{json, Value};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

const MAX_DEPTH: usize = 16;
const MAX_LISTED: usize = 50;

const DIR_FLAGS: OFlags = OFlags::RDONLY.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

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

/// Where a filesystem object lives: its device and, where the kernel tells (Linux ≥ 5.8), its
/// mount. Two bind mounts of one filesystem share a device but not a mount id.
#[derive(Debug, Clone, Copy)]
struct Place {
    dev: (u32, u32),
    mnt: Option<u64>,
}

/// The same mount: by mount id where the kernel gives both (another filesystem is always another
/// mount), else by device. Not by device when the ids are known: on overlayfs (container roots)
/// a file reports the device of the layer it lives in while its directory reports the overlay's,
/// so a device check skipped every file there as "another filesystem".
impl PartialEq for Place {
    fn eq(&self, other: &Self) -> bool {
        match (self.mnt, other.mnt) {
            (Some(a), Some(b)) => a == b,
            _ => self.dev == other.dev,
        }
    }
}

struct Meta {
    place: Place,
    ft: FileType,
    ino: u64,
    size: u64,
    mtime: i64,
}

fn meta_at<Fd: AsFd>(dir: Fd, name: &str, flags: AtFlags) -> rustix::io::Result<Meta> {
    let st = statx(dir, name, flags | AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS | StatxFlags::MNT_ID)?;
    let mnt = StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::MNT_ID).then_some(st.stx_mnt_id);
    Ok(Meta {
        place: Place { dev: (st.stx_dev_major, st.stx_dev_minor), mnt },
        ft: FileType::from_raw_mode(st.stx_mode.into()),
        ino: st.stx_ino,
        size: st.stx_size,
        mtime: st.stx_mtime.tv_sec,
    })
}

fn meta_of(fd: &OwnedFd) -> rustix::io::Result<Meta> {
    meta_at(fd, "", AtFlags::EMPTY_PATH)
}

/// Opens the directory `rel` (relative, plain components) beneath `root`, following no symlink
/// and crossing no mount; `openat2` where the kernel has it, else one component at a time.
fn open_beneath(root: &OwnedFd, rel: &Path, place: Place) -> Result<OwnedFd, (&'static str, String)> {
    let what = |e: rustix::io::Errno| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            ("symlink_refused", format!("{}: a symlink or not a directory on the way: {e}", rel.display()))
        }
        rustix::io::Errno::XDEV => ("other_mount", format!("{}: crosses a mount point: {e}", rel.display())),
        e => ("open_failed", format!("{}: {e}", rel.display())),
    };
    let rel_s = if rel.as_os_str().is_empty() { Path::new(".") } else { rel };
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_XDEV | ResolveFlags::NO_MAGICLINKS;
    let fd = match openat2(root, rel_s, DIR_FLAGS, Mode::empty(), resolve) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOSYS) => {
            // No openat2 (kernel < 5.6): one component at a time, each checked for its mount.
            let mut cur = rustix::io::dup(root).map_err(what)?;
            for c in rel.components() {
                let Component::Normal(name) = c else {
                    return Err(("bad_request", format!("{}: not a plain relative path", rel.display())));
                };
                let next = openat(&cur, name, DIR_FLAGS, Mode::empty()).map_err(what)?;
                if meta_of(&next).map_err(what)?.place != place {
                    return Err(what(rustix::io::Errno::XDEV));
                }
                cur = next;
            }
            cur
        }
        Err(e) => return Err(what(e)),
    };
    match meta_of(&fd) {
        Ok(m) if m.place == place => Ok(fd),
        Ok(_) => Err(what(rustix::io::Errno::XDEV)),
        Err(e) => Err(what(e)),
    }
}

/// The path the kernel gives for an open fd (what was really opened).
fn real_path(fd: &OwnedFd) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

#[allow(clippy::too_many_arguments)]
fn walk(
    dir: Arc<OwnedFd>,
    rel: &Path,
    place: Place,
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
        let Ok(st) = meta_at(&*dir, name.as_str(), AtFlags::empty()) else { continue };
        if st.ft == FileType::Symlink {
            w.symlinks += 1;
        } else if st.place != place {
            // Another filesystem, or a bind mount (of this one, even): never entered.
            w.other_fs += 1;
        } else if st.ft == FileType::Directory {
            if depth < MAX_DEPTH {
                // One component from the parent's fd, no symlink followed; then the mount again,
                // in case the entry was swapped between the statx and the open.
                if let Ok(sub) = openat(&*dir, name.as_str(), DIR_FLAGS, Mode::empty()) {
                    if meta_of(&sub).is_ok_and(|m| m.place == place) {
                        walk(Arc::new(sub), &rel.join(&name), place, depth + 1, glob, cutoff, deadline, w)?;
                    } else {
                        w.other_fs += 1;
                    }
                }
            }
        } else if st.ft == FileType::RegularFile {
            if !glob_match(glob, &name) {
                w.not_matching += 1;
            } else if st.mtime >= cutoff {
                w.too_young += 1;
            } else {
                w.candidates.push(Candidate {
                    parent: dir.clone(),
                    rel: rel.join(&name),
                    name,
                    ino: st.ino,
                    size: st.size,
                    mtime: st.mtime,
                });
            }
        }
    }
    Ok(())
}

/// `path` as plain components (absolute, no `.`/`..`), or None. The policy check reads targets
/// with it too.
fn plain(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(x) => out.push(x),
            _ => return None,
        }
    }
    Some(out)
}

/// The allowed root `dir` lies under (the longest), and `dir` relative to it.
fn allowed_root(dir: &Path, roots: &[PathBuf]) -> Option<(PathBuf, PathBuf)> {
    roots
        .iter()
        .filter_map(|r| plain(r))
        .filter_map(|r| dir.strip_prefix(&r).ok().map(|rel| (r.clone(), rel.to_path_buf())))
        .max_by_key(|(r, _)| r.components().count())
}

/// Opens an allowed root from the config: absolute, no symlink anywhere on its path.
fn open_root(root: &Path) -> Result<OwnedFd, (&'static str, String)> {
    let what = |e: rustix::io::Errno| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            ("symlink_refused", format!("allowed root {}: a symlink on its path is not followed ({e})", root.display()))
        }
        e => ("no_such_directory", format!("allowed root {}: {e}", root.display())),
    };
    match openat2(CWD, root, DIR_FLAGS, Mode::empty(), ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS) {
        Err(rustix::io::Errno::NOSYS) => {
            let mut cur = openat(CWD, "/", DIR_FLAGS, Mode::empty()).map_err(what)?;
            for c in root.components() {
                if let Component::Normal(name) = c {
                    cur = openat(&cur, name, DIR_FLAGS, Mode::empty()).map_err(what)?;
                }
            }
            Ok(cur)
        }
        r => r.map_err(what),
    }
}

/// `clean_files(dir, options, reason)`: options checked and defaulted here (`glob` "*", `order`
/// "oldest"), `older_than` turned into `older_than_secs`.
pub fn register<E: Evaluation>(e: &mut Engine) {
    e.register_fn("clean_files", |ctx: NativeCallContext, dir: &str, opts: Map, reason: &str| -> RhaiResult<bool> {
        if !dir.starts_with('/') {
            return Err(err(format!("clean_files: directory {dir:?} must be an absolute path")));
        }
        let mut params = BTreeMap::new();
        for (k, v) in &opts {
            match k.as_str() {
                "glob" | "order" => {
                    let s = v.clone().into_string().map_err(|_| err(format!("clean_files: `{k}` must be a string")))?;
                    if k == "order" && s != "oldest" && s != "largest" {
                        return Err(err("clean_files: `order` is \"oldest\" or \"largest\""));
                    }
                    params.insert(k.to_string(), Value::String(s));
                }
                "older_than" => {
                    let s = v.clone().into_string().map_err(|_| err("clean_files: `older_than` must be a duration string"))?;
                    params.insert("older_than_secs".into(), (duration_ms(&s).map_err(err)? / 1000).into());
                }
                "target_free_bytes" => {
                    params
                        .insert(k.to_string(), v.as_int().map_err(|_| err("clean_files: `target_free_bytes` must be an integer"))?.into());
                }
                other => return Err(err(format!("clean_files: unknown option `{other}` (glob, older_than, target_free_bytes, order)"))),
            }
        }
        if !params.contains_key("older_than_secs") {
            return Err(err("clean_files: `older_than` is required (never delete fresh files)"));
        }
        params.entry("glob".into()).or_insert_with(|| "*".into());
        params.entry("order".into()).or_insert_with(|| "oldest".into());
        ask::<E>(&ctx, ActionKind::CleanFiles, dir.to_string(), params, reason)
    });
}

/// The executor's own reading of the target and the roots, so the two cannot differ.
pub fn policy_check(p: &Policy, req: &ActionRequest) -> Option<(&'static str, String)> {
    let Some(dir) = plain(Path::new(&req.target)) else {
        return Some(("allowlist", format!("{:?} is not a plain absolute path", req.target)));
    };
    if allowed_root(&dir, p.allowed_paths).is_none() {
        return Some(("allowlist", format!("{} is outside policy.allowed_paths {:?}", dir.display(), p.allowed_paths)));
    }
    None
}

pub fn execute(req: &ActionRequest, cx: &ExecContext) -> Outcome {
    let p = &req.params;
    let glob = p.get("glob").and_then(Value::as_str).unwrap_or("*").to_string();
    let older = p.get("older_than_secs").and_then(Value::as_i64).unwrap_or(i64::MAX);
    let target = p.get("target_free_bytes").and_then(Value::as_u64).unwrap_or(u64::MAX);
    let largest = p.get("order").and_then(Value::as_str) == Some("largest");
    let fail = |(code, msg): (&'static str, String)| Outcome::fail(Status::Failed, code, msg, Value::Null);

    let Some(dir) = plain(Path::new(&req.target)) else {
        return fail(("bad_request", format!("{:?} is not a plain absolute path", req.target)));
    };
    let Some((root, rel)) = allowed_root(&dir, &cx.allowed_paths) else {
        return fail(("outside_allowed_roots", format!("{} is outside the allowed roots {:?}", dir.display(), cx.allowed_paths)));
    };
    let root_fd = match open_root(&root) {
        Ok(fd) => fd,
        Err(e) => return fail(e),
    };
    let place = match meta_of(&root_fd) {
        Ok(m) => m.place,
        Err(e) => return fail(("open_failed", format!("{}: {e}", root.display()))),
    };
    let top = match open_beneath(&root_fd, &rel, place) {
        Ok(fd) => fd,
        Err(e) => return fail(e),
    };
    // What was really opened, for the record and for the re-check before each unlink.
    let (Some(root_real), Some(opened)) = (real_path(&root_fd), real_path(&top)) else {
        return fail(("open_failed", "cannot read back the opened directory from /proc/self/fd".into()));
    };
    if !opened.starts_with(&root_real) {
        return fail((
            "outside_allowed_roots",
            format!("{} opened as {}, outside {}", dir.display(), opened.display(), root_real.display()),
        ));
    }
    let now = crate::audit::now_ms() / 1000;
    let deadline = Instant::now().checked_add(cx.timeout).unwrap_or_else(|| Instant::now() + std::time::Duration::from_secs(86_400));
    let mut w = Walk::default();
    if let Err(e) = walk(Arc::new(top), Path::new(""), place, 0, &glob, now.saturating_sub(older), deadline, &mut w) {
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
        // Still the same regular file, not swapped for a symlink since the walk, and its
        // directory still beneath the root (not moved out while it was held open).
        let same = meta_at(&*c.parent, c.name.as_str(), AtFlags::empty())
            .is_ok_and(|st| st.ino == c.ino && st.ft == FileType::RegularFile && st.place == place);
        let beneath = real_path(&c.parent).is_some_and(|p| p.starts_with(&opened));
        if !same || !beneath {
            failed.push(format!("{}: changed since it was examined", c.rel.display()));
            continue;
        }
        match unlinkat(&*c.parent, c.name.as_str(), AtFlags::empty()) {
            Ok(()) => {
                freed = freed.saturating_add(c.size);
                deleted.push(c);
            }
            Err(e) => failed.push(format!("{}: {e}", c.rel.display())),
        }
    }
    let gone = deleted.iter().all(|c| meta_at(&*c.parent, c.name.as_str(), AtFlags::empty()).map_or(true, |m| m.ino != c.ino));
    let listed: Vec<String> = deleted.iter().take(MAX_LISTED).map(|c| c.rel.display().to_string()).collect();
    let detail = json!({
        "directory": opened.display().to_string(),
        "requested": dir.display().to_string(),
        "allowed_root": root.display().to_string(),
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
