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

pub mod resolve;

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
    /// The Prometheus endpoint (`[metrics]`; on, loopback only, by default).
    pub metrics: crate::metrics::MetricsConfig,
    /// The flight recorder of sampled signals (`[recorder]`; on by default).
    pub recorder: crate::recorder::RecorderConfig,
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

/// The bounds `medic validate` holds numbers to: beyond them a value cannot work (a timeout of
/// 292 billion years, a history longer than an i64 of ms) or would only hurt the node.
pub mod bounds {
    /// 1 day: the longest tick or command timeout.
    pub const DAY_SECS: u64 = 86_400;
    /// 30 days: the longest history, breaker window or playbook back-off.
    pub const MONTH_SECS: u64 = 30 * 86_400;
    /// 10 years: the longest an audit segment is retained, or replayed at start.
    pub const TEN_YEARS_SECS: u64 = 3_650 * 86_400;
    /// 1 hour: the longest timeout of `restart_unit`, `signal_process` and `clean_files`, and
    /// the longest wait before SIGKILL (the agent waits this long for actions at stop).
    pub const ACTION_TIMEOUT_SECS: u64 = 3_600;
    /// Output bytes of a command kept in a record, per stream.
    pub const MAX_OUTPUT_BYTES: u64 = 1 << 20;
    /// Time series kept.
    pub const MAX_SERIES: u64 = 1 << 22;
    /// Call depth of one evaluation: rhai's recursion runs on the thread's stack.
    pub const MAX_CALL_LEVELS: u64 = 64;
    /// Expression depth of a playbook.
    pub const MAX_EXPR_DEPTH: u64 = 256;
    /// Operations of one evaluation.
    pub const MAX_OPERATIONS: u64 = 1_000_000_000;
    /// String bytes, array and map entries.
    pub const MAX_CONTAINER: u64 = 1 << 24;
    /// Action requests of one evaluation.
    pub const MAX_REQUESTS: u64 = 1_000_000;
}

/// Finds `key` inside the table `section` (`""` for the top level, `policy.commands` for an
/// array of tables) and returns its (line, col); else the first mention of `key` anywhere.
fn locate(text: &str, section: &str, key: &str) -> (usize, usize) {
    let mut current = String::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let t = line.trim_start();
        if let Some(h) = t.strip_prefix('[') {
            current = h.trim_start_matches('[').split(']').next().unwrap_or("").trim().to_string();
        } else if current == section {
            if let Some(rest) = t.strip_prefix(key) {
                if rest.trim_start().starts_with('=') {
                    return line_col(text, offset + (line.len() - t.len()));
                }
            }
        }
        offset += line.len();
    }
    // Inline tables (`commands = [{ ... timeout_secs = 0 }]`) and dotted keys.
    let qualified = format!("{section}.{key}");
    let off = text.find(&qualified).or_else(|| text.find(key)).unwrap_or(0);
    line_col(text, off)
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
            let (section, key) = key.rsplit_once('.').unwrap_or(("", key));
            let (line, col) = locate(text, section, key);
            ConfigError { file: file.into(), line, col, reason }
        };
        // Numbers first: each within what can work (see `bounds`), named as written.
        let range = |key: &str, v: u64, min: u64, max: u64, unit: &str| -> Result<(), ConfigError> {
            if v < min || v > max {
                let bounds = if max == u64::MAX { format!("at least {min}") } else { format!("{min}..={max}") };
                return Err(at(key, format!("{key}: {v} is out of range: must be {bounds}{unit}")));
            }
            Ok(())
        };
        use bounds::*;
        let (sg, pb, po, ac, lim) = (&cfg.signals, &cfg.playbooks, &cfg.policy, &cfg.actions, &cfg.playbooks.limits);
        range("signals.interval_secs", sg.interval_secs, 1, DAY_SECS, " seconds")?;
        range("signals.history_secs", sg.history_secs, 1, MONTH_SECS, " seconds")?;
        range("signals.max_series", sg.max_series as u64, 1, MAX_SERIES, "")?;
        range("signals.socket_scan_every", sg.socket_scan_every, 1, 3_600, " samples")?;
        range("signals.ebpf.sched_sample_every", sg.ebpf.sched_sample_every.into(), 1, 1 << 16, "")?;
        range("signals.ebpf.retrans_burst", sg.ebpf.retrans_burst, 1, 1 << 32, "")?;
        range("signals.ebpf.close_wait_threshold", sg.ebpf.close_wait_threshold.max(0) as u64, 1, 1 << 32, "")?;
        range("playbooks.disable_secs", pb.disable_secs, 1, MONTH_SECS, " seconds")?;
        range("playbooks.max_disable_secs", pb.max_disable_secs, 1, MONTH_SECS, " seconds")?;
        range("playbooks.limits.max_operations", lim.max_operations, 1, MAX_OPERATIONS, "")?;
        range("playbooks.limits.max_call_levels", lim.max_call_levels as u64, 1, MAX_CALL_LEVELS, "")?;
        range("playbooks.limits.max_expr_depth", lim.max_expr_depth as u64, 1, MAX_EXPR_DEPTH, "")?;
        range("playbooks.limits.max_string_size", lim.max_string_size as u64, 1, MAX_CONTAINER, " bytes")?;
        range("playbooks.limits.max_array_size", lim.max_array_size as u64, 1, MAX_CONTAINER, "")?;
        range("playbooks.limits.max_map_size", lim.max_map_size as u64, 1, MAX_CONTAINER, "")?;
        range("playbooks.limits.max_requests", lim.max_requests as u64, 1, MAX_REQUESTS, "")?;
        range("policy.budget_per_hour", po.budget_per_hour.into(), 0, 1_000_000, "")?;
        range("policy.max_concurrent", po.max_concurrent.into(), 1, 1024, "")?;
        range("policy.breaker_after", po.breaker_after.into(), 1, 1_000_000, "")?;
        range("policy.breaker_window_secs", po.breaker_window_secs, 1, MONTH_SECS, " seconds")?;
        range("actions.timeout_secs", ac.timeout_secs, 1, ACTION_TIMEOUT_SECS, " seconds")?;
        range("actions.kill_after_secs", ac.kill_after_secs, 0, ACTION_TIMEOUT_SECS, " seconds")?;
        range("actions.max_output_bytes", ac.max_output_bytes as u64, 0, MAX_OUTPUT_BYTES, " bytes")?;
        range("mqtt.keep_alive_secs", cfg.mqtt.keep_alive_secs, 5, u16::MAX.into(), " seconds")?;
        let au = &cfg.audit;
        range("audit.repeat_window_secs", au.repeat_window_secs, 0, DAY_SECS, " seconds")?;
        range("audit.segment_bytes", au.segment_bytes, 4096, u64::MAX, " bytes")?;
        range("audit.segment_secs", au.segment_secs, 1, MONTH_SECS, " seconds")?;
        range("audit.checkpoint_secs", au.checkpoint_secs, 1, MONTH_SECS, " seconds")?;
        range("audit.retain_secs", au.retain_secs, 0, TEN_YEARS_SECS, " seconds")?;
        range("audit.replay_secs", au.replay_secs, 0, TEN_YEARS_SECS, " seconds")?;
        range("audit.checkpoint_every", au.checkpoint_every, 1, u64::MAX, " records")?;
        let rc = &cfg.recorder;
        range("recorder.max_bytes", rc.max_bytes, 1 << 20, 1 << 40, " bytes")?;
        range("recorder.max_age_secs", rc.max_age_secs, 60, TEN_YEARS_SECS, " seconds")?;
        range("recorder.flush_secs", rc.flush_secs, 1, 3_600, " seconds")?;
        range("recorder.segment_secs", rc.segment_secs, 60, DAY_SECS, " seconds")?;
        for c in &po.commands {
            range("policy.commands.timeout_secs", c.timeout_secs, 1, DAY_SECS, " seconds")?;
            if let Some(a) = c.args.iter().find(|a| a.split(['/', '=']).any(|x| x == "..")) {
                return Err(at(
                    "policy.commands.args",
                    format!("policy.commands: argument pattern {a:?} has a `..` component, which never matches"),
                ));
            }
        }
        if cfg.signals.history_secs < cfg.signals.interval_secs {
            return Err(at("signals.history_secs", "signals.history_secs: must be at least interval_secs".into()));
        }
        if let Err((key, reason)) = cfg.playbooks.limits.validate() {
            return Err(at(key, reason));
        }
        // Every value medic hands a playbook is bounded (command lines at 4 KiB), so that nothing
        // on the node can push a playbook over its string limit; the limit must leave room.
        let min_string = 2 * crate::signals::parse::MAX_CMDLINE;
        if cfg.playbooks.limits.max_string_size < min_string {
            return Err(at(
                "playbooks.limits.max_string_size",
                format!(
                    "playbooks.limits.max_string_size: must be at least {min_string} (twice the longest command line medic hands over)"
                ),
            ));
        }
        for (i, c) in cfg.policy.commands.iter().enumerate() {
            if !c.path.is_absolute() {
                return Err(at("policy.commands.path", format!("policy.commands[{i}].path: {:?} must be absolute", c.path)));
            }
        }
        for p in &cfg.policy.allowed_paths {
            if !p.is_absolute() || p == Path::new("/") {
                return Err(at("policy.allowed_paths", format!("policy.allowed_paths: {p:?} must be an absolute path other than /")));
            }
        }
        let m = &cfg.mqtt;
        if m.prefix.is_empty() || m.prefix.contains(['+', '#']) || m.prefix.ends_with('/') {
            return Err(at("mqtt.prefix", format!("mqtt.prefix: {:?} must be non-empty, without '+', '#' or a trailing '/'", m.prefix)));
        }
        if m.enabled && (m.host.is_empty() || m.port == 0) {
            return Err(at("mqtt.enabled", "mqtt.host and mqtt.port: a broker is needed when mqtt.enabled".into()));
        }
        if m.username.is_some() != m.password_file.is_some() {
            return Err(at("mqtt.password_file", "mqtt.username and mqtt.password_file: give both or neither".into()));
        }
        if m.cert_file.is_some() != m.key_file.is_some() || (m.cert_file.is_some() && m.ca_file.is_none()) {
            return Err(at("mqtt.cert_file", "mqtt.cert_file and mqtt.key_file: give both, with mqtt.ca_file".into()));
        }
        if m.max_inflight == 0 || m.max_rate == 0 {
            return Err(at("mqtt.max_inflight", "mqtt.max_inflight and mqtt.max_rate: must be at least 1".into()));
        }
        if let Err(reason) = cfg.metrics.address() {
            return Err(at("metrics.listen", reason));
        }
        if cfg.playbooks_dir.is_some() && cfg.local_playbooks_dir.is_some() {
            return Err(at(
                "local_playbooks_dir",
                "local_playbooks_dir: playbooks_dir replaces the bundled playbooks, local_playbooks_dir adds to them: set one of the two"
                    .into(),
            ));
        }
        if let Some(n) = &cfg.node {
            if n.is_empty() || n.contains(['/', '+', '#']) || n.chars().any(char::is_whitespace) {
                return Err(at("node", format!("node: {n:?} must be non-empty, without '/', '+', '#' or spaces")));
            }
        }
        Ok(cfg)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn playbooks_dir_and_local_playbooks_dir_exclude_each_other() {
        let e = Config::parse("m.toml", "playbooks_dir = \"/a\"\nlocal_playbooks_dir = \"/b\"\n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 1), "{e}");
        assert!(e.reason.contains("set one of the two"), "{e}");
    }

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
    fn metrics_listen_that_is_not_an_address_names_file_line_and_key() {
        let e = Config::parse("m.toml", "[metrics]\nlisten = \"localhost:9464\"\n").unwrap_err();
        assert_eq!((e.file.as_str(), e.line), ("m.toml", 2), "{e}");
        assert!(e.reason.contains("metrics.listen"), "{e}");
        let off = Config::parse("m.toml", "[metrics]\nlisten = \"\"\n").unwrap();
        assert_eq!(off.metrics.address(), Ok(None));
    }

    #[test]
    fn zero_interval_rejected() {
        let e = Config::parse("m.toml", "[signals]\ninterval_secs = 0\n").unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn actions_timeout_secs_i64_max_is_refused_with_its_line() {
        let text = "[policy]\ncommands = [{ path = \"/bin/true\", timeout_secs = 5 }]\n[actions]\ntimeout_secs = 9223372036854775807\n";
        let e = Config::parse("m.toml", text).unwrap_err();
        assert_eq!((e.line, e.col), (4, 1), "{e}");
        assert!(e.reason.contains("actions.timeout_secs") && e.reason.contains("out of range"), "{e}");
    }

    #[test]
    fn history_secs_near_i64_max_is_refused_not_a_zero_history_bound() {
        let e = Config::parse("m.toml", "[signals]\nhistory_secs = 9223372036854775\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        assert!(e.reason.contains("signals.history_secs"), "{e}");
        // And the arithmetic saturates rather than wrapping, whatever reaches it.
        let s = SignalsConfig { history_secs: u64::MAX, ..Default::default() };
        assert_eq!(s.history_ms(), i64::MAX);
    }

    #[test]
    fn a_nested_key_is_located_in_its_own_table() {
        let text = "[actions]\ntimeout_secs = 30\n[policy]\nbreaker_window_secs = 0\n[playbooks.limits]\nmax_call_levels = 10\n";
        let e = Config::parse("m.toml", text).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        let e = Config::parse("m.toml", "[playbooks.limits]\nmax_call_levels = 100000\n").unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    /// Every numeric field, as (table, key).
    const NUMERIC: &[(&str, &str)] = &[
        ("signals", "interval_secs"),
        ("signals", "history_secs"),
        ("signals", "max_series"),
        ("signals", "socket_scan_every"),
        ("signals.ebpf", "sched_sample_every"),
        ("signals.ebpf", "retrans_burst"),
        ("signals.ebpf", "close_wait_threshold"),
        ("playbooks", "disable_secs"),
        ("playbooks", "max_disable_secs"),
        ("playbooks.limits", "max_operations"),
        ("playbooks.limits", "max_call_levels"),
        ("playbooks.limits", "max_expr_depth"),
        ("playbooks.limits", "max_string_size"),
        ("playbooks.limits", "max_array_size"),
        ("playbooks.limits", "max_map_size"),
        ("playbooks.limits", "max_requests"),
        ("policy", "budget_per_hour"),
        ("policy", "max_concurrent"),
        ("policy", "breaker_after"),
        ("policy", "breaker_window_secs"),
        ("actions", "timeout_secs"),
        ("actions", "kill_after_secs"),
        ("actions", "max_output_bytes"),
        ("mqtt", "port"),
        ("mqtt", "keep_alive_secs"),
        ("mqtt", "max_rate"),
        ("mqtt", "max_inflight"),
        ("recorder", "max_bytes"),
        ("recorder", "max_age_secs"),
        ("recorder", "flush_secs"),
        ("recorder", "segment_secs"),
    ];

    /// What the agent computes from a config at start and at stop, with plain (panicking in
    /// debug) arithmetic where the daemon uses it: a config that validates must get through.
    fn start_arithmetic(cfg: &Config) {
        let cx = crate::actions::ExecContext::from_config(cfg);
        let _stop_wait = std::time::Instant::now() + cx.timeout + cx.kill_after + std::time::Duration::from_secs(5);
        let reach = crate::playbooks::HistoryReach::of(&cfg.signals);
        assert!(reach.horizon_ms >= reach.interval_ms && reach.interval_ms >= 1000, "{reach:?}");
        let h = crate::signals::history::History::new(cfg.signals.history_ms(), cfg.signals.interval_ms(), cfg.signals.max_series);
        drop(h);
        let now = crate::audit::now_ms();
        let _ = now + cfg.playbooks.disable_ms() * (1 << 16) + cfg.playbooks.max_disable_ms();
        let _ = now - secs_to_ms(cfg.policy.breaker_window_secs) - 3_600_000;
        for c in &cfg.policy.commands {
            let _ = std::time::Instant::now() + std::time::Duration::from_secs(c.timeout_secs);
        }
        let _ = crate::gate::Gate::new(cfg.policy.clone());
    }

    fn cases() -> proptest::test_runner::Config {
        // A fixed count in the suite; PROPTEST_CASES runs more (bench/proptest_long.sh).
        let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256);
        proptest::test_runner::Config { cases, failure_persistence: None, ..Default::default() }
    }

    use proptest::prelude::*;

    fn toml_ish() -> impl Strategy<Value = String> {
        let header = prop::sample::select(vec![
            "[signals]",
            "[signals.ebpf]",
            "[playbooks]",
            "[playbooks.limits]",
            "[policy]",
            "[actions]",
            "[mqtt]",
            "[[policy.commands]]",
            "[control]",
            "[metrics]",
            "[recorder]",
            "[log]",
            "[",
            "]]",
        ])
        .prop_map(String::from);
        let key = prop::sample::select(
            NUMERIC
                .iter()
                .map(|(_, k)| *k)
                .chain(["node", "path", "args", "allowed_paths", "enabled", "prefix", "level", "listen"])
                .collect::<Vec<_>>(),
        );
        let value = prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| format!("{v:?}")),
            "\\PC{0,12}".prop_map(|s| format!("{s:?}")),
            Just("[\"/var/log\", \"..\"]".to_string()),
            Just("true".to_string()),
            Just("{ path = \"/bin/true\", timeout_secs = 99999999999 }".to_string()),
            "[ -~]{0,10}",
        ];
        let line = prop_oneof![header, (key, value).prop_map(|(k, v)| format!("{k} = {v}")), "[ -~\\n]{0,40}"];
        prop::collection::vec(line, 0..24).prop_map(|l| l.join("\n"))
    }

    proptest! {
        #![proptest_config(cases())]

        #[test]
        fn any_text_parses_or_errors_without_panicking(text in "\\PC{0,300}") {
            if let Ok(cfg) = Config::parse("p.toml", &text) {
                start_arithmetic(&cfg);
            }
        }

        #[test]
        fn toml_ish_text_parses_or_errors_and_a_valid_config_starts(text in toml_ish()) {
            match Config::parse("p.toml", &text) {
                Ok(cfg) => start_arithmetic(&cfg),
                Err(e) => prop_assert!(e.line >= 1 && e.col >= 1),
            }
        }

        #[test]
        fn any_number_in_any_field_is_refused_or_works(
            field in prop::sample::select(NUMERIC.to_vec()),
            v in prop_oneof![any::<i64>(), 0i64..100_000, Just(i64::MAX), Just(i64::MIN), Just(-1i64)],
            cmd_timeout in any::<i64>(),
        ) {
            let (table, key) = field;
            let text = format!("[{table}]\n{key} = {v}\n[[policy.commands]]\npath = \"/bin/true\"\ntimeout_secs = {cmd_timeout}\n");
            match Config::parse("p.toml", &text) {
                Ok(cfg) => start_arithmetic(&cfg),
                // A refused number is named with its line (line 2 for the field, 5 for the command).
                Err(e) => prop_assert!(e.line == 2 || e.line == 5 || e.line == 4, "{}", e),
            }
        }
    }
}
