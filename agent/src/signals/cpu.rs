//! CPU signals: utilisation (total and per core) from `/proc/stat` deltas, load averages from
//! `/proc/loadavg`, and pressure stall information from `/proc/pressure/{cpu,memory,io}`.
//!
//! Metric keys: `cpu.util_pct`, `cpu.iowait_pct`, `cpu.count`, `cpu.core.<n>.util_pct`,
//! `load.1`, `load.5`, `load.15`, `psi.<resource>.<some|full>.<avg10|avg60|avg300|total_us>`.

use super::parse::{num, read, ParseError};
use std::collections::BTreeMap;
use std::path::Path;

/// Cumulative jiffies of one `cpu` line of `/proc/stat`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub busy: u64,
    pub iowait: u64,
    pub total: u64,
}

/// What `/proc/stat` holds that we use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stat {
    /// The aggregate `cpu` line.
    pub total: CpuTimes,
    /// `cpu0`, `cpu1`, ... in order.
    pub cores: Vec<CpuTimes>,
    /// Boot time, seconds since the epoch (`btime`).
    pub boot_time: u64,
}

pub fn parse_stat(file: &Path, text: &str) -> Result<Stat, ParseError> {
    let mut stat = Stat::default();
    let mut saw_total = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut it = line.split_ascii_whitespace();
        let Some(key) = it.next() else { continue };
        if let Some(rest) = key.strip_prefix("cpu") {
            // user nice system idle iowait irq softirq steal (guest counted in user already)
            let mut v = [0u64; 8];
            for (j, slot) in v.iter_mut().enumerate() {
                // Kernels before 2.6.11 lack steal; treat the first four as mandatory.
                let field = it.next();
                if field.is_none() && j >= 4 {
                    break;
                }
                *slot = num(file, n, &format!("{key} column {}", j + 1), field)?;
            }
            let idle = v[3] + v[4];
            let total: u64 = v.iter().sum();
            let t = CpuTimes { busy: total - idle, iowait: v[4], total };
            if rest.is_empty() {
                stat.total = t;
                saw_total = true;
            } else {
                let idx: usize = num(file, n, "cpu index", Some(rest))?;
                if idx != stat.cores.len() {
                    // Offline CPUs leave gaps; keep positions stable by padding.
                    stat.cores.resize(idx, CpuTimes::default());
                }
                stat.cores.push(t);
            }
        } else if key == "btime" {
            stat.boot_time = num(file, n, "btime", it.next())?;
        }
    }
    if !saw_total {
        return Err(ParseError::new(file, 0, "cpu", "no aggregate `cpu` line"));
    }
    Ok(stat)
}

fn pct(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 * 100.0 / den as f64
    }
}

/// Utilisation between two readings of `/proc/stat`, into `out`.
pub fn utilisation(prev: &Stat, cur: &Stat, out: &mut BTreeMap<String, f64>) {
    let d =
        |a: &CpuTimes, b: &CpuTimes| (b.busy.saturating_sub(a.busy), b.iowait.saturating_sub(a.iowait), b.total.saturating_sub(a.total));
    let (busy, iowait, total) = d(&prev.total, &cur.total);
    out.insert("cpu.util_pct".into(), pct(busy, total));
    out.insert("cpu.iowait_pct".into(), pct(iowait, total));
    for (i, (a, b)) in prev.cores.iter().zip(&cur.cores).enumerate() {
        let (busy, _, total) = d(a, b);
        out.insert(format!("cpu.core.{i}.util_pct"), pct(busy, total));
    }
}

pub fn parse_loadavg(file: &Path, text: &str, out: &mut BTreeMap<String, f64>) -> Result<(), ParseError> {
    let mut it = text.split_ascii_whitespace();
    for key in ["load.1", "load.5", "load.15"] {
        let v: f64 = num(file, 1, key, it.next())?;
        out.insert(key.into(), v);
    }
    Ok(())
}

/// Parses one `/proc/pressure/<resource>` file.
pub fn parse_psi(file: &Path, resource: &str, text: &str, out: &mut BTreeMap<String, f64>) -> Result<(), ParseError> {
    let mut seen = false;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let mut it = line.split_ascii_whitespace();
        let Some(kind @ ("some" | "full")) = it.next() else {
            return Err(ParseError::new(file, n, "kind", format!("expected `some` or `full` in {line:?}")));
        };
        let mut fields = 0;
        for kv in it {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(ParseError::new(file, n, kv, "expected key=value"));
            };
            let name = match k {
                "avg10" | "avg60" | "avg300" => k,
                "total" => "total_us",
                _ => continue,
            };
            let value: f64 = num(file, n, k, Some(v))?;
            out.insert(format!("psi.{resource}.{kind}.{name}"), value);
            fields += 1;
        }
        if fields < 4 {
            return Err(ParseError::new(file, n, kind, "expected avg10, avg60, avg300 and total"));
        }
        seen = true;
    }
    if !seen {
        return Err(ParseError::new(file, 0, "content", "empty"));
    }
    Ok(())
}

/// Reads `/proc/stat` under `proc_root`.
pub fn read_stat(proc_root: &Path) -> Result<Stat, ParseError> {
    let file = proc_root.join("stat");
    parse_stat(&file, &read(&file)?)
}

/// Seconds since boot, the first field of `/proc/uptime` (`None` when it does not parse: the
/// one use, a new process's age, then stays unknown).
pub fn parse_uptime(text: &str) -> Option<f64> {
    text.split_ascii_whitespace().next()?.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}
