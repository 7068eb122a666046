//! `medic breaker list|reset`: the circuit breakers of the running agent, over the control
//! socket.

use super::escape::esc;
use super::exit::Outcome;
use super::{control, ControlArgs};
use crate::control::Request;

pub fn list(json: bool, c: &ControlArgs) -> Outcome {
    let list = control::call(c, &Request::Breakers)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else if list.as_array().is_none_or(|a| a.is_empty()) {
        println!("no open breakers");
    } else {
        for b in list.as_array().into_iter().flatten() {
            println!(
                "{} {} {} ({}), open since {}",
                esc(b["playbook"].as_str().unwrap_or("")),
                esc(b["action"].as_str().unwrap_or("")),
                esc(&b["target"].to_string()),
                esc(b["mode"].as_str().unwrap_or("")),
                crate::audit::now_rfc3339(b["open_since_ms"].as_i64().unwrap_or(0))
            );
        }
    }
    Ok(())
}

pub fn reset(playbook: String, action: String, target: String, reason: String, c: &ControlArgs) -> Outcome {
    control::call(c, &Request::ResetBreaker { playbook, action, target, reason })?;
    println!("breaker reset");
    Ok(())
}
