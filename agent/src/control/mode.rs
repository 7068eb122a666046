//! The node's mode (dry-run or live), persisted in `<state_dir>/mode.json` so that it survives
//! restarts. A fresh install has no file and is in dry-run. A change with a TTL carries the
//! mode to revert to at expiry. The file is written atomically (temp file, fsync, rename, fsync
//! of the directory); a file that cannot be read or parsed means the mode is unknown, and an
//! unknown mode is dry-run.

use crate::gate::Mode;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::Path;

pub const FILE_NAME: &str = "mode.json";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModeState {
    pub mode: Mode,
    /// When this mode was set, ms since the epoch (0 for a fresh install).
    pub since_ms: i64,
    pub actor: String,
    pub reason: String,
    /// When it reverts by itself, ms since the epoch.
    pub expires_ms: Option<i64>,
    /// The mode it reverts to at expiry.
    pub revert_to: Option<Mode>,
}

impl ModeState {
    pub fn fresh() -> Self {
        Self {
            mode: Mode::DryRun,
            since_ms: 0,
            actor: "install".into(),
            reason: "fresh install: dry-run until an operator says otherwise".into(),
            expires_ms: None,
            revert_to: None,
        }
    }

    /// Reads the persisted mode; `Ok(None)` when there is none (a fresh install).
    pub fn load(state_dir: &Path) -> Result<Option<Self>, String> {
        let p = state_dir.join(FILE_NAME);
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| format!("{}: {e}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let p = state_dir.join(FILE_NAME);
        let tmp = state_dir.join(format!(".{FILE_NAME}.tmp"));
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(self).unwrap_or_default().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        std::fs::File::open(state_dir)?.sync_all()
    }

    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }
}
