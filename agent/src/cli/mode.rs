//! `medic mode live|dry-run`: through the local control socket, or with `--node`, `--group` or
//! `--fleet` over the broker in the config's `[mqtt]` (signed, acknowledged by each node).

use super::escape::esc;
use super::exit::{Failure, Outcome};
use super::{control, fleet, ControlArgs};
use crate::config::resolve::{Overrides, Settings};
use crate::control::Request;
use std::path::PathBuf;
use std::time::Duration;

/// Where a mode change goes: the local agent, or a scope over MQTT.
pub struct Target {
    pub node: Option<String>,
    pub group: Option<String>,
    pub fleet: bool,
    pub sign_key: Option<PathBuf>,
    pub wait: u64,
}

pub fn run(mode: String, reason: String, ttl: Option<String>, to: Target, c: &ControlArgs) -> Outcome {
    let ttl_secs = ttl
        .as_deref()
        .map(humantime::parse_duration)
        .transpose()
        .map_err(|e| Failure::Usage(format!("--ttl: {e} (e.g. 30m, 2h)")))?
        .map(|d| d.as_secs().max(1));
    if to.node.is_some() || to.group.is_some() || to.fleet {
        return remote(c, &mode, &reason, ttl_secs, to);
    }
    let m = control::call(c, &Request::SetMode { mode, reason, ttl_secs })?;
    let exp = m
        .get("expires")
        .and_then(|v| v.as_str())
        .map(|e| format!(" until {e}, then {}", m["revert_to"].as_str().unwrap_or("?")))
        .unwrap_or_default();
    println!("mode: {}{} (set by {})", esc(m["mode"].as_str().unwrap_or("?")), esc(&exp), esc(m["actor"].as_str().unwrap_or("?")));
    Ok(())
}

/// `medic mode ... --node/--group/--fleet`: publish, wait for acks, report.
fn remote(control: &ControlArgs, mode: &str, reason: &str, ttl_secs: Option<u64>, to: Target) -> Outcome {
    let Target { node, group, sign_key, wait, .. } = to;
    let settings = Settings::load(&Overrides { config: control.config.clone(), ..Default::default() })?;
    let m = &settings.config.mqtt;
    use crate::control::remote::Scope;
    let scope = match (&node, &group) {
        (Some(n), _) => Scope::Node(n.clone()),
        (_, Some(g)) => Scope::Group(g.clone()),
        _ => Scope::Fleet,
    };
    let topic = scope.topic(&m.prefix);
    let actor = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "unknown".into());
    // The scope is part of what is signed: the command is good on this topic only.
    let mut cmd = serde_json::json!({ "id": uuid::Uuid::now_v7().to_string(), "op": "set_mode", "scope": scope.to_string(), "mode": mode, "reason": reason, "actor": actor });
    if let Some(t) = ttl_secs {
        cmd["ttl_secs"] = t.into();
    }
    if let Some(k) = &sign_key {
        fleet::sign(&mut cmd, k).map_err(|e| Failure::Usage(e.to_string()))?;
    }
    let expected: Vec<String> = fleet::statuses(m, Duration::from_secs(2))
        .map_err(|e| Failure::op(anyhow::anyhow!(e)))?
        .into_iter()
        .filter(|(n, v)| {
            v["online"] == serde_json::Value::Bool(true)
                && node.as_ref().is_none_or(|want| want == n)
                && group.as_ref().is_none_or(|g| v["groups"].as_array().is_some_and(|a| a.iter().any(|x| x == g)))
        })
        .map(|(n, _)| n)
        .collect();
    let acks = fleet::send(m, &topic, &cmd, Duration::from_secs(wait)).map_err(|e| Failure::op(anyhow::anyhow!(e)))?;
    let mut failed = false;
    for a in &acks {
        let n = a["node"].as_str().unwrap_or("?");
        if a["ok"] == serde_json::Value::Bool(true) {
            println!("{n:<20} confirmed: {}", a["result"]);
        } else {
            failed = true;
            println!("{n:<20} REJECTED: {}", a["error"].as_str().unwrap_or(""));
        }
    }
    let answered: Vec<&str> = acks.iter().filter_map(|a| a["node"].as_str()).collect();
    let silent: Vec<&String> = expected.iter().filter(|n| !answered.contains(&n.as_str())).collect();
    for n in &silent {
        println!("{n:<20} did not answer within {wait}s");
    }
    println!(
        "{} confirmed, {} rejected, {} did not answer",
        acks.iter().filter(|a| a["ok"] == serde_json::Value::Bool(true)).count(),
        acks.iter().filter(|a| a["ok"] != serde_json::Value::Bool(true)).count(),
        silent.len()
    );
    super::exit::check(!failed && silent.is_empty() && !acks.is_empty())
}
