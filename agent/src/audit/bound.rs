//! The record byte bound: every record the agent appends is at most [`MAX_RECORD_BYTES`] long
//! (the whole line, envelope and newline included), whatever a playbook or a peer put in it.
//!
//! A body over the bound is cut where it is big, never dropped: the longest strings (reads,
//! reasons, targets, details, errors) are shortened first and fairly (each keeps at least
//! [`MIN_LEAF`] bytes, the longest lose the most), each with a visible marker
//! `…[truncated N bytes]`; a map key longer than [`MAX_KEY`] is cut the same way; an array or
//! map with more entries than can keep even [`MIN_LEAF`] bytes each keeps its first entries and
//! says how many went (`…[truncated N items]`, or a `…truncated` entry). The record then
//! carries `"truncated": true` and `truncated_from_bytes` (its body's size before). Small fields
//! (decision, rule, mode, playbook name and hash) are never cut: they are below every share.
//!
//! Why 64 KiB: it is far above any record medic writes of its own (a few hundred bytes to a few
//! KiB), far below the broker's packet limit and the 1 MiB a reader looks back to find a record,
//! and 64 reads of 60 KB (the attack this bound answers) become one 64 KiB record instead of
//! 3.8 MB.

use serde_json::{Map, Value};

/// Most bytes of one record (one line of the log, its newline included).
pub const MAX_RECORD_BYTES: usize = 64 * 1024;
/// Room kept for what `append` adds around the body (`schema`, `seq`, `id`, `ts`, `kind`,
/// `prev_hash`, `hash`; the node name and kind are counted besides) and the truncation fields.
const ENVELOPE_BYTES: usize = 640;
/// The fewest bytes a cut value keeps (its marker included).
pub const MIN_LEAF: usize = 64;
/// The longest map key kept whole.
pub const MAX_KEY: usize = 256;
/// What a marker item or entry (`…[truncated N items]`, `"…truncated":"N entries removed"`) takes.
const MARKER_ROOM: usize = 56;
/// Nesting deeper than this is replaced by a marker when it does not fit.
const MAX_DEPTH: usize = 32;

/// Serialized size of a value (what it costs in the record; key order does not change it).
fn size(v: &Value) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}

fn string_marker(removed: usize) -> String {
    format!("…[truncated {removed} bytes]")
}

/// Bytes `c` takes inside a JSON string.
fn escaped_len(c: char) -> usize {
    match c {
        '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
        c if (c as u32) < 0x20 => 6,
        c => c.len_utf8(),
    }
}

/// Cuts `s` so that its JSON form is at most `budget` bytes, marker included.
fn cut_string(s: &mut String, budget: usize) {
    let marker_room = string_marker(s.len()).len() + 2;
    let room = budget.saturating_sub(marker_room);
    let mut used = 0;
    let mut end = 0;
    for (i, c) in s.char_indices() {
        let l = escaped_len(c);
        if used + l > room {
            break;
        }
        used += l;
        end = i + c.len_utf8();
    }
    let removed = s.len() - end;
    s.truncate(end);
    s.push_str(&string_marker(removed));
}

/// The largest cap `c` with Σ min(sizes, c) ≤ `avail` (at least `floor`): each item's share.
fn water_fill(sizes: &[usize], avail: usize, floor: usize) -> usize {
    let (mut lo, mut hi) = (floor, sizes.iter().copied().max().unwrap_or(floor).max(floor));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if sizes.iter().map(|s| (*s).min(mid)).sum::<usize>() <= avail {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    lo
}

/// How many of the first items fit when each keeps at least `MIN_LEAF` bytes (or its size), with
/// `fixed[i]` bytes that cannot be cut (a key) and `base` bytes around them all.
fn how_many(fixed: &[usize], sizes: &[usize], budget: usize, base: usize) -> usize {
    let mut used = base;
    for (i, (f, s)) in fixed.iter().zip(sizes).enumerate() {
        used += f + (*s).min(MIN_LEAF) + 1;
        if used > budget {
            return i;
        }
    }
    sizes.len()
}

/// Makes `v`'s JSON form at most `budget` bytes (`budget` ≥ [`MIN_LEAF`]).
fn fit(v: &mut Value, budget: usize, depth: usize) {
    let have = size(v);
    if have <= budget {
        return;
    }
    if depth >= MAX_DEPTH {
        *v = Value::String(string_marker(have));
        return;
    }
    match v {
        Value::String(s) => cut_string(s, budget),
        Value::Array(items) => {
            let n = items.len();
            let sizes: Vec<usize> = items.iter().map(size).collect();
            // Brackets, and room for the marker item should any be dropped.
            let base = 2 + MARKER_ROOM;
            let keep = how_many(&vec![0; n], &sizes, budget, base);
            if keep < n {
                items.truncate(keep);
            }
            let avail = budget.saturating_sub(base + keep);
            let cap = water_fill(&sizes[..keep], avail, MIN_LEAF);
            for item in items.iter_mut() {
                fit(item, cap, depth + 1);
            }
            if keep < n {
                items.push(Value::String(format!("…[truncated {} items]", n - keep)));
            }
        }
        Value::Object(m) => fit_map(m, budget, depth),
        // Numbers, booleans and null are shorter than any share.
        _ => {}
    }
}

/// Cuts keys longer than `max` (a cut key that collides gets `#n`).
fn cut_keys(m: &mut Map<String, Value>, max: usize) {
    if m.keys().all(|k| k.len() <= max) {
        return;
    }
    let old = std::mem::take(m);
    for (k, v) in old {
        if k.len() <= max {
            m.insert(k, v);
            continue;
        }
        let mut key = k;
        cut_string(&mut key, max);
        let mut unique = key.clone();
        let mut i = 1;
        while m.contains_key(&unique) {
            unique = format!("{key}#{i}");
            i += 1;
        }
        m.insert(unique, v);
    }
}

fn fit_map(m: &mut Map<String, Value>, budget: usize, depth: usize) {
    cut_keys(m, MAX_KEY);
    if serde_json::to_vec(&*m).map_or(usize::MAX, |b| b.len()) <= budget {
        return;
    }
    let n = m.len();
    let mut sizes: Vec<usize> = m.values().map(size).collect();
    let base = 2 + MARKER_ROOM;
    // `"key":` costs the key's JSON form and a colon.
    let key_costs = |m: &Map<String, Value>| m.keys().map(|k| size(&Value::String(k.clone())) + 1).collect::<Vec<usize>>();
    let mut fixed = key_costs(m);
    let mut keep = how_many(&fixed, &sizes, budget, base);
    if keep < n {
        // Shorter keys before fewer entries.
        cut_keys(m, MIN_LEAF);
        fixed = key_costs(m);
        sizes = m.values().map(size).collect();
        keep = how_many(&fixed, &sizes, budget, base);
    }
    let keys: Vec<String> = m.keys().cloned().collect();
    for k in &keys[keep..] {
        m.remove(k);
    }
    let avail = budget.saturating_sub(base + keep + fixed[..keep].iter().sum::<usize>());
    let cap = water_fill(&sizes[..keep], avail, MIN_LEAF);
    for v in m.values_mut() {
        fit(v, cap, depth + 1);
    }
    if keep < n {
        m.insert("…truncated".into(), Value::String(format!("{} entries removed", n - keep)));
    }
}

/// Bounds a record's body so that the whole record (with `node`, `kind` and the envelope) is at
/// most [`MAX_RECORD_BYTES`]. Returns the body's size before when it had to be cut; the body
/// then carries `"truncated": true` and `truncated_from_bytes`.
pub fn bound(body: &mut Map<String, Value>, node: &str, kind: &str) -> Option<usize> {
    let budget = MAX_RECORD_BYTES.saturating_sub(ENVELOPE_BYTES + 2 * node.len() + 2 * kind.len()).max(4 * MAX_KEY);
    let mut v = Value::Object(std::mem::take(body));
    let have = size(&v);
    if have <= budget {
        if let Value::Object(m) = v {
            *body = m;
        }
        return None;
    }
    fit(&mut v, budget, 0);
    let Value::Object(mut m) = v else { return Some(have) };
    if serde_json::to_vec(&m).map_or(usize::MAX, |b| b.len()) > budget {
        // Not reachable by the shares above; kept so that the bound holds whatever the input.
        m = Map::new();
        m.insert("error".into(), Value::String("record body too large even after truncation; body dropped".into()));
    }
    m.insert("truncated".into(), Value::Bool(true));
    m.insert("truncated_from_bytes".into(), have.into());
    *body = m;
    Some(have)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record_len(body: &Map<String, Value>) -> usize {
        // What `append` adds, at its longest.
        let mut m = body.clone();
        m.insert("schema".into(), "medic.audit/v1".into());
        m.insert("seq".into(), u64::MAX.into());
        m.insert("id".into(), "0190b5c8-0000-7000-8000-000000000000".into());
        m.insert("ts".into(), "2026-01-01T00:00:00.000Z".into());
        m.insert("node".into(), "test-node".into());
        m.insert("kind".into(), "action".into());
        m.insert("prev_hash".into(), "0".repeat(64).into());
        m.insert("hash".into(), "0".repeat(64).into());
        serde_json::to_vec(&Value::Object(m)).unwrap().len() + 1
    }

    fn bounded(v: Value) -> Map<String, Value> {
        let Value::Object(mut m) = v else { panic!() };
        bound(&mut m, "test-node", "action");
        assert!(record_len(&m) <= MAX_RECORD_BYTES, "{} bytes", record_len(&m));
        m
    }

    #[test]
    fn small_records_are_untouched() {
        let v = json!({ "decision": "suppressed", "rule": "cooldown", "trigger": { "reason": "x" } });
        assert_eq!(Value::Object(bounded(v.clone())), v);
    }

    #[test]
    fn sixty_four_reads_of_sixty_kb_and_a_megabyte_reason_fit_with_markers() {
        let reads: Map<String, Value> = (0..64).map(|i| (format!("{i:02}{}", "k".repeat(60_000)), json!(1.5))).collect();
        let big = "r\"\n".repeat(350_000);
        let v = json!({
            "playbook": { "name": "noisy", "sha256": "ab".repeat(32) },
            "trigger": { "signals": reads, "reason": big },
            "action": { "kind": "notify", "target": big, "params": { "details": { "a": "d".repeat(100_000) } } },
            "decision": "suppressed", "rule": "cooldown",
        });
        let m = bounded(v);
        assert_eq!(m["truncated"], true);
        assert!(m["truncated_from_bytes"].as_u64().unwrap() > 4_000_000);
        assert_eq!(m["decision"], "suppressed", "small fields are never cut");
        assert_eq!(m["playbook"]["sha256"], "ab".repeat(32));
        let reason = m["trigger"]["reason"].as_str().unwrap();
        assert!(reason.contains("…[truncated ") && reason.ends_with(" bytes]"), "{reason:.80}");
        let reads = m["trigger"]["signals"].as_object().unwrap();
        assert_eq!(reads.len(), 64, "every read is kept, its key cut: {:?}", reads.keys().next());
        assert!(reads.keys().all(|k| k.contains("…[truncated ")));
    }

    #[test]
    fn many_small_items_keep_the_first_and_count_the_rest() {
        let v = json!({ "list": (0..100_000).collect::<Vec<u32>>(), "map": (0..50_000).map(|i| (format!("k{i}"), json!(i))).collect::<Map<String, Value>>() });
        let m = bounded(v);
        let list = m["list"].as_array().unwrap();
        assert!(list.last().unwrap().as_str().unwrap().starts_with("…[truncated "), "{:?}", list.last());
        assert!(m["map"].as_object().unwrap().contains_key("…truncated"));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut v = json!("x".repeat(200_000));
        for _ in 0..100 {
            v = json!({ "a": v, "b": "y".repeat(1000) });
        }
        bounded(json!({ "detail": v }));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]
        #[test]
        fn any_body_is_bounded(seed in proptest::collection::vec((0usize..100_000, 0u8..4), 1..40)) {
            let mut m = Map::new();
            for (i, (len, shape)) in seed.iter().enumerate() {
                let v = match shape {
                    0 => json!("é\u{1}".repeat(*len / 3)),
                    1 => json!((0..*len / 8).collect::<Vec<usize>>()),
                    2 => json!({ "k".repeat(*len / 10): len }),
                    _ => json!([{ "x": "\"".repeat(*len / 2) }]),
                };
                m.insert(format!("f{i}"), v);
            }
            bounded(Value::Object(m));
        }
    }
}
