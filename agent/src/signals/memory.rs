//! Memory signals from `/proc/meminfo`.
//!
//! Metric keys: `mem.total_bytes`, `mem.available_bytes`, `mem.used_bytes`, `mem.used_pct`,
//! `swap.total_bytes`, `swap.free_bytes`, `swap.used_bytes`.

use super::parse::{num, ParseError};
use std::collections::BTreeMap;
use std::path::Path;

pub fn parse_meminfo(file: &Path, text: &str, out: &mut BTreeMap<String, f64>) -> Result<(), ParseError> {
    let mut want: [(&str, Option<u64>); 4] = [("MemTotal", None), ("MemAvailable", None), ("SwapTotal", None), ("SwapFree", None)];
    for (i, line) in text.lines().enumerate() {
        let Some((key, rest)) = line.split_once(':') else { continue };
        if let Some(slot) = want.iter_mut().find(|(k, _)| *k == key) {
            let mut it = rest.split_ascii_whitespace();
            let kib: u64 = num(file, i + 1, key, it.next())?;
            let scale = match it.next() {
                Some("kB") => 1024,
                None => 1,
                Some(u) => return Err(ParseError::new(file, i + 1, key, format!("unknown unit {u:?}"))),
            };
            slot.1 = Some(kib.saturating_mul(scale));
        }
    }
    let get = |k: &str| want.iter().find(|(n, _)| *n == k).and_then(|(_, v)| *v);
    let (Some(total), Some(avail)) = (get("MemTotal"), get("MemAvailable")) else {
        return Err(ParseError::new(file, 0, "MemTotal/MemAvailable", "missing (kernel older than 3.14?)"));
    };
    let used = total.saturating_sub(avail);
    out.insert("mem.total_bytes".into(), total as f64);
    out.insert("mem.available_bytes".into(), avail as f64);
    out.insert("mem.used_bytes".into(), used as f64);
    out.insert("mem.used_pct".into(), if total == 0 { 0.0 } else { used as f64 * 100.0 / total as f64 });
    if let (Some(st), Some(sf)) = (get("SwapTotal"), get("SwapFree")) {
        out.insert("swap.total_bytes".into(), st as f64);
        out.insert("swap.free_bytes".into(), sf as f64);
        out.insert("swap.used_bytes".into(), st.saturating_sub(sf) as f64);
    }
    Ok(())
}
