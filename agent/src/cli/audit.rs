//! `medic audit show|verify`: the local log, read in the state dir (`--state-dir`, else the
//! config's). `audit tail --fleet` is in `fleet.rs`.

use super::escape::esc;
use super::exit::{Failure, Outcome};
use crate::audit;
use crate::config::resolve::{Overrides, Settings};
use anyhow::Context;
use std::path::PathBuf;

/// `--state-dir` as given (no config is read), else the resolved one.
fn state_dir(state_dir: Option<PathBuf>, config: Option<PathBuf>) -> Result<PathBuf, Failure> {
    if let Some(d) = state_dir {
        return Ok(d);
    }
    Ok(Settings::load(&Overrides { config, ..Default::default() })?.state_dir)
}

pub fn show(dir: Option<PathBuf>, config: Option<PathBuf>, since: Option<String>, playbook: Option<String>, json: bool) -> Outcome {
    let since = since.map(|s| parse_since(&s)).transpose()?;
    let dir = state_dir(dir, config)?;
    audit::verify::for_each_record(&dir, |r| {
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{e}");
                return;
            }
        };
        let ts = r.get("ts").and_then(|v| v.as_str()).unwrap_or("");
        if let Some(s) = since {
            if humantime::parse_rfc3339_weak(ts).is_ok_and(|t| t < s) {
                return;
            }
        }
        let pb = crate::audit::record::playbook_name(&r);
        if playbook.as_deref().is_some_and(|want| pb.as_deref() != Some(want)) {
            return;
        }
        if json {
            println!("{}", audit::canonical(&serde_json::Value::Object(r)));
        } else {
            println!("{}", show_line(&r));
        }
    })
    .with_context(|| format!("reading {}", dir.display()))?;
    Ok(())
}

pub fn verify(dir: Option<PathBuf>, config: Option<PathBuf>, checkpoint: Option<String>) -> Outcome {
    let dir = state_dir(dir, config)?;
    let checkpoint = match checkpoint {
        None => None,
        Some(c) => {
            let text = if c.trim_start().starts_with('{') {
                c
            } else {
                std::fs::read_to_string(&c).with_context(|| format!("reading checkpoint {c}"))?
            };
            Some(audit::verify::Checkpoint::parse(&text).map_err(|e| Failure::Usage(format!("checkpoint: {e}")))?)
        }
    };
    match audit::verify::verify_with(&dir, checkpoint.as_ref()).with_context(|| format!("reading {}", dir.display()))? {
        Ok(v) => {
            println!(
                "{}: ok, {} record(s) in {} segment(s), seq {}..{}, chain intact (last hash {})",
                dir.display(),
                v.records,
                v.segments,
                v.first_seq,
                v.last_seq,
                v.last_hash
            );
            if let Some(c) = &checkpoint {
                println!("checkpoint seq {} found with its hash", c.seq);
            }
            for (seq, after) in &v.rewinds {
                println!("warning: seq {seq} records a rewind: records after seq {after} were lost (audit_rewound)");
            }
            for seq in &v.chain_breaks {
                println!("warning: seq {seq} records a chain break found at start (audit_chain_broken)");
            }
            Ok(())
        }
        Err(b) => {
            println!("{}: {b}", dir.display());
            Err(Failure::CheckFailed)
        }
    }
}

/// `--since`: an RFC 3339 time, or a duration ago.
fn parse_since(s: &str) -> Result<std::time::SystemTime, Failure> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    let d =
        humantime::parse_duration(s).map_err(|_| Failure::Usage(format!("--since {s:?}: expected RFC 3339 time or a duration like 1h")))?;
    // A duration reaching before the epoch (`--since 1000000y`) means everything, not a panic.
    Ok(std::time::SystemTime::now().checked_sub(d).unwrap_or(std::time::UNIX_EPOCH))
}

/// One audit record as a line for humans; everything in it came from the log: escaped.
pub(super) fn show_line(r: &serde_json::Map<String, serde_json::Value>) -> String {
    esc(&show_line_raw(r)).into_owned()
}

fn show_line_raw(r: &serde_json::Map<String, serde_json::Value>) -> String {
    let g = |k: &str| r.get(k).and_then(|v| v.as_str()).unwrap_or("");
    let seq = r.get("seq").and_then(|v| v.as_u64()).unwrap_or(0);
    let pb = crate::audit::record::playbook_name(r).unwrap_or_default();
    let head = format!("{seq:>6} {} {:<18}", g("ts"), g("kind"));
    match g("kind") {
        "action" => {
            let a = r.get("action").cloned().unwrap_or_default();
            let reason = r.get("trigger").and_then(|t| t.get("reason")).and_then(|v| v.as_str()).unwrap_or("");
            format!(
                "{head} {pb}: {} {} → {} ({}) — {reason}",
                a.get("kind").and_then(|v| v.as_str()).unwrap_or(""),
                a.get("target").map(|v| v.to_string()).unwrap_or_default(),
                g("decision"),
                g("rule")
            )
        }
        "playbook_rejected" | "playbook_disabled" => format!("{head} {pb} {}", g("error")),
        _ if !pb.is_empty() => format!("{head} {pb}"),
        _ => head,
    }
}
