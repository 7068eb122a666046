//! Loading playbooks: reading a playbook or case file without following links or blocking
//! (regular files only, bounded in size, refused when someone other than root could change it),
//! and the set that is loaded: a directory's `*.rhai` files, or the bundled set with local files
//! layered over it by file name. Names are unique across the set.

use super::{bundled, meta_pos, Playbook, PlaybookError, Runtime};
use std::collections::HashSet;
use std::path::Path;

/// A file that was found and what became of it.
pub type Loaded = Vec<Result<Playbook, PlaybookError>>;

/// The largest playbook (or case file) read, in bytes: the bundled ones are under 4 KiB.
pub const MAX_SOURCE_BYTES: u64 = 1024 * 1024;

/// What a directory entry is when it is not a regular file.
fn kind_of(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Reads a playbook or case file without ever blocking on it or following a link: opened with
/// `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY`, checked with `fstat` to be a regular file
/// (so a FIFO is never read and a file swapped after a directory listing is judged by what was
/// opened), and read up to [`MAX_SOURCE_BYTES`]. The error says why, for `file:1:1: <why>`.
pub fn read_source(path: &Path) -> Result<String, String> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP => "a symbolic link: playbooks must be regular files (copy the file instead)".to_string(),
        e => std::io::Error::from(e).to_string(),
    })?;
    let file = std::fs::File::from(fd);
    let md = file.metadata().map_err(|e| e.to_string())?;
    if !md.is_file() {
        return Err(format!("{}: playbooks must be regular files", kind_of(&md.file_type())));
    }
    let too_big = || format!("larger than {MAX_SOURCE_BYTES} bytes");
    if md.len() > MAX_SOURCE_BYTES {
        return Err(too_big());
    }
    let mut buf = Vec::new();
    file.take(MAX_SOURCE_BYTES + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.len() as u64 > MAX_SOURCE_BYTES {
        return Err(too_big());
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// One file of the playbooks directory: its source, or why it could not be read.
fn read_entry(path: &Path, ft: Option<std::fs::FileType>) -> Result<String, String> {
    match ft {
        // Never opened: a directory, a link (dangling or not), a FIFO, a device.
        Some(ft) if !ft.is_file() => Err(format!("{}: playbooks must be regular files", kind_of(&ft))),
        _ => read_source(path),
    }
}

/// Compiles every `*.rhai` file in `dir` (sorted by name), or the bundled set when `dir` is
/// `None`. Duplicate names are rejected (the first file keeps the name). An entry that cannot be
/// read (not a regular file, too large, unreadable) is that entry's error at `1:1`; the others
/// load. Only a directory that cannot be listed is an error of the whole load.
pub fn load(rt: &Runtime, dir: Option<&Path>) -> Result<Loaded, std::io::Error> {
    load_with(rt, dir, None)
}

/// [`load`], and with `dir` `None` and a `local` directory: the bundled set with the `*.rhai`
/// files of `local` added, where a local file named like a bundled one (`disk_old_logs.rhai`)
/// replaces it and an empty local file turns it off, as in systemd's `/usr/lib` and `/etc`. A
/// missing `local` holds no playbooks. The bundled ones come first, then the local ones by name.
pub fn load_with(rt: &Runtime, dir: Option<&Path>, local: Option<&Path>) -> Result<Loaded, std::io::Error> {
    let sources: Sources = match (dir, local) {
        (Some(dir), _) => list(dir)?,
        (None, None) => bundled::PLAYBOOKS.iter().map(|(f, s, _)| (format!("bundled:{f}"), Ok(s.to_string()))).collect(),
        (None, Some(local)) => {
            let local = match list(local) {
                Ok(l) => l,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e),
            };
            let name = |label: &str| Path::new(label).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let replaced: HashSet<String> = local.iter().map(|(f, _)| name(f)).collect();
            bundled::PLAYBOOKS
                .iter()
                .filter(|(f, _, _)| !replaced.contains(*f))
                .map(|(f, s, _)| (format!("bundled:{f}"), Ok(s.to_string())))
                .chain(local.into_iter().filter(|(_, src)| !src.as_ref().is_ok_and(|s| s.trim().is_empty())))
                .collect()
        }
    };
    let mut names = HashSet::new();
    Ok(sources
        .into_iter()
        .map(|(file, src)| {
            let src = src.map_err(|reason| PlaybookError { file: file.clone(), line: 1, col: 1, reason })?;
            let pb = rt.compile(&file, &src)?;
            if !names.insert(pb.meta.name.clone()) {
                let (line, col) = meta_pos(&src);
                return Err(PlaybookError {
                    file,
                    line,
                    col,
                    reason: format!("META.name: {:?} is already used by another playbook", pb.meta.name),
                });
            }
            Ok(pb)
        })
        .collect())
}

/// Playbook files: each label (a path, or `bundled:<file>`) with its source or why it could not be read.
type Sources = Vec<(String, Result<String, String>)>;

/// The `*.rhai` files of `dir`, sorted by name, each with its source or why it could not be read.
fn list(dir: &Path) -> Result<Sources, std::io::Error> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| (e.path(), e.file_type().ok()))
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let dir_problem = std::fs::metadata(dir).ok().and_then(|m| loose(&m));
    Ok(files
        .into_iter()
        .map(|(f, ft)| {
            let problem = dir_problem
                .as_ref()
                .map(|p| format!("its directory {}: {p}", dir.display()))
                // A link or other non-file is refused by read_entry, with its own reason.
                .or_else(|| std::fs::symlink_metadata(&f).ok().filter(|m| m.is_file()).and_then(|m| loose(&m)));
            let entry = match problem {
                Some(p) => Err(format!("refused: {p}; playbooks act as root in live mode (chown root, chmod go-w)")),
                None => read_entry(&f, ft),
            };
            (f.display().to_string(), entry)
        })
        .collect())
}

/// Why a playbook file or directory could be changed by someone other than root, when medic
/// runs as root: owned by another user, or writable by its group or by others (as sudo and
/// sshd refuse such files). Not root: `None` (the files are the user's own business).
fn loose(m: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    if m.uid() != 0 {
        return Some(format!("owned by uid {}, not root", m.uid()));
    }
    (m.mode() & 0o022 != 0).then(|| format!("writable by its group or others (mode {:04o})", m.mode() & 0o7777))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::playbooks::fixtures::*;

    /// The names and files `load_with` gives for the bundled set and a local directory.
    fn layered(dir: Option<&Path>, local: &Path) -> Vec<(String, String)> {
        let rt = runtime(Default::default());
        load_with(&rt, dir, Some(local)).unwrap().into_iter().map(|r| r.map(|p| (p.meta.name, p.file)).unwrap()).collect()
    }

    #[test]
    fn local_playbooks_add_to_replace_and_turn_off_bundled_ones_by_file_name() {
        let d = tempfile::tempdir().unwrap();
        let source = |f: &str| bundled::PLAYBOOKS.iter().find(|b| b.0 == f).unwrap().1;
        // A missing local directory holds none: the bundled set.
        let all = layered(None, &d.path().join("missing"));
        assert_eq!(all.len(), bundled::PLAYBOOKS.len());
        assert!(all.iter().all(|(_, f)| f.starts_with("bundled:")));
        // A new one is added; one named like a bundled one replaces it; an empty one turns it off.
        std::fs::write(d.path().join("mine.rhai"), source("runq_latency.rhai").replace("\"runq-latency\"", "\"mine\"")).unwrap();
        std::fs::write(d.path().join("disk_old_logs.rhai"), source("disk_old_logs.rhai")).unwrap();
        std::fs::write(d.path().join("disk_latency.rhai"), "").unwrap();
        let got = layered(None, d.path());
        assert_eq!(got.len(), bundled::PLAYBOOKS.len(), "{got:?}");
        let file = |name: &str| got.iter().find(|(n, _)| n == name).map(|(_, f)| f.clone());
        assert_eq!(file("mine"), Some(d.path().join("mine.rhai").display().to_string()));
        assert_eq!(file("disk-old-logs"), Some(d.path().join("disk_old_logs.rhai").display().to_string()));
        assert_eq!(file("disk-latency"), None);
        assert_eq!(file("runq-latency").as_deref(), Some("bundled:runq_latency.rhai"));
        // A local file that takes a bundled playbook's name under another file name is refused.
        std::fs::write(d.path().join("copy.rhai"), source("runq_latency.rhai")).unwrap();
        let rt = runtime(Default::default());
        let errs: Vec<_> = load_with(&rt, None, Some(d.path())).unwrap().into_iter().filter_map(Result::err).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].file.ends_with("copy.rhai") && errs[0].reason.contains("already used"), "{}", errs[0]);
        // playbooks_dir (or --playbooks) replaces everything: the local directory is not read.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("mine.rhai"), source("runq_latency.rhai")).unwrap();
        let only = layered(Some(other.path()), d.path());
        assert_eq!(only, vec![("runq-latency".to_string(), other.path().join("mine.rhai").display().to_string())]);
    }

    #[test]
    fn a_bad_entry_rejects_that_entry_only() {
        let dir = tempfile::tempdir().unwrap();
        let good = format!("{NOTIFY_META}fn evaluate(node, state) {{ notify(\"x\"); }}\n");
        std::fs::write(dir.path().join("good.rhai"), &good).unwrap();
        std::fs::create_dir(dir.path().join("a_dir.rhai")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("b_dangling.rhai")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("good.rhai"), dir.path().join("c_link.rhai")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, dir.path().join("d_fifo.rhai"), rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o644), 0)
            .unwrap();
        std::fs::write(dir.path().join("e_big.rhai"), vec![b' '; MAX_SOURCE_BYTES as usize + 1]).unwrap();
        let loaded = load(&runtime(Default::default()), Some(dir.path())).unwrap();
        let errs: Vec<String> = loaded.iter().filter_map(|r| r.as_ref().err()).map(|e| e.to_string()).collect();
        assert_eq!(loaded.len(), 6);
        assert_eq!(loaded.iter().filter(|r| r.is_ok()).count(), 1, "{errs:?}");
        for (file, why) in [
            ("a_dir.rhai", "a directory"),
            ("b_dangling.rhai", "a symbolic link"),
            ("c_link.rhai", "a symbolic link"),
            ("d_fifo.rhai", "a FIFO"),
            ("e_big.rhai", "larger than"),
        ] {
            let want = format!("{}:1:1: {why}", dir.path().join(file).display());
            assert!(errs.iter().any(|e| e.starts_with(&want)), "{want} in {errs:?}");
        }
        // The same reader refuses a FIFO named directly, without blocking on it.
        assert!(read_source(&dir.path().join("d_fifo.rhai")).unwrap_err().contains("a FIFO"));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Entry {
            File(String),
            Dir,
            Dangling,
            Fifo,
            LinkToFirst,
        }

        fn entry() -> impl Strategy<Value = Entry> {
            prop_oneof![
                4 => rhai_text().prop_map(Entry::File),
                1 => Just(Entry::Dir),
                1 => Just(Entry::Dangling),
                1 => Just(Entry::Fifo),
                1 => Just(Entry::LinkToFirst),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn load_yields_one_result_per_entry(entries in proptest::collection::vec(entry(), 0..6)) {
                let dir = tempfile::tempdir().unwrap();
                let d = dir.path();
                for (i, e) in entries.iter().enumerate() {
                    let p = d.join(format!("{i:02}.rhai"));
                    match e {
                        Entry::File(s) => std::fs::write(&p, s).unwrap(),
                        Entry::Dir => std::fs::create_dir(&p).unwrap(),
                        Entry::Dangling => std::os::unix::fs::symlink(d.join("missing"), &p).unwrap(),
                        Entry::Fifo => rustix::fs::mknodat(rustix::fs::CWD, &p, rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o600), 0).unwrap(),
                        Entry::LinkToFirst => std::os::unix::fs::symlink(d.join("00.rhai"), &p).unwrap(),
                    }
                }
                let loaded = load(&runtime(Default::default()), Some(d)).unwrap();
                prop_assert_eq!(loaded.len(), entries.len());
                for (i, r) in loaded.iter().enumerate() {
                    let file = match r { Ok(p) => p.file.clone(), Err(e) => e.file.clone() };
                    prop_assert_eq!(file, d.join(format!("{i:02}.rhai")).display().to_string());
                    if !matches!(entries[i], Entry::File(_)) {
                        prop_assert!(r.is_err());
                    }
                }
            }
        }
    }
}
