//! The state dir and the log's files on disk: who may own them and with which mode (0700/0600,
//! 0750/0640 with the control group), opened never through a symlink, written fsync'd, and the
//! directory fsync'd after a rename or a removal.

use super::{AuditConfig, AuditError};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

impl AuditConfig {
    pub(super) fn file_mode(&self) -> u32 {
        if self.group.is_some() {
            0o640
        } else {
            0o600
        }
    }
    pub(super) fn dir_mode(&self) -> u32 {
        if self.group.is_some() {
            0o750
        } else {
            0o700
        }
    }
}

pub(super) fn io(path: &Path) -> impl Fn(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io { path: path.to_path_buf(), source }
}

/// Creates the state dir 0700 (0750 with the control group) whatever the umask, and refuses
/// one that belongs to another user: whoever owns it could swap the log or hold its lock.
pub(super) fn secure_dir(dir: &Path, cfg: &AuditConfig) -> Result<(), AuditError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new().recursive(true).mode(cfg.dir_mode()).create(dir).map_err(io(dir))?;
    }
    let md = std::fs::metadata(dir).map_err(io(dir))?;
    let me = rustix::process::geteuid().as_raw();
    if !md.is_dir() || md.uid() != me {
        return Err(AuditError::Unsafe {
            path: dir.to_path_buf(),
            reason: format!("owned by uid {}, not by the user running medic (uid {me})", md.uid()),
        });
    }
    if md.mode() & 0o7777 != cfg.dir_mode() {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(cfg.dir_mode())).map_err(io(dir))?;
    }
    if let Some(g) = cfg.group.filter(|g| *g != md.gid()) {
        rustix::fs::chown(dir, None, Some(rustix::process::Gid::from_raw(g))).map_err(|e| io(dir)(e.into()))?;
    }
    Ok(())
}

/// Opens (creating) a file of the state dir with the log's mode, never through a symlink, and
/// makes sure it is ours with that mode.
pub(super) fn open_private(path: &Path, cfg: &AuditConfig, append: bool) -> Result<File, AuditError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let mut o = OpenOptions::new();
    o.create(true).read(true).mode(cfg.file_mode()).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
    if append {
        o.append(true);
    } else {
        o.write(true).truncate(false);
    }
    let f = o.open(path).map_err(io(path))?;
    let md = f.metadata().map_err(io(path))?;
    if md.uid() != rustix::process::geteuid().as_raw() || !md.is_file() {
        return Err(AuditError::Unsafe { path: path.to_path_buf(), reason: format!("owned by uid {}, or not a file", md.uid()) });
    }
    if md.mode() & 0o7777 != cfg.file_mode() {
        f.set_permissions(std::fs::Permissions::from_mode(cfg.file_mode())).map_err(io(path))?;
    }
    if let Some(g) = cfg.group.filter(|g| *g != md.gid()) {
        rustix::fs::fchown(&f, None, Some(rustix::process::Gid::from_raw(g))).map_err(|e| io(path)(e.into()))?;
    }
    Ok(f)
}

/// Writes a new private file with `bytes`, fsync'd.
pub(super) fn write_private(path: &Path, cfg: &AuditConfig, bytes: &[u8]) -> Result<(), AuditError> {
    let mut f = open_private(path, cfg, false)?;
    f.set_len(0).and_then(|_| f.write_all(bytes)).and_then(|_| f.sync_all()).map_err(io(path))
}

pub(super) fn sync_dir(dir: &Path) -> Result<(), AuditError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}
