//! `medic status`: the running agent's mode, audit health, replication, budgets, playbooks,
//! breakers and history fill, asked over the control socket and printed for humans (every
//! string from the agent escaped) or as JSON.

use super::escape::esc;
use super::exit::Outcome;
use super::{control, ControlArgs};
use crate::control::Request;

pub fn run(json: bool, c: &ControlArgs) -> Outcome {
    let st = control::call(c, &Request::Status)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&st)?);
    } else {
        print_status(&st);
    }
    Ok(())
}

fn print_status(st: &serde_json::Value) {
    let m = &st["mode"];
    let s = |v: &serde_json::Value| esc(v.as_str().unwrap_or("")).into_owned();
    println!("node:     {} (medic {})", s(&st["node"]), s(&st["version"]));
    let exp = m["expires"].as_str().map(|e| format!(", reverts to {} at {e}", s(&m["revert_to"]))).unwrap_or_default();
    println!("mode:     {}{exp}\n          set by {}: {}", s(&m["mode"]), s(&m["actor"]), s(&m["reason"]));
    let a = &st["audit"];
    if a["writable"] == serde_json::Value::Bool(false) {
        println!(
            "audit:    NOT WRITABLE since {}: {}\n          no action is decided or started until it is",
            s(&a["down_since"]),
            s(&a["error"])
        );
    } else {
        println!("audit:    {} (last seq {})", s(&a["path"]), st["last_seq"]);
    }
    let i = &a["integrity"];
    if i["rewound"].is_object() {
        let r = &i["rewound"];
        println!(
            "audit:    REWOUND (recorded at seq {}, {}): seq {}..{} lost: {}",
            r["seq"],
            s(&r["ts"]),
            r["lost_from_seq"],
            r["lost_to_seq"],
            s(&r["reason"])
        );
    }
    if i["chain_broken"].is_object() {
        let b = &i["chain_broken"];
        println!(
            "audit:    CHAIN BROKEN after seq {} (recorded at seq {}, {}): {}",
            b["after_seq"],
            b["seq"],
            s(&b["ts"]),
            s(&b["reason"])
        );
    }
    let r = &st["replication"];
    if r.is_object() {
        if r["connected"] == serde_json::Value::Bool(true) {
            println!("mqtt:     connected to {}, acknowledged up to seq {}", s(&r["broker"]), r["cursor"]);
        } else {
            println!(
                "mqtt:     NOT CONNECTED to {} ({}); records wait in the local log (acknowledged up to seq {})",
                s(&r["broker"]),
                esc(r["error"].as_str().unwrap_or("connecting")),
                r["cursor"]
            );
        }
    }
    println!(
        "budget:   {} live, {} dry-run actions left this hour; {} running",
        st["budget_left"]["live"], st["budget_left"]["dry-run"], st["running_actions"]
    );
    println!("playbooks:");
    for p in st["playbooks"].as_array().into_iter().flatten() {
        let state = match p["disabled_until"].as_str() {
            Some(u) => format!("DISABLED until {u}: {}", s(&p["last_error"])),
            None if p["forced_dry_run"] == serde_json::Value::Bool(true) => "loaded (forced dry-run)".into(),
            None => "loaded".into(),
        };
        let hours = match p["active_again"].as_str() {
            Some(t) => format!("; outside its active hours, active again {t}"),
            None if p["inactive"] == serde_json::Value::Bool(true) => "; outside its active hours".into(),
            None => String::new(),
        };
        println!("  {:<24} {state}{hours}", s(&p["name"]));
    }
    print_maintenance(&st["maintenance"]);
    let breakers = st["open_breakers"].as_array().cloned().unwrap_or_default();
    println!(
        "breakers: {}",
        if breakers.is_empty() { "none open".to_string() } else { format!("{} open (medic breaker list)", breakers.len()) }
    );
    if let Some(u) = st["unavailable_signals"].as_object().filter(|u| !u.is_empty()) {
        println!("unavailable signals: {}", esc(&u.keys().cloned().collect::<Vec<_>>().join(", ")));
    }
    print_history(&st["history"]);
}

/// Each maintenance window: whether it holds actions now and until when, and when it next starts.
fn print_maintenance(m: &serde_json::Value) {
    let windows = m.as_array().cloned().unwrap_or_default();
    if windows.is_empty() {
        println!("maintenance: no windows");
        return;
    }
    println!("maintenance:");
    for w in &windows {
        let s = |v: &serde_json::Value| esc(v.as_str().unwrap_or("-")).into_owned();
        let now = if w["active"] == serde_json::Value::Bool(true) { format!("ACTIVE until {}", s(&w["until"])) } else { "inactive".into() };
        let next = w["next_start"].as_str().map_or(String::new(), |n| format!(", next {}", esc(n)));
        println!("  {:<24} {}: {now}{next}", s(&w["name"]), s(&w["when"]));
    }
}

/// The history's fill, and what it refused or evicted: a refused series is one playbooks see
/// as unavailable.
fn print_history(h: &serde_json::Value) {
    if !h.is_object() {
        return;
    }
    let mib = |v: &serde_json::Value| format!("{:.1} MiB", v.as_f64().unwrap_or(0.0) / 1_048_576.0);
    let keys = |v: &serde_json::Value| {
        esc(&v.as_array().into_iter().flatten().filter_map(|k| k.as_str()).collect::<Vec<_>>().join(", ")).into_owned()
    };
    println!(
        "history:  {} of {} series over {} s, {} (bound {}); {} series of exited processes dropped",
        h["series"],
        h["max_series"],
        h["span_secs"],
        mib(&h["bytes"]),
        mib(&h["bound_bytes"]),
        h["evicted_exited"]
    );
    if h["refused"].as_u64().unwrap_or(0) > 0 {
        println!(
            "          FULL: {} series refused since start, {} at the last tick (playbooks see them as unavailable; raise signals.max_series)\n          last refused: {}",
            h["refused"], h["refusing_now"], keys(&h["last_refused"])
        );
    }
    if h["evicted_live"].as_u64().unwrap_or(0) > 0 {
        println!(
            "          {} live series evicted for series playbooks read or node-wide ones\n          last evicted: {}",
            h["evicted_live"],
            keys(&h["last_evicted"])
        );
    }
}
