//! The defaults that depend on the host, used when the file does not say: the config file read
//! without `--config`, the node name (the host name), the state dir (by user), the control
//! socket (by user).

use super::Config;
use std::path::{Path, PathBuf};

/// The file `medic` reads when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/medic/medic.toml";

/// The control socket of the agent run by root (systemd's `RuntimeDirectory=medic`).
pub const SYSTEM_CONTROL_SOCKET: &str = "/run/medic/control.sock";

/// `/var/lib/medic` for root; for anyone else a directory they can write.
pub fn default_state_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return "/var/lib/medic".into();
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("medic");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h).join(".local/state/medic");
    }
    std::env::temp_dir().join(format!("medic-{}", rustix::process::getuid().as_raw()))
}

impl Config {
    pub fn node_name(&self) -> String {
        self.node.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .ok()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "localhost".into())
        })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(default_state_dir)
    }

    pub fn control_socket(&self, state_dir: &Path) -> PathBuf {
        self.control.socket.clone().unwrap_or_else(|| {
            if rustix::process::geteuid().is_root() {
                SYSTEM_CONTROL_SOCKET.into()
            } else {
                state_dir.join("control.sock")
            }
        })
    }
}
