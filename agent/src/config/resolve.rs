//! Parse, then resolve: [`Settings`] is what one `medic` invocation runs with, built once from
//! the loaded [`Config`] (the raw TOML model) and the overrides given on the command line. Which
//! file was read (or that none was), the node name, the state dir, the control socket and the
//! playbook directories are decided here and nowhere else; every command that needs the config
//! gets it through [`Settings::load`], and a config that cannot be used is one error type,
//! [`LoadError`].

use super::{Config, ConfigError, PolicyConfig, DEFAULT_CONFIG, SYSTEM_CONTROL_SOCKET};
use std::fmt;
use std::path::{Path, PathBuf};

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read: missing (when named with `--config`), unreadable, not UTF-8.
    #[error("{}: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    /// The file was read but is not a valid config (`file:line:col: reason`).
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

impl LoadError {
    /// Stable code for logs and scripts.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Read { .. } => "config_unreadable",
            Self::Invalid(_) => "config_invalid",
        }
    }
}

/// Where the config came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// This file, named with `--config` or found at the default path.
    File(PathBuf),
    /// No file: `--config` was not given and the default path does not exist.
    Defaults,
}

impl fmt::Display for Source {
    /// `config /etc/medic/medic.toml` or `built-in defaults (no /etc/medic/medic.toml)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(p) => write!(f, "config {}", p.display()),
            Self::Defaults => write!(f, "built-in defaults (no {DEFAULT_CONFIG})"),
        }
    }
}

/// What the command line overrides. Each is `None` when the flag was not given.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--config FILE`: read this instead of [`DEFAULT_CONFIG`] (which is optional).
    pub config: Option<PathBuf>,
    /// `--state-dir DIR`.
    pub state_dir: Option<PathBuf>,
    /// `--playbooks DIR`.
    pub playbooks_dir: Option<PathBuf>,
    /// `--socket PATH`: the control socket a client reaches.
    pub socket: Option<PathBuf>,
}

/// The resolved settings of one invocation.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The file read, or the built-in defaults.
    pub source: Source,
    /// The raw model, for the sections passed down as they are (policy, limits, signals, ...).
    pub config: Config,
    /// Node name in audit records: `node`, else the host name.
    pub node: String,
    /// `--state-dir`, else `state_dir`, else the default for this user.
    pub state_dir: PathBuf,
    /// The agent's control socket: `--socket`, else `control.socket`, else
    /// `/run/medic/control.sock` as root and `<state_dir>/control.sock` for anyone else.
    pub control_socket: PathBuf,
    /// `--playbooks`, else `playbooks_dir`; `None`: the bundled set.
    pub playbooks_dir: Option<PathBuf>,
    /// `local_playbooks_dir`: local playbooks layered over the bundled set.
    pub local_playbooks_dir: Option<PathBuf>,
    /// Whether the socket was named (flag or file) rather than defaulted.
    socket_named: bool,
}

impl Settings {
    /// Loads `--config` (or the default file if it exists, or the defaults) and resolves it.
    pub fn load(o: &Overrides) -> Result<Self, LoadError> {
        let (config, path) = Config::load(o.config.as_deref())?;
        Ok(Self::resolve(config, path.map_or(Source::Defaults, Source::File), o))
    }

    /// Resolves an already loaded config against the overrides.
    pub fn resolve(config: Config, source: Source, o: &Overrides) -> Self {
        let state_dir = o.state_dir.clone().unwrap_or_else(|| config.state_dir());
        let control_socket = o.socket.clone().unwrap_or_else(|| config.control_socket(&state_dir));
        Self {
            source,
            node: config.node_name(),
            socket_named: o.socket.is_some() || config.control.socket.is_some(),
            control_socket,
            state_dir,
            playbooks_dir: o.playbooks_dir.clone().or_else(|| config.playbooks_dir.clone()),
            local_playbooks_dir: config.local_playbooks_dir.clone(),
            config,
        }
    }

    /// The node's policy, which the gate applies (and `playbook test` gates against).
    pub fn policy(&self) -> &PolicyConfig {
        &self.config.policy
    }

    /// The socket a client (`medic status`, `mode`, `breaker`) talks to: the agent's socket,
    /// except that a user other than root, with no socket named, whose own agent is not
    /// listening, talks to the system agent's (members of `control.group` may).
    pub fn client_socket(&self) -> PathBuf {
        let system = Path::new(SYSTEM_CONTROL_SOCKET);
        if !self.socket_named && !self.control_socket.exists() && system.exists() {
            return system.to_path_buf();
        }
        self.control_socket.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_win_over_the_file_and_the_socket_follows_the_state_dir() {
        let cfg = Config::parse("m.toml", "node = \"n1\"\nstate_dir = \"/srv/a\"\nplaybooks_dir = \"/srv/pb\"\n").unwrap();
        let o = Overrides { state_dir: Some("/srv/b".into()), ..Default::default() };
        let s = Settings::resolve(cfg.clone(), Source::File("m.toml".into()), &o);
        assert_eq!((s.node.as_str(), s.state_dir.as_path()), ("n1", Path::new("/srv/b")));
        assert_eq!(s.playbooks_dir.as_deref(), Some(Path::new("/srv/pb")));
        assert_eq!(s.control_socket, cfg.control_socket(Path::new("/srv/b")));
        let o = Overrides { socket: Some("/tmp/x.sock".into()), playbooks_dir: Some("/p".into()), ..Default::default() };
        let s = Settings::resolve(cfg, Source::Defaults, &o);
        assert_eq!(s.client_socket(), PathBuf::from("/tmp/x.sock"));
        assert_eq!(s.playbooks_dir.as_deref(), Some(Path::new("/p")));
    }

    #[test]
    fn the_source_says_which_file_or_that_there_was_none() {
        assert_eq!(Source::File("/x/m.toml".into()).to_string(), "config /x/m.toml");
        assert_eq!(Source::Defaults.to_string(), format!("built-in defaults (no {DEFAULT_CONFIG})"));
    }

    #[test]
    fn a_missing_or_invalid_file_is_one_error_type_with_a_code_each() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Overrides { config: Some(dir.path().join("none.toml")), ..Default::default() };
        let e = Settings::load(&missing).unwrap_err();
        assert_eq!(e.code(), "config_unreadable");
        assert!(e.to_string().contains("none.toml"), "{e}");
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[signals]\nintervl_secs = 1\n").unwrap();
        let e = Settings::load(&Overrides { config: Some(bad), ..Default::default() }).unwrap_err();
        assert_eq!(e.code(), "config_invalid");
        assert!(e.to_string().contains("bad.toml:2:1:"), "{e}");
    }
}
