//! Fleet control over MQTT: commands that arrive on `<prefix>/node/<node>/cmd`,
//! `<prefix>/group/<group>/cmd` or `<prefix>/fleet/cmd`. Switching to dry-run (and reloading
//! playbooks) is the safe direction: any client the broker lets publish there may do it.
//! Switching to live and resetting a breaker need an Ed25519 signature by a key in the node's
//! trusted-keys directory over the command's canonical JSON without `sig`, a timestamp within
//! five minutes and a nonce not seen before. Everything else is rejected; every command,
//! accepted or not, is an audit record, and is acknowledged on `<topic>/ack`.

use ed25519_dalek::{Signature, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

/// Largest command accepted, in bytes.
pub const MAX_COMMAND: usize = 16 * 1024;
/// How far a signed command's `ts` may be from the node's clock, in seconds.
pub const WINDOW_SECS: i64 = 300;

/// A command as published.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    pub id: String,
    /// `set_mode`, `reset_breaker` or `reload`.
    pub op: String,
    pub mode: Option<String>,
    pub reason: Option<String>,
    /// Who sends it (recorded; for signed commands, backed by the key).
    pub actor: Option<String>,
    pub ttl_secs: Option<u64>,
    pub playbook: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    /// Seconds since the epoch when it was made.
    pub ts: Option<i64>,
    pub nonce: Option<String>,
    /// Hex Ed25519 signature over the canonical JSON of the command without `sig`.
    pub sig: Option<String>,
}

/// Parses a payload: bounded, strict JSON with no unknown fields.
pub fn parse(payload: &[u8]) -> Result<(Command, Value), String> {
    if payload.len() > MAX_COMMAND {
        return Err(format!("command of {} bytes is over the {MAX_COMMAND}-byte limit", payload.len()));
    }
    let raw: Value = serde_json::from_slice(payload).map_err(|e| format!("not JSON: {e}"))?;
    let cmd: Command = serde_json::from_value(raw.clone()).map_err(|e| format!("bad command: {e}"))?;
    if cmd.id.is_empty() || cmd.id.len() > 128 {
        return Err("bad command: `id` must be 1 to 128 characters".into());
    }
    Ok((cmd, raw))
}

/// The canonical bytes a signature covers.
pub fn signed_bytes(raw: &Value) -> Vec<u8> {
    let mut v = raw.clone();
    if let Value::Object(m) = &mut v {
        m.remove("sig");
    }
    crate::audit::canonical(&v).into_bytes()
}

/// Checks signatures against the trusted keys and remembers nonces within the window.
#[derive(Default)]
pub struct Verifier {
    keys: Vec<(String, VerifyingKey)>,
    seen: HashMap<String, i64>,
}

impl Verifier {
    /// Loads `*.pub` files (64 hex digits each) from `dir`; a missing dir means no keys.
    pub fn load(dir: &Path) -> Self {
        let mut keys = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().is_none_or(|x| x != "pub") {
                    continue;
                }
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let key = hex::decode(text.trim())
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .and_then(|b| VerifyingKey::from_bytes(&b).ok());
                match key {
                    Some(k) => keys.push((p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(), k)),
                    None => tracing::warn!(message = "Trusted key unreadable; ignored.", file = %p.display()),
                }
            }
        }
        Self { keys, seen: HashMap::new() }
    }

    /// The name of the key that signed `raw`, or why it is not acceptable.
    pub fn check(&mut self, cmd: &Command, raw: &Value, now_s: i64) -> Result<String, String> {
        let sig = cmd.sig.as_deref().ok_or("unsigned: this command needs a signature by a trusted key")?;
        let ts = cmd.ts.ok_or("signed commands need `ts`")?;
        if (now_s - ts).abs() > WINDOW_SECS {
            return Err(format!("expired or from the future: ts {ts} is more than {WINDOW_SECS} s from now ({now_s})"));
        }
        let nonce = cmd.nonce.as_deref().filter(|n| !n.is_empty()).ok_or("signed commands need a `nonce`")?;
        let sig = hex::decode(sig).ok().and_then(|b| Signature::from_slice(&b).ok()).ok_or("`sig` is not a hex Ed25519 signature")?;
        let msg = signed_bytes(raw);
        let key = self
            .keys
            .iter()
            .find(|(_, k)| k.verify(&msg, &sig).is_ok())
            .map(|(n, _)| n.clone())
            .ok_or("signature does not verify with any trusted key")?;
        self.seen.retain(|_, t| (now_s - *t).abs() <= WINDOW_SECS);
        if self.seen.insert(nonce.to_string(), ts).is_some() {
            return Err(format!("replayed: nonce {nonce:?} was already used"));
        }
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn verifier(key: &SigningKey) -> Verifier {
        Verifier { keys: vec![("ops".into(), key.verifying_key())], seen: HashMap::new() }
    }

    fn signed(key: &SigningKey, ts: i64, nonce: &str) -> (Command, Value) {
        let mut raw = serde_json::json!({ "id": "x", "op": "set_mode", "mode": "live", "reason": "r", "ts": ts, "nonce": nonce });
        let sig = key.sign(&signed_bytes(&raw));
        raw["sig"] = Value::from(hex::encode(sig.to_bytes()));
        parse(raw.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn malformed_commands_are_refused_with_a_reason() {
        assert!(parse(b"{not json").unwrap_err().contains("not JSON"));
        assert!(parse(br#"{"id":"a","op":"set_mode","evil":1}"#).unwrap_err().contains("unknown field"));
        assert!(parse(br#"{"id":"a","op":"set_mode","ttl_secs":"soon"}"#).unwrap_err().contains("invalid type"));
        assert!(parse(br#"{"id":"","op":"reload"}"#).unwrap_err().contains("`id`"));
        let big = format!(r#"{{"id":"a","op":"reload","reason":"{}"}}"#, "x".repeat(MAX_COMMAND));
        assert!(parse(big.as_bytes()).unwrap_err().contains("over the"));
    }

    #[test]
    fn signatures_windows_and_nonces() {
        let key = SigningKey::from_bytes(&[1u8; 32]);
        let other = SigningKey::from_bytes(&[2u8; 32]);
        let now = 1_800_000_000;
        let mut v = verifier(&key);
        let (c, raw) = signed(&key, now, "n1");
        assert_eq!(v.check(&c, &raw, now).unwrap(), "ops");
        assert!(v.check(&c, &raw, now).unwrap_err().contains("replayed"));
        let (c, raw) = signed(&other, now, "n2");
        assert!(v.check(&c, &raw, now).unwrap_err().contains("does not verify"));
        let (c, raw) = signed(&key, now - WINDOW_SECS - 1, "n3");
        assert!(v.check(&c, &raw, now).unwrap_err().contains("expired"));
        // A signed command changed after signing does not verify.
        let (c, mut raw) = signed(&key, now, "n4");
        raw["mode"] = Value::from("dry-run");
        assert!(v.check(&c, &raw, now).unwrap_err().contains("does not verify"));
        let (mut c, raw) = signed(&key, now, "n5");
        c.sig = None;
        assert!(v.check(&c, &raw, now).unwrap_err().contains("unsigned"));
    }
}
