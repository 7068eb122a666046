//! Compiling a playbook and the static checks run on it at load: every function it calls exists
//! and is not refused (`Fn`, `call`, `curry`, `sleep`, `timestamp`, modules, functions named by
//! strings), every action it asks for is in its manifest (and a literal target inside it), no
//! literal window reaches past the history; and the history keys its source names.

use super::meta::{self, Meta};
use super::{api, err_at, meta_pos, Playbook, PlaybookError, Runtime};
use rhai::{ASTNode, Engine, Expr, Stmt, AST};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::Arc;

/// The window aggregates: the window is their last argument, after `arity - 1` others.
const WINDOW_FNS: &[(&str, usize)] = &[("avg", 2), ("min", 2), ("max", 2), ("rate", 2), ("delta", 2), ("percentile", 3), ("sustained", 4)];

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

/// The functions a script may call: the engine's registered ones and rhai's keywords.
pub(super) fn known_fns(engine: &Engine) -> HashSet<String> {
    let mut known: HashSet<String> =
        engine.collect_fn_metadata(None, |info| Some(info.metadata.name.to_string()), true).into_iter().collect();
    known.extend(KEYWORD_FNS.iter().map(|s| s.to_string()));
    known
}

impl Runtime {
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
        let wakes =
            crate::signals::wake::Wake::of_playbook(reads.iter().map(String::as_str), method_names(&ast).iter().map(String::as_str));
        let mut ast = without_meta(ast);
        // `debug` lines name their playbook.
        ast.set_source(meta.name.as_str());
        let sha256 = hex::encode(Sha256::digest(source.as_bytes()));
        Ok(Playbook { meta, file: file.to_string(), sha256, ast: Arc::new(ast), reads, wakes })
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
}

/// The AST an evaluation runs: without the `const META = ...` statement when nothing else
/// names `META`. The manifest is read once, here; every evaluation runs the script's top level
/// (`eval_ast`), and building the META map again each time cost more than a small playbook's
/// whole `evaluate` (about 1,000 of them in one tick). Other top-level statements stay.
fn without_meta(ast: AST) -> AST {
    let is_meta = |s: &Stmt| matches!(s, Stmt::Var(x, ..) if x.0.name == "META");
    let mut named = 0usize;
    ast.walk(&mut |path: &[ASTNode]| {
        match path.last() {
            Some(ASTNode::Expr(Expr::Variable(x, ..))) if x.1 == "META" => named += 1,
            Some(ASTNode::Expr(Expr::StringConstant(s, _))) if s.contains("META") => named += 1,
            _ => {}
        }
        true
    });
    if named > 0 || !ast.statements().iter().any(is_meta) {
        return ast;
    }
    let body: Vec<Stmt> = ast.statements().iter().filter(|s| !is_meta(s)).cloned().collect();
    AST::new(body, ast.shared_lib().clone())
}

/// The names of the methods a script calls (`node.mounts()` → `mounts`).
fn method_names(ast: &AST) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    ast.walk(&mut |path: &[ASTNode]| {
        if let Some(ASTNode::Expr(Expr::MethodCall(x, _))) = path.last() {
            found.insert(x.name.to_string());
        }
        true
    });
    found
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

#[cfg(test)]
mod tests {
    use crate::playbooks::fixtures::*;

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

    mod prop {
        use crate::playbooks::fixtures::*;
        use proptest::prelude::*;

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

        }
    }
}
