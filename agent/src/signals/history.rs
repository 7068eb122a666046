//! The signal history: one time series per metric key, kept for a horizon, with windowed
//! aggregates (avg, min, max, rate, delta, percentile) and the helpers playbooks build on
//! ("sustained for", "X of the last Y").
//!
//! Memory is bounded: at most `max_series` series of at most `horizon / interval + 1` points of
//! 16 bytes each (plus the key). Series beyond the cap are not recorded and are counted in
//! `dropped_series`; node-wide metrics are pushed before per-process and per-unit ones, so the
//! cap always falls on the latter. A series with no point inside the horizon is removed.

use super::Snapshot;
use std::collections::{HashMap, VecDeque};

/// A comparison used by the threshold helpers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Gt,
    Ge,
    Lt,
    Le,
    Eq,
    Ne,
}

impl Cmp {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            ">" => Self::Gt,
            ">=" => Self::Ge,
            "<" => Self::Lt,
            "<=" => Self::Le,
            "==" => Self::Eq,
            "!=" => Self::Ne,
            _ => return None,
        })
    }
    pub fn test(self, a: f64, b: f64) -> bool {
        match self {
            Self::Gt => a > b,
            Self::Ge => a >= b,
            Self::Lt => a < b,
            Self::Le => a <= b,
            Self::Eq => a == b,
            Self::Ne => a != b,
        }
    }
}

/// Bounded per-key time series.
#[derive(Debug, Clone)]
pub struct History {
    horizon_ms: i64,
    max_points: usize,
    max_series: usize,
    series: HashMap<String, VecDeque<(i64, f64)>>,
    /// Series not recorded because `max_series` was reached (cumulative).
    pub dropped_series: u64,
}

impl History {
    pub fn new(horizon_ms: i64, interval_ms: i64, max_series: usize) -> Self {
        let max_points = (horizon_ms / interval_ms.max(1)) as usize + 1;
        Self { horizon_ms, max_points, max_series, series: HashMap::new(), dropped_series: 0 }
    }

    /// Upper bound of the memory held by the points, in bytes (keys not counted).
    pub fn bound_bytes(&self) -> usize {
        self.max_series * self.max_points * std::mem::size_of::<(i64, f64)>()
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    fn push_point(&mut self, key: &str, ts: i64, v: f64) {
        if !v.is_finite() {
            return;
        }
        let max_points = self.max_points;
        if let Some(s) = self.series.get_mut(key) {
            if s.back().is_some_and(|(t, _)| *t >= ts) {
                return; // time never goes back within one series
            }
            if s.len() == max_points {
                s.pop_front();
            }
            s.push_back((ts, v));
        } else if self.series.len() < self.max_series {
            let mut s = VecDeque::with_capacity(4);
            s.push_back((ts, v));
            self.series.insert(key.to_string(), s);
        } else {
            self.dropped_series += 1;
        }
    }

    /// Records every metric of a snapshot, then forgets what fell out of the horizon.
    pub fn push(&mut self, snap: &Snapshot) {
        let ts = snap.ts_ms;
        for (k, v) in &snap.metrics {
            self.push_point(k, ts, *v);
        }
        let mut key = String::new();
        for p in &snap.processes {
            let mut put = |this: &mut Self, field: &str, v: f64| {
                key.clear();
                use std::fmt::Write;
                let _ = write!(key, "proc.{}.{field}", p.pid);
                this.push_point(&key, ts, v);
            };
            if let Some(c) = p.cpu_pct {
                put(self, "cpu_pct", c);
            }
            put(self, "rss_bytes", p.rss_bytes as f64);
            if let Some(f) = p.fds {
                put(self, "fds", f as f64);
            }
            put(self, "tcp.close_wait", p.tcp.get("close_wait").copied().unwrap_or(0) as f64);
        }
        for (name, u) in &snap.units {
            let vals = [
                ("cpu_pct", Some(u.cpu_pct)),
                ("rss_bytes", Some(u.rss_bytes as f64)),
                ("memory_bytes", u.memory_bytes.map(|m| m as f64)),
                ("processes", Some(u.processes as f64)),
                ("tcp.close_wait", Some(u.tcp.get("close_wait").copied().unwrap_or(0) as f64)),
            ];
            for (field, v) in vals {
                if let Some(v) = v {
                    self.push_point(&format!("unit.{name}.{field}"), ts, v);
                }
            }
        }
        let cutoff = ts - self.horizon_ms;
        self.series.retain(|_, s| {
            while s.front().is_some_and(|(t, _)| *t < cutoff) {
                s.pop_front();
            }
            !s.is_empty()
        });
    }

    /// The points of `key` within `[now - window, now]`.
    pub fn window(&self, key: &str, now: i64, window_ms: i64) -> impl Iterator<Item = (i64, f64)> + '_ {
        let start = now - window_ms;
        self.series.get(key).into_iter().flat_map(move |s| s.iter().copied().filter(move |(t, _)| *t >= start && *t <= now))
    }

    /// The latest value of `key` at or before `now`.
    pub fn latest(&self, key: &str, now: i64) -> Option<f64> {
        self.series.get(key)?.iter().rev().find(|(t, _)| *t <= now).map(|(_, v)| *v)
    }

    /// Whether the series reaches back to `now - window` (it has a point at or before it).
    pub fn covers(&self, key: &str, now: i64, window_ms: i64) -> bool {
        self.series.get(key).and_then(|s| s.front()).is_some_and(|(t, _)| *t <= now - window_ms)
    }

    pub fn avg(&self, key: &str, now: i64, w: i64) -> Option<f64> {
        let (n, sum) = self.window(key, now, w).fold((0usize, 0.0), |(n, s), (_, v)| (n + 1, s + v));
        (n > 0).then(|| sum / n as f64)
    }

    pub fn min(&self, key: &str, now: i64, w: i64) -> Option<f64> {
        self.window(key, now, w).map(|(_, v)| v).reduce(f64::min)
    }

    pub fn max(&self, key: &str, now: i64, w: i64) -> Option<f64> {
        self.window(key, now, w).map(|(_, v)| v).reduce(f64::max)
    }

    /// Last minus first value in the window.
    pub fn delta(&self, key: &str, now: i64, w: i64) -> Option<f64> {
        let mut it = self.window(key, now, w);
        let first = it.next()?;
        let last = it.last()?;
        Some(last.1 - first.1)
    }

    /// Change per second over the window (for counters; a counter reset reads as 0).
    pub fn rate(&self, key: &str, now: i64, w: i64) -> Option<f64> {
        let mut it = self.window(key, now, w);
        let first = it.next()?;
        let last = it.last()?;
        let secs = (last.0 - first.0) as f64 / 1000.0;
        (secs > 0.0).then(|| (last.1 - first.1).max(0.0) / secs)
    }

    /// Nearest-rank percentile `q` (0–100) of the values in the window.
    pub fn percentile(&self, key: &str, now: i64, w: i64, q: f64) -> Option<f64> {
        let mut v: Vec<f64> = self.window(key, now, w).map(|(_, v)| v).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let rank = ((q.clamp(0.0, 100.0) / 100.0) * v.len() as f64).ceil() as usize;
        Some(v[rank.saturating_sub(1).min(v.len() - 1)])
    }

    /// True when the series covers the whole window and every point in it satisfies the test.
    pub fn sustained(&self, key: &str, now: i64, w: i64, cmp: Cmp, threshold: f64) -> bool {
        if !self.covers(key, now, w) || self.latest(key, now).is_none() {
            return false;
        }
        self.window(key, now, w).all(|(_, v)| cmp.test(v, threshold))
    }

    /// True when at least `x` of the last `y` points satisfy the test (and there are `y` points).
    pub fn x_of_last_y(&self, key: &str, now: i64, x: usize, y: usize, cmp: Cmp, threshold: f64) -> bool {
        let Some(s) = self.series.get(key) else { return false };
        let pts: Vec<f64> = s.iter().rev().filter(|(t, _)| *t <= now).take(y).map(|(_, v)| *v).collect();
        pts.len() == y && pts.iter().filter(|v| cmp.test(**v, threshold)).count() >= x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(points: &[(i64, f64)]) -> History {
        let mut h = History::new(600_000, 1_000, 16);
        for (t, v) in points {
            let mut s = Snapshot { ts_ms: *t, ..Default::default() };
            s.metrics.insert("x".into(), *v);
            h.push(&s);
        }
        h
    }

    #[test]
    fn aggregates_over_window() {
        let h = hist(&[(0, 1.0), (1000, 2.0), (2000, 3.0), (3000, 10.0)]);
        assert_eq!(h.avg("x", 3000, 2000), Some(5.0));
        assert_eq!(h.max("x", 3000, 60_000), Some(10.0));
        assert_eq!(h.min("x", 3000, 1000), Some(3.0));
        assert_eq!(h.rate("x", 3000, 3000), Some(3.0));
        assert_eq!(h.percentile("x", 3000, 3000, 50.0), Some(2.0));
        assert_eq!(h.avg("missing", 3000, 1000), None);
    }

    #[test]
    fn sustained_needs_coverage() {
        let h = hist(&[(0, 95.0), (1000, 96.0), (2000, 97.0)]);
        assert!(h.sustained("x", 2000, 2000, Cmp::Gt, 90.0));
        assert!(!h.sustained("x", 2000, 3000, Cmp::Gt, 90.0), "history shorter than the window");
        assert!(!h.x_of_last_y("x", 2000, 3, 3, Cmp::Gt, 95.5));
        assert!(h.x_of_last_y("x", 2000, 2, 3, Cmp::Gt, 95.5));
        assert!(!h.x_of_last_y("x", 2000, 1, 4, Cmp::Gt, 0.0), "fewer than y points");
        assert!(h.x_of_last_y("x", 2000, 2, 3, Cmp::Gt, 95.0));
    }

    #[test]
    fn bounded_points_and_series() {
        let mut h = History::new(10_000, 1_000, 2);
        for t in 0..100 {
            let mut s = Snapshot { ts_ms: t * 1000, ..Default::default() };
            for k in ["a", "b", "c"] {
                s.metrics.insert(k.into(), t as f64);
            }
            h.push(&s);
        }
        assert_eq!(h.series_count(), 2);
        assert_eq!(h.window("a", 99_000, 1_000_000).count(), 11);
        assert!(h.dropped_series > 0);
    }
}
