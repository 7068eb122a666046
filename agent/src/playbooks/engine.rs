//! The one place a Rhai engine is built. Every limit a playbook runs under is set here: a
//! playbook that exceeds one stops with an error and is disabled, never hangs the agent.
//!
//! Sandboxing: the engine starts empty (`Engine::new_raw`) and gets only the packages listed in
//! [`build`]: arithmetic, logic, math, bit fields, strings, iterators, arrays, maps and function
//! pointers' `name`. Left out on purpose: rhai's `LanguageCorePackage` (`sleep`, which blocks the
//! thread and panics on `sleep(1e20)`; `exit`; `parse_json`; reflection), `BasicTimePackage`
//! (`timestamp()`, a wall clock: a playbook's only clock is `node.now()`, the snapshot's time),
//! blobs and the debugger. No file, process or network access exists in rhai's core and we add
//! none; `eval` is disabled; module import is refused (the default resolver would read `.rhai`
//! files from disk); variables must be declared (typos fail at compile time). The map-size limit
//! is not enforced while a map grows by index assignment, so the operation limit bounds that.
//!
//! Time: every evaluation runs under a wall-clock deadline ([`Limits::deadline_ms`]), checked
//! from rhai's progress callback, so a native call that is slow on a big node or a script that
//! spins under the operation limit still stops. `print` and `debug` go to the agent's log as one
//! bounded line each ([`PRINT_LINE_BYTES`]), at most [`PRINT_LINES`] per evaluation; the rest are
//! counted and said once. Both need per-evaluation state that rhai's engine-wide callbacks do not
//! carry, so it lives in a thread-local set by [`Evaluation::begin`] on the thread that evaluates.

use rhai::packages::{
    ArithmeticPackage, BasicArrayPackage, BasicFnPackage, BasicIteratorPackage, BasicMapPackage, BasicMathPackage, BasicStringPackage,
    BitFieldPackage, LogicPackage, MoreStringPackage, Package,
};
use rhai::{Dynamic, Engine, OptimizationLevel};
use serde::Deserialize;
use std::cell::RefCell;
use std::time::{Duration, Instant};

/// One `print`/`debug` line, in bytes; longer ones are cut with the truncation marker.
pub const PRINT_LINE_BYTES: usize = 512;
/// `print`/`debug` lines logged per evaluation; the rest are counted.
pub const PRINT_LINES: u32 = 4;
/// The value rhai's progress callback stops an evaluation with when its deadline passed.
pub const DEADLINE_TOKEN: &str = "medic:deadline";
/// How often (in operations) the progress callback looks at the clock.
const CLOCK_EVERY_OPS: u64 = 64;

/// Limits on one evaluation of one playbook. Defaults are generous for real playbooks (the
/// bundled ones use under 5% of `max_operations`) and small enough to stop a runaway in
/// milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Rhai operations per evaluation (a loop iteration, a call, an expression step).
    pub max_operations: u64,
    /// Nested function calls (recursion depth).
    pub max_call_levels: usize,
    /// Nesting depth of one expression.
    pub max_expr_depth: usize,
    /// Length of one string, in bytes.
    pub max_string_size: usize,
    /// Elements in one array.
    pub max_array_size: usize,
    /// Entries in one object map (see the module note on index assignment).
    pub max_map_size: usize,
    /// Action requests one evaluation may make.
    pub max_requests: usize,
    /// Wall-clock time one evaluation may take, in milliseconds; past it the evaluation stops
    /// with `deadline` and the playbook is disabled with back-off.
    pub deadline_ms: u64,
    /// Bytes a playbook's `state` may hold, all keys together (strings by length, other values
    /// 8 bytes each, plus the keys).
    pub max_state_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_operations: 200_000,
            max_call_levels: 32,
            max_expr_depth: 64,
            max_string_size: 64 * 1024,
            max_array_size: 10_000,
            max_map_size: 10_000,
            max_requests: 32,
            deadline_ms: 1000,
            max_state_bytes: 64 * 1024,
        }
    }
}

/// Bounds `validate` enforces: below them real playbooks fail, above them the agent's loop and
/// memory are no longer protected.
pub const DEADLINE_MS_RANGE: std::ops::RangeInclusive<u64> = 10..=60_000;
pub const MAX_STATE_BYTES_RANGE: std::ops::RangeInclusive<usize> = 1024..=16 * 1024 * 1024;

impl Limits {
    /// Checks the limits that have bounds of their own; the error names the key and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !DEADLINE_MS_RANGE.contains(&self.deadline_ms) {
            return Err((
                "deadline_ms",
                format!(
                    "playbooks.limits.deadline_ms: {} is outside {}..={} (milliseconds one evaluation may take)",
                    self.deadline_ms,
                    DEADLINE_MS_RANGE.start(),
                    DEADLINE_MS_RANGE.end()
                ),
            ));
        }
        if !MAX_STATE_BYTES_RANGE.contains(&self.max_state_bytes) {
            return Err((
                "max_state_bytes",
                format!(
                    "playbooks.limits.max_state_bytes: {} is outside {}..={}",
                    self.max_state_bytes,
                    MAX_STATE_BYTES_RANGE.start(),
                    MAX_STATE_BYTES_RANGE.end()
                ),
            ));
        }
        Ok(())
    }
}

/// What the engine's callbacks need to know about the evaluation running on this thread.
struct Current {
    playbook: String,
    deadline: Instant,
    lines_left: u32,
    lines_dropped: u32,
}

thread_local! {
    static CURRENT: RefCell<Option<Current>> = const { RefCell::new(None) };
}

/// One evaluation on this thread: sets the deadline and the print budget, clears them on drop
/// (also when the evaluation fails), and logs how many print lines were dropped.
pub struct Evaluation(());

impl Evaluation {
    pub fn begin(playbook: &str, limits: &Limits) -> Self {
        let deadline = Instant::now() + Duration::from_millis(limits.deadline_ms);
        CURRENT.with(|c| {
            *c.borrow_mut() = Some(Current { playbook: playbook.to_string(), deadline, lines_left: PRINT_LINES, lines_dropped: 0 });
        });
        Self(())
    }
}

impl Drop for Evaluation {
    fn drop(&mut self) {
        if let Some(c) = CURRENT.with(|c| c.borrow_mut().take()) {
            if c.lines_dropped > 0 {
                tracing::info!(message = "Playbook print lines dropped.", playbook = %c.playbook, dropped = c.lines_dropped, kept = PRINT_LINES);
            }
        }
    }
}

/// True when the evaluation on this thread is past its deadline.
fn past_deadline() -> bool {
    CURRENT.with(|c| c.borrow().as_ref().is_some_and(|c| Instant::now() >= c.deadline))
}

/// Logs one print/debug line of the current evaluation, bounded and within its budget.
fn log_line(kind: &'static str, text: &str) {
    let who = CURRENT.with(|c| {
        let mut c = c.borrow_mut();
        let c = c.as_mut()?;
        if c.lines_left == 0 {
            c.lines_dropped = c.lines_dropped.saturating_add(1);
            return None;
        }
        c.lines_left -= 1;
        Some(c.playbook.clone())
    });
    let Some(playbook) = who else { return };
    let text =
        if text.len() > PRINT_LINE_BYTES { crate::signals::parse::cut_marked(text.to_string(), PRINT_LINE_BYTES) } else { text.into() };
    tracing::info!(message = "Playbook print.", playbook = %playbook, kind, text = %text);
}

/// Builds the sandboxed engine with the playbook API registered.
pub fn build(limits: &Limits) -> Engine {
    let mut e = Engine::new_raw();
    // The explicit package list (see the module note for what is left out and why).
    for lib in [
        ArithmeticPackage::new().as_shared_module(),
        LogicPackage::new().as_shared_module(),
        BasicMathPackage::new().as_shared_module(),
        BitFieldPackage::new().as_shared_module(),
        BasicStringPackage::new().as_shared_module(),
        MoreStringPackage::new().as_shared_module(),
        BasicIteratorPackage::new().as_shared_module(),
        BasicArrayPackage::new().as_shared_module(),
        BasicMapPackage::new().as_shared_module(),
        BasicFnPackage::new().as_shared_module(),
    ] {
        e.register_global_module(lib);
    }
    e.set_max_operations(limits.max_operations);
    e.set_max_call_levels(limits.max_call_levels);
    e.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth / 2);
    e.set_max_string_size(limits.max_string_size);
    e.set_max_array_size(limits.max_array_size);
    e.set_max_map_size(limits.max_map_size);
    e.set_max_variables(1024);
    e.set_max_functions(256);
    e.set_max_modules(0);
    e.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    e.disable_symbol("eval");
    e.set_strict_variables(true);
    e.set_fail_on_invalid_map_property(false);
    e.set_optimization_level(OptimizationLevel::Simple);
    e.on_progress(|ops| (ops % CLOCK_EVERY_OPS == 0 && past_deadline()).then(|| Dynamic::from(DEADLINE_TOKEN)));
    e.on_print(|s| log_line("print", s));
    e.on_debug(|s, _, _| log_line("debug", s));
    super::api::register(&mut e);
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_bounds_the_deadline_and_the_state() {
        assert!(Limits::default().validate().is_ok());
        let l = Limits { deadline_ms: 0, ..Default::default() };
        assert_eq!(l.validate().unwrap_err().0, "deadline_ms");
        let l = Limits { deadline_ms: u64::MAX, ..Default::default() };
        assert_eq!(l.validate().unwrap_err().0, "deadline_ms");
        let l = Limits { max_state_bytes: usize::MAX, ..Default::default() };
        assert_eq!(l.validate().unwrap_err().0, "max_state_bytes");
    }

    #[test]
    fn no_clock_and_no_sleep_are_registered() {
        let e = build(&Limits::default());
        let names: Vec<String> = e.collect_fn_metadata(None, |i| Some(i.metadata.name.to_string()), true);
        for gone in ["sleep", "timestamp", "exit", "parse_json", "get_fn_metadata_list", "elapsed"] {
            assert!(!names.iter().any(|n| n == gone), "{gone} must not be available");
        }
        // What playbooks use is still there.
        for kept in ["abs", "len", "push", "sort", "contains", "keys", "to_string", "starts_with", "round"] {
            assert!(names.iter().any(|n| n == kept), "{kept} must be available");
        }
    }
}
