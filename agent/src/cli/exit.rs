//! Why a command failed, and the one place a failure becomes an exit code and a message:
//! 0 success, 1 a failed check (what was checked is wrong, or the agent or a node refused),
//! 2 a usage or config error (what the operator gave medic cannot be used as written: a flag,
//! or the config file), 3 an operational error (the agent, the broker, the disk). So the same
//! failure gives the same code from every command: a config that does not load exits 2 from
//! `run`, `validate`, `status`, `signals`, `playbook test` alike.

use crate::config::resolve::LoadError;
use std::process::ExitCode;

/// A command that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A check found something wrong (an invalid playbook, a failing case, a broken chain, a
    /// node that rejected a command or did not answer); the command printed what.
    #[error("check failed")]
    CheckFailed,
    /// The running agent refused the request; the message is its reason.
    #[error("{0}")]
    Refused(String),
    /// The command line asks for something that cannot be done as written.
    #[error("{0}")]
    Usage(String),
    /// The config file cannot be used (unreadable, or invalid: `file:line:col`).
    #[error(transparent)]
    Config(#[from] LoadError),
    /// The work could not be done: the agent or the broker unreachable, an I/O error.
    #[error("{0:#}")]
    Operational(anyhow::Error),
}

impl Failure {
    /// Stable code for scripts and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::CheckFailed => "check_failed",
            Self::Refused(_) => "refused",
            Self::Usage(_) => "usage",
            Self::Config(e) => e.code(),
            Self::Operational(_) => "operational",
        }
    }

    /// The process exit code.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            Self::CheckFailed | Self::Refused(_) => 1,
            Self::Usage(_) | Self::Config(_) => 2,
            Self::Operational(_) => 3,
        })
    }

    /// Prints the failure (once, on stderr) and returns its exit code.
    pub fn report(&self) -> ExitCode {
        match self {
            Self::CheckFailed => {}
            Self::Refused(m) | Self::Usage(m) => eprintln!("medic: {m}"),
            Self::Config(_) | Self::Operational(_) => eprintln!("medic: error: {self}"),
        }
        self.exit_code()
    }

    /// An operational failure from any error.
    pub fn op(e: impl Into<anyhow::Error>) -> Self {
        Self::Operational(e.into())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Operational(e)
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Self::Operational(e.into())
    }
}

impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Self::Operational(e.into())
    }
}

/// What a command returns.
pub type Outcome = Result<(), Failure>;

/// `CheckFailed` unless `ok`.
pub fn check(ok: bool) -> Outcome {
    if ok {
        Ok(())
    } else {
        Err(Failure::CheckFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_failure_has_its_documented_exit_code() {
        let bad = crate::config::Config::parse("m.toml", "x = 1\n").unwrap_err();
        for (f, code) in [
            (Failure::CheckFailed, 1u8),
            (Failure::Refused("no".into()), 1),
            (Failure::Usage("--ttl".into()), 2),
            (Failure::Config(bad.into()), 2),
            (Failure::op(anyhow::anyhow!("down")), 3),
        ] {
            assert_eq!(f.exit_code(), ExitCode::from(code), "{}", f.code());
        }
    }
}
