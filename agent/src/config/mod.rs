//! Configuration: the TOML file an operator writes (every field optional, unknown keys
//! rejected; `Config::parse`, `Config::load`) and, in `resolve.rs`, its resolution into the
//! settings one invocation runs with (`Settings`). With no file at all the
//! defaults work: bundled playbooks, dry-run, and a state dir the current user can write.
//!
//! Every field is documented in `docs/CONFIG.md`; `packaging/medic.toml` is the commented copy
//! installed as `/etc/medic/medic.toml`.
//!
//! `config` depends on the modules it configures, never the reverse: a section defined beside
//! its user is re-exported here (`[audit]`, `policy.commands`), and what a module runs with is
//! built from the config here (`actions::ExecContext::from_config`, `playbooks::HistoryReach::of`).
//!
//! This file is the model (the sections, their defaults, conversions to ms) and `Config::parse`
//! / `Config::load`; `bounds.rs` holds a parsed file to what can work, `position.rs` finds the
//! line and column an error names, `host.rs` the defaults that depend on the host (state dir,
//! control socket, node name), `resolve.rs` the settings one invocation runs with.

pub mod bounds;
mod host;
mod position;
pub mod resolve;

pub use host::{default_state_dir, DEFAULT_CONFIG, SYSTEM_CONTROL_SOCKET};
pub use position::{line_col, ConfigError};

use crate::playbooks::engine::Limits;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// The raw file, as written.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Node name in audit records. Default: the host name.
    pub node: Option<String>,
    /// Where the audit log lives. Default: `/var/lib/medic` as root, else
    /// `$XDG_STATE_HOME/medic` (or `~/.local/state/medic`).
    pub state_dir: Option<PathBuf>,
    /// Directory of `*.rhai` playbooks, instead of the bundled ones. Default: the playbooks
    /// bundled in the binary.
    pub playbooks_dir: Option<PathBuf>,
    /// Directory of local `*.rhai` playbooks loaded with the bundled ones: a file named like a
    /// bundled playbook replaces it, an empty one turns it off (see docs/PLAYBOOKS.md). A missing
    /// directory holds none. Not with `playbooks_dir`. The packages set `/etc/medic/playbooks`.
    pub local_playbooks_dir: Option<PathBuf>,
    pub signals: SignalsConfig,
    pub playbooks: PlaybooksConfig,
    pub policy: PolicyConfig,
    pub actions: ActionsConfig,
    /// The audit log (`[audit]`): coalescing, segments, retention, replay window, checkpoints.
    pub audit: AuditConfig,
    pub control: ControlConfig,
    /// Replication of the audit log to an MQTT broker (`[mqtt]`; off unless enabled).
    pub mqtt: crate::forward::MqttConfig,
    /// Notifications delivered to Alertmanager and webhooks (`[alerts]`; none unless configured).
    pub alerts: crate::alerts::AlertsConfig,
    /// The Prometheus endpoint (`[metrics]`; on, loopback only, by default).
    pub metrics: crate::metrics::MetricsConfig,
    /// The flight recorder of sampled signals (`[recorder]`; on by default).
    pub recorder: crate::recorder::RecorderConfig,
    /// Files watched and where their content may be read (`[files]`, see signals/files.rs).
    pub files: crate::signals::files::FilesConfig,
    /// Probes the agent runs (`[probes]`, `[[probes.check]]`) and where they may connect.
    pub probes: crate::signals::probes::ProbesConfig,
    /// Program sensors (`[[programs]]`): the operator's allowlist of programs run as sensors.
    pub programs: Vec<crate::signals::probes::program::ProgramConfig>,
    pub log: LogConfig,
    /// Maintenance windows (`[[maintenance]]`): live actions are held by the gate's
    /// `maintenance` rule during them.
    pub maintenance: Vec<crate::gate::maintenance::WindowConfig>,
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

/// `[[policy.commands]]`: `run_command`'s config fragment, defined beside its executor.
pub use crate::actions::CommandRule;

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

impl crate::actions::ExecContext {
    /// From the config; every duration is bounded by validation, and built without arithmetic
    /// that could overflow whatever the values.
    pub fn from_config(cfg: &Config) -> Self {
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

/// `[audit]`: defined beside the log it configures.
pub use crate::audit::AuditConfig;

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
    /// Cheap signals (each mount's usage) are read this often between ticks, in ms; one that
    /// moved by `fast_step_pct` points wakes the playbooks that read it at once (0: off).
    pub fast_interval_ms: u64,
    /// How far (in percentage points) a mount's `used_pct` or `inodes_used_pct` must move since
    /// the last sample to wake an evaluation.
    pub fast_step_pct: f64,
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
            fast_interval_ms: 100,
            fast_step_pct: 1.0,
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

/// Seconds to milliseconds without overflow: values beyond what an i64 of ms holds saturate
/// (validation refuses them long before; this is the second line of defence).
pub fn secs_to_ms(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1000)
}

impl SignalsConfig {
    /// `interval_secs` in ms (at least 1 s).
    pub fn interval_ms(&self) -> i64 {
        secs_to_ms(self.interval_secs.max(1))
    }

    /// `history_secs` in ms.
    pub fn history_ms(&self) -> i64 {
        secs_to_ms(self.history_secs)
    }
}

impl crate::playbooks::HistoryReach {
    /// What the history holds with these `[signals]`.
    pub fn of(signals: &SignalsConfig) -> Self {
        Self { horizon_ms: signals.history_ms(), interval_ms: signals.interval_ms() }
    }
}

impl Default for crate::playbooks::HistoryReach {
    fn default() -> Self {
        Self::of(&SignalsConfig::default())
    }
}

impl PlaybooksConfig {
    /// `disable_secs` in ms.
    pub fn disable_ms(&self) -> i64 {
        secs_to_ms(self.disable_secs)
    }

    /// `max_disable_secs` in ms.
    pub fn max_disable_ms(&self) -> i64 {
        secs_to_ms(self.max_disable_secs)
    }
}

impl Config {
    /// Parses `text` (read from `file`, named in errors) and holds it to its bounds.
    pub fn parse(file: &str, text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
            ConfigError { file: file.into(), line, col, reason: e.message().to_string() }
        })?;
        bounds::check(&cfg, file, text)?;
        Ok(cfg)
    }

    /// The `[[maintenance]]` windows, resolved (checked by [`Config::parse`]; a config built
    /// otherwise with a window that does not resolve gets none, and says so in the log).
    pub fn maintenance_windows(&self) -> crate::gate::maintenance::Windows {
        crate::gate::maintenance::Windows::resolve(&self.maintenance).unwrap_or_else(|(i, e)| {
            tracing::error!(message = "Maintenance window refused.", index = i, error = %e);
            Default::default()
        })
    }

    /// Reads `path`, or the default file if it exists, or the defaults. Commands resolve it
    /// through [`resolve::Settings::load`].
    pub fn load(path: Option<&Path>) -> Result<(Self, Option<PathBuf>), resolve::LoadError> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        };
        let Some(p) = path else { return Ok((Self::default(), None)) };
        let text = std::fs::read_to_string(&p).map_err(|source| resolve::LoadError::Read { file: p.clone(), source })?;
        Ok((Self::parse(&p.display().to_string(), &text)?, Some(p)))
    }
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
}
