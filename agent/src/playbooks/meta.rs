//! A playbook's metadata: the `const META = #{ ... };` map every playbook declares, parsed into
//! [`Meta`]. Its `actions` list is the playbook's capability manifest: the only action kinds and
//! targets it may ask for.

use super::api::duration_ms;
/// The one glob matcher (manifest targets here), kept with the actions that own most of its uses.
pub use crate::actions::glob::glob_match;
use crate::actions::ActionKind;
pub use crate::gate::maintenance::Weekly;
use crate::signals::files::FileSpec;
use serde::{Deserialize, Serialize};

/// One entry of the capability manifest: an action kind and a target pattern (`*` and `?`
/// wildcards; for `signal_process` it matches the process name).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Capability {
    pub kind: ActionKind,
    pub target: String,
}

/// At most `max` executions per `per_ms` window, per (playbook, target).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RateLimit {
    pub max: u32,
    pub per_ms: i64,
}

/// Parsed and checked metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Meta {
    pub name: String,
    pub description: String,
    pub interval_ms: i64,
    pub tags: Vec<String>,
    /// Forced dry-run: this playbook never acts, whatever the node's mode.
    pub dry_run: bool,
    pub actions: Vec<Capability>,
    pub rate_limit: RateLimit,
    /// Minimum time between two executions on the same (playbook, action, target).
    pub cooldown_ms: i64,
    /// Files whose signals this playbook reads (`file.<name>.*`), watched by the agent.
    pub files: Vec<FileSpec>,
    /// Active hours (`active`): outside all of them the gate's `maintenance` rule holds every
    /// request of the playbook, `notify` included. Empty: always active.
    pub active: Vec<Weekly>,
    /// The playbook's own breaker (`breaker`), combined with the node's (see [`BreakerSpec`]).
    pub breaker: Option<BreakerSpec>,
    /// Probes the agent runs for this playbook (`META.probes`; signals `probe.<name>.*`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub probes: Vec<crate::signals::probes::spec::ProbeSpec>,
}

/// A breaker: open after `after` runs of the same action on the same target within `within_ms`.
/// A playbook's can only tighten the node's: the gate uses the smaller `after` and the longer
/// window of the two ([`BreakerSpec::tightest`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BreakerSpec {
    pub after: u32,
    pub within_ms: i64,
}

impl BreakerSpec {
    /// The breaker the gate applies: the smaller `after`, the longer `within`.
    pub fn tightest(node: BreakerSpec, playbook: Option<BreakerSpec>) -> BreakerSpec {
        match playbook {
            None => node,
            Some(p) => BreakerSpec { after: node.after.min(p.after), within_ms: node.within_ms.max(p.within_ms) },
        }
    }
}

/// Longest `META.breaker.within` (30 days, as `policy.breaker_window_secs`).
pub const MAX_BREAKER_WITHIN_MS: i64 = 30 * 86_400_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCap {
    kind: String,
    target: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRate {
    max: i64,
    per: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMeta {
    name: String,
    description: String,
    interval: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    dry_run: bool,
    actions: Vec<RawCap>,
    rate_limit: RawRate,
    cooldown: String,
    #[serde(default)]
    files: Vec<RawFile>,
    /// A map or a list of maps of [`RawActive`]; read by hand to name the entry at fault.
    #[serde(default)]
    active: Option<rhai::Dynamic>,
    #[serde(default)]
    breaker: Option<RawBreaker>,
    #[serde(default)]
    probes: Vec<crate::signals::probes::spec::MetaProbe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActive {
    #[serde(default)]
    days: Vec<String>,
    from: String,
    to: String,
    zone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBreaker {
    after: i64,
    within: String,
}

/// `META.active`: one map or a list of them.
fn active(value: Option<&rhai::Dynamic>) -> Result<Vec<Weekly>, String> {
    let Some(v) = value else { return Ok(Vec::new()) };
    let (list, indexed): (Vec<rhai::Dynamic>, bool) = match v.clone().try_cast::<rhai::Array>() {
        Some(a) => (a, true),
        None => (vec![v.clone()], false),
    };
    if list.is_empty() || list.len() > crate::gate::maintenance::MAX_ENTRIES {
        return Err(format!("META.active: 1 to {} entries", crate::gate::maintenance::MAX_ENTRIES));
    }
    let mut out = Vec::new();
    for (i, d) in list.iter().enumerate() {
        let at = if indexed { format!("META.active[{i}]") } else { "META.active".to_string() };
        let raw: RawActive = rhai::serde::from_dynamic(d).map_err(|e| {
            let msg = e.to_string();
            let msg = msg.trim().trim_start_matches("Syntax error: ");
            format!(
                "{at}: {} (a map #{{ days: [\"mon-fri\"], from: \"08:00\", to: \"18:00\", zone: \"UTC\" }})",
                msg.split(" (line ").next().unwrap_or(msg)
            )
        })?;
        out.push(Weekly::parse(&raw.days, &raw.from, &raw.to, raw.zone.as_deref()).map_err(|e| format!("{at}.{e}"))?);
    }
    Ok(out)
}

/// `META.files[i]`: `tail` is a size (`65536` or `"64KiB"`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    name: String,
    path: String,
    #[serde(default)]
    hash: bool,
    #[serde(default)]
    pattern: Option<String>,
    #[serde(default)]
    tail: Option<RawSize>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(i64),
    Text(String),
}

/// Most files one playbook declares (the node bounds them all with `files.max_files`).
pub const MAX_FILES: usize = 64;

/// Turns the META map into [`Meta`]; the error names the field at fault.
pub fn parse(value: &rhai::Dynamic) -> Result<Meta, String> {
    let raw: RawMeta = rhai::serde::from_dynamic(value).map_err(|e| {
        // rhai wraps serde's message ("missing field `x`") as a syntax error; keep serde's words.
        let msg = e.to_string();
        let msg = msg.trim().trim_start_matches("Syntax error: ");
        format!("META: {}", msg.split(" (line ").next().unwrap_or(msg))
    })?;
    if raw.name.is_empty() || !raw.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(format!("META.name: {:?} must be non-empty letters, digits, '-' or '_'", raw.name));
    }
    let dur = |field: &str, s: &str| duration_ms(s).map_err(|e| format!("META.{field}: {e}"));
    let interval_ms = dur("interval", &raw.interval)?;
    if interval_ms < 1000 {
        return Err("META.interval: must be at least 1s".into());
    }
    let mut actions = Vec::new();
    for (i, c) in raw.actions.iter().enumerate() {
        let kind = ActionKind::parse(&c.kind).ok_or_else(|| {
            let kinds: Vec<&str> = ActionKind::ALL.iter().map(|k| k.as_str()).collect();
            format!("META.actions[{i}].kind: unknown action {:?} ({})", c.kind, kinds.join(", "))
        })?;
        if c.target.is_empty() {
            return Err(format!("META.actions[{i}].target: empty pattern"));
        }
        actions.push(Capability { kind, target: c.target.clone() });
    }
    let mut probes: Vec<crate::signals::probes::spec::ProbeSpec> = Vec::new();
    if raw.probes.len() > crate::signals::probes::MAX_PROBES {
        return Err(format!("META.probes: at most {} probes", crate::signals::probes::MAX_PROBES));
    }
    for (i, p) in raw.probes.iter().enumerate() {
        let spec = p.resolve(&format!("META.probes[{i}]"))?;
        if probes.iter().any(|q| q.name == spec.name) {
            return Err(format!("META.probes[{i}].name: probe {:?} is declared twice", spec.name));
        }
        probes.push(spec);
    }
    if raw.rate_limit.max < 1 {
        return Err("META.rate_limit.max: must be at least 1".into());
    }
    if raw.files.len() > MAX_FILES {
        return Err(format!("META.files: {} files, at most {MAX_FILES}", raw.files.len()));
    }
    let mut files = Vec::new();
    for (i, f) in raw.files.into_iter().enumerate() {
        let tail_bytes = match f.tail {
            None => crate::signals::files::DEFAULT_TAIL_BYTES,
            Some(RawSize::Bytes(n)) => n.max(0) as u64,
            Some(RawSize::Text(t)) => crate::signals::files::parse_size(&t).map_err(|e| format!("META.files[{i}].tail: {e}"))?,
        };
        let spec = FileSpec { name: f.name, path: f.path.into(), hash: f.hash, pattern: f.pattern, tail_bytes };
        if let Err(e) = spec.check() {
            let field = if matches!(e, crate::signals::files::FileError::Tail(_)) { "tail" } else { e.field() };
            return Err(format!("META.files[{i}].{field}: {e}"));
        }
        if files.iter().any(|g: &FileSpec| g.name == spec.name) {
            return Err(format!("META.files[{i}].name: {:?} declared twice", spec.name));
        }
        files.push(spec);
    }
    let breaker = match &raw.breaker {
        None => None,
        Some(b) => {
            if !(1..=1_000_000).contains(&b.after) {
                return Err(format!("META.breaker.after: {} must be 1..=1000000", b.after));
            }
            let within_ms = dur("breaker.within", &b.within)?;
            if !(1000..=MAX_BREAKER_WITHIN_MS).contains(&within_ms) {
                return Err("META.breaker.within: must be 1s to 30 days".into());
            }
            Some(BreakerSpec { after: b.after as u32, within_ms })
        }
    };
    let active = active(raw.active.as_ref())?;
    Ok(Meta {
        files,
        name: raw.name,
        description: raw.description,
        interval_ms,
        tags: raw.tags,
        dry_run: raw.dry_run,
        actions,
        rate_limit: RateLimit { max: raw.rate_limit.max.min(u32::MAX as i64) as u32, per_ms: dur("rate_limit.per", &raw.rate_limit.per)? },
        cooldown_ms: dur("cooldown", &raw.cooldown)?,
        active,
        breaker,
        probes,
    })
}

impl Meta {
    /// Whether the manifest allows `kind` on `target`.
    pub fn allows(&self, kind: ActionKind, target: &str) -> bool {
        self.actions.iter().any(|c| c.kind == kind && glob_match(&c.target, target))
    }
}

#[cfg(test)]
mod tests {
    fn compile(meta_extra: &str) -> Result<super::Meta, String> {
        let src = format!(
            "const META = #{{ name: \"p\", description: \"d\", interval: \"1s\", actions: [#{{ kind: \"notify\", target: \"*\" }}], rate_limit: #{{ max: 2, per: \"1h\" }}, cooldown: \"0s\"{meta_extra} }};\nfn evaluate(node, state) {{}}"
        );
        crate::playbooks::Runtime::new(Default::default()).compile("p.rhai", &src).map(|p| p.meta).map_err(|e| e.to_string())
    }

    #[test]
    fn active_hours_and_breaker_parse_and_their_errors_name_the_field() {
        let m = compile(", active: #{ days: [\"mon-fri\"], from: \"08:00\", to: \"18:00\" }, breaker: #{ after: 2, within: \"10m\" }")
            .expect("compiles");
        assert_eq!(m.active.len(), 1);
        assert_eq!(m.breaker, Some(super::BreakerSpec { after: 2, within_ms: 600_000 }));
        let m = compile(", active: [#{ from: \"08:00\", to: \"12:00\" }, #{ from: \"13:00\", to: \"18:00\", zone: \"+01:00\" }]")
            .expect("a list");
        assert_eq!(m.active.len(), 2);
        for (extra, field) in [
            (", active: [#{ from: \"08:00\", to: \"12:00\" }, #{ from: \"8am\", to: \"18:00\" }]", "META.active[1].from"),
            (", active: #{ days: [\"someday\"], from: \"08:00\", to: \"18:00\" }", "META.active.days"),
            (", active: #{ from: \"08:00\", to: \"18:00\", zone: \"Nowhere/Town\" }", "META.active.zone"),
            (", active: #{ from: \"08:00\" }", "META.active"),
            (", active: []", "META.active"),
            (", breaker: #{ after: 0, within: \"10m\" }", "META.breaker.after"),
            (", breaker: #{ after: 2, within: \"90d\" }", "META.breaker.within"),
        ] {
            let e = compile(extra).expect_err(extra);
            assert!(e.contains(field), "{extra}: {e}");
        }
    }
}

#[cfg(test)]
mod files_tests {
    fn compile(files: &str) -> Result<super::Meta, String> {
        let src = format!(
            "const META = #{{ name: \"p\", description: \"d\", interval: \"1s\", actions: [], rate_limit: #{{ max: 1, per: \"1h\" }}, cooldown: \"1s\", files: {files} }};\nfn evaluate(node, state) {{}}"
        );
        crate::playbooks::Runtime::new(Default::default()).compile("p.rhai", &src).map(|p| p.meta).map_err(|e| e.to_string())
    }

    /// META `files`: parsed with a size for `tail`, and each bad field named `META.files[i].<field>`.
    #[test]
    fn meta_files_are_parsed_and_their_errors_named() {
        let m = compile("[#{ name: \"log\", path: \"/var/log/a.log\", pattern: \"ERROR\", tail: \"1MiB\" }, #{ name: \"c\", path: \"/etc/x\", hash: true }]").unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[0].tail_bytes, 1 << 20);
        assert_eq!(m.files[1].tail_bytes, crate::signals::files::DEFAULT_TAIL_BYTES);
        for (files, want) in [
            ("[#{ name: \"a.b\", path: \"/x\" }]", "META.files[0].name"),
            ("[#{ name: \"a\", path: \"x\" }]", "META.files[0].path"),
            ("[#{ name: \"a\", path: \"/x\", pattern: \"(\" }]", "META.files[0].pattern"),
            ("[#{ name: \"a\", path: \"/x\", tail: \"2MiB\" }]", "META.files[0].tail"),
            ("[#{ name: \"a\", path: \"/x\", tail: \"1GiB\" }]", "META.files[0].tail"),
            ("[#{ name: \"a\", path: \"/x\" }, #{ name: \"a\", path: \"/y\" }]", "META.files[1].name"),
            ("[#{ name: \"a\", path: \"/x\", follow: true }]", "META"),
        ] {
            let e = compile(files).unwrap_err();
            assert!(e.contains(want), "{files}: {e}");
        }
    }
}
