//! `notify`: records a notification and changes nothing on the host. Playbooks ask with
//! `notify(subject)` or `notify(subject, details)`; the subject is the target and the reason,
//! bounded at [`MAX_VALUE_BYTES`], the details (a map, as JSON) at [`MAX_DETAILS_BYTES`]. No
//! policy key applies; the gate still applies cooldown and rate limit, but a notification never
//! counts against the budget, in flight or the breaker ([`super::ActionKind::acts`]).

use super::request::{ask, Evaluation, RhaiResult, MAX_VALUE_BYTES};
use super::{ActionKind, ActionRequest, ExecContext, Outcome, Policy};
use rhai::{Dynamic, Engine, Map, NativeCallContext};
use serde_json::Value;
use std::collections::BTreeMap;

/// A notification's details, as JSON, in bytes.
pub const MAX_DETAILS_BYTES: usize = 8 * 1024;

/// `notify(subject, details)` and `notify(subject)`.
pub fn register<E: Evaluation>(e: &mut Engine) {
    e.register_fn("notify", |ctx: NativeCallContext, subject: &str, details: Map| -> RhaiResult<bool> {
        let mut params = BTreeMap::new();
        let mut details = serde_json::to_value(match super::request::evaluation::<E>(&ctx) {
            Ok(ev) => ev.plain(Dynamic::from_map(details)),
            Err(_) => Dynamic::from_map(details),
        }).unwrap_or(Value::Null);
        let text = details.to_string();
        if text.len() > MAX_DETAILS_BYTES {
            details = Value::String(crate::signals::parse::cut_marked(text, MAX_DETAILS_BYTES));
        }
        params.insert("details".into(), details);
        let subject = crate::signals::parse::bounded(subject.to_string(), MAX_VALUE_BYTES);
        ask::<E>(&ctx, ActionKind::Notify, subject.clone(), params, &subject)
    });
    e.register_fn("notify", |ctx: NativeCallContext, subject: &str| -> RhaiResult<bool> {
        let subject = crate::signals::parse::bounded(subject.to_string(), MAX_VALUE_BYTES);
        ask::<E>(&ctx, ActionKind::Notify, subject.clone(), BTreeMap::new(), &subject)
    });
}

/// Nothing in the policy limits a notification.
pub fn policy_check(_: &Policy, _: &ActionRequest) -> Option<(&'static str, String)> {
    None
}

/// Nothing to do: the record is the notification.
pub fn execute(_: &ActionRequest, _: &ExecContext) -> Outcome {
    Outcome::ok(Value::Null)
}
