//! `medic playbook test`: runs the cases in `<playbook>.test.toml` beside each playbook. A case
//! is a signal timeline (values set at simulated times, held until changed) played on a
//! simulated clock through the agent's own decide step (`decide::Timeline`: engine, back-off,
//! gate) in dry-run, gated against the node's policy; the requests and
//! decisions that come out are compared with what the case expects.
//!
//! ```toml
//! [[case]]
//! name = "fires when /var/log stays above 90% for 5 minutes"
//! duration = "10m"                 # simulated time to play
//! step = "30s"                     # tick spacing (default: the playbook's interval)
//! expect = [{ kind = "clean_files", target = "/var/log", decision = "would_execute", min = 1, max = 1 }]
//! # or: expect_none = true         # no request at all
//! [[case.timeline]]
//! at = "0s"
//! metrics = { "disk./var/log.used_pct" = 95.0 }
//! mounts = [{ mount_point = "/var/log", device = "/dev/sda2", fs_type = "ext4" }]
//! ```

use super::Runtime;
use crate::config::line_col;
use crate::decide::{Backoff, Decider, Timeline};
use crate::gate::{Gate, Mode};
use crate::signals::disk::Mount;
use crate::signals::history::History;
use crate::signals::process::{units_of, ProcessInfo};
use crate::signals::sockets::PeerInfo;
use crate::signals::Snapshot;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The simulated clock starts here (2023-11-14T22:13:20Z), the same for every run.
pub const EPOCH_MS: i64 = 1_700_000_000_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    case: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    duration: String,
    step: Option<String>,
    #[serde(default)]
    timeline: Vec<Step>,
    #[serde(default)]
    expect: Vec<Expect>,
    #[serde(default)]
    expect_none: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Step {
    at: String,
    #[serde(default)]
    metrics: BTreeMap<String, f64>,
    #[serde(default)]
    unset: Vec<String>,
    processes: Option<Vec<ProcessInfo>>,
    mounts: Option<Vec<Mount>>,
    tcp_peers: Option<Vec<PeerInfo>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Expect {
    kind: String,
    target: Option<String>,
    decision: Option<String>,
    rule: Option<String>,
    #[serde(default = "one")]
    min: usize,
    max: Option<usize>,
}

fn one() -> usize {
    1
}

/// One decision made while a case played.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub at_ms: i64,
    pub kind: String,
    pub target: String,
    pub decision: String,
    pub rule: String,
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    pub message: String,
}

fn ms(what: &str, s: &str) -> Result<i64, String> {
    super::api::duration_ms(s).map_err(|e| format!("{what}: {e}"))
}

/// Runs every case of `tests` (the text of `tests_file`) against the playbook `source`.
/// Gated against `policy`: the node's (`playbook test --config`), so a case that passes here is
/// not refused there.
pub fn run(
    rt: &Arc<Runtime>,
    policy: &crate::config::PolicyConfig,
    file: &str,
    source: &str,
    tests_file: &str,
    tests: &str,
) -> Result<Vec<CaseResult>, String> {
    let pb = rt.compile(file, source).map_err(|e| e.to_string())?;
    let tf: TestFile = toml::from_str(tests).map_err(|e| {
        let (l, c) = e.span().map_or((1, 1), |s| line_col(tests, s.start));
        format!("{tests_file}:{l}:{c}: {}", e.message())
    })?;
    let mut results = Vec::new();
    for case in &tf.case {
        let r = run_case(rt, policy, &pb, case).unwrap_or_else(|e| CaseResult { name: case.name.clone(), passed: false, message: e });
        results.push(r);
    }
    Ok(results)
}

fn run_case(rt: &Arc<Runtime>, policy: &crate::config::PolicyConfig, pb: &super::Playbook, case: &Case) -> Result<CaseResult, String> {
    let duration = ms("duration", &case.duration)?;
    let step_ms = match &case.step {
        Some(s) => ms("step", s)?.max(1),
        None => pb.meta.interval_ms,
    };
    let mut steps: Vec<(i64, &Step)> = case.timeline.iter().map(|s| Ok((ms("timeline.at", &s.at)?, s))).collect::<Result<_, String>>()?;
    steps.sort_by_key(|(t, _)| *t);
    // The node's horizon, not the case's length: a window the agent's history cannot cover must
    // not pass here and stay silent there. The decide step is the agent's own (`decide`).
    let history = Arc::new(History::new(rt.history.horizon_ms, step_ms, 100_000));
    let backoff = Backoff { first_ms: 300_000, max_ms: 3_600_000 };
    let mut decider = Decider::new(rt.clone(), Gate::for_fixtures(policy.clone()), backoff);
    decider.install(pb.clone());
    let mut timeline = Timeline { decider, history, mode: Mode::DryRun };
    let mut cur = Snapshot::default();
    let mut outcomes = Vec::new();
    let mut next_step = 0;
    let mut t = 0;
    while t <= duration {
        while next_step < steps.len() && steps[next_step].0 <= t {
            let s = steps[next_step].1;
            cur.metrics.extend(s.metrics.iter().map(|(k, v)| (k.clone(), *v)));
            for k in &s.unset {
                cur.metrics.remove(k);
            }
            if let Some(p) = &s.processes {
                cur.processes = p.clone();
                cur.units = units_of(&cur.processes);
            }
            if let Some(m) = &s.mounts {
                cur.mounts = m.clone();
            }
            if let Some(p) = &s.tcp_peers {
                cur.tcp_peers = p.clone();
            }
            next_step += 1;
        }
        cur.ts_ms = EPOCH_MS + t;
        let step = timeline.tick(cur.clone(), false);
        if let Some((_, error, _)) = step.disabled.first() {
            return Err(format!("at {}s: {error}", t / 1000));
        }
        outcomes.extend(step.decisions.into_iter().map(|d| Outcome {
            at_ms: t,
            kind: d.kind,
            target: d.target,
            decision: d.decision.into(),
            rule: d.rule.into(),
        }));
        t += step_ms;
    }
    let listing = || {
        if outcomes.is_empty() {
            "  (no requests)".to_string()
        } else {
            outcomes
                .iter()
                .map(|o| format!("  at {}s: {} {:?} → {} ({})", o.at_ms / 1000, o.kind, o.target, o.decision, o.rule))
                .collect::<Vec<_>>()
                .join("\n")
        }
    };
    let mut failures = Vec::new();
    if case.expect_none && !outcomes.is_empty() {
        failures.push("expected no requests".to_string());
    }
    for e in &case.expect {
        let n = outcomes
            .iter()
            .filter(|o| {
                o.kind == e.kind
                    && e.target.as_ref().is_none_or(|p| super::meta::glob_match(p, &o.target))
                    && e.decision.as_ref().is_none_or(|d| *d == o.decision)
                    && e.rule.as_ref().is_none_or(|r| *r == o.rule)
            })
            .count();
        if n < e.min || e.max.is_some_and(|m| n > m) {
            failures.push(format!(
                "expected {}..{} × {} {} {} {}, got {n}",
                e.min,
                e.max.map_or("".into(), |m| m.to_string()),
                e.kind,
                e.target.as_deref().unwrap_or("*"),
                e.decision.as_deref().unwrap_or(""),
                e.rule.as_deref().unwrap_or("")
            ));
        }
    }
    if case.expect.is_empty() && !case.expect_none {
        failures.push("a case needs `expect` or `expect_none = true`".into());
    }
    let passed = failures.is_empty();
    let message = if passed { String::new() } else { format!("{}\ndecisions:\n{}", failures.join("\n"), listing()) };
    Ok(CaseResult { name: case.name.clone(), passed, message })
}

/// Cuts a `playbook test` case from a replayed stretch of recording, so a real incident becomes
/// a regression test: the values of the keys the playbook read (held until changed, as a case's
/// timeline is), the process list, mounts and retransmitting peers when its source reads them
/// (and only when they change), and what it asked and the gate decided, as the expectation.
/// Times are relative to the first frame, rounded to `step_ms`.
pub struct CaseCutter {
    keys: std::collections::BTreeSet<String>,
    step_ms: i64,
    start_ms: Option<i64>,
    reads: (bool, bool, bool),
    last: Snapshot,
    timeline: Vec<toml::Table>,
    expect: BTreeMap<(String, String, String), usize>,
    /// Whether the playbook asked anything (else the case expects no request at all).
    asked: bool,
    end_ms: i64,
}

impl CaseCutter {
    /// For the playbook whose `source` read `keys` over the replay, at the recording's `step_ms`.
    pub fn new(source: &str, keys: std::collections::BTreeSet<String>, step_ms: i64) -> Self {
        let reads = (
            [".processes(", ".process(", ".units(", ".unit("].iter().any(|m| source.contains(m)),
            source.contains(".mounts("),
            source.contains(".tcp_peers("),
        );
        Self {
            keys,
            step_ms: step_ms.max(1),
            start_ms: None,
            reads,
            last: Snapshot::default(),
            timeline: Vec::new(),
            expect: BTreeMap::new(),
            asked: false,
            end_ms: 0,
        }
    }

    /// Adds one frame and the decisions the replay made on it ((kind, target, decision)).
    pub fn frame(&mut self, snap: &Snapshot, decisions: impl IntoIterator<Item = (String, String, String)>) {
        let start = *self.start_ms.get_or_insert(snap.ts_ms);
        let rel = ((snap.ts_ms - start) as f64 / self.step_ms as f64).round() as i64 * self.step_ms;
        self.end_ms = rel;
        let mut step = toml::Table::new();
        let mut metrics = toml::Table::new();
        let mut unset = Vec::new();
        for k in &self.keys {
            match (snap.metrics.get(k), self.last.metrics.get(k)) {
                (Some(v), old) if old != Some(v) && v.is_finite() => {
                    metrics.insert(k.clone(), toml::Value::Float(*v));
                }
                (None, Some(_)) => unset.push(toml::Value::String(k.clone())),
                _ => {}
            }
        }
        let first = self.timeline.is_empty();
        if self.reads.0 && (first || snap.processes != self.last.processes) {
            if let Some(v) = to_toml(&snap.processes) {
                step.insert("processes".into(), v);
            }
        }
        if self.reads.1 && (first || snap.mounts != self.last.mounts) {
            if let Some(v) = to_toml(&snap.mounts) {
                step.insert("mounts".into(), v);
            }
        }
        if self.reads.2 && (first || snap.tcp_peers != self.last.tcp_peers) {
            if let Some(v) = to_toml(&snap.tcp_peers) {
                step.insert("tcp_peers".into(), v);
            }
        }
        if !metrics.is_empty() {
            step.insert("metrics".into(), toml::Value::Table(metrics));
        }
        if !unset.is_empty() {
            step.insert("unset".into(), toml::Value::Array(unset));
        }
        if !step.is_empty() || first {
            step.insert("at".into(), toml::Value::String(format!("{rel}ms")));
            self.timeline.push(step);
        }
        // Refusals (`suppressed`, `denied`) are not expected one by one: which tick a cooldown
        // ends in depends on the recording's tick jitter, which the case's regular step does
        // not have. What would have been done is expected exactly.
        for (kind, target, decision) in decisions {
            self.asked = true;
            if matches!(decision.as_str(), "would_execute" | "executed" | "escalated") {
                *self.expect.entry((kind, target, decision)).or_default() += 1;
            }
        }
        for k in &self.keys {
            match snap.metrics.get(k) {
                Some(v) => self.last.metrics.insert(k.clone(), *v),
                None => self.last.metrics.remove(k),
            };
        }
        if self.reads.0 {
            self.last.processes = snap.processes.clone();
        }
        if self.reads.1 {
            self.last.mounts = snap.mounts.clone();
        }
        if self.reads.2 {
            self.last.tcp_peers = snap.tcp_peers.clone();
        }
    }

    /// The case file's text: one case named `name`.
    pub fn finish(self, name: &str) -> Result<String, String> {
        let mut case = toml::Table::new();
        case.insert("name".into(), name.into());
        case.insert("duration".into(), format!("{}ms", self.end_ms).into());
        case.insert("step".into(), format!("{}ms", self.step_ms).into());
        if !self.asked {
            case.insert("expect_none".into(), true.into());
        } else if self.expect.is_empty() {
            return Err("the playbook asked only for refused actions in this stretch: there is nothing to expect exactly; cut a stretch where it acts, or write the case by hand".into());
        } else {
            let expect: Vec<toml::Value> = self
                .expect
                .into_iter()
                .map(|((kind, target, decision), n)| {
                    let mut e = toml::Table::new();
                    e.insert("kind".into(), kind.into());
                    e.insert("target".into(), target.into());
                    e.insert("decision".into(), decision.into());
                    e.insert("min".into(), (n as i64).into());
                    e.insert("max".into(), (n as i64).into());
                    toml::Value::Table(e)
                })
                .collect();
            case.insert("expect".into(), toml::Value::Array(expect));
        }
        case.insert("timeline".into(), toml::Value::Array(self.timeline.into_iter().map(toml::Value::Table).collect()));
        let mut file = toml::Table::new();
        file.insert("case".into(), toml::Value::Array(vec![toml::Value::Table(case)]));
        toml::to_string(&file).map_err(|e| format!("the case cannot be written as TOML: {e}"))
    }
}

/// `v` as a TOML value: TOML has no null, so absent fields (`None`) are left out, as a case
/// file leaves them out.
fn to_toml<T: serde::Serialize>(v: &T) -> Option<toml::Value> {
    fn strip(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                serde_json::Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip(v))).collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(strip).collect()),
            other => other,
        }
    }
    toml::Value::try_from(strip(serde_json::to_value(v).ok()?)).ok()
}
