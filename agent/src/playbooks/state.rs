//! A playbook's `state`: its memory between evaluations, plain data only (numbers, strings,
//! booleans, `()`, arrays and maps of them), at most 1000 keys and `limits.max_state_bytes` in
//! all, so a script can neither keep the node (and with it the whole history) alive between
//! evaluations nor grow the agent's memory; and the `state.*` functions scripts call.

use crate::actions::request::err;
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, NativeCallContext};
use std::sync::{Arc, Mutex};

type RhaiResult<T> = Result<T, Box<EvalAltResult>>;

/// Keys a playbook may keep in its state.
const MAX_STATE_KEYS: usize = 1000;
/// Nesting of a value kept in `state`.
const MAX_STATE_DEPTH: usize = 16;

/// The playbook's memory between evaluations: plain data, at most 1000 keys and
/// `limits.max_state_bytes` bytes (see [`plain`]).
#[derive(Clone, Default, Debug)]
pub struct State(Arc<Mutex<Memory>>);

/// What a [`State`] holds, with its size kept as it changes.
#[derive(Clone, Default, Debug)]
pub struct Memory {
    map: Map,
    bytes: usize,
}

impl State {
    fn mem(&self) -> std::sync::MutexGuard<'_, Memory> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub fn snapshot(&self) -> Memory {
        self.mem().clone()
    }
    pub fn restore(&self, m: Memory) {
        *self.mem() = m;
    }
    /// Bytes held, as counted against `limits.max_state_bytes`.
    pub fn bytes(&self) -> usize {
        self.mem().bytes
    }
    /// Keys held.
    pub fn len(&self) -> usize {
        self.mem().map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.mem().map.is_empty()
    }

    /// Keeps a plain copy of `v` under `k`, within the key and byte bounds.
    fn set(&self, k: &str, v: &Dynamic, max_bytes: usize) -> RhaiResult<()> {
        let mut size = 0;
        let v = plain(v, 0, &mut size)
            .map_err(|why| err(format!("state.set({:?}, ...): {why}", crate::signals::parse::bounded(k.to_string(), 64))))?;
        let mut m = self.mem();
        let old = m.map.get(k).map(|o| entry_bytes(k, o));
        if old.is_none() && m.map.len() >= MAX_STATE_KEYS {
            return Err(err(format!("playbook state is full ({MAX_STATE_KEYS} keys)")));
        }
        let total = m.bytes - old.unwrap_or(0) + k.len() + size;
        if total > max_bytes {
            return Err(err(format!(
                "playbook state would hold {total} bytes, over playbooks.limits.max_state_bytes ({max_bytes}); remove keys or keep less"
            )));
        }
        m.map.insert(k.into(), v);
        m.bytes = total;
        Ok(())
    }

    fn remove(&self, k: &str) -> Dynamic {
        let mut m = self.mem();
        match m.map.remove(k) {
            Some(v) => {
                m.bytes = m.bytes.saturating_sub(entry_bytes(k, &v));
                v
            }
            None => Dynamic::UNIT,
        }
    }
}

/// What one kept entry counts for (its value was checked by [`plain`] when it was set).
fn entry_bytes(k: &str, v: &Dynamic) -> usize {
    let mut size = 0;
    let _ = plain(v, 0, &mut size);
    k.len() + size
}

/// A plain copy of `v` (numbers, strings, booleans, `()`, arrays and maps of them, at most
/// `MAX_STATE_DEPTH` deep), adding its size to `size`: strings by their length, every other
/// value and container 8 bytes, map keys by their length. Anything else (the node, a list the
/// agent handed over, `state` itself, a function pointer) is refused with its type.
pub fn plain(v: &Dynamic, depth: usize, size: &mut usize) -> Result<Dynamic, String> {
    if depth > MAX_STATE_DEPTH {
        return Err(format!("only values nested at most {MAX_STATE_DEPTH} deep can be kept"));
    }
    let mut v = v.flatten_clone();
    // A list item (a process, unit, ... shared by the tick) is kept as the map it reads as.
    if v.is::<super::api::Item>() {
        v = super::api::plain_items(v);
    }
    *size = size.saturating_add(8);
    if v.is_unit() || v.is_bool() || v.is_int() || v.is_float() || v.is_char() {
        return Ok(v);
    }
    if let Some(s) = v.read_lock::<rhai::ImmutableString>() {
        *size = size.saturating_add(s.len());
        return Ok(v.clone());
    }
    if v.is_array() {
        let a = v.into_array().unwrap_or_default();
        return a.iter().map(|x| plain(x, depth + 1, size)).collect::<Result<Array, _>>().map(Dynamic::from_array);
    }
    if v.is_map() {
        let m = v.cast::<Map>();
        let mut out = Map::new();
        for (k, x) in &m {
            *size = size.saturating_add(k.len());
            out.insert(k.clone(), plain(x, depth + 1, size)?);
        }
        return Ok(Dynamic::from_map(out));
    }
    Err(format!(
        "a {} cannot be kept in state: only numbers, strings, booleans, () and arrays and maps of them (keep the values you need, not the node or its lists)",
        v.type_name().rsplit("::").next().unwrap_or("value")
    ))
}

/// Registers `state.get`, `has`, `remove`, `keys`, `set` and `hysteresis`; `max_bytes` is the state bound
/// of the evaluation running.
pub(super) fn register(e: &mut Engine, max_bytes: fn(&NativeCallContext) -> usize) {
    e.register_fn("get", |s: &mut State, k: &str| s.mem().map.get(k).cloned().unwrap_or(Dynamic::UNIT));
    e.register_fn("has", |s: &mut State, k: &str| s.mem().map.contains_key(k));
    e.register_fn("remove", |s: &mut State, k: &str| s.remove(k));
    // The keys held, in order (at most `MAX_STATE_KEYS`, so the array stays small).
    e.register_fn("keys", |s: &mut State| -> Array {
        s.mem().map.keys().map(|k| Dynamic::from(rhai::ImmutableString::from(k.as_str()))).collect()
    });
    e.register_fn("set", move |ctx: NativeCallContext, s: &mut State, k: &str, v: Dynamic| -> RhaiResult<()> {
        s.set(k, &v, max_bytes(&ctx))
    });
    // Hysteresis: latches on when `fire` is true, releases only when `clear` is true.
    e.register_fn("hysteresis", move |ctx: NativeCallContext, s: &mut State, name: &str, fire: bool, clear: bool| -> RhaiResult<bool> {
        let on = s.mem().map.get(name).and_then(|v| v.as_bool().ok()).unwrap_or(false);
        let next = if on { !clear } else { fire };
        s.set(name, &next.into(), max_bytes(&ctx))?;
        Ok(next)
    });
}
