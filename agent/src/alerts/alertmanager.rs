//! The Alertmanager sink (`POST <url>/api/v2/alerts`). A playbook's notification is an alert
//! that fires while the playbook keeps asking and resolves when it stops:
//!
//! - labels `alertname` (the notify details' `alertname`, else the playbook's name), `node`,
//!   `playbook`, `target` (the subject), `severity`; annotations `summary`, `description`, `seq`.
//! - It fires at the first notification the gate let through, and every later ask for the same
//!   (playbook, subject), a suppressed (cooldown, rate limit) or coalesced one included, keeps it
//!   firing. Firing alerts are posted again every `repost_secs` with `endsAt` 3 of those ahead,
//!   so Alertmanager resolves them by itself if medic stops or dies.
//! - The log has no record of an evaluation that asked nothing, so an alert resolves by absence:
//!   when no ask came for `resolve_after_secs` (automatic: 2 × the playbook's interval, plus
//!   `audit.repeat_window_secs` when its cooldown or rate limit suppresses, and so coalesces,
//!   repeats; [`resolve_ms`]), or at once when the playbook is unloaded or disabled. Resolved:
//!   posted with `endsAt` = now.
//! - Escalations (`MedicBreakerOpen`) fire until `breaker_reset`; the audit log unwritable
//!   (`MedicAuditUnwritable`, from memory) until it is writable again. Executed actions
//!   (`MedicAction`) and outcomes (`MedicActionOutcome`) are single events, 5 minutes long.
//!
//! The cursor moves past a batch of records once the alerts they start or end were accepted;
//! re-posts and resolutions by absence come from memory (at most [`MAX_ACTIVE`] alerts), which
//! a restart rebuilds only from the records after the cursor: an alert firing then ends at its
//! last `endsAt` unless asked for again.

use super::notification::{self, Notification};
use super::{failed, pause, Backoff, Class, Context, Feed, Prepared, SinkConfig};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Alerts held firing at once; a new one beyond it is posted once (it resolves by its
/// `endsAt`) but not held.
pub const MAX_ACTIVE: usize = 1024;
/// How long a single event (an action, an outcome) is shown.
pub const EVENT_MS: i64 = 5 * 60_000;
/// Records read back from the cursor at start for the playbooks' META.
const LEARN_BACK: u64 = 4096;
/// Records read per batch.
const BATCH: usize = 100;

/// How a held alert ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ends {
    /// When its playbook has not asked for this long (ms).
    Absent(i64),
    /// On a record or state change (breaker reset, audit writable).
    Explicitly,
}

#[derive(Debug, Clone)]
struct Held {
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    starts_ms: i64,
    last_ms: i64,
    ends: Ends,
}

/// The alerts of one sink, as a function of the records read and the clock (no I/O).
#[derive(Debug, Default)]
pub struct State {
    node: String,
    held: HashMap<String, Held>,
    /// Playbook → its resolve period (from its `playbook_loaded` META).
    resolve: HashMap<String, i64>,
    /// `resolve_after_secs` in ms (0: automatic).
    fixed_ms: i64,
    repeat_window_ms: i64,
    repost_ms: i64,
}

/// The automatic resolve period of a playbook, from the META its `playbook_loaded` record
/// carries (`interval_ms`, `cooldown_ms`, `rate_limit.{max,per_ms}`): 2 × its interval, plus
/// the repeat window when its cooldown is longer than its interval or its rate limit is below
/// one request per interval (its asks may then be coalesced for that long); never less than
/// [`MIN_RESOLVE_MS`], so a few late ticks on a loaded node do not resolve and fire again.
/// Unknown: as for a 60 s interval.
pub fn resolve_ms(meta: &Value, repeat_window_ms: i64) -> i64 {
    let Some(interval) = meta.get("interval_ms").and_then(Value::as_i64).filter(|i| *i > 0) else { return 120_000 + repeat_window_ms };
    let cooldown = meta.get("cooldown_ms").and_then(Value::as_i64).unwrap_or(0);
    let rate = meta.get("rate_limit");
    let max = rate.and_then(|r| r.get("max")).and_then(Value::as_i64).unwrap_or(i64::MAX);
    let per = rate.and_then(|r| r.get("per_ms")).and_then(Value::as_i64).unwrap_or(0);
    let limited = cooldown > interval || max.saturating_mul(interval) < per;
    interval.saturating_mul(2).saturating_add(if limited { repeat_window_ms } else { 0 }).max(MIN_RESOLVE_MS)
}

/// The shortest automatic resolve period: 10 s.
pub const MIN_RESOLVE_MS: i64 = 10_000;

fn rfc(ms: i64) -> String {
    crate::audit::now_rfc3339(ms)
}

impl State {
    pub fn new(node: &str, s: &SinkConfig, repeat_window_ms: i64) -> Self {
        Self {
            node: node.to_string(),
            fixed_ms: crate::config::secs_to_ms(s.resolve_after_secs),
            repeat_window_ms,
            repost_ms: crate::config::secs_to_ms(s.repost_secs),
            ..Default::default()
        }
    }

    fn period(&self, playbook: &str) -> i64 {
        if self.fixed_ms > 0 {
            return self.fixed_ms;
        }
        self.resolve.get(playbook).copied().unwrap_or(120_000 + self.repeat_window_ms)
    }

    fn alert(&self, h: &Held, ends_ms: i64) -> Value {
        // Never an end before the start (a clock stepped back, a re-post long overdue):
        // Alertmanager answers such a batch with 400, which would hold the sink's cursor.
        let ends_ms = ends_ms.max(h.starts_ms);
        json!({ "labels": h.labels, "annotations": h.annotations, "startsAt": rfc(h.starts_ms), "endsAt": rfc(ends_ms) })
    }

    fn labels(&self, alertname: &str, n: &Notification) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert("alertname".into(), alertname.to_string());
        l.insert("node".into(), n.node.clone());
        l.insert("severity".into(), n.severity.clone());
        for (k, v) in [("playbook", &n.playbook), ("target", &n.target), ("action", &n.action)] {
            if let Some(v) = v {
                l.insert(k.into(), v.clone());
            }
        }
        if n.class == Class::Notify {
            l.remove("action");
        }
        l
    }

    fn annotations(n: &Notification) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        a.insert("summary".into(), n.summary.clone());
        if !n.description.is_empty() {
            a.insert("description".into(), n.description.clone());
        }
        a.insert("seq".into(), n.seq.map_or_else(|| "none".into(), |s| s.to_string()));
        a
    }

    /// Starts holding `key` firing (or refreshes it); the alert to post now.
    fn hold(&mut self, key: String, h: Held, now: i64) -> Option<Value> {
        let ended = match h.ends {
            Ends::Absent(p) => h.last_ms + p <= now,
            Ends::Explicitly => false,
        };
        if ended {
            // A record replayed after its alert's time: posted as already resolved.
            let end = match h.ends {
                Ends::Absent(p) => h.last_ms + p,
                Ends::Explicitly => now,
            };
            return Some(self.alert(&h, end));
        }
        let v = self.alert(&h, now + 3 * self.repost_ms);
        if self.held.len() < MAX_ACTIVE || self.held.contains_key(&key) {
            self.held.insert(key, h);
        }
        Some(v)
    }

    /// The alerts one record starts, refreshes or ends (to post before the cursor moves past it).
    pub fn apply(&mut self, r: &notification::Read, classes: &[Class], now: i64) -> Vec<Value> {
        let mut out = Vec::new();
        if let Some((pb, meta)) = &r.loaded {
            self.resolve.insert(pb.clone(), resolve_ms(meta, self.repeat_window_ms));
        }
        if let Some(pb) = &r.ended {
            out.extend(self.end_where(now, |h| h.labels.get("playbook") == Some(pb) && matches!(h.ends, Ends::Absent(_))));
        }
        if let Some((pb, action, target)) = &r.reset {
            let key = format!("breaker\0{pb}\0{action}\0{target}");
            out.extend(self.end(&key, now));
        }
        let n = r.notification.as_ref().filter(|n| classes.contains(&n.class));
        if let Some(a) = r.ask.as_ref().filter(|_| classes.contains(&Class::Notify)) {
            let key = format!("notify\0{}\0{}", a.playbook, a.subject);
            let period = self.period(&a.playbook);
            match (self.held.get_mut(&key), n) {
                (Some(h), n) => {
                    h.last_ms = h.last_ms.max(a.at_ms);
                    if let Some(n) = n {
                        // A new notification may say more (a new summary, a new severity).
                        h.annotations = Self::annotations(n);
                        let name = h.labels.get("alertname").cloned().unwrap_or_default();
                        let labels = self.labels(&name, n);
                        let h = self.held.get_mut(&key).map(|h| {
                            h.labels = labels;
                            h.clone()
                        });
                        out.extend(h.map(|h| self.alert(&h, now + 3 * self.repost_ms)));
                    }
                }
                (None, Some(n)) if a.starts => {
                    let alertname = match n.details.get("alertname").and_then(Value::as_str) {
                        Some(s) if !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                            s.to_string()
                        }
                        _ => a.playbook.clone(),
                    };
                    let h = Held {
                        labels: self.labels(&alertname, n),
                        annotations: Self::annotations(n),
                        starts_ms: a.at_ms,
                        last_ms: a.at_ms,
                        ends: Ends::Absent(period),
                    };
                    out.extend(self.hold(key, h, now));
                }
                _ => {}
            }
            return out;
        }
        let Some(n) = n else { return out };
        match (n.class, n.kind.as_str()) {
            (Class::Escalation, "action") => {
                let key = format!(
                    "breaker\0{}\0{}\0{}",
                    n.playbook.as_deref().unwrap_or_default(),
                    n.action.as_deref().unwrap_or_default(),
                    n.target.as_deref().unwrap_or_default()
                );
                let h = Held {
                    labels: self.labels("MedicBreakerOpen", n),
                    annotations: Self::annotations(n),
                    starts_ms: n.ts_ms,
                    last_ms: n.ts_ms,
                    ends: Ends::Explicitly,
                };
                out.extend(self.hold(key, h, now));
            }
            (Class::Audit, "audit_recovered") => out.extend(self.end("audit", now)),
            (Class::Action | Class::Outcome, _) => {
                let name = if n.class == Class::Action { "MedicAction" } else { "MedicActionOutcome" };
                let h = Held {
                    labels: self.labels(name, n),
                    annotations: Self::annotations(n),
                    starts_ms: n.ts_ms,
                    last_ms: n.ts_ms,
                    ends: Ends::Explicitly,
                };
                out.push(self.alert(&h, n.ts_ms + EVENT_MS));
            }
            _ => {}
        }
        out
    }

    fn end(&mut self, key: &str, now: i64) -> Option<Value> {
        self.held.remove(key).map(|h| self.alert(&h, now))
    }

    fn end_where(&mut self, now: i64, f: impl Fn(&Held) -> bool) -> Vec<Value> {
        let keys: Vec<String> = self.held.iter().filter(|(_, h)| f(h)).map(|(k, _)| k.clone()).collect();
        keys.iter().filter_map(|k| self.end(k, now)).collect()
    }

    /// The audit log's state from memory: the alert to post when it changed.
    pub fn audit(&mut self, down: Option<(i64, String)>, now: i64) -> Option<Value> {
        match down {
            Some((since, error)) if !self.held.contains_key("audit") => {
                let n = notification::unwritable(&self.node, since, &error);
                let h = Held {
                    labels: self.labels("MedicAuditUnwritable", &n),
                    annotations: Self::annotations(&n),
                    starts_ms: since,
                    last_ms: since,
                    ends: Ends::Explicitly,
                };
                self.hold("audit".into(), h, now)
            }
            None => self.end("audit", now),
            _ => None,
        }
    }

    /// Alerts whose playbook stopped asking: resolved now.
    pub fn resolve_absent(&mut self, now: i64) -> Vec<Value> {
        self.end_where(now, |h| matches!(h.ends, Ends::Absent(p) if h.last_ms + p <= now))
    }

    /// Every alert held firing, with `endsAt` 3 re-posts ahead.
    pub fn firing(&self, now: i64) -> Vec<Value> {
        self.held.values().map(|h| self.alert(h, now + 3 * self.repost_ms)).collect()
    }

    pub fn held(&self) -> usize {
        self.held.len()
    }
}

pub async fn run(p: Prepared, s: SinkConfig, classes: Vec<Class>, ctx: Context) {
    let mut feed = Feed::open(&ctx.state_dir, &p.name);
    let mut stop = ctx.links.stop.clone();
    let mut down = ctx.links.audit_down.clone();
    let mut state = State::new(&ctx.node, &s, ctx.repeat_window_ms);
    let mut backoff = Backoff::new(s.max_backoff_secs);
    let mut last_error = None;
    let label = [("sink", p.name.clone())];
    let metrics = ctx.links.metrics.clone();
    let max_age = crate::config::secs_to_ms(s.max_age_secs);
    let timeout = Duration::from_secs(s.timeout_secs);
    let repost = crate::config::secs_to_ms(s.repost_secs);
    // Alerts to post (from memory: re-posts, resolutions, the audit state), and the batch of
    // records (last seq, alerts) whose cursor waits for them.
    let mut memory: Vec<Value> = Vec::new();
    let mut pending: Option<(u64, i64, Vec<Value>)> = None;
    let mut next_repost = crate::audit::now_ms() + repost;
    // The playbooks' resolve periods, from their `playbook_loaded` records: a new sink's cursor
    // starts just after those of the current run, an older one finds the next run's after it.
    for (_, line) in feed.before(LEARN_BACK) {
        if let Some(r) = notification::read(&line, &ctx.node).filter(|r| r.loaded.is_some()) {
            let _ = state.apply(&r, &[], 0);
        }
    }
    loop {
        let now = crate::audit::now_ms();
        if classes.contains(&Class::Audit) && down.has_changed().unwrap_or(false) {
            let d = down.borrow_and_update().clone();
            memory.extend(state.audit(d, now));
        }
        memory.extend(state.resolve_absent(now));
        if now >= next_repost {
            memory.extend(state.firing(now));
            next_repost = now + repost;
        }
        // Records are read (and the state they change applied) only once the last batch went.
        if pending.is_none() {
            let lines = feed.next(BATCH);
            if let Some(last) = lines.last().map(|l| l.0) {
                let mut alerts = Vec::new();
                let mut oldest = now;
                for (_, line) in &lines {
                    let Some(mut r) = notification::read(line, &ctx.node) else { continue };
                    if now - r.ts_ms > max_age && (r.notification.is_some() || r.ask.is_some()) {
                        metrics.alerts_dropped.get_or_create(&label).inc();
                        r.notification = None;
                        r.ask = None;
                    }
                    oldest = oldest.min(r.ts_ms);
                    alerts.extend(state.apply(&r, &classes, now));
                }
                if alerts.is_empty() {
                    feed.advance(last, &p.name);
                } else {
                    pending = Some((last, oldest, alerts));
                }
            }
        }
        metrics.alerts_lag_seconds.get_or_create(&label).set(pending.as_ref().map_or(0, |p| (now - p.1).max(0) / 1000));
        // A batch's alerts and what memory has to say go in one POST.
        let mut body: Vec<Value> = pending.as_ref().map(|p| p.2.clone()).unwrap_or_default();
        body.extend(memory.iter().cloned());
        if body.is_empty() {
            if pause(&mut stop, super::webhook::POLL).await {
                break;
            }
            continue;
        }
        let n = body.len() as u64;
        match super::http::post_json(&p.endpoint, &p.headers, Value::Array(body).to_string().into_bytes(), timeout).await {
            Ok(_) => {
                metrics.alerts_delivered.get_or_create(&label).inc_by(n);
                backoff.ok();
                last_error = None;
                memory.clear();
                if let Some((seq, _, _)) = pending.take() {
                    feed.advance(seq, &p.name);
                }
                if *stop.borrow() {
                    break;
                }
            }
            Err(e) if e.rejected() => {
                // The receiver refuses this batch for good (4xx): sending it again would hold
                // every later record behind it. Dropped, counted and logged; the cursor moves.
                failed(&ctx, &p.name, &mut last_error, &e);
                metrics.alerts_dropped.get_or_create(&label).inc_by(n);
                tracing::warn!(message = "Alert batch refused by the receiver; dropped.", error_code = "alert_rejected", sink = %p.name, alerts = n, error = %e);
                memory.clear();
                if let Some((seq, _, _)) = pending.take() {
                    feed.advance(seq, &p.name);
                }
                if pause(&mut stop, backoff.failed()).await {
                    break;
                }
            }
            Err(e) => {
                failed(&ctx, &p.name, &mut last_error, &e);
                // Re-posts are made afresh at their next time: only resolutions must wait.
                memory.retain(|a| a["endsAt"].as_str().is_some_and(|e| e <= rfc(crate::audit::now_ms()).as_str()));
                memory.truncate(MAX_ACTIVE);
                if pause(&mut stop, backoff.failed()).await {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(pb: &str, subject: &str, at: i64, starts: bool, severity: &str) -> notification::Read {
        let n = Notification {
            seq: Some(1),
            node: "n".into(),
            ts: rfc(at),
            ts_ms: at,
            class: Class::Notify,
            kind: "action".into(),
            playbook: Some(pb.into()),
            target: Some(subject.into()),
            action: Some("notify".into()),
            decision: Some("executed".into()),
            severity: severity.into(),
            summary: subject.into(),
            description: String::new(),
            details: Value::Null,
        };
        notification::Read {
            seq: 1,
            ts_ms: at,
            notification: starts.then_some(n),
            ask: Some(notification::Ask { playbook: pb.into(), subject: subject.into(), at_ms: at, starts }),
            ..Default::default()
        }
    }

    #[test]
    fn an_alert_fires_while_asked_and_resolves_after_its_period() {
        let cfg = SinkConfig { resolve_after_secs: 0, repost_secs: 10, ..Default::default() };
        let mut st = State::new("n", &cfg, 600_000);
        let loaded = notification::Read {
            loaded: Some(("pb".into(), json!({"interval_ms": 5000, "cooldown_ms": 0, "rate_limit": {"max": 100, "per_ms": 60_000}}))),
            ..Default::default()
        };
        let all = [Class::Notify];
        assert!(st.apply(&loaded, &all, 0).is_empty());
        let t0 = 1_000_000;
        let a = st.apply(&ask("pb", "disk", t0, true, "critical"), &all, t0);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0]["labels"]["alertname"], "pb");
        assert_eq!(a[0]["labels"]["severity"], "critical");
        assert_eq!(a[0]["labels"]["target"], "disk");
        assert_eq!(a[0]["endsAt"], rfc(t0 + 30_000));
        // A suppressed repeat keeps it firing without a post; nothing resolves within 2 × 5 s.
        assert!(st.apply(&ask("pb", "disk", t0 + 5_000, false, ""), &all, t0 + 5_000).is_empty());
        assert!(st.resolve_absent(t0 + 14_000).is_empty());
        assert_eq!(st.firing(t0 + 14_000).len(), 1);
        let r = st.resolve_absent(t0 + 15_000);
        assert_eq!((r.len(), r[0]["endsAt"].as_str()), (1, Some(rfc(t0 + 15_000).as_str())));
        assert_eq!(st.held(), 0);
        // A suppressed ask alone starts nothing.
        assert!(st.apply(&ask("pb", "disk", t0 + 20_000, false, ""), &all, t0 + 20_000).is_empty());
    }

    #[test]
    fn resolve_period_counts_the_repeat_window_only_when_repeats_coalesce() {
        let meta = |cooldown_ms: i64, max: i64, per_ms: i64| json!({"interval_ms": 10_000, "cooldown_ms": cooldown_ms, "rate_limit": {"max": max, "per_ms": per_ms}});
        assert_eq!(resolve_ms(&meta(0, 10, 60_000), 600_000), 20_000);
        assert_eq!(resolve_ms(&meta(300_000, 10, 60_000), 600_000), 620_000);
        assert_eq!(resolve_ms(&meta(0, 1, 3_600_000), 600_000), 620_000);
        assert_eq!(resolve_ms(&Value::Null, 0), 120_000);
        // A 1 s playbook still waits the floor: late ticks on a loaded node do not flap.
        let fast = json!({"interval_ms": 1_000, "cooldown_ms": 0, "rate_limit": {"max": 1000, "per_ms": 3_600_000}});
        assert_eq!(resolve_ms(&fast, 0), MIN_RESOLVE_MS);
    }

    #[test]
    fn a_replayed_stale_ask_is_posted_resolved_and_not_held() {
        let cfg = SinkConfig { resolve_after_secs: 30, ..Default::default() };
        let mut st = State::new("n", &cfg, 0);
        let a = st.apply(&ask("pb", "x", 0, true, "warning"), &[Class::Notify], 100_000);
        assert_eq!(a[0]["endsAt"], rfc(30_000));
        assert_eq!(st.held(), 0);
    }

    #[test]
    fn held_alerts_are_bounded_and_unload_resolves_them() {
        let cfg = SinkConfig { resolve_after_secs: 3600, ..Default::default() };
        let mut st = State::new("n", &cfg, 0);
        for i in 0..(MAX_ACTIVE + 10) {
            assert_eq!(st.apply(&ask("pb", &format!("s{i}"), 0, true, "warning"), &[Class::Notify], 0).len(), 1);
        }
        assert_eq!(st.held(), MAX_ACTIVE);
        let ended = notification::Read { ended: Some("pb".into()), ..Default::default() };
        assert_eq!(st.apply(&ended, &[Class::Notify], 1).len(), MAX_ACTIVE);
        assert_eq!(st.held(), 0);
        assert!(st.audit(Some((5, "ENOSPC".into())), 6).is_some());
        assert!(st.audit(Some((5, "ENOSPC".into())), 7).is_none());
        let r = st.audit(None, 8).unwrap();
        assert_eq!(r["labels"]["alertname"], "MedicAuditUnwritable");
    }
}
