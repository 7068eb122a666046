//! The JSON webhook sink: POSTs the notifications of the records after its cursor, in `seq`
//! order, a `batch` at a time, as
//! `{"node": ..., "sink": ..., "notifications": [Notification, ...]}` (docs/AUDIT.md,
//! "Notifications"); the cursor moves past a batch only on a 2xx answer, so a receiver that was
//! down gets everything since, in order (a batch sent again after a lost answer carries the
//! same seqs). `audit_unwritable` (from memory, `seq` null) goes first, once per outage.

use super::notification::{self, Notification};
use super::{failed, pause, Backoff, Class, Context, Feed, Prepared, SinkConfig};
use std::time::Duration;

/// How often a sink with nothing to send looks at the log again.
pub const POLL: Duration = Duration::from_millis(500);

pub async fn run(p: Prepared, s: SinkConfig, classes: Vec<Class>, ctx: Context) {
    let mut feed = Feed::open(&ctx.state_dir, &p.name);
    let mut stop = ctx.links.stop.clone();
    let mut down = ctx.links.audit_down.clone();
    let mut backoff = Backoff::new(s.max_backoff_secs);
    let mut last_error = None;
    let label = [("sink", p.name.clone())];
    let metrics = ctx.links.metrics.clone();
    let max_age = crate::config::secs_to_ms(s.max_age_secs);
    let timeout = Duration::from_secs(s.timeout_secs);
    // A batch read and not yet accepted: the last seq it covers, its notifications.
    let mut pending: Option<(u64, Vec<Notification>)> = None;
    let mut unwritable: Option<Notification> = None;
    let mut outage_sent: Option<i64> = None;
    loop {
        let now = crate::audit::now_ms();
        if classes.contains(&Class::Audit) {
            if let Some((since, error)) = down.borrow_and_update().clone() {
                if outage_sent != Some(since) && unwritable.as_ref().map(|n| n.ts_ms) != Some(since) {
                    unwritable = Some(notification::unwritable(&ctx.node, since, &error));
                }
            }
        }
        if unwritable.as_ref().is_some_and(|n| now - n.ts_ms > max_age) {
            unwritable = None;
            metrics.alerts_dropped.get_or_create(&label).inc();
        }
        if pending.is_none() {
            let lines = feed.next(s.batch);
            if let Some(last) = lines.last().map(|l| l.0) {
                let mut batch = Vec::new();
                for (_, line) in &lines {
                    let Some(n) = notification::read(line, &ctx.node).and_then(|r| r.notification) else { continue };
                    if !classes.contains(&n.class) {
                        continue;
                    }
                    if now - n.ts_ms > max_age {
                        metrics.alerts_dropped.get_or_create(&label).inc();
                        tracing::warn!(message = "Notification too old to deliver; dropped.", error_code = "alert_too_old", sink = %p.name, seq = n.seq);
                        continue;
                    }
                    batch.push(n);
                }
                if batch.is_empty() {
                    feed.advance(last, &p.name);
                } else {
                    pending = Some((last, batch));
                }
            }
        }
        let oldest = unwritable.as_ref().or_else(|| pending.as_ref().and_then(|p| p.1.first())).map(|n| n.ts_ms);
        metrics.alerts_lag_seconds.get_or_create(&label).set(oldest.map_or(0, |t| (now - t).max(0) / 1000));
        let work = match (&unwritable, &pending) {
            (Some(n), _) => Some((None, vec![n.clone()])),
            (None, Some((seq, batch))) => Some((Some(*seq), batch.clone())),
            (None, None) => None,
        };
        let Some((seq, batch)) = work else {
            if pause(&mut stop, POLL).await {
                break;
            }
            continue;
        };
        let body = serde_json::json!({ "node": ctx.node, "sink": p.name, "notifications": batch }).to_string();
        match super::http::post_json(&p.endpoint, &p.headers, body.into_bytes(), timeout).await {
            Ok(_) => {
                metrics.alerts_delivered.get_or_create(&label).inc_by(batch.len() as u64);
                backoff.ok();
                last_error = None;
                match seq {
                    None => outage_sent = unwritable.take().map(|n| n.ts_ms),
                    Some(seq) => {
                        pending = None;
                        feed.advance(seq, &p.name);
                    }
                }
                if *stop.borrow() {
                    break;
                }
            }
            Err(e) if e.rejected() => {
                // Refused for good (4xx): sending it again would hold every later record.
                failed(&ctx, &p.name, &mut last_error, &e);
                metrics.alerts_dropped.get_or_create(&label).inc_by(batch.len() as u64);
                tracing::warn!(message = "Webhook batch refused by the receiver; dropped.", error_code = "alert_rejected", sink = %p.name, notifications = batch.len(), error = %e);
                match seq {
                    None => outage_sent = unwritable.take().map(|n| n.ts_ms),
                    Some(seq) => {
                        pending = None;
                        feed.advance(seq, &p.name);
                    }
                }
                if pause(&mut stop, backoff.failed()).await {
                    break;
                }
            }
            Err(e) => {
                failed(&ctx, &p.name, &mut last_error, &e);
                if pause(&mut stop, backoff.failed()).await {
                    break;
                }
            }
        }
    }
}
