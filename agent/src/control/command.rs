//! Commands: the one vocabulary of what an operator may ask the running agent, whatever the
//! edge it arrives on. The local socket (`control::Request`) and the fleet's MQTT topics
//! (`control::remote::Envelope`) are each parsed into a [`Command`] and handed, with its
//! [`Origin`], to `daemon::Agent::apply`, the single place that applies one: validate, record,
//! then change state. A new command is added here and the compiler finds every `match` that
//! must handle it, so the two edges cannot drift apart.
//!
//! Also the strict JSON reader the remote edge uses: a duplicate key at any depth is refused
//! (serde_json's `Value` keeps the last one silently, so two readers could see two commands in
//! the same signed bytes), and the byte bounds applied to what a rejected command may put in
//! the audit log.

use crate::actions::ActionKind;
use crate::gate::Mode;
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Longest TTL a mode change may ask for (a year); longer values are clamped.
pub const MAX_TTL_SECS: u64 = 365 * 86_400;
/// Bytes of a claimed actor, id, reason or error text kept in a record or an ack.
pub const MAX_FIELD_BYTES: usize = 256;

/// What an operator asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// The agent's status (local only; the fleet reads the retained status).
    Status,
    /// The open breakers (local only).
    Breakers,
    /// Switch the node's mode; with a TTL it reverts to the state before it at expiry.
    SetMode { mode: Mode, reason: String, ttl_secs: Option<u64> },
    /// Re-arm an open breaker.
    ResetBreaker { playbook: String, action: ActionKind, target: String, reason: String },
    /// Reload the playbooks directory.
    Reload,
    /// What the playbooks read and asked last, and what would block them now (local only).
    Explain { playbook: Option<String>, target: Option<String> },
}

impl Command {
    /// The command's name on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            Self::Status => "status",
            Self::Breakers => "breakers",
            Self::SetMode { .. } => "set_mode",
            Self::ResetBreaker { .. } => "reset_breaker",
            Self::Reload => "reload",
            Self::Explain { .. } => "explain",
        }
    }

    /// Whether a sender over the broker needs a signature by a trusted key: everything that
    /// can make the node act (live mode) or act again (a breaker reset). Dry-run and reload
    /// are the safe direction.
    pub fn needs_signature(&self) -> bool {
        matches!(self, Self::SetMode { mode: Mode::Live, .. } | Self::ResetBreaker { .. })
    }

    /// Builds a mode change, checking the fields every edge requires.
    pub fn set_mode(mode: &str, reason: &str, ttl_secs: Option<u64>) -> Result<Self, CommandError> {
        let mode =
            Mode::parse(mode).ok_or_else(|| CommandError::Malformed(format!("unknown mode {:?}: live or dry-run", bounded(mode))))?;
        if reason.trim().is_empty() {
            return Err(CommandError::Malformed("set_mode needs a `reason`".into()));
        }
        Ok(Self::SetMode { mode, reason: reason.to_string(), ttl_secs: ttl_secs.map(|t| t.min(MAX_TTL_SECS)) })
    }

    /// Builds a breaker reset.
    pub fn reset_breaker(playbook: &str, action: &str, target: &str, reason: &str) -> Result<Self, CommandError> {
        let action = ActionKind::parse(action).ok_or_else(|| CommandError::Malformed(format!("unknown action {:?}", bounded(action))))?;
        Ok(Self::ResetBreaker { playbook: playbook.into(), action, target: target.into(), reason: reason.into() })
    }

    /// From the local socket's request.
    pub fn from_request(req: super::Request) -> Result<Self, CommandError> {
        use super::Request;
        match req {
            Request::Status => Ok(Self::Status),
            Request::Breakers => Ok(Self::Breakers),
            Request::SetMode { mode, reason, ttl_secs } => Self::set_mode(&mode, &reason, ttl_secs),
            Request::ResetBreaker { playbook, action, target, reason } => Self::reset_breaker(&playbook, &action, &target, &reason),
            Request::Reload => Ok(Self::Reload),
            Request::Explain { playbook, target } => Ok(Self::Explain { playbook, target }),
        }
    }
}

/// Where a command came from: recorded with it.
#[derive(Debug, Clone)]
pub enum Origin {
    /// The control socket; the actor is the peer's credentials (SO_PEERCRED).
    Local { actor: String },
    /// A command topic on the broker; the actor is what the sender claims, backed by `key` when
    /// the command was signed.
    Remote { topic: String, actor: String, key: Option<String> },
}

impl Origin {
    /// The actor recorded for a change.
    pub fn actor(&self) -> String {
        match self {
            Self::Local { actor } => actor.clone(),
            Self::Remote { topic, actor, key } => format!(
                "mqtt:{} via {}{}",
                bounded(actor),
                bounded(topic),
                key.as_ref().map(|k| format!(" (signed by {})", bounded(k))).unwrap_or_default()
            ),
        }
    }
}

/// A publish received on a command topic, as the forwarder hands it to the loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    pub topic: String,
    /// At most `remote::MAX_COMMAND + 1` bytes of the payload (enough to know it is too long).
    pub payload: Vec<u8>,
    /// The payload's real size.
    pub bytes: usize,
    /// Delivered from the broker's retained store (on subscribing), not sent just now.
    pub retained: bool,
}

impl Incoming {
    /// A publish as received: the payload is cut at the command limit plus one byte.
    pub fn new(topic: &str, payload: &[u8], retained: bool) -> Self {
        let keep = payload.len().min(super::remote::MAX_COMMAND + 1);
        Self { topic: topic.into(), payload: payload[..keep].to_vec(), bytes: payload.len(), retained }
    }

    /// Whether this looks like a switch to dry-run: it goes ahead of other queued commands.
    pub fn is_dry_run(&self) -> bool {
        !self.retained
            && super::remote::parse(&self.payload, self.bytes)
                .is_ok_and(|(e, _)| e.op == "set_mode" && e.mode.as_deref() == Some(Mode::DryRun.as_str()))
    }
}

/// Why a command was not applied.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The payload is over the command limit.
    #[error("command of {bytes} bytes is over the {limit}-byte limit")]
    TooLarge { bytes: usize, limit: usize },
    /// The payload is not JSON.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// A key appears twice in one object.
    #[error("duplicate key {0:?}: refused, two readers could see two different commands")]
    DuplicateKey(String),
    /// Fields missing, of the wrong type, unknown, or out of range.
    #[error("bad command: {0}")]
    Malformed(String),
    /// Delivered from the broker's retained store: never applied (it would be applied again at
    /// every reconnect, long after whoever sent it meant it).
    #[error("retained command message refused: commands are never taken from the broker's retained store")]
    Retained,
    /// The command needs a signature and has none.
    #[error("unsigned: this command needs a signature by a trusted key")]
    Unsigned,
    /// The signature, its timestamp or nonce is not acceptable.
    #[error("{0}")]
    Signature(String),
    /// The nonce was used before (within the window, across restarts).
    #[error("replayed: nonce {0:?} was already used")]
    Replayed(String),
    /// The command names another node, group or fleet than the topic it came on, or none.
    #[error("scope: {0}")]
    Scope(String),
    /// The accepted nonces could not be made durable, so a replay could not be told apart.
    #[error("nonce store: {0}")]
    NonceStore(String),
    /// No open breaker has that key.
    #[error("no open breaker for {0}")]
    NoBreaker(String),
    /// No loaded playbook has that name.
    #[error("{0}")]
    NotFound(String),
    /// The change could not be recorded (or persisted), so it was not made (a switch to
    /// dry-run is made anyway: it is the safe direction).
    #[error("not recorded: {0}")]
    NotRecorded(String),
}

impl CommandError {
    /// Stable code for logs, records and acks.
    pub fn code(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "command_too_large",
            Self::NotJson(_) => "command_not_json",
            Self::DuplicateKey(_) => "command_duplicate_key",
            Self::Malformed(_) => "command_malformed",
            Self::Retained => "command_retained",
            Self::Unsigned => "command_unsigned",
            Self::Signature(_) => "command_bad_signature",
            Self::Replayed(_) => "command_replayed",
            Self::Scope(_) => "command_scope",
            Self::NonceStore(_) => "command_nonce_store",
            Self::NoBreaker(_) => "command_no_breaker",
            Self::NotFound(_) => "command_not_found",
            Self::NotRecorded(_) => "command_not_recorded",
        }
    }
}

/// `s` cut to [`MAX_FIELD_BYTES`] on a character boundary, marked when cut.
pub fn bounded(s: &str) -> String {
    if s.len() <= MAX_FIELD_BYTES {
        return s.to_string();
    }
    let mut end = MAX_FIELD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[truncated]", &s[..end])
}

/// Parses JSON, refusing a duplicate key in any object at any depth.
pub fn strict_json(bytes: &[u8]) -> Result<Value, CommandError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = StrictValue.deserialize(&mut de).map_err(classify)?;
    de.end().map_err(classify)?;
    Ok(v)
}

const DUPLICATE: &str = "duplicate key ";

fn classify(e: serde_json::Error) -> CommandError {
    let text = e.to_string();
    match text.strip_prefix(DUPLICATE) {
        Some(rest) => CommandError::DuplicateKey(bounded(rest.split(" at line").next().unwrap_or(rest))),
        None => CommandError::NotJson(bounded(&text)),
    }
}

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrictValue {
    type Value = Value;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(StrictValue)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(k) = map.next_key::<String>()? {
            if out.contains_key(&k) {
                return Err(A::Error::custom(format!("{DUPLICATE}{k:?}")));
            }
            let v = map.next_value_seed(StrictValue)?;
            out.insert(k, v);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(matches!(strict_json(br#"{"a":1,"a":2}"#), Err(CommandError::DuplicateKey(k)) if k.contains('a')));
        assert!(matches!(strict_json(br#"{"x":[{"b":1,"c":{"d":1,"d":1}}]}"#), Err(CommandError::DuplicateKey(_))));
        // An escaped spelling of the same key is the same key.
        assert!(matches!(strict_json(br#"{"mode":"live","m\u006fde":"dry-run"}"#), Err(CommandError::DuplicateKey(_))));
        assert_eq!(strict_json(br#"{"a":{"a":1},"b":[1,2.5,null,true,"s"]}"#).unwrap()["b"][1], 2.5);
        assert!(matches!(strict_json(b"{} x"), Err(CommandError::NotJson(_))));
    }

    #[test]
    fn fields_are_bounded() {
        assert_eq!(bounded("abc"), "abc");
        let b = bounded(&"é".repeat(1000));
        assert!(b.len() <= MAX_FIELD_BYTES + 20 && b.ends_with("[truncated]"));
    }
}
