//! Acting: the [`ActionRequest`] values playbooks build, and (with live mode, a later step) the
//! executors that are the only code allowed to change the host. In this release every node is
//! in dry-run, so nothing here touches the host: requests are decided by `gate` and recorded.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The kinds of action a playbook may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Restart a systemd unit. Target: the unit name.
    RestartUnit,
    /// Send a signal to a process. Target: the process name (its pid is a parameter).
    SignalProcess,
    /// Delete old files under a directory. Target: the directory.
    CleanFiles,
    /// Run an allowlisted command. Target: its absolute path.
    RunCommand,
    /// Record a notification; changes nothing. Target: the notification's subject.
    Notify,
}

impl ActionKind {
    pub const ALL: [ActionKind; 5] = [Self::RestartUnit, Self::SignalProcess, Self::CleanFiles, Self::RunCommand, Self::Notify];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RestartUnit => "restart_unit",
            Self::SignalProcess => "signal_process",
            Self::CleanFiles => "clean_files",
            Self::RunCommand => "run_command",
            Self::Notify => "notify",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a playbook asked for, with why. Built inside a script; decided by the gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRequest {
    pub kind: ActionKind,
    pub target: String,
    pub params: BTreeMap<String, serde_json::Value>,
    /// The playbook's reason text.
    pub reason: String,
    /// The signal values the playbook read before asking (`what(key, window)` → value).
    pub signals: BTreeMap<String, serde_json::Value>,
}
