//! `medic playbook replay`: plays playbooks (files, directories, or `bundled`) over the flight
//! recorder's timeline through the decide step (`decide::replay`) in dry-run, with the node's
//! policy and limits, and prints what they would have asked and what the gate would have
//! decided; `--save-case` cuts a `playbook test` case from the stretch.

use super::escape::esc;
use super::exit::{Failure, Outcome};
use crate::decide::replay::Replay;
use crate::decide::{Backoff, Decider};
use crate::gate::Gate;
use crate::playbooks::{self, bundled, cut, testing, Playbook};
use crate::signals::history::History;
use anyhow::{anyhow, Context};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Playbook files, directories of *.rhai, `bundled` (every bundled playbook) or
    /// `bundled:<file>` (one). They need not be loaded by the agent.
    #[arg(required = true, value_name = "PLAYBOOK_OR_DIR")]
    paths: Vec<String>,
    #[command(flatten)]
    stretch: super::recording::Stretch,
    /// One JSON object per decision, one per line (the summary goes to stderr).
    #[arg(long)]
    json: bool,
    /// Write a `playbook test` case (TOML) cut from the stretch (one playbook only).
    #[arg(long, value_name = "FILE")]
    save_case: Option<PathBuf>,
}

/// An RFC 3339 time, or a duration before now.
pub fn parse_time(s: &str) -> anyhow::Result<i64> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0));
    }
    let ago = humantime::parse_duration(s.trim_end_matches(" ago"))
        .map_err(|_| anyhow!("{s:?}: not an RFC 3339 time (2026-11-27T10:00:00Z) or a duration ago (2h, 30m)"))?;
    Ok(crate::audit::now_ms() - ago.as_millis().min(i64::MAX as u128) as i64)
}

/// (label, source) of the playbooks named.
fn sources(paths: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for p in paths {
        if p == "bundled" {
            out.extend(bundled::PLAYBOOKS.iter().map(|(f, s, _)| (format!("bundled:{f}"), s.to_string())));
        } else if let Some(f) = p.strip_prefix("bundled:") {
            let (_, s, _) = bundled::PLAYBOOKS
                .iter()
                .find(|(n, _, _)| *n == f || n.trim_end_matches(".rhai") == f)
                .ok_or_else(|| anyhow!("{p}: no bundled playbook of that name"))?;
            out.push((p.clone(), s.to_string()));
        } else if Path::new(p).is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| p.clone())?
                .flatten()
                .map(|e| e.path())
                .filter(|f| f.extension().is_some_and(|e| e == "rhai"))
                .collect();
            files.sort();
            for f in files {
                let src = playbooks::read_source(&f).map_err(|e| anyhow!("{}: {e}", f.display()))?;
                out.push((f.display().to_string(), src));
            }
        } else {
            let src = playbooks::read_source(Path::new(p)).map_err(|e| anyhow!("{p}: {e}"))?;
            out.push((p.clone(), src));
        }
    }
    Ok(out)
}

pub fn run(a: ReplayArgs) -> Outcome {
    let super::recording::Resolved { settings, recording, from, to } = a.stretch.resolve()?;
    eprintln!("using {}", settings.source);
    let cfg = &settings.config;
    let rt = Arc::new(super::playbook::runtime(&settings));
    let srcs = sources(&a.paths)?;
    if a.save_case.is_some() && srcs.len() != 1 {
        return Err(Failure::Usage(format!("--save-case cuts a case for one playbook; {} given", srcs.len())));
    }
    let mut compiled: Vec<Playbook> = Vec::new();
    let mut failed = false;
    for (label, src) in &srcs {
        match rt.compile(label, src) {
            Ok(pb) => compiled.push(pb),
            Err(e) => {
                eprintln!("{e}");
                failed = true;
            }
        }
    }
    if failed {
        return Err(Failure::CheckFailed);
    }
    // Gated with the node's policy; the protected rule by unit and name, as the processes
    // recorded are not this host's now.
    let backoff = Backoff { first_ms: cfg.playbooks.disable_ms(), max_ms: cfg.playbooks.max_disable_ms() };
    let mut decider = Decider::new(rt.clone(), Gate::for_fixtures(cfg.policy.clone()).with_maintenance(cfg.maintenance_windows()), backoff);
    for pb in &compiled {
        decider.install(pb.clone());
    }
    let history = History::new(cfg.signals.history_ms(), cfg.signals.interval_ms(), cfg.signals.max_series);
    let mut replay = Replay::new(decider, history);
    let frames = crate::recorder::read(&recording, from, to).map_err(|e| anyhow!("{e}"))?;
    let file = compiled.first().map(|p| p.file.clone()).unwrap_or_default();
    let mut keys = std::collections::BTreeSet::new();
    // For --save-case: the decisions of each frame (the frames are read again to cut the case).
    let mut decided: std::collections::BTreeMap<i64, Vec<(String, String, String)>> = Default::default();
    for frame in frames {
        let frame = frame.map_err(|e| anyhow!("{e}"))?;
        if a.save_case.is_some() && replay.frames >= MAX_CASE_FRAMES {
            return Err(Failure::Usage(format!(
                "--save-case: the stretch has more than {MAX_CASE_FRAMES} frames; narrow it with --from and --to"
            )));
        }
        let ts = frame.snap.ts_ms;
        let step = replay.feed(frame.snap, frame.forced);
        for d in &step.decisions {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ts": crate::audit::now_rfc3339(d.ts_ms), "playbook": d.playbook, "kind": d.kind, "target": d.target,
                        "decision": d.decision, "rule": d.rule, "detail": d.detail,
                    })
                );
            } else {
                println!(
                    "{} {} {} {} → {} ({})",
                    crate::audit::now_rfc3339(d.ts_ms),
                    esc(&d.playbook),
                    d.kind,
                    esc(&d.target),
                    d.decision,
                    d.rule
                );
            }
        }
        for (name, error, until) in &step.disabled {
            eprintln!("{name}: would have been disabled until {}: {}", crate::audit::now_rfc3339(*until), esc(error));
        }
        if a.save_case.is_some() {
            if let Some(last) = replay.decider().slot(&file).and_then(|s| s.last.as_ref()) {
                keys.extend(last.reads.keys().cloned());
            }
            decided.insert(ts, step.decisions.iter().map(|d| (d.kind.clone(), d.target.clone(), d.decision.to_string())).collect());
        }
    }
    let span = match (replay.first_ms, replay.last_ms) {
        (Some(f), Some(l)) => format!("{} to {}", crate::audit::now_rfc3339(f), crate::audit::now_rfc3339(l)),
        _ => "nothing".into(),
    };
    eprintln!("replayed {} frames from {} ({span})", replay.frames, recording.display());
    for (name, s) in &replay.summaries {
        let refused: Vec<String> = s.refused_by_rule.iter().map(|(r, n)| format!("{n} {r}")).collect();
        eprintln!(
            "{}: {} evaluations, {} requests, {} would_execute, refused: {}, breakers opened: {}{}",
            esc(name),
            s.evaluations,
            s.requests,
            s.would_execute,
            if refused.is_empty() { "none".into() } else { refused.join(", ") },
            if s.breakers_opened.is_empty() { "none".into() } else { esc(&s.breakers_opened.join(", ")).into_owned() },
            s.first_error.as_ref().map(|e| format!(", disabled {} times (first: {})", s.disabled, esc(e))).unwrap_or_default(),
        );
    }
    if replay.frames == 0 {
        return Err(Failure::Refused(format!("no recorded frames in {} for that stretch", recording.display())));
    }
    if let (Some(out), Some((_, src))) = (&a.save_case, srcs.first()) {
        let step = median_gap(decided.keys().copied());
        let mut cutter = cut::CaseCutter::new(src, keys, step);
        for frame in crate::recorder::read(&recording, from, to).map_err(|e| anyhow!("{e}"))? {
            let frame = frame.map_err(|e| anyhow!("{e}"))?;
            let decisions = decided.remove(&frame.snap.ts_ms).unwrap_or_default();
            cutter.frame(&frame.snap, decisions);
        }
        let name = format!("replayed from the recording, {span}");
        let text = cutter.finish(&name).map_err(|e| anyhow!(e))?;
        std::fs::write(out, &text).with_context(|| out.display().to_string())?;
        let passes = testing::run(&rt, &cfg.policy, &cfg.maintenance_windows(), &file, src, &out.display().to_string(), &text)
            .map(|r| r.iter().all(|c| c.passed))
            .unwrap_or(false);
        eprintln!(
            "wrote {} ({} timeline steps); as a test case it {}",
            out.display(),
            text.matches("[[case.timeline]]").count(),
            if passes { "passes" } else { "does not pass yet (the replay and the case's fixed step differ): edit its expectation" }
        );
    }
    Ok(())
}

/// The longest stretch `--save-case` cuts (an hour of one-second ticks): a case holds the
/// values read at every change, and a process list at every frame where it changed.
const MAX_CASE_FRAMES: u64 = 3_600;

/// The usual spacing of the frames (the agent's interval), for a case's step.
fn median_gap(ts: impl Iterator<Item = i64>) -> i64 {
    let ts: Vec<i64> = ts.collect();
    let mut gaps: Vec<i64> = ts.windows(2).map(|w| w[1] - w[0]).filter(|g| *g > 0).collect();
    gaps.sort_unstable();
    gaps.get(gaps.len() / 2).copied().unwrap_or(1000)
}
