//! Configuration: the TOML file an operator writes (every field optional, unknown keys
//! rejected) and its resolution into the settings the agent runs with. With no file at all the
//! defaults work: bundled playbooks, dry-run, and a state dir the current user can write.
//!
//! Every field is documented in `docs/CONFIG.md`; `packaging/medic.toml` is the commented copy
//! installed as `/etc/medic/medic.toml`.

use crate::playbooks::engine::Limits;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The file `medic` reads when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG: &str = "/etc/medic/medic.toml";

/// The raw file, as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node name in audit records. Default: the host name.
    pub node: Option<String>,
    /// Where the audit log lives. Default: `/var/lib/medic` as root, else
    /// `$XDG_STATE_HOME/medic` (or `~/.local/state/medic`).
    pub state_dir: Option<PathBuf>,
    /// Directory of `*.rhai` playbooks. Default: the playbooks bundled in the binary.
    pub playbooks_dir: Option<PathBuf>,
    pub signals: SignalsConfig,
    pub playbooks: PlaybooksConfig,
    pub policy: PolicyConfig,
    pub actions: ActionsConfig,
    /// The audit log (`[audit]`).
    pub audit: AuditConfig,
    pub control: ControlConfig,
    /// Replication of the audit log to an MQTT broker (`[mqtt]`; off unless enabled).
    pub mqtt: crate::forward::MqttConfig,
    pub log: LogConfig,
}

/// Node policy: what may ever be touched, and how much acting a node allows. The gate applies
/// it after the playbook's own manifest; see docs/SAFETY.md.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Unit patterns `restart_unit` may touch.
    pub allowed_units: Vec<String>,
    /// Units never touched, beyond the built-in ones (ssh, journald, dbus, medic).
    pub protected_units: Vec<String>,
    /// Process names never signalled, beyond the built-in ones (PID 1 and medic itself always).
    pub protected_processes: Vec<String>,
    /// Directories under which `clean_files` may delete.
    pub allowed_paths: Vec<PathBuf>,
    /// Commands `run_command` may run.
    pub commands: Vec<CommandRule>,
    /// Node-wide actions per hour, all playbooks together.
    pub budget_per_hour: u32,
    /// Actions running at once.
    pub max_concurrent: u32,
    /// The breaker opens when the same action on the same target ran this many times within
    /// `breaker_window_secs` and the playbook still asks for it.
    pub breaker_after: u32,
    pub breaker_window_secs: u64,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            allowed_units: vec!["*.service".into()],
            protected_units: Vec::new(),
            protected_processes: Vec::new(),
            allowed_paths: vec!["/var/log".into()],
            commands: Vec::new(),
            budget_per_hour: 20,
            max_concurrent: 2,
            breaker_after: 3,
            breaker_window_secs: 3600,
        }
    }
}

/// One allowed command: an absolute path, argument patterns (`*`, `?`) matched one to one, the
/// user it runs as, and its timeout.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandRule {
    pub path: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "nobody")]
    pub user: String,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn nobody() -> String {
    "nobody".into()
}

const fn default_timeout() -> u64 {
    30
}

/// How actions run.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ActionsConfig {
    /// Timeout of `restart_unit`, `signal_process` and `clean_files`.
    pub timeout_secs: u64,
    /// After SIGTERM, how long `signal_process` waits before SIGKILL (0: never KILL).
    pub kill_after_secs: u64,
    /// D-Bus address of systemd's bus. Default: the system bus.
    pub systemd_bus: Option<String>,
    /// Bytes of a command's stdout and of its stderr kept in the record.
    pub max_output_bytes: usize,
}

impl Default for ActionsConfig {
    fn default() -> Self {
        Self { timeout_secs: 30, kill_after_secs: 10, systemd_bus: None, max_output_bytes: 4096 }
    }
}

/// The audit log.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Identical decisions that did not execute (same playbook, action, target, decision, rule
    /// and mode) within this many seconds of the first are written once, then counted into one
    /// `decision_repeated` record when the window ends. 0: every decision is written.
    pub repeat_window_secs: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { repeat_window_secs: 600 }
    }
}

/// The local control socket (`medic mode`, `medic status`, `medic breaker`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Default: `/run/medic/control.sock` as root, else `<state_dir>/control.sock`.
    pub socket: Option<PathBuf>,
    /// A group whose members may use the socket besides root.
    pub group: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SignalsConfig {
    /// Seconds between samples (and the agent's tick).
    pub interval_secs: u64,
    /// How far back the history reaches, in seconds (the longest window a playbook can use).
    pub history_secs: u64,
    /// Most time series kept (bounds memory; see docs/ARCHITECTURE.md, "Memory bounds"). The
    /// default holds a busy node (2,000 processes, 50 units, 20 mounts: ~9,300 series).
    pub max_series: usize,
    /// The TCP tables (socket counts per state, peers) and per-process fds (open fds, sockets
    /// per process) are read every this many samples: they are the costliest part of a sample.
    pub socket_scan_every: u64,
    /// procfs root (tests point it at fixture trees).
    pub proc_root: PathBuf,
    /// The eBPF families (`[signals.ebpf]`).
    pub ebpf: crate::signals::ebpf::EbpfConfig,
    /// sysfs root.
    pub sys_root: PathBuf,
}

impl Default for SignalsConfig {
    fn default() -> Self {
        Self {
            interval_secs: 1,
            history_secs: 600,
            max_series: 16384,
            socket_scan_every: 5,
            ebpf: Default::default(),
            proc_root: "/proc".into(),
            sys_root: "/sys".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PlaybooksConfig {
    /// How long a playbook that failed or hit a limit stays disabled, in seconds; doubles on
    /// each failure in a row, up to `max_disable_secs`.
    pub disable_secs: u64,
    pub max_disable_secs: u64,
    /// Limits for one evaluation.
    pub limits: Limits,
}

impl Default for PlaybooksConfig {
    fn default() -> Self {
        Self { disable_secs: 300, max_disable_secs: 3600, limits: Limits::default() }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace` (or an `EnvFilter` directive). `MEDIC_LOG` overrides.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

/// A config error, `file:line:col: reason`.
#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}:{col}: {reason}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub reason: String,
}

pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    (line, col)
}

impl Config {
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            ConfigError { file: file.into(), line, col, reason: e.message().to_string() }
        })?;
        let at = |key: &str, reason: String| {
            let off = text.find(key).unwrap_or(0);
            let (line, col) = line_col(text, off);
            ConfigError { file: file.into(), line, col, reason }
        };
        if cfg.signals.interval_secs == 0 {
            return Err(at("interval_secs", "signals.interval_secs: must be at least 1".into()));
        }
        if cfg.signals.history_secs < cfg.signals.interval_secs {
            return Err(at("history_secs", "signals.history_secs: must be at least interval_secs".into()));
        }
        if cfg.signals.max_series == 0 {
            return Err(at("max_series", "signals.max_series: must be at least 1".into()));
        }
        if cfg.playbooks.limits.max_operations == 0 {
            return Err(at("max_operations", "playbooks.limits.max_operations: must be at least 1".into()));
        }
        // Every value medic hands a playbook is bounded (command lines at 4 KiB), so that nothing
        // on the node can push a playbook over its string limit; the limit must leave room.
        let min_string = 2 * crate::signals::parse::MAX_CMDLINE;
        if cfg.playbooks.limits.max_string_size < min_string {
            return Err(at(
                "max_string_size",
                format!(
                    "playbooks.limits.max_string_size: must be at least {min_string} (twice the longest command line medic hands over)"
                ),
            ));
        }
        for (i, c) in cfg.policy.commands.iter().enumerate() {
            if !c.path.is_absolute() {
                return Err(at("path", format!("policy.commands[{i}].path: {:?} must be absolute", c.path)));
            }
            if c.timeout_secs == 0 {
                return Err(at("timeout_secs", format!("policy.commands[{i}].timeout_secs: must be at least 1")));
            }
        }
        for p in &cfg.policy.allowed_paths {
            if !p.is_absolute() || p == Path::new("/") {
                return Err(at("allowed_paths", format!("policy.allowed_paths: {p:?} must be an absolute path other than /")));
            }
        }
        if cfg.policy.breaker_after == 0 || cfg.policy.max_concurrent == 0 {
            return Err(at("policy", "policy.breaker_after and policy.max_concurrent: must be at least 1".into()));
        }
        if cfg.actions.timeout_secs == 0 {
            return Err(at("timeout_secs", "actions.timeout_secs: must be at least 1".into()));
        }
        if cfg.audit.repeat_window_secs > 86_400 {
            return Err(at("repeat_window_secs", "audit.repeat_window_secs: at most 86400 (a day)".into()));
        }
        let m = &cfg.mqtt;
        if m.prefix.is_empty() || m.prefix.contains(['+', '#']) || m.prefix.ends_with('/') {
            return Err(at("prefix", format!("mqtt.prefix: {:?} must be non-empty, without '+', '#' or a trailing '/'", m.prefix)));
        }
        if m.enabled && (m.host.is_empty() || m.port == 0) {
            return Err(at("[mqtt]", "mqtt.host and mqtt.port: a broker is needed when mqtt.enabled".into()));
        }
        if m.username.is_some() != m.password_file.is_some() {
            return Err(at("password_file", "mqtt.username and mqtt.password_file: give both or neither".into()));
        }
        if m.cert_file.is_some() != m.key_file.is_some() || (m.cert_file.is_some() && m.ca_file.is_none()) {
            return Err(at("cert_file", "mqtt.cert_file and mqtt.key_file: give both, with mqtt.ca_file".into()));
        }
        if m.max_inflight == 0 || m.max_rate == 0 {
            return Err(at("[mqtt]", "mqtt.max_inflight and mqtt.max_rate: must be at least 1".into()));
        }
        if let Some(n) = &cfg.node {
            if n.is_empty() || n.contains(['/', '+', '#']) || n.chars().any(char::is_whitespace) {
                return Err(at("node", format!("node: {n:?} must be non-empty, without '/', '+', '#' or spaces")));
            }
        }
        Ok(cfg)
    }

    /// Reads `path`, or the default file if it exists, or the defaults.
    pub fn load(path: Option<&Path>) -> Result<(Self, Option<PathBuf>), anyhow::Error> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        };
        let Some(p) = path else { return Ok((Self::default(), None)) };
        let text = std::fs::read_to_string(&p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
        Ok((Self::parse(&p.display().to_string(), &text)?, Some(p)))
    }

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
                "/run/medic/control.sock".into()
            } else {
                state_dir.join("control.sock")
            }
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_and_column() {
        let e = Config::parse("m.toml", "node = \"a\"\n[signals]\nintervl_secs = 2\n").unwrap_err();
        assert_eq!((e.line, e.col), (3, 1), "{e}");
        assert!(e.reason.contains("intervl_secs"), "{e}");
    }

    #[test]
    fn empty_file_is_defaults() {
        assert_eq!(Config::parse("m.toml", "").unwrap(), Config::default());
    }

    #[test]
    fn mqtt_credentials_come_in_pairs_and_topics_have_no_wildcards() {
        let e = Config::parse("m.toml", "[mqtt]\nusername = \"u\"\n").unwrap_err();
        assert!(e.reason.contains("password_file"), "{e}");
        let e = Config::parse("m.toml", "[mqtt]\nprefix = \"medic/#\"\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    #[test]
    fn zero_interval_rejected() {
        let e = Config::parse("m.toml", "[signals]\ninterval_secs = 0\n").unwrap_err();
        assert_eq!(e.line, 2);
    }
}
