//! Acting: one module per action kind, each holding all of that kind: the playbook functions
//! that build its [`ActionRequest`] (`register`), its policy check (`policy_check`, run by the
//! gate in its `policy` rule), its config fragment, and its executor (`execute`). The executors
//! are the only code allowed to change the host. Each runs with a timeout, checks that it did
//! what it meant to (its verification), and ends in an [`Outcome`] whose `status` is one of
//! ok / failed / timed_out / unverified, with a stable `error_code` when it is not ok. A new
//! kind is a new file here and one line in the `kinds!` table below.
//!
//! Executors run only for requests the gate decided `executed`, and only after that decision is
//! fsync'd in the audit log; they re-check what they can themselves (a pid's identity through a
//! pidfd, symlinks and mounts under a directory) rather than trusting the request.
//!
//! Dependencies point one way: `actions` uses neither `playbooks` nor `config` nor `gate`.
//! `playbooks` uses `actions` (the kinds register their functions against the
//! [`request::Evaluation`] its `Node` implements); `config` uses `actions` (its `[policy]` holds
//! `run_command`'s [`CommandRule`]; it builds the [`ExecContext`]); the gate hands the policy
//! checks a [`Policy`] view of `[policy]`.

pub mod glob;
pub mod protect;
pub mod request;

pub use run_command::CommandRule;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// The table of action kinds: `Variant => module`, the module named as the kind is spelled in
/// playbooks, the config and the audit log. Each module has `register`, `policy_check` and
/// `execute`; this generates the modules, [`ActionKind`] and the dispatch over them.
macro_rules! kinds {
    ($($(#[doc = $doc:literal])* $variant:ident => $module:ident,)*) => {
        $(pub mod $module;)*

        /// The kinds of action a playbook may ask for.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum ActionKind {
            $($(#[doc = $doc])* $variant,)*
        }

        impl ActionKind {
            pub const ALL: &'static [ActionKind] = &[$(Self::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => stringify!($module),)*
                }
            }
        }

        /// The node policy's verdict on a request, by its kind's check: `Some((rule, detail))`
        /// when it is refused, `rule` being `protected` or `allowlist`.
        pub fn policy_check(policy: &Policy, req: &ActionRequest) -> Option<(&'static str, String)> {
            match req.kind {
                $(ActionKind::$variant => $module::policy_check(policy, req),)*
            }
        }

        /// Registers every kind's playbook functions for the evaluation type `E`.
        pub fn register<E: request::Evaluation>(e: &mut rhai::Engine) {
            $($module::register::<E>(e);)*
        }

        fn dispatch(req: &ActionRequest, cx: &ExecContext) -> Outcome {
            match req.kind {
                $(ActionKind::$variant => $module::execute(req, cx),)*
            }
        }
    };
}

kinds! {
    /// Restart a systemd unit. Target: the unit name.
    RestartUnit => restart_unit,
    /// Send a signal to a process. Target: the process name (its pid is a parameter).
    SignalProcess => signal_process,
    /// Delete old files under a directory. Target: the directory.
    CleanFiles => clean_files,
    /// Run an allowlisted command. Target: its absolute path.
    RunCommand => run_command,
    /// Record a notification; changes nothing. Target: the notification's subject.
    Notify => notify,
    /// Start a systemd unit that is inactive or failed. Target: the unit name.
    StartUnit => start_unit,
}

impl ActionKind {
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| k.as_str() == s)
    }

    /// Whether the kind changes the host (counts against the budget, in flight and the breaker).
    pub fn acts(self) -> bool {
        self != Self::Notify
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the policy checks read: the node's `[policy]` allowlists (each kind reads its own keys)
/// and where to find out what a process is. The gate builds it from its `PolicyConfig`.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    /// `policy.allowed_units`: unit patterns `restart_unit` may touch.
    pub allowed_units: &'a [String],
    /// `policy.protected_units`, beyond [`protect::PROTECTED_UNITS`].
    pub protected_units: &'a [String],
    /// `policy.protected_processes`, beyond PID 1 and medic itself.
    pub protected_processes: &'a [String],
    /// `policy.allowed_paths`: roots under which `clean_files` may delete.
    pub allowed_paths: &'a [PathBuf],
    /// `policy.commands`: what `run_command` may run.
    pub commands: &'a [CommandRule],
    /// This agent's pid: never signalled.
    pub self_pid: i64,
    /// Where a process's identity is read; None for fixture snapshots (`playbook test`), whose
    /// pids are not this host's: then a process goes by the request's unit and name only.
    pub procfs: Option<&'a Path>,
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

impl Status {
    /// The name it is recorded under (as serialized), e.g. for a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
            Self::Unverified => "unverified",
            Self::Unknown => "unknown",
        }
    }
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
    pub command: Option<CommandRule>,
}

/// Runs one executed request to its end. Never panics on bad parameters: they fail.
pub fn execute(req: &ActionRequest, cx: &ExecContext) -> Outcome {
    let start = std::time::Instant::now();
    let mut out = dispatch(req, cx);
    out.duration_ms = start.elapsed().as_millis() as u64;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table names a kind once: its module, `as_str`, `parse` and its serde name agree.
    #[test]
    fn every_kind_is_spelled_the_same_everywhere() {
        for k in ActionKind::ALL {
            assert_eq!(ActionKind::parse(k.as_str()), Some(*k));
            assert_eq!(serde_json::to_value(k).unwrap(), serde_json::Value::from(k.as_str()));
        }
        for s in [Status::Ok, Status::Failed, Status::TimedOut, Status::Unverified, Status::Unknown] {
            assert_eq!(serde_json::to_value(s).unwrap(), serde_json::Value::from(s.as_str()));
        }
    }

    fn req(kind: ActionKind, target: &str, params: serde_json::Value) -> ActionRequest {
        let params = params.as_object().map(|m| m.clone().into_iter().collect()).unwrap_or_default();
        ActionRequest { kind, target: target.into(), params, reason: String::new(), signals: BTreeMap::new() }
    }

    /// Each kind's check, through the one dispatch the gate calls, with its rule names.
    #[test]
    fn each_kind_checks_its_own_policy_keys() {
        let units = vec!["*.service".to_string()];
        let paths = vec![PathBuf::from("/var/log")];
        let commands =
            vec![CommandRule { path: "/bin/echo".into(), args: vec!["--lines=*".into()], user: "nobody".into(), timeout_secs: 5 }];
        let p = Policy {
            allowed_units: &units,
            protected_units: &[],
            protected_processes: &["tail".to_string()],
            allowed_paths: &paths,
            commands: &commands,
            self_pid: 4242,
            procfs: None,
        };
        let rule = |r: ActionRequest| policy_check(&p, &r).map(|(rule, _)| rule);
        let none = serde_json::json!({});
        assert_eq!(rule(req(ActionKind::RestartUnit, "nginx.service", none.clone())), None);
        assert_eq!(rule(req(ActionKind::RestartUnit, "ssh.service", none.clone())), Some("protected"));
        assert_eq!(rule(req(ActionKind::RestartUnit, "nginx.socket", none.clone())), Some("allowlist"));
        assert_eq!(rule(req(ActionKind::SignalProcess, "x", serde_json::json!({ "pid": 1 }))), Some("protected"));
        assert_eq!(rule(req(ActionKind::SignalProcess, "x", serde_json::json!({ "pid": 4242 }))), Some("protected"));
        assert_eq!(rule(req(ActionKind::SignalProcess, "tail", serde_json::json!({ "pid": 99 }))), Some("protected"));
        assert_eq!(rule(req(ActionKind::SignalProcess, "x", serde_json::json!({ "pid": 99, "unit": "ssh.service" }))), Some("protected"));
        assert_eq!(rule(req(ActionKind::SignalProcess, "x", serde_json::json!({ "pid": 99 }))), None);
        assert_eq!(rule(req(ActionKind::CleanFiles, "/var/log/app", none.clone())), None);
        assert_eq!(rule(req(ActionKind::CleanFiles, "/var/log/../etc", none.clone())), Some("allowlist"));
        assert_eq!(rule(req(ActionKind::CleanFiles, "/etc", none.clone())), Some("allowlist"));
        assert_eq!(rule(req(ActionKind::RunCommand, "/bin/echo", serde_json::json!({ "args": ["--lines=3"] }))), None);
        assert_eq!(rule(req(ActionKind::RunCommand, "/bin/echo", serde_json::json!({ "args": ["-rf"] }))), Some("allowlist"));
        assert_eq!(rule(req(ActionKind::StartUnit, "nginx.service", none.clone())), None);
        assert_eq!(rule(req(ActionKind::StartUnit, "ssh.service", none.clone())), Some("protected"));
        assert_eq!(rule(req(ActionKind::StartUnit, "nginx.socket", none.clone())), Some("allowlist"));
        // Units that end the node are never started, even under an allowlist of every service.
        for u in ["systemd-reboot.service", "systemd-poweroff.service", "emergency.service", "rescue.service"] {
            assert_eq!(rule(req(ActionKind::StartUnit, u, none.clone())), Some("protected"), "{u}");
        }
        assert_eq!(rule(req(ActionKind::Notify, "anything", none)), None);
    }

    /// Regression guard for the import circle actions ↔ playbooks ↔ config: `actions` names
    /// none of the modules that depend on it.
    #[test]
    fn actions_use_neither_playbooks_nor_config_nor_gate() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/actions");
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            for m in ["playbooks", "config", "gate", "daemon", "cli"] {
                let m = format!("crate::{m}");
                assert!(!text.contains(&m), "{} uses {m}", path.display());
            }
        }
    }
}
