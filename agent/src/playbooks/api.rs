//! The playbook API: what a script can see and do. `Node` is a read-only view of the current
//! snapshot and the history; `State` is the playbook's own memory between evaluations; the
//! action functions only *record* requests (in the evaluation's context, passed as the call's
//! tag), and nothing they do touches the host.
//!
//! Every value a script reads through `Node` is noted, so each request carries the signal
//! values that led to it (its trigger); and every key it reads from the history is noted in the
//! history, which keeps such series first when it is full.
//!
//! The action functions belong to their kinds (`actions::<kind>::register`); they reach the
//! evaluation through `Node`'s [`Evaluation`] implementation ([`Node::ask`] bounds and keeps a
//! request), so `actions` needs nothing from here.
//!
//! What a request carries is bounded where it is made, whatever the script does: each noted read
//! at [`MAX_VALUE_BYTES`], all of a request's reads together at [`MAX_SIGNALS_BYTES`], the reason
//! and a notification's subject at [`MAX_VALUE_BYTES`], its details at [`MAX_DETAILS_BYTES`].
//! What is cut ends with the truncation marker; reads left out are counted under a key of their
//! own ([`OMITTED_READS`]), never dropped silently.
//!
//! `State` and its bounds (plain data only, at most `limits.max_state_bytes`) are `state.rs`'s;
//! `register` here registers it with the rest.

use crate::actions::request::{err, Evaluation};
use crate::actions::{ActionKind, ActionRequest};
use crate::signals::history::{Cmp, History};
use crate::signals::Snapshot;
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, NativeCallContext};

pub use super::state::{plain, Memory, State};
pub use crate::actions::notify::MAX_DETAILS_BYTES;
pub use crate::actions::request::{duration_ms, MAX_VALUE_BYTES};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// Reads noted per evaluation are capped so a loop over every process cannot bloat a record.
const MAX_NOTED_READS: usize = 64;
/// All the reads one request records, keys and values, in bytes.
pub const MAX_SIGNALS_BYTES: usize = 32 * 1024;
/// The key under which a request counts the reads it could not carry.
pub const OMITTED_READS: &str = "…[truncated] reads omitted";

/// What one evaluation accumulates, and what it may do.
#[derive(Debug, Default)]
pub struct EvalCtx {
    pub requests: Vec<ActionRequest>,
    pub reads: BTreeMap<String, Value>,
    /// Reads not noted because `MAX_NOTED_READS` were already.
    pub reads_omitted: usize,
    pub max_requests: usize,
    pub max_state_bytes: usize,
    /// The action kinds of the playbook's manifest: checked again when a request is made, so a
    /// call the load-time check could not see (a name computed at run time) cannot ask for more.
    pub allowed: Vec<ActionKind>,
}

/// What every playbook evaluated on one snapshot shares: the snapshot, the history up to it, and
/// the entity lists (`node.processes()`, `units()`, `mounts()`, `tcp_peers()`) built from the
/// snapshot at most once, by the first evaluation that asks, however many playbooks read them.
/// A list is read-only to scripts (each item they get is their own copy), so sharing it cannot
/// carry anything from one playbook to another.
pub struct Tick {
    pub snap: Arc<Snapshot>,
    pub history: Arc<History>,
    lists: Arc<Lists>,
}

impl Tick {
    pub fn new(snap: Arc<Snapshot>, history: Arc<History>) -> Self {
        Self { snap, history, lists: Arc::default() }
    }
}

/// The lists of a [`Tick`], each built on first use.
#[derive(Default)]
struct Lists {
    processes: OnceLock<List>,
    units: OnceLock<List>,
    mounts: OnceLock<List>,
    tcp_peers: OnceLock<List>,
    /// Each process's map (by its index in the snapshot), built when a call first hands it
    /// out: the filtered calls and `node.process(pid)` share them with `node.processes()`.
    process_maps: OnceLock<Box<[OnceLock<Arc<Map>>]>>,
    /// Pid → index in the snapshot's process list, for `node.process(pid)`.
    pids: OnceLock<std::collections::HashMap<i64, usize>>,
}

impl Node {
    /// The `i`th process of the snapshot as an [`Item`] (its map built once per tick).
    fn process_item(&self, i: usize) -> Dynamic {
        let maps = self.lists.process_maps.get_or_init(|| self.snap.processes.iter().map(|_| OnceLock::new()).collect());
        match (maps.get(i), self.snap.processes.get(i)) {
            (Some(cell), Some(p)) => Dynamic::from(Item(cell.get_or_init(|| Arc::new(process_map(p))).clone())),
            _ => Dynamic::UNIT,
        }
    }

    /// The processes that pass `keep`, as items.
    fn processes_where(&self, keep: impl Fn(&crate::signals::process::ProcessInfo) -> bool) -> Vec<Dynamic> {
        self.snap.processes.iter().enumerate().filter(|(_, p)| keep(p)).map(|(i, _)| self.process_item(i)).collect()
    }
}

/// One item of a list the agent hands a script (a process, unit, mount or peer): a map shared,
/// read-only, by every playbook of the tick, so a loop step or a filter match copies a pointer,
/// not the map. It reads as the map it stands for (`p.name`, `p["name"]`, `p.tcp.established`,
/// `keys()`, `"name" in p`, printing, `type_of` says `"map"`); writing to it (`p.name = "x"`)
/// makes the script its own copy first, so nothing one playbook does reaches another. Kept in
/// `state` or sent as `notify` details, it is the plain map ([`plain_items`]).
#[derive(Clone)]
pub struct Item(Arc<Map>);

impl Item {
    pub fn map(&self) -> &Map {
        &self.0
    }
}

/// `v` with every [`Item`] in it (nested in arrays and maps too) turned into its plain map.
pub fn plain_items(v: Dynamic) -> Dynamic {
    if let Some(item) = v.read_lock::<Item>().map(|i| i.0.clone()) {
        return Dynamic::from_map(item.iter().map(|(k, x)| (k.clone(), plain_items(x.clone()))).collect());
    }
    if v.is_array() {
        return Dynamic::from_array(v.into_array().unwrap_or_default().into_iter().map(plain_items).collect());
    }
    if v.is_map() {
        return Dynamic::from_map(v.cast::<Map>().into_iter().map(|(k, x)| (k, plain_items(x))).collect());
    }
    v
}

fn register_item(e: &mut Engine) {
    // `type_of(p)` is "map", as it was when items were maps.
    e.register_type_with_name::<Item>("map");
    // `p.field` falls back to the indexer (rhai tries an indexer when no getter exists).
    e.register_indexer_get(|i: &mut Item, k: &str| i.0.get(k).cloned().unwrap_or(Dynamic::UNIT));
    e.register_indexer_set(|i: &mut Item, k: &str, v: Dynamic| {
        Arc::make_mut(&mut i.0).insert(k.into(), v);
    });
    e.register_fn("keys", |i: &mut Item| -> Array { i.0.keys().map(|k| k.as_str().into()).collect() });
    e.register_fn("values", |i: &mut Item| -> Array { i.0.values().cloned().collect() });
    e.register_fn("len", |i: &mut Item| i.0.len() as i64);
    e.register_fn("is_empty", |i: &mut Item| i.0.is_empty());
    e.register_fn("contains", |i: &mut Item, k: &str| i.0.contains_key(k));
    e.register_fn("get", |i: &mut Item, k: &str| i.0.get(k).cloned().unwrap_or(Dynamic::UNIT));
    e.register_fn("to_map", |i: &mut Item| -> Map { (*i.0).clone() });
    e.register_fn("to_string", |i: &mut Item| Dynamic::from_map((*i.0).clone()).to_string());
    e.register_fn("to_debug", |i: &mut Item| format!("{:?}", Dynamic::from_map((*i.0).clone())));
    e.register_fn("==", |a: &mut Item, b: Item| same_map(&a.0, &b.0));
    e.register_fn("!=", |a: &mut Item, b: Item| !same_map(&a.0, &b.0));
}

/// Two items are equal when they hold the same keys and equal values.
fn same_map(a: &Arc<Map>, b: &Arc<Map>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.len() == b.len() && a.iter().zip(b.iter()).all(|((ka, va), (kb, vb))| ka == kb && va.to_string() == vb.to_string()))
}

/// The script's `node`: one snapshot, the history up to it, the tick's shared lists and the
/// evaluation's context.
#[derive(Clone)]
pub struct Node {
    pub snap: Arc<Snapshot>,
    pub history: Arc<History>,
    lists: Arc<Lists>,
    pub ctx: Arc<Mutex<EvalCtx>>,
}

impl Node {
    pub fn new(tick: &Tick, limits: &super::engine::Limits, allowed: Vec<ActionKind>) -> Self {
        let ctx = EvalCtx { max_requests: limits.max_requests, max_state_bytes: limits.max_state_bytes, allowed, ..Default::default() };
        Self { snap: tick.snap.clone(), history: tick.history.clone(), lists: tick.lists.clone(), ctx: Arc::new(Mutex::new(ctx)) }
    }

    fn now(&self) -> i64 {
        self.snap.ts_ms
    }

    fn note(&self, what: String, v: Option<f64>) -> Dynamic {
        let what = crate::signals::parse::bounded(what, MAX_VALUE_BYTES);
        let mut ctx = self.ctx.lock().unwrap_or_else(|e| e.into_inner());
        if ctx.reads.len() < MAX_NOTED_READS || ctx.reads.contains_key(&what) {
            ctx.reads.insert(what, v.and_then(|v| serde_json::Number::from_f64(v).map(Value::Number)).unwrap_or(Value::Null));
        } else {
            ctx.reads_omitted = ctx.reads_omitted.saturating_add(1);
        }
        v.map_or(Dynamic::UNIT, Dynamic::from_float)
    }
}

/// A list the agent hands a script (`node.processes()`, `units()`, `mounts()`, `keys()`,
/// `tcp_peers()`): iterated with `for`, indexed with `list[i]`, with `len()`, `is_empty()`,
/// `x in list` and `to_array()`. Not a rhai array because rhai checks a returned array against
/// the engine's limits by the *sum* of everything nested in it: on a busy node (2,000
/// processes: 26,000 map entries, hundreds of KiB of command lines) `node.processes()` would
/// exceed them and the playbook be disabled, for the agent's data, not the script's. Each item
/// is bounded by the agent (see signals/parse.rs); what the script builds from them stays
/// under the limits.
#[derive(Clone, Default)]
pub struct List(Arc<Vec<Dynamic>>);

impl List {
    fn new(items: Vec<Dynamic>) -> Self {
        Self(Arc::new(items))
    }
}

impl FromIterator<Dynamic> for List {
    fn from_iter<I: IntoIterator<Item = Dynamic>>(iter: I) -> Self {
        Self::new(iter.into_iter().collect())
    }
}

/// Iterates a [`List`] without copying it.
pub struct ListIter(Arc<Vec<Dynamic>>, usize);

impl Iterator for ListIter {
    type Item = Dynamic;
    fn next(&mut self) -> Option<Dynamic> {
        let v = self.0.get(self.1).cloned();
        self.1 += 1;
        v
    }
}

impl IntoIterator for List {
    type Item = Dynamic;
    type IntoIter = ListIter;
    fn into_iter(self) -> ListIter {
        ListIter(self.0, 0)
    }
}

/// Equality for `x in list` over the values lists hold (strings, numbers, booleans).
fn same(a: &Dynamic, b: &Dynamic) -> bool {
    if let (Some(x), Some(y)) = (a.read_lock::<rhai::ImmutableString>(), b.read_lock::<rhai::ImmutableString>()) {
        return *x == *y;
    }
    match (number(a, "").ok(), number(b, "").ok()) {
        (Some(x), Some(y)) => x == y,
        _ => a.as_bool().ok().zip(b.as_bool().ok()).is_some_and(|(x, y)| x == y),
    }
}

fn register_list(e: &mut Engine) {
    e.register_type_with_name::<List>("List");
    e.register_iterator::<List>();
    e.register_fn("len", |l: &mut List| l.0.len() as i64);
    e.register_fn("is_empty", |l: &mut List| l.0.is_empty());
    e.register_fn("contains", |l: &mut List, x: Dynamic| l.0.iter().any(|v| same(v, &x)));
    // Subject to the engine's limits, like any array the script holds.
    e.register_fn("to_array", |l: &mut List| -> Array { l.0.to_vec() });
    e.register_indexer_get(|l: &mut List, i: i64| -> RhaiResult<Dynamic> {
        let n = l.0.len() as i64;
        let at = if i < 0 { i + n } else { i };
        if (0..n).contains(&at) {
            Ok(l.0[at as usize].clone())
        } else {
            Err(err(format!("index {i} out of bounds: the list has {n} items")))
        }
    });
}

fn window(s: &str) -> RhaiResult<i64> {
    duration_ms(s).map_err(err)
}

fn number(v: &Dynamic, what: &str) -> RhaiResult<f64> {
    if let Ok(f) = v.as_float() {
        return Ok(f);
    }
    v.as_int().map(|i| i as f64).map_err(|t| err(format!("{what}: expected a number, got {t}")))
}

fn cmp(op: &str) -> RhaiResult<Cmp> {
    Cmp::parse(op).ok_or_else(|| err(format!("unknown comparison {op:?}: use >, >=, <, <=, == or !=")))
}

fn opt_int(v: Option<u64>) -> Dynamic {
    v.map_or(Dynamic::UNIT, |v| Dynamic::from_int(v.min(i64::MAX as u64) as i64))
}

fn count_map(m: &BTreeMap<String, u64>) -> Map {
    m.iter().map(|(k, v)| (k.as_str().into(), Dynamic::from_int(*v as i64))).collect()
}

fn process_map(p: &crate::signals::process::ProcessInfo) -> Map {
    let mut m = Map::new();
    m.insert("pid".into(), Dynamic::from_int(p.pid));
    m.insert("ppid".into(), Dynamic::from_int(p.ppid));
    m.insert("name".into(), p.name.clone().into());
    m.insert("cmdline".into(), p.cmdline.clone().into());
    m.insert("unit".into(), p.unit.clone().map_or(Dynamic::UNIT, Into::into));
    m.insert("cpu_pct".into(), p.cpu_pct.map_or(Dynamic::UNIT, Dynamic::from_float));
    m.insert("rss_bytes".into(), opt_int(Some(p.rss_bytes)));
    m.insert("fds".into(), opt_int(p.fds));
    m.insert("fd_limit".into(), opt_int(p.fd_limit));
    m.insert("fds_pct".into(), p.fds_pct.map_or(Dynamic::UNIT, Dynamic::from_float));
    m.insert("children".into(), opt_int(Some(p.children)));
    m.insert("zombie_children".into(), opt_int(Some(p.zombie_children)));
    m.insert("rss_tree_bytes".into(), opt_int(Some(p.rss_tree_bytes)));
    m.insert("threads".into(), opt_int(Some(p.threads)));
    m.insert("start_time".into(), opt_int(Some(p.start_time)));
    m.insert("state".into(), p.state.clone().into());
    m.insert("close_wait".into(), opt_int(Some(p.tcp.get("close_wait").copied().unwrap_or(0))));
    m.insert("tcp".into(), count_map(&p.tcp).into());
    m
}

/// A process's state is one letter; `states` is a set of them.
fn in_states(state: &str, states: &str) -> bool {
    let mut c = state.chars();
    matches!((c.next(), c.next()), (Some(s), None) if states.contains(s))
}

/// The numeric process fields `node.processes(field, op, threshold)` can filter on.
const FILTER_FIELDS: &str =
    "cpu_pct, rss_bytes, rss_tree_bytes, fds, fd_limit, fds_pct, threads, children, zombie_children, ppid, close_wait";

type FieldOf = fn(&crate::signals::process::ProcessInfo) -> Option<f64>;

fn process_field(field: &str) -> RhaiResult<FieldOf> {
    Ok(match field {
        "cpu_pct" => |p| p.cpu_pct,
        "rss_bytes" => |p| Some(p.rss_bytes as f64),
        "rss_tree_bytes" => |p| Some(p.rss_tree_bytes as f64),
        "fds" => |p| p.fds.map(|f| f as f64),
        "fd_limit" => |p| p.fd_limit.map(|f| f as f64),
        "fds_pct" => |p| p.fds_pct,
        "threads" => |p| Some(p.threads as f64),
        "children" => |p| Some(p.children as f64),
        "zombie_children" => |p| Some(p.zombie_children as f64),
        "ppid" => |p| Some(p.ppid as f64),
        "close_wait" => |p| Some(p.tcp.get("close_wait").copied().unwrap_or(0) as f64),
        other => return Err(err(format!("processes: cannot filter on {other:?} ({FILTER_FIELDS})"))),
    })
}

fn unit_map(u: &crate::signals::process::UnitInfo) -> Map {
    let mut m = Map::new();
    m.insert("unit".into(), u.unit.clone().into());
    m.insert("processes".into(), opt_int(Some(u.processes)));
    m.insert("cpu_pct".into(), Dynamic::from_float(u.cpu_pct));
    m.insert("rss_bytes".into(), opt_int(Some(u.rss_bytes)));
    m.insert("memory_bytes".into(), opt_int(u.memory_bytes));
    m.insert("fds".into(), opt_int(Some(u.fds)));
    m.insert("close_wait".into(), opt_int(Some(u.tcp.get("close_wait").copied().unwrap_or(0))));
    m.insert("tcp".into(), count_map(&u.tcp).into());
    m
}

fn mount_map(snap: &Snapshot, mnt: &crate::signals::disk::Mount) -> Map {
    let mut m = Map::new();
    m.insert("mount".into(), mnt.mount_point.clone().into());
    m.insert("device".into(), mnt.device.clone().into());
    m.insert("fs_type".into(), mnt.fs_type.clone().into());
    for f in ["total_bytes", "used_bytes", "free_bytes", "used_pct", "inodes_used_pct"] {
        let v = snap.metric(&format!("disk.{}.{f}", mnt.mount_point));
        m.insert(f.into(), v.map_or(Dynamic::UNIT, Dynamic::from_float));
    }
    m
}

/// The evaluation context travels as the call's tag; the action functions find it there.
fn node_of(ctx: &NativeCallContext) -> RhaiResult<Node> {
    crate::actions::request::evaluation::<Node>(ctx)
}

impl Evaluation for Node {
    fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    fn plain(&self, v: Dynamic) -> Dynamic {
        plain_items(v)
    }

    fn ask(&self, kind: ActionKind, target: String, params: BTreeMap<String, Value>, reason: &str) -> RhaiResult<bool> {
        let mut c = self.ctx.lock().unwrap_or_else(|e| e.into_inner());
        if !c.allowed.contains(&kind) {
            return Err(err(format!("action `{kind}` is not in this playbook's manifest (META.actions)")));
        }
        if c.requests.len() >= c.max_requests {
            return Err(err(format!("more than {} action requests in one evaluation", c.max_requests)));
        }
        // A target is matched against the manifest and the policy: cutting it could change what it
        // names, so a longer one is refused rather than truncated.
        if target.len() > MAX_VALUE_BYTES {
            return Err(err(format!("{kind}: target of {} bytes, over {MAX_VALUE_BYTES}", target.len())));
        }
        let signals = bounded_reads(&c.reads, c.reads_omitted);
        let reason = crate::signals::parse::bounded(reason.to_string(), MAX_VALUE_BYTES);
        c.requests.push(ActionRequest { kind, target, params, reason, signals });
        Ok(true)
    }
}

/// The reads a request carries: in key order while they fit in [`MAX_SIGNALS_BYTES`]; the
/// count of the rest (and of reads never noted) under [`OMITTED_READS`].
pub fn bounded_reads(reads: &BTreeMap<String, Value>, already_omitted: usize) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let (mut bytes, mut omitted) = (0usize, already_omitted);
    // Room for the marker itself.
    let room = MAX_SIGNALS_BYTES - OMITTED_READS.len() - 32;
    for (k, v) in reads {
        let size = k.len() + v.to_string().len() + 4;
        if omitted == already_omitted && bytes + size <= room {
            bytes += size;
            out.insert(k.clone(), v.clone());
        } else {
            omitted += 1;
        }
    }
    if omitted > 0 {
        out.insert(OMITTED_READS.to_string(), Value::from(omitted as u64));
    }
    out
}

/// The state bound of the evaluation running (the default outside one).
fn max_state_bytes(ctx: &NativeCallContext) -> usize {
    node_of(ctx)
        .map_or(super::engine::Limits::default().max_state_bytes, |n| n.ctx.lock().unwrap_or_else(|e| e.into_inner()).max_state_bytes)
}

/// Registers the `Node` and `State` types, the list type and every action kind's functions.
pub fn register(e: &mut Engine) {
    e.register_type_with_name::<Node>("Node");
    e.register_type_with_name::<State>("State");
    register_list(e);
    register_item(e);

    // Current values and windowed aggregates.
    e.register_fn("now", |n: &mut Node| n.now() / 1000);
    e.register_fn("value", |n: &mut Node, key: &str| {
        n.history.note_read(key, n.now());
        let v =
            n.snap.metric(key).or_else(|| n.history.latest(key, n.now()).filter(|_| key.starts_with("proc.") || key.starts_with("unit.")));
        n.note(key.to_string(), v)
    });
    e.register_fn("has", |n: &mut Node, key: &str| n.snap.metrics.contains_key(key));
    e.register_fn("keys", |n: &mut Node, prefix: &str| -> List {
        n.snap.metrics.range(prefix.to_string()..).take_while(|(k, _)| k.starts_with(prefix)).map(|(k, _)| k.as_str().into()).collect()
    });
    // Window aggregates: `()` when the series does not reach back over the whole window (see
    // `History`), so a young or refused series is never read as a value or as `false`.
    macro_rules! agg {
        ($name:literal, $f:ident) => {
            e.register_fn($name, |n: &mut Node, key: &str, w: &str| -> RhaiResult<Dynamic> {
                n.history.note_read(key, n.now());
                let v = n.history.$f(key, n.now(), window(w)?);
                Ok(n.note(format!(concat!($name, "({},{})"), key, w), v))
            });
        };
    }
    agg!("avg", avg);
    agg!("min", min);
    agg!("max", max);
    agg!("rate", rate);
    agg!("delta", delta);
    e.register_fn("percentile", |n: &mut Node, key: &str, q: Dynamic, w: &str| -> RhaiResult<Dynamic> {
        let q = number(&q, "percentile")?;
        n.history.note_read(key, n.now());
        let v = n.history.percentile(key, n.now(), window(w)?, q);
        Ok(n.note(format!("p{q}({key},{w})"), v))
    });
    e.register_fn("sustained", |n: &mut Node, key: &str, op: &str, thr: Dynamic, w: &str| -> RhaiResult<Dynamic> {
        let (c, t, w_ms) = (cmp(op)?, number(&thr, "threshold")?, window(w)?);
        n.history.note_read(key, n.now());
        let ok = n.history.sustained(key, n.now(), w_ms, c, t);
        let _ = n.note(format!("sustained({key}{op}{t},{w})"), ok.map(|b| if b { 1.0 } else { 0.0 }));
        Ok(ok.map_or(Dynamic::UNIT, Dynamic::from_bool))
    });
    e.register_fn("x_of_y", |n: &mut Node, key: &str, op: &str, thr: Dynamic, x: i64, y: i64| -> RhaiResult<Dynamic> {
        let (c, t) = (cmp(op)?, number(&thr, "threshold")?);
        n.history.note_read(key, n.now());
        let ok = n.history.x_of_last_y(key, n.now(), x.max(0) as usize, y.max(0) as usize, c, t);
        let _ = n.note(format!("x_of_y({key}{op}{t},{x}/{y})"), ok.map(|b| if b { 1.0 } else { 0.0 }));
        Ok(ok.map_or(Dynamic::UNIT, Dynamic::from_bool))
    });

    // Entities.
    e.register_fn("processes", |n: &mut Node| -> List {
        n.lists.processes.get_or_init(|| (0..n.snap.processes.len()).map(|i| n.process_item(i)).collect()).clone()
    });
    // Only the processes whose numeric field passes the test: far cheaper than building every
    // process's map when a playbook looks for a few outliers. The count found is noted.
    e.register_fn("processes", |n: &mut Node, field: &str, op: &str, thr: Dynamic| -> RhaiResult<List> {
        let (c, t) = (cmp(op)?, number(&thr, "threshold")?);
        let get = process_field(field)?;
        let out = n.processes_where(|p| get(p).is_some_and(|v| c.test(v, t)));
        let _ = n.note(format!("processes({field}{op}{t})"), Some(out.len() as f64));
        Ok(List::new(out))
    });
    // The processes in any of the given kernel states (`"Z"`, `"D"`, `"DZ"`); the count is noted.
    e.register_fn("processes_in", |n: &mut Node, states: &str| -> RhaiResult<List> {
        if states.is_empty() || states.len() > 16 || !states.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(err(format!("processes_in: {states:?} is not a set of state letters (R, S, D, Z, T, t, X, I, ...)")));
        }
        let out = n.processes_where(|p| in_states(&p.state, states));
        let _ = n.note(format!("processes_in({states})"), Some(out.len() as f64));
        Ok(List::new(out))
    });
    // The direct children of a process (the processes whose ppid is `pid`); the count is noted.
    e.register_fn("children_of", |n: &mut Node, pid: i64| -> List {
        let out = n.processes_where(|p| p.ppid == pid && p.pid != pid);
        let _ = n.note(format!("children_of({pid})"), Some(out.len() as f64));
        List::new(out)
    });
    e.register_fn("process", |n: &mut Node, pid: i64| -> Dynamic {
        let pids = n.lists.pids.get_or_init(|| n.snap.processes.iter().enumerate().map(|(i, p)| (p.pid, i)).rev().collect());
        pids.get(&pid).map_or(Dynamic::UNIT, |i| n.process_item(*i))
    });
    e.register_fn("units", |n: &mut Node| -> List {
        n.lists.units.get_or_init(|| n.snap.units.values().map(|u| Dynamic::from(Item(Arc::new(unit_map(u))))).collect()).clone()
    });
    e.register_fn("unit", |n: &mut Node, name: &str| -> Dynamic { n.snap.units.get(name).map_or(Dynamic::UNIT, |u| unit_map(u).into()) });
    e.register_fn("mounts", |n: &mut Node| -> List {
        n.lists.mounts.get_or_init(|| n.snap.mounts.iter().map(|m| Dynamic::from(Item(Arc::new(mount_map(&n.snap, m))))).collect()).clone()
    });
    e.register_fn("tcp_peers", |n: &mut Node| -> List {
        n.lists
            .tcp_peers
            .get_or_init(|| {
                n.snap
                    .tcp_peers
                    .iter()
                    .map(|p| {
                        let mut m = Map::new();
                        m.insert("peer".into(), p.peer.clone().into());
                        m.insert("sockets".into(), Dynamic::from_int(p.sockets as i64));
                        m.insert("retransmitting".into(), Dynamic::from_int(p.retransmitting as i64));
                        m.insert("timeouts".into(), Dynamic::from_int(p.timeouts as i64));
                        Dynamic::from(Item(Arc::new(m)))
                    })
                    .collect()
            })
            .clone()
    });
    e.register_fn("available", |n: &mut Node, family: &str| !n.snap.unavailable.contains_key(family));

    super::state::register(e, max_state_bytes);

    // Actions: each kind's functions record one request and return true.
    crate::actions::register::<Node>(e);

    refuse_named_functions(e);
}

/// rhai's array methods still accept a function *named by a string* (`a.map("notify")`, kept
/// for compatibility and deprecated): a call the load-time manifest check cannot see. Engine
/// functions take precedence over packages, so these replace them: the ones that would call a
/// named function fail with a clear error, `index_of` searches for the string as a value.
fn refuse_named_functions(e: &mut Engine) {
    fn named(method: &str) -> Box<EvalAltResult> {
        err(format!(
            "`{method}` with a function name: pass a closure (`|x| ...`) instead; playbooks cannot call functions named by strings"
        ))
    }
    macro_rules! refuse {
        ($($name:literal),*) => {$(
            e.register_fn($name, |_: &mut Array, _: &str| -> RhaiResult<Dynamic> { Err(named($name)) });
        )*};
    }
    refuse!("map", "filter", "some", "all", "dedup", "reduce", "reduce_rev", "sort", "drain", "retain");
    e.register_fn("reduce", |_: &mut Array, _: &str, _: Dynamic| -> RhaiResult<Dynamic> { Err(named("reduce")) });
    e.register_fn("reduce_rev", |_: &mut Array, _: &str, _: Dynamic| -> RhaiResult<Dynamic> { Err(named("reduce_rev")) });
    e.register_fn("index_of", |a: &mut Array, s: &str| -> i64 { string_index(a, s, 0) });
    e.register_fn("index_of", |a: &mut Array, s: &str, start: i64| -> i64 { string_index(a, s, start) });
}

/// The index of the first element equal to the string `s` from `start` (negative: from the
/// end), or -1.
fn string_index(a: &Array, s: &str, start: i64) -> i64 {
    let n = a.len() as i64;
    let from = if start < 0 { (n + start).max(0) } else { start.min(n) } as usize;
    a.iter()
        .enumerate()
        .skip(from)
        .find(|(_, v)| v.read_lock::<rhai::ImmutableString>().is_some_and(|x| x.as_str() == s))
        .map_or(-1, |(i, _)| i as i64)
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::*;
    use super::State;
    use crate::signals::history::History;
    use crate::signals::process::{derive_tree, ProcessInfo};
    use crate::signals::Snapshot;
    use std::sync::Arc;

    fn proc(pid: i64, ppid: i64, name: &str, state: &str) -> ProcessInfo {
        ProcessInfo { pid, ppid, name: name.into(), state: state.into(), rss_bytes: 1 << 20, ..Default::default() }
    }

    /// A parent (40) with three zombies and a live child; a leaker (50) at 240 of 256 fds.
    fn snapshot() -> Arc<Snapshot> {
        let mut ps = vec![proc(1, 0, "init", "S"), proc(40, 1, "forker", "S"), proc(41, 40, "w", "Z"), proc(42, 40, "w", "Z")];
        ps.extend([proc(43, 40, "w", "Z"), proc(44, 40, "w", "R"), proc(60, 1, "disk", "D")]);
        ps.push(ProcessInfo { fds: Some(240), fd_limit: Some(256), ..proc(50, 1, "leaker", "S") });
        derive_tree(&mut ps);
        Arc::new(Snapshot { ts_ms: 1_700_000_000_000, processes: ps, ..Default::default() })
    }

    fn run(body: &str, state: &State) -> Result<Vec<crate::actions::ActionRequest>, String> {
        let rt = runtime(Default::default());
        let p = pb(&rt, body).map_err(|e| e.to_string())?;
        rt.evaluate(&p, snapshot(), Arc::new(History::new(600_000, 1000, 100)), state).map(|e| e.requests).map_err(|e| e.to_string())
    }

    #[test]
    fn processes_by_state_name_their_parent_and_the_reads_are_noted() {
        let body = r#"fn evaluate(node, state) {
            let z = node.processes_in("Z");
            if z.len() != 3 { throw `zombies: ${z.len()}`; }
            if node.processes_in("DZ").len() != 4 { throw "D or Z"; }
            let parent = node.process(z[0].ppid);
            if parent.zombie_children != 3 || parent.children != 4 { throw `parent ${parent}`; }
            if parent.rss_tree_bytes != 5 * 1048576 { throw `tree ${parent.rss_tree_bytes}`; }
            if node.children_of(parent.pid).len() != 4 { throw "children_of"; }
            let full = node.processes("fds_pct", ">", 90);
            if full.len() != 1 || full[0].fd_limit != 256 || full[0].fds_pct != 93.75 { throw `fds ${full}`; }
            if node.processes("zombie_children", ">=", 3)[0].pid != 40 { throw "filter"; }
            notify(`zombies of ${parent.name} (pid ${parent.pid})`);
        }"#;
        let reqs = run(body, &State::default()).unwrap();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].target, "zombies of forker (pid 40)");
        let s = &reqs[0].signals;
        assert_eq!(s["processes_in(Z)"], 3.0);
        assert_eq!(s["children_of(40)"], 4.0);
        assert_eq!(s["processes(fds_pct>90)"], 1.0);
    }

    /// The lists of one tick are built once and shared; a script changing its copy of an item
    /// changes nothing another playbook of the tick sees.
    #[test]
    fn lists_are_shared_by_a_tick_and_items_are_each_scripts_own() {
        let rt = runtime(Default::default());
        let tick = super::Tick::new(snapshot(), Arc::new(History::new(600_000, 1000, 100)));
        let spoil = pb(&rt, "fn evaluate(node, state) { for p in node.processes() { p.name = \"x\"; p.pid = 0; } let q = node.processes()[0]; q.name = \"x\"; }").unwrap();
        let look = pb(&rt, "fn evaluate(node, state) { let p = node.processes()[0]; if p.name != \"init\" || p.pid != 1 { throw `${p}`; } notify(\"ok\"); }").unwrap();
        for p in [&spoil, &look, &spoil, &look] {
            rt.evaluate_in(p, &tick, &State::default()).unwrap();
        }
        assert!(tick.lists.processes.get().is_some(), "built once and kept for the tick");
    }

    /// A list item reads as the map it stands for: fields, index, printing, `type_of`, `in`,
    /// comparison; kept in state and sent as details it is the plain map.
    #[test]
    fn list_items_read_as_maps_and_are_kept_as_maps() {
        let state = State::default();
        let body = r#"fn evaluate(node, state) {
            let p = node.process(40);
            if type_of(p) != "map" || p["name"] != "forker" || p.name != "forker" || p.nope != () { throw `${p}`; }
            if !("zombie_children" in p) || p.keys().len() != p.len() || p.tcp.len() != 0 { throw "keys"; }
            if p != node.process(40) || p == node.process(1) || p == () || !(p != ()) { throw "compare"; }
            if !`${p}`.contains("forker") || `${p}`.len() < 100 { throw `${p}`; }
            let q = node.processes()[1];
            q.tcp.established = 3;
            if q.tcp.established != 3 || node.processes()[1].tcp.len() != 0 { throw "copy on write"; }
            state.set("p", p);
            notify("x", #{ p: p, all: node.processes_in("D").to_array() });
        }"#;
        let reqs = run(body, &state).unwrap();
        assert_eq!(reqs[0].params["details"]["p"]["name"], "forker");
        assert_eq!(reqs[0].params["details"]["all"][0]["pid"], 60);
        assert_eq!(state.len(), 1);
    }

    /// META is read at load; a playbook that names it in `evaluate` still sees it.
    #[test]
    fn meta_is_kept_for_a_playbook_that_reads_it() {
        let rt = runtime(Default::default());
        let p = pb(&rt, "fn evaluate(node, state) { notify(global::META.name); }").unwrap();
        let (r, _) = eval(&rt, &p, &State::default());
        assert_eq!(r.unwrap()[0].target, "t");
        let p = pb(&rt, "const LIMIT = 3;\nfn evaluate(node, state) { notify(`${global::LIMIT}`); }").unwrap();
        assert_eq!(eval(&rt, &p, &State::default()).0.unwrap()[0].target, "3");
    }

    #[test]
    fn processes_in_refuses_what_is_not_a_set_of_state_letters() {
        for bad in ["", "Z ", "1", &"Z".repeat(17)] {
            let e = run(&format!("fn evaluate(node, state) {{ node.processes_in({bad:?}); }}"), &State::default()).unwrap_err();
            assert!(e.contains("not a set of state letters"), "{bad:?}: {e}");
        }
        let e = run(
            "fn evaluate(node, state) { node.processes(\"children\", \">\", 1); node.processes(\"nope\", \">\", 1); }",
            &State::default(),
        )
        .unwrap_err();
        assert!(e.contains("cannot filter on \"nope\"") && e.contains("zombie_children"), "{e}");
    }

    #[test]
    fn state_keys_lists_what_the_playbook_keeps() {
        let state = State::default();
        let body = r#"fn evaluate(node, state) {
            if state.keys().len() == 0 { state.set("b", 1); state.set("a", 2); return; }
            for k in state.keys() { state.remove(k); }
            notify(`had keys`);
        }"#;
        assert!(run(body, &state).unwrap().is_empty());
        assert_eq!(state.len(), 2);
        let rt = runtime(Default::default());
        let p = pb(&rt, "fn evaluate(node, state) { notify(`${state.keys()}`); }").unwrap();
        let r = rt.evaluate(&p, snapshot(), Arc::new(History::new(600_000, 1000, 100)), &state).unwrap().requests;
        assert_eq!(r[0].target, "[\"a\", \"b\"]");
        assert_eq!(run(body, &state).unwrap().len(), 1);
        assert!(state.is_empty());
    }
}
