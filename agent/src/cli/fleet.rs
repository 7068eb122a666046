//! The fleet side of the CLI, over the broker in the config's `[mqtt]`: `medic mode ...
//! --node/--group/--fleet` publishes a command and reports who confirmed and who did not
//! answer (the fleet is known from the nodes' retained statuses); `medic fleet status` lists
//! those statuses (`status_cmd`); `medic audit tail --fleet` (`tail_cmd`) streams every node's records.

use super::escape::esc;
use super::exit::{Failure, Outcome};
use crate::config::resolve::{Overrides, Settings};
use crate::forward::MqttConfig;
use rumqttc::{Client, Event, Packet, QoS};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn client(cfg: &MqttConfig, role: &str) -> Result<(Client, rumqttc::Connection), String> {
    let opts = crate::forward::connection_options(cfg, format!("medic-cli-{role}-{}", std::process::id()))?;
    Ok(Client::new(opts, 100))
}

/// The retained statuses of every node, collected for `wait`.
pub fn statuses(cfg: &MqttConfig, wait: Duration) -> Result<BTreeMap<String, Value>, String> {
    let (c, mut conn) = client(cfg, "status")?;
    c.subscribe(format!("{}/node/+/status", cfg.prefix), QoS::AtLeastOnce).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    let end = Instant::now() + wait;
    while let Ok(ev) = conn.recv_timeout(end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))) {
        match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                    if let Some(n) = v["node"].as_str() {
                        out.insert(n.to_string(), v);
                    }
                }
            }
            Err(e) => return Err(format!("broker {}:{}: {e}", cfg.host, cfg.port)),
            _ => {}
        }
        if Instant::now() > end {
            break;
        }
    }
    Ok(out)
}

/// Publishes `cmd` on `topic` and collects acks for `wait`.
pub fn send(cfg: &MqttConfig, topic: &str, cmd: &Value, wait: Duration) -> Result<Vec<Value>, String> {
    let (c, mut conn) = client(cfg, "cmd")?;
    c.subscribe(format!("{topic}/ack"), QoS::AtLeastOnce).map_err(|e| e.to_string())?;
    let mut acks = Vec::new();
    let mut end = Instant::now() + Duration::from_secs(10);
    let mut sent = false;
    while let Ok(ev) = conn.recv_timeout(end.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))) {
        match ev {
            Ok(Event::Incoming(Packet::SubAck(_))) if !sent => {
                c.publish(topic, QoS::AtLeastOnce, false, cmd.to_string().into_bytes()).map_err(|e| e.to_string())?;
                sent = true;
                end = Instant::now() + wait;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                    if v["id"] == cmd["id"] {
                        acks.push(v);
                    }
                }
            }
            Err(e) => return Err(format!("broker {}:{}: {e}", cfg.host, cfg.port)),
            _ => {}
        }
        if Instant::now() > end {
            break;
        }
    }
    Ok(acks)
}

/// Signs a command with a secret key file (64 hex digits), adding ts and nonce. The command
/// must name its `scope` (`node/<name>`, `group/<name>` or `fleet`): the signature covers it,
/// so the same bytes are refused on any other node's, group's or the fleet's topic.
pub fn sign(cmd: &mut Value, key_file: &std::path::Path) -> Result<(), String> {
    use ed25519_dalek::Signer;
    if cmd["scope"].as_str().and_then(crate::control::remote::Scope::parse).is_none() {
        return Err("a signed command must name its scope: node/<name>, group/<name> or fleet".into());
    }
    let text = std::fs::read_to_string(key_file).map_err(|e| format!("{}: {e}", key_file.display()))?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{}: expected 64 hex digits (an Ed25519 secret key)", key_file.display()))?;
    let key = ed25519_dalek::SigningKey::from_bytes(&bytes);
    cmd["ts"] = Value::from(crate::audit::now_ms() / 1000);
    cmd["nonce"] = Value::from(uuid::Uuid::now_v7().to_string());
    let sig = key.sign(&crate::control::remote::signed_bytes(cmd));
    cmd["sig"] = Value::from(hex::encode(sig.to_bytes()));
    Ok(())
}

/// Streams every node's audit records until interrupted.
pub fn tail(cfg: &MqttConfig, json: bool) -> Result<(), String> {
    let (c, mut conn) = client(cfg, "tail")?;
    c.subscribe(format!("{}/node/+/audit", cfg.prefix), QoS::AtLeastOnce).map_err(|e| e.to_string())?;
    for ev in conn.iter() {
        match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if json {
                    println!("{}", String::from_utf8_lossy(&p.payload));
                } else if let Ok(Value::Object(r)) = serde_json::from_slice::<Value>(&p.payload) {
                    println!("{:<12} {}", r.get("node").and_then(|v| v.as_str()).unwrap_or(""), super::audit::show_line(&r));
                }
            }
            Err(e) => return Err(format!("broker {}:{}: {e}", cfg.host, cfg.port)),
            _ => {}
        }
    }
    Ok(())
}

/// The config's `[mqtt]`, for the fleet commands.
fn mqtt_of(config: Option<PathBuf>) -> Result<MqttConfig, Failure> {
    Ok(Settings::load(&Overrides { config, ..Default::default() })?.config.mqtt)
}

/// `medic fleet status`: every node's retained status.
pub fn status_cmd(json: bool, config: Option<PathBuf>) -> Outcome {
    let all = statuses(&mqtt_of(config)?, Duration::from_secs(2)).map_err(|e| Failure::op(anyhow::anyhow!(e)))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        println!("{:<20} {:<8} {:<8} {:<26} {:>8} VERSION", "NODE", "ONLINE", "MODE", "EXPIRES", "LAST SEQ");
        for (n, v) in &all {
            println!(
                "{:<20} {:<8} {:<8} {:<26} {:>8} {}",
                esc(n),
                v["online"],
                esc(v["mode"]["mode"].as_str().unwrap_or("-")),
                esc(v["mode"]["expires"].as_str().unwrap_or("-")),
                v["last_seq"],
                esc(v["version"].as_str().unwrap_or("-"))
            );
        }
    }
    Ok(())
}

/// `medic audit tail --fleet`: every node's records as they come.
pub fn tail_cmd(json: bool, config: Option<PathBuf>) -> Outcome {
    tail(&mqtt_of(config)?, json).map_err(|e| Failure::op(anyhow::anyhow!(e)))
}
