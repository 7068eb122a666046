//! Deciding: loads, checks and evaluates the Rhai playbooks. A playbook is a pure function of
//! (signal history, clock, its own state) that returns action *requests*; it never acts. This
//! file holds the types the rest of the agent names (`Runtime`, `Playbook`, `PlaybookError`,
//! `HistoryReach`) and the positions errors carry; each step is a file of its own:
//!
//! - `engine`: the one sandboxed engine constructor and its limits.
//! - `compile`: compiling a playbook and its static checks (refused and unknown functions, the
//!   manifest, literal windows, the history keys it names).
//! - `evaluate`: running `evaluate(node, state)` under the limits (`Evaluation`, `EvalError`).
//! - `load`: reading playbook files safely and the layered set (bundled, then local files).
//! - `api`: what scripts see (`node`, `state`) and the request-recording action functions.
//! - `meta`: the `META` map (name, interval, manifest, rate limit, cooldown).
//! - `state`: a playbook's memory between evaluations (plain data, bounded).
//! - `bundled`: the playbooks embedded in the binary.
//! - `testing`: `medic playbook test`, test cases with a simulated clock.
//! - `cut`: cutting a test case from a recorded replay.
//!
//! Errors a user can fix carry `file:line:col`; rhai's own messages carry the position but not
//! the file, so it is added here.

pub mod api;
pub mod bundled;
pub mod compile;
pub mod cut;
pub mod engine;
pub mod evaluate;
pub mod load;
pub mod meta;
pub mod state;
pub mod testing;

pub use evaluate::{EvalError, Evaluation};
pub use load::{load, load_with, read_source, Loaded, MAX_SOURCE_BYTES};

use meta::Meta;
use rhai::{Engine, Position, AST};
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

/// A playbook that cannot be loaded, with where and why.
#[derive(Debug, Clone, PartialEq)]
pub struct PlaybookError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub reason: String,
}

impl fmt::Display for PlaybookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file, self.line, self.col, self.reason)
    }
}

impl std::error::Error for PlaybookError {}

/// A compiled, checked playbook.
#[derive(Debug, Clone)]
pub struct Playbook {
    pub meta: Meta,
    /// Where it came from: a path, or `bundled:<file>`.
    pub file: String,
    /// SHA-256 of the source, hex; recorded with every decision it causes.
    pub sha256: String,
    pub ast: Arc<AST>,
    /// The history keys its source names, interpolations as `*` (`proc.*.cpu_pct`): noted as
    /// read at every evaluation, so the history keeps them before the script first reads them
    /// (a process becomes hot after the cap filled).
    pub reads: Vec<String>,
    /// What wakes it before its interval (`signals::wake`): the classes of the keys it names
    /// and of the node functions it calls.
    pub wakes: crate::signals::wake::Wake,
}

/// What the history holds, for the static window checks. Built from `[signals]` by `config`
/// (`HistoryReach::of`, and its `Default`), which depends on `playbooks`, not the other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryReach {
    /// `signals.history_secs`, in ms: the longest window a playbook can aggregate over.
    pub horizon_ms: i64,
    /// `signals.interval_secs`, in ms.
    pub interval_ms: i64,
}

impl HistoryReach {
    /// The most points a series holds: one per interval over the horizon.
    pub fn points(&self) -> i64 {
        self.horizon_ms / self.interval_ms.max(1) + 1
    }
}

/// The engine plus what the static checks need to know about it.
pub struct Runtime {
    pub engine: Engine,
    pub limits: engine::Limits,
    /// What the history holds (the defaults unless set with [`Runtime::with_history`]).
    pub history: HistoryReach,
    known_fns: HashSet<String>,
}

fn pos_of(pos: Position) -> (usize, usize) {
    (pos.line().unwrap_or(1), pos.position().unwrap_or(1))
}

fn err_at(file: &str, pos: Position, reason: impl Into<String>) -> PlaybookError {
    let (line, col) = pos_of(pos);
    PlaybookError { file: file.to_string(), line, col, reason: reason.into() }
}

/// Where `const META` is declared (for errors about the metadata), else 1:1.
fn meta_pos(source: &str) -> (usize, usize) {
    for (i, l) in source.lines().enumerate() {
        if let Some(c) = l.find("const META") {
            return (i + 1, c + 1);
        }
    }
    (1, 1)
}

impl Runtime {
    pub fn new(limits: engine::Limits) -> Self {
        let engine = engine::build(&limits);
        let known_fns = compile::known_fns(&engine);
        Self { engine, limits, history: HistoryReach::default(), known_fns }
    }

    /// Checks windows against this history (the node's `[signals]`) instead of the defaults.
    pub fn with_history(mut self, history: HistoryReach) -> Self {
        self.history = history;
        self
    }
}

/// What the tests of `compile`, `evaluate` and `load` share: a runtime, a one-action manifest and
/// the text playbooks are fuzzed with.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::api::State;
    use super::*;
    use crate::actions::ActionRequest;
    use crate::signals::history::History;
    use crate::signals::Snapshot;
    use proptest::prelude::*;

    pub(crate) const NOTIFY_META: &str = "const META = #{ name: \"t\", description: \"t\", interval: \"1s\", actions: [#{ kind: \"notify\", target: \"*\" }], rate_limit: #{ max: 9, per: \"1h\" }, cooldown: \"0s\" };\n";

    /// A runtime whose deadline is far: these tests run in debug builds beside others, and
    /// only `a_spinning_playbook_stops_at_its_deadline` is about the deadline.
    pub(crate) fn runtime(limits: engine::Limits) -> Runtime {
        Runtime::new(engine::Limits { deadline_ms: 60_000, ..limits })
    }

    pub(crate) fn pb(rt: &Runtime, body: &str) -> Result<Playbook, PlaybookError> {
        rt.compile("t.rhai", &format!("{NOTIFY_META}{body}"))
    }

    pub(crate) fn eval(rt: &Runtime, p: &Playbook, state: &State) -> (Result<Vec<ActionRequest>, EvalError>, Arc<History>) {
        let history = Arc::new(History::new(600_000, 1000, 100));
        let snap = Arc::new(Snapshot { ts_ms: 1_700_000_000_000, ..Default::default() });
        (rt.evaluate(p, snap, history.clone(), state).map(|e| e.requests), history)
    }

    pub(crate) fn rhai_text() -> impl Strategy<Value = String> {
        let token = prop_oneof![
            Just(NOTIFY_META.to_string()),
            Just("fn evaluate(node, state) {".to_string()),
            Just("}".to_string()),
            Just("notify(\"x\");".to_string()),
            Just("restart_unit(\"a\", \"b\");".to_string()),
            Just("Fn(\"notify\")".to_string()),
            Just("|x| x".to_string()),
            Just("loop { }".to_string()),
            Just("let x = ".to_string()),
            Just("node.value(\"k\")".to_string()),
            Just("state.set(\"k\", node);".to_string()),
            Just("import \"x\" as y;".to_string()),
            "[ -~]{0,12}",
            any::<char>().prop_map(|c| c.to_string()),
        ];
        proptest::collection::vec(token, 0..24).prop_map(|v| v.join(" "))
    }
}
