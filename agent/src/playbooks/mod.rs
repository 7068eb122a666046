//! Deciding: loads, checks and evaluates the Rhai playbooks. A playbook is a pure function of
//! (signal history, clock, its own state) that returns action *requests*; it never acts.
//!
//! - `engine`: the one sandboxed engine constructor and its limits.
//! - `api`: what scripts see (`node`, `state`) and the request-recording action functions.
//! - `meta`: the `META` map (name, interval, manifest, rate limit, cooldown).
//! - `bundled`: the playbooks embedded in the binary.
//! - `testing`: `medic playbook test`, test cases with a simulated clock.
//!
//! Errors a user can fix carry `file:line:col`; rhai's own messages carry the position but not
//! the file, so it is added here.

pub mod api;
pub mod bundled;
pub mod engine;
pub mod meta;
pub mod testing;

use crate::actions::ActionRequest;
use crate::signals::history::History;
use crate::signals::Snapshot;
use api::{Node, State};
use meta::Meta;
use rhai::{ASTNode, CallFnOptions, Dynamic, Engine, EvalAltResult, Expr, Position, Stmt, AST};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fmt;
use std::path::Path;
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
}

/// What the history holds, for the static window checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryReach {
    /// `signals.history_secs`, in ms: the longest window a playbook can aggregate over.
    pub horizon_ms: i64,
    /// `signals.interval_secs`, in ms.
    pub interval_ms: i64,
}

impl HistoryReach {
    pub fn of(signals: &crate::config::SignalsConfig) -> Self {
        Self { horizon_ms: signals.history_ms(), interval_ms: signals.interval_ms() }
    }

    /// The most points a series holds: one per interval over the horizon.
    pub fn points(&self) -> i64 {
        self.horizon_ms / self.interval_ms.max(1) + 1
    }
}

impl Default for HistoryReach {
    fn default() -> Self {
        Self::of(&Default::default())
    }
}

/// The window aggregates: the window is their last argument, after `arity - 1` others.
const WINDOW_FNS: &[(&str, usize)] = &[("avg", 2), ("min", 2), ("max", 2), ("rate", 2), ("delta", 2), ("percentile", 3), ("sustained", 4)];

/// Why an evaluation failed.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalError {
    /// Stable code: `limit_exceeded` or `runtime_error`.
    pub code: &'static str,
    pub message: String,
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

/// Words rhai treats as functions without registering them.
const KEYWORD_FNS: &[&str] = &["print", "debug", "type_of", "Fn", "call", "curry", "is_def_var", "is_def_fn", "is_shared", "this"];

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
    pub fn new(limits: engine::Limits) -> Self {
        let engine = engine::build(&limits);
        let mut known_fns: HashSet<String> =
            engine.collect_fn_metadata(None, |info| Some(info.metadata.name.to_string()), true).into_iter().collect();
        known_fns.extend(KEYWORD_FNS.iter().map(|s| s.to_string()));
        Self { engine, limits, history: HistoryReach::default(), known_fns }
    }

    /// Checks windows against this history (the node's `[signals]`) instead of the defaults.
    pub fn with_history(mut self, history: HistoryReach) -> Self {
        self.history = history;
        self
    }

    /// Compiles and checks one playbook: syntax, metadata, `evaluate(node, state)`, every
    /// function called exists, every action asked for is in the manifest, no literal window
    /// reaches further back than the history.
    pub fn compile(&self, file: &str, source: &str) -> Result<Playbook, PlaybookError> {
        let ast = self.engine.compile(source).map_err(|e| err_at(file, e.1, e.0.to_string()))?;
        let (ml, mc) = meta_pos(source);
        let meta_err = |reason: String| PlaybookError { file: file.to_string(), line: ml, col: mc, reason };
        let meta_value = ast
            .iter_literal_variables(true, false)
            .find(|(name, ..)| *name == "META")
            .map(|(.., v)| v)
            .ok_or_else(|| meta_err("missing metadata: declare `const META = #{ name: ..., ... };` with literal values".into()))?;
        let meta = meta::parse(&meta_value).map_err(meta_err)?;
        let eval_fn = ast.iter_functions().find(|f| f.name == "evaluate");
        match eval_fn {
            Some(f) if f.params.len() == 2 => {}
            Some(f) => return Err(meta_err(format!("`evaluate` takes (node, state), found {} parameter(s)", f.params.len()))),
            None => return Err(meta_err("missing `fn evaluate(node, state) { ... }`".into())),
        }
        self.check_calls(file, &ast, &meta)?;
        let reads = key_patterns(&ast);
        Ok(Playbook { meta, file: file.to_string(), sha256: hex::encode(Sha256::digest(source.as_bytes())), ast: Arc::new(ast), reads })
    }

    /// A literal window longer than the history (or `x_of_y` over more points than it holds)
    /// could only ever give `()`: an error now rather than a playbook that never fires.
    fn check_window(&self, name: &str, args: &[Expr], method: bool) -> Option<String> {
        let nargs = args.len() + usize::from(method);
        let h = &self.history;
        if name == "x_of_y" && nargs == 6 {
            if let Some(Expr::IntegerConstant(y, _)) = args.last() {
                return (*y > h.points()).then(|| {
                    format!(
                        "x_of_y over the last {y} points, but the history holds at most {} (signals.history_secs / interval_secs + 1): it would always be ()",
                        h.points()
                    )
                });
            }
        }
        let (_, arity) = WINDOW_FNS.iter().find(|(n, a)| *n == name && *a + 1 == nargs)?;
        let Some(Expr::StringConstant(w, _)) = args.get(arity - usize::from(method)) else { return None };
        let ms = api::duration_ms(w).ok()?;
        (ms > h.horizon_ms).then(|| {
            format!(
                "window {w:?} is longer than the history (signals.history_secs = {}): {name}() over it would always be ()",
                h.horizon_ms / 1000
            )
        })
    }

    fn check_calls(&self, file: &str, ast: &AST, meta: &Meta) -> Result<(), PlaybookError> {
        let script_fns: HashSet<String> = ast.iter_functions().map(|f| f.name.to_string()).collect();
        let mut found: Option<PlaybookError> = None;
        ast.walk(&mut |path: &[ASTNode]| {
            let (call, pos, method) = match path.last() {
                Some(ASTNode::Expr(Expr::FnCall(x, pos))) => (x, *pos, false),
                Some(ASTNode::Expr(Expr::MethodCall(x, pos))) => (x, *pos, true),
                // A call used as a statement is a statement node of its own.
                Some(ASTNode::Stmt(Stmt::FnCall(x, pos))) => (x, *pos, false),
                Some(ASTNode::Stmt(Stmt::Import(_, pos))) => {
                    found = Some(err_at(file, *pos, "`import`: modules are not available to playbooks"));
                    return false;
                }
                _ => return true,
            };
            if call.op_token.is_some() || !call.name.starts_with(|c: char| c.is_alphabetic() || c == '_') {
                return true;
            }
            let name = call.name.as_str();
            if !call.namespace.is_empty() {
                found = Some(err_at(file, pos, format!("`{}::{name}`: modules are not available to playbooks", call.namespace)));
                return false;
            }
            if !self.known_fns.contains(name) && !script_fns.contains(name) {
                let what = if method { "method" } else { "function" };
                found = Some(err_at(file, pos, format!("unknown {what} `{name}` (see docs/PLAYBOOKS.md for the API)")));
                return false;
            }
            if let Some(reason) = self.check_window(name, &call.args, method) {
                found = Some(err_at(file, pos, reason));
                return false;
            }
            if let Some((_, kind)) = api::ACTION_FNS.iter().find(|(n, _)| *n == name).filter(|_| !method) {
                if !meta.actions.iter().any(|c| c.kind == *kind) {
                    found = Some(err_at(file, pos, format!("action `{name}` is not in this playbook's manifest (META.actions)")));
                    return false;
                }
                // A literal target can be checked now; others are checked by the gate.
                if let (Some(Expr::StringConstant(t, _)), false) = (call.args.first(), *kind == crate::actions::ActionKind::SignalProcess) {
                    if !meta.allows(*kind, t) {
                        found = Some(err_at(file, pos, format!("`{name}` on {t:?} is outside the manifest's targets for {name}")));
                        return false;
                    }
                }
            }
            true
        });
        found.map_or(Ok(()), Err)
    }

    /// Evaluates one playbook against a snapshot and its history. State changes are kept only
    /// when the evaluation succeeds.
    pub fn evaluate(
        &self,
        pb: &Playbook,
        snap: Arc<Snapshot>,
        history: Arc<History>,
        state: &State,
    ) -> Result<Vec<ActionRequest>, EvalError> {
        history.note_reads(&pb.reads, snap.ts_ms);
        let node = Node::new(snap, history, self.limits.max_requests);
        let before = state.snapshot();
        let options = CallFnOptions::new().eval_ast(true).rewind_scope(true).with_tag(node.clone());
        let mut scope = rhai::Scope::new();
        let result = self.engine.call_fn_with_options::<Dynamic>(options, &mut scope, &pb.ast, "evaluate", (node.clone(), state.clone()));
        match result {
            Ok(_) => {
                let mut ctx = node.ctx.lock().unwrap_or_else(|e| e.into_inner());
                Ok(std::mem::take(&mut ctx.requests))
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

/// The strings of a script that look like history keys, each interpolation as `*`
/// (`proc.${p.pid}.cpu_pct` → `proc.*.cpu_pct`, `disk.${m}.used_pct` → `disk.*.used_pct`). Too
/// wide a net only keeps a few more series first; keys built another way are noted when read.
fn key_patterns(ast: &AST) -> Vec<String> {
    let mut found = std::collections::BTreeSet::new();
    ast.walk(&mut |path: &[ASTNode]| {
        let text = match path.last() {
            Some(ASTNode::Expr(Expr::StringConstant(s, _))) => s.to_string(),
            Some(ASTNode::Expr(Expr::InterpolatedString(parts, _))) => {
                let mut t = String::new();
                for p in parts.iter() {
                    match p {
                        Expr::StringConstant(s, _) => t.push_str(s),
                        _ if t.ends_with('*') => {}
                        _ => t.push('*'),
                    }
                }
                t
            }
            _ => return true,
        };
        let literal = text.chars().filter(|c| *c != '*').count();
        if text.contains('.') && literal >= 3 && text.len() <= 256 && !text.chars().any(char::is_whitespace) {
            found.insert(text);
        }
        true
    });
    found.into_iter().collect()
}

/// A file that was found and what became of it.
pub type Loaded = Vec<Result<Playbook, PlaybookError>>;

/// Compiles every `*.rhai` file in `dir` (sorted by name), or the bundled set when `dir` is
/// `None`. Duplicate names are rejected (the first file keeps the name).
pub fn load(rt: &Runtime, dir: Option<&Path>) -> Result<Loaded, std::io::Error> {
    let sources: Vec<(String, String)> = match dir {
        None => bundled::PLAYBOOKS.iter().map(|(f, s, _)| (format!("bundled:{f}"), s.to_string())).collect(),
        Some(dir) => {
            let mut files: Vec<_> =
                std::fs::read_dir(dir)?.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == "rhai")).collect();
            files.sort();
            let mut v = Vec::new();
            for f in files {
                let text = std::fs::read(&f)?;
                v.push((f.display().to_string(), String::from_utf8_lossy(&text).into_owned()));
            }
            v
        }
    };
    let mut names = HashSet::new();
    Ok(sources
        .into_iter()
        .map(|(file, src)| {
            let pb = rt.compile(&file, &src)?;
            if !names.insert(pb.meta.name.clone()) {
                let (line, col) = meta_pos(&src);
                return Err(PlaybookError {
                    file,
                    line,
                    col,
                    reason: format!("META.name: {:?} is already used by another playbook", pb.meta.name),
                });
            }
            Ok(pb)
        })
        .collect())
}
