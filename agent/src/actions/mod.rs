//! Acting: the [`ActionRequest`] values playbooks build, and the executors, one file per kind,
//! that are the only code allowed to change the host. Each runs with a timeout, checks that it
//! did what it meant to (its verification), and ends in an [`Outcome`] whose `status` is one of
//! ok / failed / timed_out / unverified, with a stable `error_code` when it is not ok.
//!
//! Executors run only for requests the gate decided `executed`, and only after that decision is
//! fsync'd in the audit log; they re-check what they can themselves (a pid's identity through a
//! pidfd, symlinks and mounts under a directory) rather than trusting the request.

pub mod clean_files;
pub mod restart_unit;
pub mod run_command;
pub mod signal_process;

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

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Done and verified.
    Ok,
    /// Could not be done (the error says why).
    Failed,
    /// Did not finish within its timeout.
    TimedOut,
    /// Done, but the check that it took effect did not pass.
    Unverified,
    /// Nobody knows: the agent stopped while it ran (recorded at the next start).
    Unknown,
}

/// The result of one action, recorded as an `action_outcome`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    pub status: Status,
    pub duration_ms: u64,
    /// Stable, low-cardinality code when not ok (`no_such_process`, `pid_reused`, `timeout`, ...).
    pub error_code: Option<&'static str>,
    pub error: Option<String>,
    pub verified: bool,
    /// What the action did (files freed, output, invocation ids, ...).
    pub detail: serde_json::Value,
}

impl Outcome {
    pub fn ok(detail: serde_json::Value) -> Self {
        Self { status: Status::Ok, duration_ms: 0, error_code: None, error: None, verified: true, detail }
    }
    pub fn fail(status: Status, code: &'static str, error: impl Into<String>, detail: serde_json::Value) -> Self {
        Self { status, duration_ms: 0, error_code: Some(code), error: Some(error.into()), verified: false, detail }
    }
}

/// What an executor needs besides the request.
#[derive(Debug, Clone)]
pub struct ExecContext {
    pub timeout: std::time::Duration,
    pub kill_after: std::time::Duration,
    pub systemd_bus: Option<String>,
    pub max_output_bytes: usize,
    pub allowed_paths: Vec<std::path::PathBuf>,
    /// For `run_command`: the allowlist entry the gate matched.
    pub command: Option<crate::config::CommandRule>,
}

impl ExecContext {
    /// From the config; every duration is bounded by validation, and built without arithmetic
    /// that could overflow whatever the values.
    pub fn from_config(cfg: &crate::config::Config) -> Self {
        Self {
            timeout: std::time::Duration::from_secs(cfg.actions.timeout_secs),
            kill_after: std::time::Duration::from_secs(cfg.actions.kill_after_secs),
            systemd_bus: cfg.actions.systemd_bus.clone(),
            max_output_bytes: cfg.actions.max_output_bytes,
            allowed_paths: cfg.policy.allowed_paths.clone(),
            command: None,
        }
    }
}

/// Runs one executed request to its end. Never panics on bad parameters: they fail.
pub fn execute(req: &ActionRequest, cx: &ExecContext) -> Outcome {
    let start = std::time::Instant::now();
    let mut out = match req.kind {
        ActionKind::RestartUnit => restart_unit::run(req, cx),
        ActionKind::SignalProcess => signal_process::run(req, cx),
        ActionKind::CleanFiles => clean_files::run(req, cx),
        ActionKind::RunCommand => run_command::run(req, cx),
        ActionKind::Notify => Outcome::ok(serde_json::Value::Null),
    };
    out.duration_ms = start.elapsed().as_millis() as u64;
    out
}
