//! What the action kinds' playbook functions share: the [`Evaluation`] they record a request
//! into, and the small helpers their argument checks use. Each kind registers its own functions
//! (`<kind>::register`); they only check their arguments, build the request's target and
//! parameters, and hand them to the evaluation, which bounds and keeps them. Nothing here
//! touches the host.
//!
//! The evaluation is a trait so that this module needs nothing from `playbooks`: the playbook
//! engine's `Node` implements it and travels as the call's tag (`playbooks::api`).

use super::ActionKind;
use crate::signals::Snapshot;
use rhai::{EvalAltResult, NativeCallContext};
use serde_json::Value;
use std::collections::BTreeMap;

/// Result of a playbook function.
pub type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// One recorded value (a read's key, a reason, a subject), in bytes.
pub const MAX_VALUE_BYTES: usize = 4 * 1024;

/// The evaluation a playbook function runs in: the snapshot it reads and the requests it makes.
pub trait Evaluation: Clone + Send + Sync + 'static {
    /// The snapshot being evaluated.
    fn snapshot(&self) -> &Snapshot;

    /// Records one request, with the reads noted so far as its trigger. Refused when the kind is
    /// not in the playbook's manifest, the evaluation made too many requests, or the target is
    /// over [`MAX_VALUE_BYTES`] (a target is matched against patterns: it is never cut).
    fn ask(&self, kind: ActionKind, target: String, params: BTreeMap<String, Value>, reason: &str) -> RhaiResult<bool>;

    /// `v` as plain data (maps, arrays, scalars): the evaluation's own types of values it
    /// handed the script (a shared list item) turned into what they stand for.
    fn plain(&self, v: rhai::Dynamic) -> rhai::Dynamic {
        v
    }
}

/// The evaluation behind a call: the engine passes it as the call's tag.
pub fn evaluation<E: Evaluation>(ctx: &NativeCallContext) -> RhaiResult<E> {
    ctx.tag().and_then(|t| t.clone().try_cast::<E>()).ok_or_else(|| err("actions can only be requested while evaluate() runs"))
}

/// Records one request in the evaluation behind `ctx`.
pub fn ask<E: Evaluation>(
    ctx: &NativeCallContext,
    kind: ActionKind,
    target: String,
    params: BTreeMap<String, Value>,
    reason: &str,
) -> RhaiResult<bool> {
    evaluation::<E>(ctx)?.ask(kind, target, params, reason)
}

/// A script error with this message.
pub fn err(msg: impl Into<String>) -> Box<EvalAltResult> {
    msg.into().into()
}

/// Parses the duration syntax playbooks write ("30s", "5m", "1h 30m") into milliseconds: in
/// request options (`older_than`), windows and META alike.
pub fn duration_ms(s: &str) -> Result<i64, String> {
    humantime::parse_duration(s.trim())
        .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
        .map_err(|e| format!("bad duration {s:?}: {e} (use e.g. \"30s\", \"5m\", \"2h\")"))
}
