//! `medic explain`: prints the running agent's answer (`decide::explain`) per playbook, for a
//! person (escaped: reads, targets and details come from the node and from playbooks) or as one
//! JSON object per line.

use super::escape::esc;
use super::exit::Outcome;
use super::{control, ControlArgs};
use crate::control::Request;
use serde_json::Value;

pub fn run(playbook: Option<String>, target: Option<String>, json: bool, c: &ControlArgs) -> Outcome {
    let answer = control::call(c, &Request::Explain { playbook, target })?;
    print(&answer, json)
}

fn s(v: &Value) -> String {
    match v {
        Value::String(t) => esc(t).into_owned(),
        Value::Null => "-".into(),
        other => esc(&other.to_string()).into_owned(),
    }
}

fn print(answer: &Value, json: bool) -> Outcome {
    let empty = Vec::new();
    let playbooks = answer["playbooks"].as_array().unwrap_or(&empty);
    if json {
        for p in playbooks {
            println!("{}", serde_json::to_string(p)?);
        }
        return Ok(());
    }
    println!("node {} in {} at {}", s(&answer["node"]), s(&answer["mode"]), s(&answer["at"]));
    for p in playbooks {
        println!();
        println!("{} ({}), every {}s", s(&p["playbook"]), s(&p["file"]), p["interval_secs"]);
        println!("  last evaluated {}, next due {}", s(&p["last_evaluated"]), s(&p["next_due"]));
        if !p["disabled_until"].is_null() {
            println!("  DISABLED until {}: {}", s(&p["disabled_until"]), s(&p["last_error"]));
        } else if !p["last_error"].is_null() {
            println!("  last evaluation failed: {}", s(&p["last_error"]));
        }
        let reads = p["reads"].as_array().unwrap_or(&empty);
        if reads.is_empty() {
            println!("  read nothing");
        } else {
            println!("  read:");
            for r in reads {
                println!("    {} = {}", s(&r["key"]), s(&r["value"]));
            }
            if p["reads_omitted"].as_u64().unwrap_or(0) > 0 {
                println!("    ({} more reads not kept)", p["reads_omitted"]);
            }
        }
        let requests = p["requests"].as_array().unwrap_or(&empty);
        if p["asked_nothing"] == true {
            println!("  asked nothing");
        }
        for r in requests {
            println!("  asked {} {} → {} ({}): {}", s(&r["kind"]), s(&r["target"]), s(&r["decision"]), s(&r["rule"]), s(&r["detail"]));
        }
        let blocked = p["blocked_by"].as_array().unwrap_or(&empty);
        if blocked.is_empty() && !p["targets"].as_array().unwrap_or(&empty).is_empty() {
            println!("  nothing blocks an action on its targets now");
        }
        for b in blocked {
            let until = if b["until"].is_null() { String::new() } else { format!(", clears {}", s(&b["until"])) };
            println!("  blocked now: {} {} by {}: {}{until}", s(&b["kind"]), s(&b["target"]), s(&b["rule"]), s(&b["detail"]));
        }
    }
    Ok(())
}
