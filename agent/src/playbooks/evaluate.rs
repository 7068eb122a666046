//! Evaluating a compiled playbook: `evaluate(node, state)` called on the sandboxed engine with
//! the snapshot and history, under the deadline and the engine's limits; what it asked for and
//! read (`Evaluation`), or why it failed with a stable code (`EvalError`). Its state changes are
//! kept only when it succeeds.

use super::api::{Node, State, Tick};
use super::{engine, pos_of, Playbook, Runtime};
use crate::actions::ActionRequest;
use crate::signals::history::History;
use crate::signals::Snapshot;
use rhai::{CallFnOptions, Dynamic, EvalAltResult};
use std::fmt;
use std::sync::Arc;

/// What a successful evaluation asked for, and what it read to decide (each value read, at
/// most `api::MAX_NOTED_READS` keys, bounded in bytes; `reads_omitted` counts the others).
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub requests: Vec<ActionRequest>,
    pub reads: std::collections::BTreeMap<String, serde_json::Value>,
    pub reads_omitted: usize,
}

/// Why an evaluation failed.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalError {
    /// Stable code: `deadline` (past `limits.deadline_ms`), `limit_exceeded` (another limit of
    /// the engine) or `runtime_error` (the script failed, or a call it made refused).
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// A stop by the deadline check of the engine's progress callback.
fn is_deadline(e: &EvalAltResult) -> bool {
    matches!(e, EvalAltResult::ErrorTerminated(v, _) if v.read_lock::<rhai::ImmutableString>().is_some_and(|s| s.as_str() == engine::DEADLINE_TOKEN))
}

fn is_limit(e: &EvalAltResult) -> bool {
    matches!(
        e,
        EvalAltResult::ErrorTooManyOperations(..)
            | EvalAltResult::ErrorStackOverflow(..)
            | EvalAltResult::ErrorDataTooLarge(..)
            | EvalAltResult::ErrorTooManyVariables(..)
            | EvalAltResult::ErrorTerminated(..)
    )
}

impl Runtime {
    /// Evaluates one playbook against a snapshot and its history. State changes are kept only
    /// when the evaluation succeeds.
    pub fn evaluate(&self, pb: &Playbook, snap: Arc<Snapshot>, history: Arc<History>, state: &State) -> Result<Evaluation, EvalError> {
        self.evaluate_in(pb, &Tick::new(snap, history), state)
    }

    /// [`Runtime::evaluate`] within a tick whose entity lists every playbook evaluated in it
    /// shares (`decide::evaluate` makes one [`Tick`] per snapshot).
    pub fn evaluate_in(&self, pb: &Playbook, tick: &Tick, state: &State) -> Result<Evaluation, EvalError> {
        tick.history.note_reads(&pb.reads, tick.snap.ts_ms);
        let allowed = pb.meta.actions.iter().map(|c| c.kind).collect();
        let node = Node::new(tick, &self.limits, allowed);
        let before = state.snapshot();
        let options = CallFnOptions::new().eval_ast(true).rewind_scope(true).with_tag(node.clone());
        let mut scope = rhai::Scope::new();
        let started = std::time::Instant::now();
        let result = {
            let _eval = engine::Evaluation::begin(&pb.meta.name, &self.limits);
            self.engine.call_fn_with_options::<Dynamic>(options, &mut scope, &pb.ast, "evaluate", (node.clone(), state.clone()))
        };
        // The node holds the snapshot and the history: nothing of this evaluation keeps it.
        let mut ctx = node.ctx.lock().unwrap_or_else(|e| e.into_inner());
        let requests = std::mem::take(&mut ctx.requests);
        let reads = std::mem::take(&mut ctx.reads);
        let reads_omitted = ctx.reads_omitted;
        drop(ctx);
        match result {
            Ok(_) => Ok(Evaluation { requests, reads, reads_omitted }),
            Err(e) if is_deadline(&e) => {
                state.restore(before);
                // rhai stops between operations and does not always know where it was.
                let at = match e.position() {
                    p if p.is_none() => pb.file.clone(),
                    p => format!("{}:{}:{}", pb.file, pos_of(p).0, pos_of(p).1),
                };
                Err(EvalError {
                    code: "deadline",
                    message: format!(
                        "{at}: evaluation stopped after {} ms, past its deadline (playbooks.limits.deadline_ms = {})",
                        started.elapsed().as_millis(),
                        self.limits.deadline_ms
                    ),
                })
            }
            Err(e) => {
                state.restore(before);
                let code = if is_limit(&e) { "limit_exceeded" } else { "runtime_error" };
                let (line, col) = pos_of(e.position());
                let mut msg = e.to_string();
                // rhai appends " (line L, position C)"; we lead with file:line:col instead.
                if let Some(i) = msg.rfind(" (line ") {
                    msg.truncate(i);
                }
                Err(EvalError { code, message: format!("{}:{line}:{col}: {msg}", pb.file) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{api, engine, Runtime};
    use super::State;
    use crate::playbooks::fixtures::*;
    use std::sync::Arc;

    #[test]
    fn a_function_named_at_run_time_cannot_reach_outside_the_manifest() {
        let rt = runtime(Default::default());
        let state = State::default();
        // A restart_unit-only manifest; `notify` named by a computed string.
        let src = "const META = #{ name: \"r\", description: \"r\", interval: \"1s\", actions: [#{ kind: \"restart_unit\", target: \"app.service\" }], rate_limit: #{ max: 9, per: \"1h\" }, cooldown: \"0s\" };\nfn evaluate(node, state) { let n = \"not\" + \"ify\"; [\"x\"].map(n); }\n";
        let p = rt.compile("r.rhai", src).unwrap();
        let e = eval(&rt, &p, &state).0.unwrap_err();
        assert_eq!(e.code, "runtime_error");
        assert!(e.message.contains("`map` with a function name"), "{e}");
        // `index_of` with a string searches for it as a value, and calls nothing.
        let p = pb(&rt, "fn evaluate(node, state) { let i = [\"a\", \"notify\"].index_of(\"notify\"); if i != 1 { throw i; } }").unwrap();
        assert_eq!(eval(&rt, &p, &state).0.unwrap(), vec![]);
    }

    #[test]
    fn a_spinning_playbook_stops_at_its_deadline() {
        let limits = engine::Limits { max_operations: u64::MAX, deadline_ms: 100, ..Default::default() };
        let rt = Runtime::new(limits);
        let p = pb(&rt, "fn evaluate(node, state) { let x = 0; loop { x += 1; } }").unwrap();
        let t = std::time::Instant::now();
        let e = eval(&rt, &p, &State::default()).0.unwrap_err();
        assert!(t.elapsed() < std::time::Duration::from_secs(2), "{:?}", t.elapsed());
        assert_eq!(e.code, "deadline");
        assert!(e.message.starts_with("t.rhai") && e.message.contains("deadline_ms = 100"), "{e}");
        // The next evaluation has a deadline of its own.
        let p = pb(&rt, "fn evaluate(node, state) { notify(\"x\"); }").unwrap();
        assert_eq!(eval(&rt, &p, &State::default()).0.unwrap().len(), 1);
    }

    #[test]
    fn print_is_bounded_and_does_not_fail_the_playbook() {
        let rt = runtime(Default::default());
        let p = pb(
            &rt,
            "fn evaluate(node, state) { let s = \"\"; s.pad(60000, 'x'); for i in 0..100 { print(s); debug(s); } notify(\"done\"); }",
        )
        .unwrap();
        assert_eq!(eval(&rt, &p, &State::default()).0.unwrap().len(), 1);
    }

    #[test]
    fn state_keeps_plain_data_only_and_never_the_node() {
        let rt = runtime(Default::default());
        for (what, v) in [
            ("node", "node"),
            ("a list", "node.processes()"),
            ("state", "state"),
            ("a nested node", "[1, #{ n: node }]"),
            ("a closure", "|x| x"),
        ] {
            let state = State::default();
            let p = pb(&rt, &format!("fn evaluate(node, state) {{ state.set(\"k\", {v}); }}")).unwrap();
            for _ in 0..20 {
                let (r, history) = eval(&rt, &p, &state);
                let e = r.unwrap_err();
                assert!(e.message.contains("cannot be kept in state"), "{what}: {e}");
                // Nothing of the evaluation holds the history any more.
                assert_eq!(Arc::strong_count(&history), 1, "{what}");
            }
            assert!(state.is_empty(), "{what}");
        }
        let state = State::default();
        let p = pb(&rt, "fn evaluate(node, state) { state.set(\"k\", #{ a: [1, 2.5, \"s\", true, ()], b: #{ c: 'x' } }); }").unwrap();
        eval(&rt, &p, &state).0.unwrap();
        assert_eq!(state.len(), 1);
    }

    #[test]
    fn state_is_bounded_in_bytes() {
        let rt = runtime(engine::Limits { max_state_bytes: 4096, ..Default::default() });
        let state = State::default();
        let p = pb(&rt, "fn evaluate(node, state) { let s = \"\"; s.pad(1000, 'x'); for i in 0..10 { state.set(`k${i}`, s); } }").unwrap();
        let e = eval(&rt, &p, &state).0.unwrap_err();
        assert!(e.message.contains("over playbooks.limits.max_state_bytes (4096)"), "{e}");
        assert!(state.is_empty(), "a failed evaluation's changes are rolled back");
        // Replacing and removing keys gives the room back.
        let p = pb(&rt, "fn evaluate(node, state) { let s = \"\"; s.pad(1000, 'x'); for i in 0..50 { state.set(\"k\", s); state.set(\"j\", s); state.remove(\"j\"); } }").unwrap();
        eval(&rt, &p, &state).0.unwrap();
        assert!(state.bytes() > 1000 && state.bytes() < 1100, "{}", state.bytes());
    }

    #[test]
    fn a_request_carries_bounded_reads_and_reason() {
        let rt = runtime(Default::default());
        let body = "fn evaluate(node, state) { let s = \"\"; s.pad(60000, 'k'); for i in 0..100 { node.value(`${i}${s}`); } let r = \"\"; r.pad(60000, 'r'); notify(r, #{ big: s }); }";
        let p = pb(&rt, body).unwrap();
        let reqs = eval(&rt, &p, &State::default()).0.unwrap();
        let req = &reqs[0];
        let signals = serde_json::to_string(&req.signals).unwrap();
        assert!(signals.len() <= api::MAX_SIGNALS_BYTES, "{}", signals.len());
        // 100 reads: the ones that did not fit are counted, not dropped silently.
        let kept = req.signals.len() - 1;
        assert_eq!(req.signals[api::OMITTED_READS], serde_json::json!(100 - kept));
        assert!(req
            .signals
            .keys()
            .filter(|k| *k != api::OMITTED_READS)
            .all(|k| k.len() <= api::MAX_VALUE_BYTES && k.ends_with(crate::signals::parse::TRUNCATED)));
        assert!(req.reason.len() <= api::MAX_VALUE_BYTES && req.reason.ends_with(crate::signals::parse::TRUNCATED));
        assert!(req.target.len() <= api::MAX_VALUE_BYTES);
        assert!(serde_json::to_string(&req.params).unwrap().len() <= api::MAX_DETAILS_BYTES + 64);
    }
}
