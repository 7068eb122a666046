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
//! # start = "2026-11-27T21:50:00Z"  # where the simulated clock starts (default EPOCH_MS), for
//! #                                  # maintenance windows and active hours
//! [[case.timeline]]
//! at = "0s"
//! metrics = { "disk./var/log.used_pct" = 95.0 }
//! mounts = [{ mount_point = "/var/log", device = "/dev/sda2", fs_type = "ext4" }]
//! # processes = [{ pid = 40, ppid = 1, name = "app", state = "S", fds = 250, fd_limit = 256 }]
//! ```
//!
//! A process entry sets what the sampler reads (`pid`, `ppid`, `name`, `cmdline`, `unit`,
//! `cpu_pct`, `rss_bytes`, `fds`, `fd_limit`, `threads`, `start_time`, `state`, `tcp`); what the
//! tree derives (`children`, `zombie_children`, `rss_tree_bytes`, `fds_pct`) is derived from the
//! list by the sampler's own `signals::process::derive_tree`, so it cannot be set.

use super::Runtime;
use crate::config::line_col;
use crate::decide::{Backoff, Decider, Timeline};
use crate::gate::{Gate, Mode};
use crate::signals::disk::Mount;
use crate::signals::history::History;
use crate::signals::process::{derive_tree, units_of, ProcessInfo};
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
    /// RFC 3339: where the simulated clock starts (default [`EPOCH_MS`]).
    start: Option<String>,
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
/// Gated against `policy` and the maintenance `windows`: the node's (`playbook test --config`),
/// so a case that passes here is not refused there.
pub fn run(
    rt: &Arc<Runtime>,
    policy: &crate::config::PolicyConfig,
    windows: &crate::gate::maintenance::Windows,
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
        let r =
            run_case(rt, policy, windows, &pb, case).unwrap_or_else(|e| CaseResult { name: case.name.clone(), passed: false, message: e });
        results.push(r);
    }
    Ok(results)
}

fn run_case(
    rt: &Arc<Runtime>,
    policy: &crate::config::PolicyConfig,
    windows: &crate::gate::maintenance::Windows,
    pb: &super::Playbook,
    case: &Case,
) -> Result<CaseResult, String> {
    let duration = ms("duration", &case.duration)?;
    let epoch = match &case.start {
        None => EPOCH_MS,
        Some(s) => s.parse::<jiff::Timestamp>().map_err(|e| format!("start: {s:?} is not an RFC 3339 time: {e}"))?.as_millisecond(),
    };
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
    let mut decider = Decider::new(rt.clone(), Gate::for_fixtures(policy.clone()).with_maintenance(windows.clone()), backoff);
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
                // Children, zombies, memory with descendants and fds_pct: as the sampler derives them.
                derive_tree(&mut cur.processes);
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
        cur.ts_ms = epoch.saturating_add(t);
        let step = timeline.tick(cur.clone(), crate::signals::wake::Wake::NONE);
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
