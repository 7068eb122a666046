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

/// The window aggregates: the window is their last argument, after `arity - 1` others.
const WINDOW_FNS: &[(&str, usize)] = &[("avg", 2), ("min", 2), ("max", 2), ("rate", 2), ("delta", 2), ("percentile", 3), ("sustained", 4)];

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

/// Words rhai treats as functions without registering them.
const KEYWORD_FNS: &[&str] = &["print", "debug", "type_of", "Fn", "call", "curry", "is_def_var", "is_def_fn", "is_shared", "this"];

/// Calls refused at load whatever their arguments, and why. `Fn`, `call` and `curry` build or
/// call functions from values, which the manifest check cannot follow; `sleep` and `timestamp`
/// are not in the engine (see `engine`) but are common enough to deserve a clear word.
const REFUSED_FNS: &[(&str, &str)] = &[
    ("Fn", "function pointers built from names are not available to playbooks: call the function by its name"),
    ("call", "calling function pointers is not available to playbooks: call the function by its name"),
    ("curry", "function pointers are not available to playbooks (closures `|x| ...` are)"),
    ("sleep", "playbooks cannot wait: an evaluation runs under a deadline (playbooks.limits.deadline_ms)"),
    ("timestamp", "the engine has no clock: use node.now(), the time of the snapshot"),
];

/// rhai's array methods that take a function: a string argument names the function, which the
/// manifest check cannot follow (refused at run time too, see `api`).
const FN_TAKING_METHODS: &[&str] = &["map", "filter", "some", "all", "dedup", "reduce", "reduce_rev", "sort", "drain", "retain"];

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
        let mut ast = self.engine.compile(source).map_err(|e| err_at(file, e.1, e.0.to_string()))?;
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
        // `debug` lines name their playbook.
        ast.set_source(meta.name.as_str());
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
                // `Fn("name")` with a literal name, folded by the optimizer into a constant.
                Some(ASTNode::Expr(Expr::DynamicConstant(v, pos))) => {
                    if let Some(f) = v.read_lock::<rhai::FnPtr>().filter(|f| !f.is_anonymous()) {
                        found = Some(err_at(
                            file,
                            *pos,
                            format!("`Fn({:?})`: function pointers built from names are not available to playbooks: call the function by its name", f.fn_name()),
                        ));
                        return false;
                    }
                    return true;
                }
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
            if let Some((_, why)) = REFUSED_FNS.iter().find(|(n, _)| *n == name) {
                // A closure that captures variables is built as `curry(<anonymous fn>, vars...)`.
                let closure = name == "curry"
                    && !method
                    && matches!(call.args.first(), Some(Expr::DynamicConstant(v, _)) if v.read_lock::<rhai::FnPtr>().is_some_and(|f| f.is_anonymous()));
                if !closure {
                    found = Some(err_at(file, pos, format!("`{name}`: {why}")));
                    return false;
                }
            }
            if method
                && FN_TAKING_METHODS.contains(&name)
                && call.args.iter().any(|a| matches!(a, Expr::StringConstant(..) | Expr::InterpolatedString(..)))
            {
                found = Some(err_at(
                    file,
                    pos,
                    format!("`{name}` with a function name: pass a closure (`|x| ...`) instead; playbooks cannot call functions named by strings"),
                ));
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
            // An action function is named as its kind.
            if let Some(kind) = crate::actions::ActionKind::parse(name).filter(|_| !method) {
                if !meta.actions.iter().any(|c| c.kind == kind) {
                    found = Some(err_at(file, pos, format!("action `{name}` is not in this playbook's manifest (META.actions)")));
                    return false;
                }
                // A literal target can be checked now; others are checked by the gate.
                if let (Some(Expr::StringConstant(t, _)), false) = (call.args.first(), kind == crate::actions::ActionKind::SignalProcess) {
                    if !meta.allows(kind, t) {
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
    pub fn evaluate(&self, pb: &Playbook, snap: Arc<Snapshot>, history: Arc<History>, state: &State) -> Result<Evaluation, EvalError> {
        history.note_reads(&pb.reads, snap.ts_ms);
        let allowed = pb.meta.actions.iter().map(|c| c.kind).collect();
        let node = Node::new(snap, history, &self.limits, allowed);
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

/// The largest playbook (or case file) read, in bytes: the bundled ones are under 4 KiB.
pub const MAX_SOURCE_BYTES: u64 = 1024 * 1024;

/// What a directory entry is when it is not a regular file.
fn kind_of(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "not a regular file"
    }
}

/// Reads a playbook or case file without ever blocking on it or following a link: opened with
/// `O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY`, checked with `fstat` to be a regular file
/// (so a FIFO is never read and a file swapped after a directory listing is judged by what was
/// opened), and read up to [`MAX_SOURCE_BYTES`]. The error says why, for `file:1:1: <why>`.
pub fn read_source(path: &Path) -> Result<String, String> {
    use rustix::fs::{Mode, OFlags};
    use std::io::Read;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = rustix::fs::open(path, flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP => "a symbolic link: playbooks must be regular files (copy the file instead)".to_string(),
        e => std::io::Error::from(e).to_string(),
    })?;
    let file = std::fs::File::from(fd);
    let md = file.metadata().map_err(|e| e.to_string())?;
    if !md.is_file() {
        return Err(format!("{}: playbooks must be regular files", kind_of(&md.file_type())));
    }
    let too_big = || format!("larger than {MAX_SOURCE_BYTES} bytes");
    if md.len() > MAX_SOURCE_BYTES {
        return Err(too_big());
    }
    let mut buf = Vec::new();
    file.take(MAX_SOURCE_BYTES + 1).read_to_end(&mut buf).map_err(|e| e.to_string())?;
    if buf.len() as u64 > MAX_SOURCE_BYTES {
        return Err(too_big());
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// One file of the playbooks directory: its source, or why it could not be read.
fn read_entry(path: &Path, ft: Option<std::fs::FileType>) -> Result<String, String> {
    match ft {
        // Never opened: a directory, a link (dangling or not), a FIFO, a device.
        Some(ft) if !ft.is_file() => Err(format!("{}: playbooks must be regular files", kind_of(&ft))),
        _ => read_source(path),
    }
}

/// Compiles every `*.rhai` file in `dir` (sorted by name), or the bundled set when `dir` is
/// `None`. Duplicate names are rejected (the first file keeps the name). An entry that cannot be
/// read (not a regular file, too large, unreadable) is that entry's error at `1:1`; the others
/// load. Only a directory that cannot be listed is an error of the whole load.
pub fn load(rt: &Runtime, dir: Option<&Path>) -> Result<Loaded, std::io::Error> {
    load_with(rt, dir, None)
}

/// [`load`], and with `dir` `None` and a `local` directory: the bundled set with the `*.rhai`
/// files of `local` added, where a local file named like a bundled one (`disk_old_logs.rhai`)
/// replaces it and an empty local file turns it off, as in systemd's `/usr/lib` and `/etc`. A
/// missing `local` holds no playbooks. The bundled ones come first, then the local ones by name.
pub fn load_with(rt: &Runtime, dir: Option<&Path>, local: Option<&Path>) -> Result<Loaded, std::io::Error> {
    let sources: Sources = match (dir, local) {
        (Some(dir), _) => list(dir)?,
        (None, None) => bundled::PLAYBOOKS.iter().map(|(f, s, _)| (format!("bundled:{f}"), Ok(s.to_string()))).collect(),
        (None, Some(local)) => {
            let local = match list(local) {
                Ok(l) => l,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(e) => return Err(e),
            };
            let name = |label: &str| Path::new(label).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let replaced: HashSet<String> = local.iter().map(|(f, _)| name(f)).collect();
            bundled::PLAYBOOKS
                .iter()
                .filter(|(f, _, _)| !replaced.contains(*f))
                .map(|(f, s, _)| (format!("bundled:{f}"), Ok(s.to_string())))
                .chain(local.into_iter().filter(|(_, src)| !src.as_ref().is_ok_and(|s| s.trim().is_empty())))
                .collect()
        }
    };
    let mut names = HashSet::new();
    Ok(sources
        .into_iter()
        .map(|(file, src)| {
            let src = src.map_err(|reason| PlaybookError { file: file.clone(), line: 1, col: 1, reason })?;
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

/// Playbook files: each label (a path, or `bundled:<file>`) with its source or why it could not be read.
type Sources = Vec<(String, Result<String, String>)>;

/// The `*.rhai` files of `dir`, sorted by name, each with its source or why it could not be read.
fn list(dir: &Path) -> Result<Sources, std::io::Error> {
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| (e.path(), e.file_type().ok()))
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let dir_problem = std::fs::metadata(dir).ok().and_then(|m| loose(&m));
    Ok(files
        .into_iter()
        .map(|(f, ft)| {
            let problem = dir_problem
                .as_ref()
                .map(|p| format!("its directory {}: {p}", dir.display()))
                // A link or other non-file is refused by read_entry, with its own reason.
                .or_else(|| std::fs::symlink_metadata(&f).ok().filter(|m| m.is_file()).and_then(|m| loose(&m)));
            let entry = match problem {
                Some(p) => Err(format!("refused: {p}; playbooks act as root in live mode (chown root, chmod go-w)")),
                None => read_entry(&f, ft),
            };
            (f.display().to_string(), entry)
        })
        .collect())
}

/// Why a playbook file or directory could be changed by someone other than root, when medic
/// runs as root: owned by another user, or writable by its group or by others (as sudo and
/// sshd refuse such files). Not root: `None` (the files are the user's own business).
fn loose(m: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if !rustix::process::geteuid().is_root() {
        return None;
    }
    if m.uid() != 0 {
        return Some(format!("owned by uid {}, not root", m.uid()));
    }
    (m.mode() & 0o022 != 0).then(|| format!("writable by its group or others (mode {:04o})", m.mode() & 0o7777))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signals::Snapshot;

    const NOTIFY_META: &str = "const META = #{ name: \"t\", description: \"t\", interval: \"1s\", actions: [#{ kind: \"notify\", target: \"*\" }], rate_limit: #{ max: 9, per: \"1h\" }, cooldown: \"0s\" };\n";

    /// A runtime whose deadline is far: these tests run in debug builds beside others, and
    /// only `a_spinning_playbook_stops_at_its_deadline` is about the deadline.
    fn runtime(limits: engine::Limits) -> Runtime {
        Runtime::new(engine::Limits { deadline_ms: 60_000, ..limits })
    }

    fn pb(rt: &Runtime, body: &str) -> Result<Playbook, PlaybookError> {
        rt.compile("t.rhai", &format!("{NOTIFY_META}{body}"))
    }

    fn eval(rt: &Runtime, p: &Playbook, state: &State) -> (Result<Vec<ActionRequest>, EvalError>, Arc<History>) {
        let history = Arc::new(History::new(600_000, 1000, 100));
        let snap = Arc::new(Snapshot { ts_ms: 1_700_000_000_000, ..Default::default() });
        (rt.evaluate(p, snap, history.clone(), state).map(|e| e.requests), history)
    }

    /// The names and files `load_with` gives for the bundled set and a local directory.
    fn layered(dir: Option<&Path>, local: &Path) -> Vec<(String, String)> {
        let rt = runtime(Default::default());
        load_with(&rt, dir, Some(local)).unwrap().into_iter().map(|r| r.map(|p| (p.meta.name, p.file)).unwrap()).collect()
    }

    #[test]
    fn local_playbooks_add_to_replace_and_turn_off_bundled_ones_by_file_name() {
        let d = tempfile::tempdir().unwrap();
        let source = |f: &str| bundled::PLAYBOOKS.iter().find(|b| b.0 == f).unwrap().1;
        // A missing local directory holds none: the bundled set.
        let all = layered(None, &d.path().join("missing"));
        assert_eq!(all.len(), bundled::PLAYBOOKS.len());
        assert!(all.iter().all(|(_, f)| f.starts_with("bundled:")));
        // A new one is added; one named like a bundled one replaces it; an empty one turns it off.
        std::fs::write(d.path().join("mine.rhai"), source("runq_latency.rhai").replace("\"runq-latency\"", "\"mine\"")).unwrap();
        std::fs::write(d.path().join("disk_old_logs.rhai"), source("disk_old_logs.rhai")).unwrap();
        std::fs::write(d.path().join("disk_latency.rhai"), "").unwrap();
        let got = layered(None, d.path());
        assert_eq!(got.len(), bundled::PLAYBOOKS.len(), "{got:?}");
        let file = |name: &str| got.iter().find(|(n, _)| n == name).map(|(_, f)| f.clone());
        assert_eq!(file("mine"), Some(d.path().join("mine.rhai").display().to_string()));
        assert_eq!(file("disk-old-logs"), Some(d.path().join("disk_old_logs.rhai").display().to_string()));
        assert_eq!(file("disk-latency"), None);
        assert_eq!(file("runq-latency").as_deref(), Some("bundled:runq_latency.rhai"));
        // A local file that takes a bundled playbook's name under another file name is refused.
        std::fs::write(d.path().join("copy.rhai"), source("runq_latency.rhai")).unwrap();
        let rt = runtime(Default::default());
        let errs: Vec<_> = load_with(&rt, None, Some(d.path())).unwrap().into_iter().filter_map(Result::err).collect();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].file.ends_with("copy.rhai") && errs[0].reason.contains("already used"), "{}", errs[0]);
        // playbooks_dir (or --playbooks) replaces everything: the local directory is not read.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("mine.rhai"), source("runq_latency.rhai")).unwrap();
        let only = layered(Some(other.path()), d.path());
        assert_eq!(only, vec![("runq-latency".to_string(), other.path().join("mine.rhai").display().to_string())]);
    }

    #[test]
    fn dynamic_calls_are_refused_at_load_with_their_position() {
        let rt = runtime(Default::default());
        let cases = [
            ("let f = Fn(\"restart_unit\"); f.call(\"x.service\", \"r\");", "`Fn(\"restart_unit\")`"),
            ("let n = \"restart\" + \"_unit\"; let f = Fn(n);", "`Fn`: function pointers"),
            ("call(Fn(\"notify\"), \"x\");", "function pointers"),
            ("let f = |x| x; f.call(1);", "`call`"),
            ("let f = |x| x; let g = f.curry(1);", "`curry`"),
            ("[\"x\"].map(\"notify\");", "`map` with a function name"),
            ("[\"x\"].filter(`notify`);", "`filter` with a function name"),
            ("sleep(3600);", "`sleep`: playbooks cannot wait"),
            ("sleep(1e20);", "`sleep`"),
            ("let t = timestamp();", "`timestamp`: the engine has no clock"),
        ];
        for (body, want) in cases {
            let e = pb(&rt, &format!("fn evaluate(node, state) {{\n    {body}\n}}\n")).expect_err(body);
            assert!(e.to_string().starts_with("t.rhai:3:") && e.reason.contains(want), "{body}: {e}");
        }
        // Closures, capturing or not, stay available (the bundled playbooks sort with one).
        let ok = "fn evaluate(node, state) { let k = 2; let a = [3, 1, 2]; a.sort(|x, y| x - y); let b = a.map(|x| x * k); }";
        pb(&rt, ok).unwrap();
    }

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

    #[test]
    fn a_bad_entry_rejects_that_entry_only() {
        let dir = tempfile::tempdir().unwrap();
        let good = format!("{NOTIFY_META}fn evaluate(node, state) {{ notify(\"x\"); }}\n");
        std::fs::write(dir.path().join("good.rhai"), &good).unwrap();
        std::fs::create_dir(dir.path().join("a_dir.rhai")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", dir.path().join("b_dangling.rhai")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("good.rhai"), dir.path().join("c_link.rhai")).unwrap();
        rustix::fs::mknodat(rustix::fs::CWD, dir.path().join("d_fifo.rhai"), rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o644), 0)
            .unwrap();
        std::fs::write(dir.path().join("e_big.rhai"), vec![b' '; MAX_SOURCE_BYTES as usize + 1]).unwrap();
        let loaded = load(&runtime(Default::default()), Some(dir.path())).unwrap();
        let errs: Vec<String> = loaded.iter().filter_map(|r| r.as_ref().err()).map(|e| e.to_string()).collect();
        assert_eq!(loaded.len(), 6);
        assert_eq!(loaded.iter().filter(|r| r.is_ok()).count(), 1, "{errs:?}");
        for (file, why) in [
            ("a_dir.rhai", "a directory"),
            ("b_dangling.rhai", "a symbolic link"),
            ("c_link.rhai", "a symbolic link"),
            ("d_fifo.rhai", "a FIFO"),
            ("e_big.rhai", "larger than"),
        ] {
            let want = format!("{}:1:1: {why}", dir.path().join(file).display());
            assert!(errs.iter().any(|e| e.starts_with(&want)), "{want} in {errs:?}");
        }
        // The same reader refuses a FIFO named directly, without blocking on it.
        assert!(read_source(&dir.path().join("d_fifo.rhai")).unwrap_err().contains("a FIFO"));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn rhai_text() -> impl Strategy<Value = String> {
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

        #[derive(Debug, Clone)]
        enum Entry {
            File(String),
            Dir,
            Dangling,
            Fifo,
            LinkToFirst,
        }

        fn entry() -> impl Strategy<Value = Entry> {
            prop_oneof![
                4 => rhai_text().prop_map(Entry::File),
                1 => Just(Entry::Dir),
                1 => Just(Entry::Dangling),
                1 => Just(Entry::Fifo),
                1 => Just(Entry::LinkToFirst),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any text compiles or fails with file:line:col, never panics.
            #[test]
            fn compile_never_panics(src in rhai_text()) {
                let rt = runtime(Default::default());
                if let Err(e) = rt.compile("p.rhai", &src) {
                    prop_assert!(e.line >= 1 && e.col >= 1);
                }
            }

            /// Any directory yields exactly one result per `*.rhai` entry, in name order.
            #[test]
            fn load_yields_one_result_per_entry(entries in proptest::collection::vec(entry(), 0..6)) {
                let dir = tempfile::tempdir().unwrap();
                let d = dir.path();
                for (i, e) in entries.iter().enumerate() {
                    let p = d.join(format!("{i:02}.rhai"));
                    match e {
                        Entry::File(s) => std::fs::write(&p, s).unwrap(),
                        Entry::Dir => std::fs::create_dir(&p).unwrap(),
                        Entry::Dangling => std::os::unix::fs::symlink(d.join("missing"), &p).unwrap(),
                        Entry::Fifo => rustix::fs::mknodat(rustix::fs::CWD, &p, rustix::fs::FileType::Fifo, rustix::fs::Mode::from(0o600), 0).unwrap(),
                        Entry::LinkToFirst => std::os::unix::fs::symlink(d.join("00.rhai"), &p).unwrap(),
                    }
                }
                let loaded = load(&runtime(Default::default()), Some(d)).unwrap();
                prop_assert_eq!(loaded.len(), entries.len());
                for (i, r) in loaded.iter().enumerate() {
                    let file = match r { Ok(p) => p.file.clone(), Err(e) => e.file.clone() };
                    prop_assert_eq!(file, d.join(format!("{i:02}.rhai")).display().to_string());
                    if !matches!(entries[i], Entry::File(_)) {
                        prop_assert!(r.is_err());
                    }
                }
            }
        }
    }
}
