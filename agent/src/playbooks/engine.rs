//! The one place a Rhai engine is built. Every limit a playbook runs under is set here: a
//! playbook that exceeds one stops with an error and is disabled, never hangs the agent.
//!
//! Sandboxing: rhai's core has no file, process or network access, and we add none; `eval` is
//! disabled; module import is refused (the default resolver would read `.rhai` files from
//! disk); variables must be declared (typos fail at compile time). The map-size limit is not
//! enforced while a map grows by index assignment, so the operation limit is what bounds that.

use rhai::{Engine, OptimizationLevel};
use serde::Deserialize;

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
        }
    }
}

/// Builds the sandboxed engine with the playbook API registered.
pub fn build(limits: &Limits) -> Engine {
    let mut e = Engine::new();
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
    e.on_print(|s| tracing::info!(message = "Playbook print.", text = s));
    e.on_debug(|s, src, pos| tracing::debug!(message = "Playbook debug.", text = s, source = src.unwrap_or(""), %pos));
    super::api::register(&mut e, limits.max_requests);
    e
}
