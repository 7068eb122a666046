//! Fleet control over MQTT: commands that arrive on `<prefix>/node/<node>/cmd`,
//! `<prefix>/group/<group>/cmd` or `<prefix>/fleet/cmd`. Switching to dry-run (and reloading
//! playbooks) is the safe direction: any client the broker lets publish there may do it.
//! Switching to live and resetting a breaker need an Ed25519 signature by a key in the node's
//! trusted-keys directory over the command's canonical JSON without `sig`, a timestamp within
//! five minutes, a nonce not seen before (nonces are kept in `<state_dir>/nonces`, fsync'd
//! before the command counts, so a restart does not forget them) and a `scope` naming the node,
//! group or fleet it is meant for (`node/<name>`, `group/<name>`, `fleet`): the signature covers
//! it, and a node refuses a command whose scope is not the topic it arrived on or does not
//! include it. A duplicate JSON key anywhere is refused. Everything else is rejected; every
//! command, accepted or not, is an audit record (rejections rate-limited, see
//! `daemon::Agent::remote`), and is acknowledged on `<topic>/ack`.

use super::command::{strict_json, CommandError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Signatures, their window and the nonce store (kept here too for the callers' paths).
pub use super::verify::{signed_bytes, Verifier, MAX_NONCES, NONCE_FILE, WINDOW_SECS};

/// Largest command accepted, in bytes.
pub const MAX_COMMAND: usize = 16 * 1024;

/// A command as published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub id: String,
    /// `set_mode`, `reset_breaker` or `reload`.
    pub op: String,
    /// Whom it is for: `node/<name>`, `group/<name>` or `fleet`; required when signed.
    pub scope: Option<String>,
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

impl Envelope {
    /// The typed command.
    pub fn command(&self) -> Result<super::command::Command, CommandError> {
        use super::command::Command;
        let s = |v: &Option<String>| v.clone().unwrap_or_default();
        match self.op.as_str() {
            "set_mode" => {
                let mode = self.mode.as_deref().ok_or_else(|| CommandError::Malformed("set_mode needs `mode`: live or dry-run".into()))?;
                Command::set_mode(mode, &s(&self.reason), self.ttl_secs)
            }
            "reset_breaker" => {
                let action = self.action.as_deref().ok_or_else(|| CommandError::Malformed("reset_breaker needs `action`".into()))?;
                Command::reset_breaker(&s(&self.playbook), action, &s(&self.target), &s(&self.reason))
            }
            "reload" => Ok(Command::Reload),
            other => {
                Err(CommandError::Malformed(format!("unknown op {:?}: set_mode, reset_breaker or reload", super::command::bounded(other))))
            }
        }
    }
}

/// Whom a command is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Node(String),
    Group(String),
    Fleet,
}

impl Scope {
    /// `node/<name>`, `group/<name>` or `fleet`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.split_once('/') {
            Some(("node", n)) if !n.is_empty() && !n.contains('/') => Some(Self::Node(n.into())),
            Some(("group", g)) if !g.is_empty() && !g.contains('/') => Some(Self::Group(g.into())),
            None if s == "fleet" => Some(Self::Fleet),
            _ => None,
        }
    }

    /// The scope of a command topic under `prefix`.
    pub fn of_topic(prefix: &str, topic: &str) -> Option<Self> {
        Self::parse(topic.strip_prefix(prefix)?.strip_prefix('/')?.strip_suffix("/cmd")?)
    }

    /// The topic commands for this scope are published on.
    pub fn topic(&self, prefix: &str) -> String {
        format!("{prefix}/{self}/cmd")
    }

    /// Whether a node with this name and these groups is in the scope.
    pub fn includes(&self, node: &str, groups: &[String]) -> bool {
        match self {
            Self::Node(n) => n == node,
            Self::Group(g) => groups.contains(g),
            Self::Fleet => true,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        match self {
            Self::Node(n) => write!(f, "node/{n}"),
            Self::Group(g) => write!(f, "group/{g}"),
            Self::Fleet => f.write_str("fleet"),
        }
    }
}

/// Parses a payload (`bytes` is its real size, `payload` may be cut): bounded, strict JSON with
/// no duplicate key at any depth and no unknown fields.
pub fn parse(payload: &[u8], bytes: usize) -> Result<(Envelope, Value), CommandError> {
    let bytes = bytes.max(payload.len());
    if bytes > MAX_COMMAND {
        return Err(CommandError::TooLarge { bytes, limit: MAX_COMMAND });
    }
    let raw = strict_json(payload)?;
    let cmd: Envelope =
        serde_json::from_value(raw.clone()).map_err(|e| CommandError::Malformed(super::command::bounded(&e.to_string())))?;
    if cmd.id.is_empty() || cmd.id.len() > 128 {
        return Err(CommandError::Malformed("`id` must be 1 to 128 characters".into()));
    }
    Ok((cmd, raw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    fn verifier(key: &SigningKey) -> Verifier {
        Verifier::with_keys(vec![("ops".into(), key.verifying_key())])
    }

    fn p(bytes: &[u8]) -> Result<(Envelope, Value), CommandError> {
        parse(bytes, bytes.len())
    }

    fn signed(key: &SigningKey, ts: i64, nonce: &str) -> (Envelope, Value) {
        let mut raw =
            serde_json::json!({ "id": "x", "op": "set_mode", "scope": "node/n1", "mode": "live", "reason": "r", "ts": ts, "nonce": nonce });
        let sig = key.sign(&signed_bytes(&raw));
        raw["sig"] = Value::from(hex::encode(sig.to_bytes()));
        p(raw.to_string().as_bytes()).unwrap()
    }

    fn err(r: Result<impl std::fmt::Debug, CommandError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn malformed_commands_are_refused_with_a_reason() {
        assert!(err(p(b"{not json")).contains("not JSON"));
        assert!(err(p(br#"{"id":"a","op":"set_mode","evil":1}"#)).contains("unknown field"));
        assert!(err(p(br#"{"id":"a","op":"set_mode","ttl_secs":"soon"}"#)).contains("invalid type"));
        assert!(err(p(br#"{"id":"","op":"reload"}"#)).contains("`id`"));
        assert!(err(p(br#"{"id":"a","op":"reload","op":"set_mode"}"#)).contains("duplicate key"));
        let big = format!(r#"{{"id":"a","op":"reload","reason":"{}"}}"#, "x".repeat(MAX_COMMAND));
        assert!(err(p(big.as_bytes())).contains("over the"));
        // A payload cut by the forwarder still counts at its real size.
        assert!(err(parse(b"{}", 2 << 20)).contains("over the"));
    }

    #[test]
    fn scopes_follow_topics() {
        assert_eq!(Scope::of_topic("medic/v1", "medic/v1/node/a/cmd"), Some(Scope::Node("a".into())));
        assert_eq!(Scope::of_topic("medic/v1", "medic/v1/group/web/cmd"), Some(Scope::Group("web".into())));
        assert_eq!(Scope::of_topic("medic/v1", "medic/v1/fleet/cmd"), Some(Scope::Fleet));
        assert_eq!(Scope::of_topic("medic/v1", "medic/v1/node/a/b/cmd"), None);
        assert_eq!(Scope::of_topic("medic/v1", "other/node/a/cmd"), None);
        assert_eq!(Scope::Group("web".into()).topic("p"), "p/group/web/cmd");
        assert!(Scope::Group("web".into()).includes("n", &["web".into()]));
        assert!(!Scope::Node("a".into()).includes("b", &[]));
    }

    #[test]
    fn signatures_windows_nonces_and_scopes() {
        let key = SigningKey::from_bytes(&[1u8; 32]);
        let other = SigningKey::from_bytes(&[2u8; 32]);
        let now = 1_800_000_000;
        let n1 = Scope::Node("n1".into());
        let mut v = verifier(&key);
        let (c, raw) = signed(&key, now, "n1");
        assert_eq!(v.check(&c, &raw, &n1, now).unwrap(), "ops");
        assert!(err(v.check(&c, &raw, &n1, now)).contains("replayed"));
        // Signed for node n1: refused on node n2's, a group's or the fleet's topic.
        let (c, raw) = signed(&key, now, "n1b");
        for s in [Scope::Node("n2".into()), Scope::Group("web".into()), Scope::Fleet] {
            assert!(matches!(v.check(&c, &raw, &s, now), Err(CommandError::Scope(_))));
        }
        let (c, raw) = signed(&other, now, "n2");
        assert!(err(v.check(&c, &raw, &n1, now)).contains("does not verify"));
        let (c, raw) = signed(&key, now - WINDOW_SECS - 1, "n3");
        assert!(err(v.check(&c, &raw, &n1, now)).contains("expired"));
        // A signed command changed after signing does not verify, its scope included.
        let (c, mut raw) = signed(&key, now, "n4");
        raw["mode"] = Value::from("dry-run");
        assert!(err(v.check(&c, &raw, &n1, now)).contains("does not verify"));
        let (mut c, mut raw) = signed(&key, now, "n4b");
        c.scope = Some("fleet".into());
        raw["scope"] = Value::from("fleet");
        assert!(err(v.check(&c, &raw, &Scope::Fleet, now)).contains("does not verify"));
        let (mut c, raw) = signed(&key, now, "n5");
        c.sig = None;
        assert!(err(v.check(&c, &raw, &n1, now)).contains("unsigned"));
        let (mut c, raw) = signed(&key, now, "n6");
        c.scope = None;
        assert!(err(v.check(&c, &raw, &n1, now)).contains("scope"));
    }

    #[test]
    fn accepted_nonces_survive_a_new_verifier_and_a_lost_store_refuses_older_commands() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::from_bytes(&[1u8; 32]);
        let keys = dir.path().join("keys");
        std::fs::create_dir_all(&keys).unwrap();
        std::fs::write(keys.join("ops.pub"), hex::encode(key.verifying_key().to_bytes())).unwrap();
        let now = crate::audit::now_ms() / 1000;
        let n1 = Scope::Node("n1".into());
        let (c, raw) = signed(&key, now, "once");
        assert!(Verifier::load(&keys, dir.path()).check(&c, &raw, &n1, now).is_ok());
        let mut again = Verifier::load(&keys, dir.path());
        assert!(matches!(again.check(&c, &raw, &n1, now), Err(CommandError::Replayed(_))));
        std::fs::write(dir.path().join(NONCE_FILE), "garbage\n").unwrap();
        let mut lost = Verifier::load(&keys, dir.path());
        let (c, raw) = signed(&key, now - 1, "older");
        assert!(err(lost.check(&c, &raw, &n1, now)).contains("nonce store"));
        let (c, raw) = signed(&key, now + 2, "newer");
        assert!(lost.check(&c, &raw, &n1, now + 2).is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn text() -> impl Strategy<Value = String> {
            "[ -~é\u{1F600}]{0,40}"
        }

        fn envelope() -> impl Strategy<Value = Envelope> {
            let op = prop_oneof![Just("set_mode"), Just("reset_breaker"), Just("reload"), Just("other")];
            let mode = proptest::option::of(prop_oneof![Just("live".to_string()), Just("dry-run".to_string()), text()]);
            let scope = proptest::option::of(prop_oneof![Just("fleet".to_string()), "node/[a-z0-9-]{1,12}", "group/[a-z]{1,8}", text()]);
            (
                ("[a-zA-Z0-9-]{1,128}", op, scope, mode, proptest::option::of(text()), proptest::option::of(text())),
                (proptest::option::of(any::<u64>()), proptest::option::of(text()), proptest::option::of(any::<i64>())),
                (proptest::option::of("[a-z0-9]{1,32}"), proptest::option::of("[0-9a-f]{128}")),
            )
                .prop_map(|((id, op, scope, mode, reason, actor), (ttl_secs, target, ts), (nonce, sig))| Envelope {
                    id,
                    op: op.into(),
                    scope,
                    mode,
                    reason,
                    actor,
                    ttl_secs,
                    playbook: None,
                    action: None,
                    target,
                    ts,
                    nonce,
                    sig,
                })
        }

        /// A JSON-looking text: keys and values from a small alphabet, so that structure,
        /// duplicates and near-misses are common.
        fn jsonish() -> impl Strategy<Value = String> {
            let leaf = prop_oneof![
                Just("1".to_string()),
                Just("\"live\"".to_string()),
                Just("null".to_string()),
                Just("-1e999".to_string()),
                Just("\"\\ud800\"".to_string()),
                text().prop_map(|t| format!("{t:?}"))
            ];
            leaf.prop_recursive(4, 32, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
                    proptest::collection::vec((prop_oneof![Just("id"), Just("op"), Just("mode"), Just("sig"), Just("x")], inner), 0..6)
                        .prop_map(|v| format!("{{{}}}", v.into_iter().map(|(k, x)| format!("\"{k}\":{x}")).collect::<Vec<_>>().join(","))),
                ]
            })
        }

        proptest! {
            // A fixed count in the suite; PROPTEST_CASES runs more (bench/proptest_long.sh).
            #![proptest_config(ProptestConfig::with_cases(std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)))]

            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in any::<bool>()) {
                let real = if cut { bytes.len() + MAX_COMMAND } else { bytes.len() };
                if let Ok((e, _)) = parse(&bytes, real) {
                    let _ = e.command();
                }
            }

            #[test]
            fn json_like_text_never_panics_and_duplicates_never_pass(t in jsonish()) {
                let r = parse(t.as_bytes(), t.len());
                if let Ok((e, raw)) = &r {
                    let _ = e.command();
                    let _ = signed_bytes(raw);
                }
                // Whatever strict_json accepts has no duplicate: serde_json's Value (last wins)
                // sees the same number of keys.
                if let Ok(v) = strict_json(t.as_bytes()) {
                    let loose: Value = serde_json::from_str(&t).unwrap();
                    prop_assert_eq!(v, loose);
                }
            }

            #[test]
            fn valid_commands_round_trip(e in envelope()) {
                let bytes = serde_json::to_vec(&e).unwrap();
                let (back, raw) = parse(&bytes, bytes.len()).unwrap();
                prop_assert_eq!(&back, &e);
                // The canonical bytes a signature covers do not depend on key order.
                let shuffled: Value = serde_json::from_slice(&bytes).unwrap();
                prop_assert_eq!(signed_bytes(&raw), signed_bytes(&shuffled));
            }

            #[test]
            fn duplicate_keys_are_always_refused(e in envelope(), pick in any::<prop::sample::Index>(), value in jsonish(), nested in any::<bool>()) {
                let bytes = serde_json::to_vec(&e).unwrap();
                let Value::Object(m) = serde_json::from_slice::<Value>(&bytes).unwrap() else { unreachable!() };
                let keys: Vec<&String> = m.keys().collect();
                let key = keys[pick.index(keys.len())];
                let text = String::from_utf8(bytes.clone()).unwrap();
                let body = &text[..text.len() - 1];
                let doubled = if nested {
                    format!("{body},\"zz\":{{\"k\":{value},\"k\":1}}}}")
                } else {
                    format!("{body},{key:?}:{value}}}")
                };
                prop_assert!(matches!(parse(doubled.as_bytes(), doubled.len()), Err(CommandError::DuplicateKey(_)) | Err(CommandError::NotJson(_))), "{doubled}");
                prop_assert!(!matches!(parse(doubled.as_bytes(), doubled.len()), Err(CommandError::NotJson(_))) || strict_json(value.as_bytes()).is_err());
            }
        }
    }
}
