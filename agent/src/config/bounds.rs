//! The bounds `medic validate` holds a config to: every number within a range that can work
//! (beyond them a value cannot work: a timeout of 292 billion years, a history longer than an
//! i64 of ms; or would only hurt the node), and the rules across fields (pairs given together,
//! absolute paths, topic prefixes, one playbooks directory of two). The first value refused is
//! named with its key, line and column.

use super::position::{locate, locate_nth};
use super::{Config, ConfigError};
use std::path::Path;

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

/// Holds a parsed config to its bounds; `file` and `text` are what it was parsed from, for the
/// position of the first value refused.
pub(super) fn check(cfg: &Config, file: &str, text: &str) -> Result<(), ConfigError> {
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
    let (sg, pb, po, ac, lim) = (&cfg.signals, &cfg.playbooks, &cfg.policy, &cfg.actions, &cfg.playbooks.limits);
    range("signals.interval_secs", sg.interval_secs, 1, DAY_SECS, " seconds")?;
    range("signals.history_secs", sg.history_secs, 1, MONTH_SECS, " seconds")?;
    range("signals.max_series", sg.max_series as u64, 1, MAX_SERIES, "")?;
    range("signals.socket_scan_every", sg.socket_scan_every, 1, 3_600, " samples")?;
    if sg.fast_interval_ms != 0 {
        range("signals.fast_interval_ms", sg.fast_interval_ms, 20, 60_000, " ms (0: off)")?;
    }
    if !(0.1..=50.0).contains(&sg.fast_step_pct) {
        let v = sg.fast_step_pct;
        return Err(at("signals.fast_step_pct", format!("signals.fast_step_pct: {v} is out of range: must be 0.1..=50 percentage points")));
    }
    range("signals.ebpf.sched_sample_every", sg.ebpf.sched_sample_every.into(), 1, 1 << 16, "")?;
    range("signals.ebpf.retrans_burst", sg.ebpf.retrans_burst, 1, 1 << 32, "")?;
    range("signals.ebpf.close_wait_threshold", sg.ebpf.close_wait_threshold.max(0) as u64, 1, 1 << 32, "")?;
    range("signals.ebpf.cpu_hot_pct", sg.ebpf.cpu_hot_pct, 10, 100, "")?;
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
    let fc = &cfg.files;
    range("files.max_files", fc.max_files as u64, 1, crate::signals::files::MAX_FILES_LIMIT as u64, "")?;
    range("files.max_hash_bytes", fc.max_hash_bytes, 1, crate::signals::files::MAX_HASH_LIMIT, " bytes")?;
    for (i, w) in fc.watch.iter().enumerate() {
        if let Err(e) = w.check() {
            return Err(at(&format!("files.watch.{}", e.field()), format!("files.watch[{i}].{}: {e}", e.field())));
        }
    }
    if let Some(g) = fc.content_paths.iter().find(|g| !g.starts_with('/')) {
        return Err(at("files.content_paths", format!("files.content_paths: {g:?} must be an absolute glob")));
    }
    for c in &po.commands {
        range("policy.commands.timeout_secs", c.timeout_secs, 1, DAY_SECS, " seconds")?;
        if let Some(a) = c.args.iter().find(|a| a.split(['/', '=']).any(|x| x == "..")) {
            return Err(at(
                "policy.commands.args",
                format!("policy.commands: argument pattern {a:?} has a `..` component, which never matches"),
            ));
        }
    }
    if let Err((key, reason)) = cfg.probes.check(&cfg.programs) {
        return Err(at(&key, reason));
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
            format!("playbooks.limits.max_string_size: must be at least {min_string} (twice the longest command line medic hands over)"),
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
    if let Err((key, reason)) = cfg.alerts.validate() {
        return Err(at(key, reason));
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
    if let Err((i, e)) = crate::gate::maintenance::Windows::resolve(&cfg.maintenance) {
        let (line, col) = locate_nth(text, "maintenance", i, e.field);
        return Err(ConfigError { file: file.into(), line, col, reason: format!("maintenance[{i}].{e}") });
    }
    if let Some(n) = &cfg.node {
        if n.is_empty() || n.contains(['/', '+', '#']) || n.chars().any(char::is_whitespace) {
            return Err(at("node", format!("node: {n:?} must be non-empty, without '/', '+', '#' or spaces")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{secs_to_ms, SignalsConfig};
    use super::*;

    #[test]
    fn playbooks_dir_and_local_playbooks_dir_exclude_each_other() {
        let e = Config::parse("m.toml", "playbooks_dir = \"/a\"\nlocal_playbooks_dir = \"/b\"\n").unwrap_err();
        assert_eq!((e.line, e.col), (2, 1), "{e}");
        assert!(e.reason.contains("set one of the two"), "{e}");
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
    fn a_maintenance_window_error_names_its_entry_line_and_field() {
        let text = "[[maintenance]]\nname = \"a\"\nfrom = \"22:00\"\nto = \"06:00\"\n\n[[maintenance]]\nname = \"b\"\ndays = [\"fri\"]\nfrom = \"22:00\"\nto = \"6am\"\n";
        let e = Config::parse("m.toml", text).unwrap_err();
        assert_eq!((e.line, e.col), (10, 1), "{e}");
        assert!(e.reason.starts_with("maintenance[1].to: "), "{e}");
        let e = Config::parse("m.toml", "[[maintenance]]\nname = \"a\"\nfrom = \"22:00\"\nto = \"06:00\"\nzone = \"Nowhere/City\"\n")
            .unwrap_err();
        assert_eq!((e.line, e.reason.contains("maintenance[0].zone")), (5, true), "{e}");
        let e = Config::parse("m.toml", "[[maintenance]]\nname = \"a\"\nfrom = \"22:00\"\nto = \"06:00\"\nwhen = 1\n").unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        let ok =
            Config::parse("m.toml", "[[maintenance]]\nname = \"freeze\"\ndays = [\"fri\"]\nfrom = \"22:00\"\nto = \"06:00\"\n").unwrap();
        assert!(!ok.maintenance_windows().is_empty());
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

    /// Every numeric field, as (table, key).
    const NUMERIC: &[(&str, &str)] = &[
        ("signals", "interval_secs"),
        ("signals", "history_secs"),
        ("signals", "max_series"),
        ("signals", "socket_scan_every"),
        ("signals", "fast_interval_ms"),
        ("signals.ebpf", "sched_sample_every"),
        ("signals.ebpf", "retrans_burst"),
        ("signals.ebpf", "close_wait_threshold"),
        ("signals.ebpf", "cpu_hot_pct"),
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
        ("files", "max_files"),
        ("files", "max_hash_bytes"),
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
            "[[maintenance]]",
            "[",
            "]]",
        ])
        .prop_map(String::from);
        let key = prop::sample::select(
            NUMERIC
                .iter()
                .map(|(_, k)| *k)
                .chain([
                    "node",
                    "path",
                    "args",
                    "allowed_paths",
                    "enabled",
                    "prefix",
                    "level",
                    "listen",
                    "name",
                    "from",
                    "to",
                    "zone",
                    "start",
                    "end",
                ])
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
