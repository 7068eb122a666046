//! Notifications that reach people: delivers what the audit log records (a playbook's `notify`,
//! executed actions and their outcomes, breakers opening) to the sinks an operator configures in
//! `[alerts]`: Alertmanager's v2 API (`alertmanager.rs`: alerts that fire while a playbook asks
//! and resolve when it stops) and a JSON webhook (`webhook.rs`).
//!
//! The log is the spool, as for the MQTT forwarder (`forward::spool::Tail` reads it across
//! segments): each sink keeps its own cursor (`<state_dir>/alerts/<sink>.cursor`, the last
//! `seq` it accepted with every one before it), advanced only after a 2xx answer and written
//! atomically. A receiver down for hours, an agent killed with `kill -9` or restarted, loses
//! nothing: delivery resumes after the cursor (at least once; every payload carries node and
//! seq to dedupe on). A new sink starts at the log's end (no backlog of old history). Bounded:
//! a record older than the sink's `max_age_secs` when its turn comes is dropped and counted; one
//! POST at a time, under `timeout_secs`, retried with back-off (1 s doubling to
//! `max_backoff_secs`); at most a `batch` of records read ahead.
//!
//! One thing cannot come from the log: that the log cannot be written. The agent hands its
//! fail-closed state over a watch channel ([`Links::audit_down`]) and the sinks deliver
//! `audit_unwritable` from memory; its end is the `audit_recovered` record, from the log.
//!
//! `notification.rs` says what each record means (pure), `config.rs` is `[alerts]`, `http.rs`
//! the one POST.

pub mod alertmanager;
pub mod config;
pub mod http;
pub mod notification;
pub mod webhook;

pub use config::{AlertsConfig, Class, SinkConfig, SinkKind};

use crate::forward::spool::Tail;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The directory of the cursors, under the state dir.
pub const CURSOR_DIR: &str = "alerts";

/// The audit log unwritable: since when (ms) and why.
pub type AuditDown = Option<(i64, String)>;

/// What the sinks get from the agent.
#[derive(Clone)]
pub struct Links {
    /// Turns true when the agent stops.
    pub stop: watch::Receiver<bool>,
    /// The fail-closed state, set by the loop after every tick.
    pub audit_down: watch::Receiver<AuditDown>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What every sink needs besides its own settings.
#[derive(Clone)]
pub struct Context {
    pub node: String,
    pub state_dir: PathBuf,
    /// `audit.repeat_window_secs`, for the automatic resolve period.
    pub repeat_window_ms: i64,
    pub links: Links,
}

/// Runs every configured sink until the agent stops. A sink whose settings cannot work (a CA
/// file that does not parse, a token file that cannot be read) says so and does not run; the
/// others and the agent go on.
pub async fn run(cfg: AlertsConfig, ctx: Context) {
    let mut tasks = Vec::new();
    for (kind, name, sink) in cfg.sinks() {
        let sink = sink.clone();
        let ctx = ctx.clone();
        let classes = sink.classes(kind);
        let prepared = Prepared::new(kind, &name, &sink);
        match prepared {
            Err(e) => {
                tracing::error!(message = "Alert sink unusable; not delivering to it.", error_code = "alert_sink_config", sink = %name, error = %e)
            }
            Ok(p) => {
                tracing::info!(message = "Delivering alerts.", sink = %name, kind = kind.as_str(), url = %sink.url, classes = ?classes);
                tasks.push(match kind {
                    SinkKind::Alertmanager => tokio::spawn(alertmanager::run(p, sink, classes, ctx)),
                    SinkKind::Webhook => tokio::spawn(webhook::run(p, sink, classes, ctx)),
                });
            }
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// A sink's endpoint, headers and name, resolved once at start.
pub struct Prepared {
    pub name: String,
    pub endpoint: http::Endpoint,
    pub headers: Vec<(String, String)>,
}

impl Prepared {
    fn new(kind: SinkKind, name: &str, s: &SinkConfig) -> Result<Self, String> {
        let mut endpoint = http::Endpoint::parse(&s.url, s.ca_file.as_deref())?;
        if kind == SinkKind::Alertmanager {
            endpoint = endpoint.with_path("/api/v2/alerts")?;
        }
        let mut headers: Vec<(String, String)> = s.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        if let Some(f) = &s.bearer_token_file {
            let t = std::fs::read_to_string(f).map_err(|e| format!("bearer_token_file {}: {e}", f.display()))?;
            let t = t.trim();
            if t.is_empty() || t.len() > 8192 || hyper::header::HeaderValue::from_str(t).is_err() {
                return Err(format!("bearer_token_file {}: not a token (one line of visible ASCII, at most 8 KiB)", f.display()));
            }
            headers.push(("authorization".into(), format!("Bearer {t}")));
        }
        Ok(Self { name: name.to_string(), endpoint, headers })
    }
}

/// A sink's place in the log: its durable cursor and a reader after it.
pub struct Feed {
    state_dir: PathBuf,
    file: PathBuf,
    /// The last `seq` accepted, with every one before it.
    pub cursor: u64,
    tail: Option<Tail>,
}

impl Feed {
    /// Opens the sink's cursor; a sink without one starts at the log's end (and writes it at
    /// once, so that what is recorded from now on is delivered whatever happens next).
    pub fn open(state_dir: &Path, sink: &str) -> Self {
        let dir = state_dir.join(CURSOR_DIR);
        let file = dir.join(format!("{sink}.cursor"));
        let text = std::fs::read_to_string(&file);
        let read = text.as_ref().ok().and_then(|s| s.trim().parse().ok());
        let mut f = Self { state_dir: state_dir.to_path_buf(), file, cursor: 0, tail: None };
        match read {
            Some(c) => f.cursor = c,
            // A cursor that exists but cannot be read (cut by a crash, damaged): start from
            // the beginning rather than skip a backlog; `max_age_secs` drops what is too old.
            None if text.is_ok() || f.file.exists() => {
                tracing::warn!(message = "Alert cursor unreadable; delivering from the start of the log.", error_code = "alert_cursor_read", file = %f.file.display());
            }
            None => {
                f.cursor = crate::forward::spool::last_seq(state_dir);
                if let Err(e) = f.commit(f.cursor) {
                    tracing::warn!(message = "Alert cursor not writable.", error_code = "alert_cursor_write", file = %f.file.display(), error = %e);
                }
            }
        }
        f
    }

    /// Up to `max` records after the last one read.
    pub fn next(&mut self, max: usize) -> Vec<(u64, String)> {
        if self.tail.is_none() {
            self.tail = Tail::after(&self.state_dir, self.cursor).ok();
        }
        match self.tail.as_mut().map(|t| t.next(max)) {
            Some(Ok(v)) => v,
            Some(Err(_)) => {
                self.tail = None;
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// Up to `back` records at or before the cursor (already delivered), for what they declare
    /// (the playbooks' META, written at start just before a new sink's first cursor).
    pub fn before(&self, back: u64) -> Vec<(u64, String)> {
        let Ok(mut t) = Tail::after(&self.state_dir, self.cursor.saturating_sub(back)) else { return Vec::new() };
        let mut out = t.next(back as usize).unwrap_or_default();
        out.retain(|(s, _)| *s <= self.cursor);
        out
    }

    /// [`commit`](Self::commit), with a failure logged (the records may then be sent again):
    /// every place a sink moves past records calls this.
    pub fn advance(&mut self, seq: u64, sink: &str) {
        if let Err(e) = self.commit(seq) {
            tracing::warn!(message = "Alert cursor not writable; records may be sent again.", error_code = "alert_cursor_write", sink, error = %e);
        }
    }

    /// The sink accepted everything up to `seq`: the cursor moves and is written.
    pub fn commit(&mut self, seq: u64) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        self.cursor = self.cursor.max(seq);
        let dir = self.file.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let tmp = self.file.with_extension("cursor.tmp");
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(format!("{}\n", self.cursor).as_bytes())?;
        // Durable before it counts: a power cut must not leave an empty cursor behind.
        f.sync_all()?;
        std::fs::rename(&tmp, &self.file)?;
        std::fs::File::open(dir)?.sync_all()
    }
}

/// Retry spacing: 1 s, doubling up to the sink's `max_backoff_secs`; reset by a success.
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(max_secs: u64) -> Self {
        Self { next: Duration::from_secs(1), max: Duration::from_secs(max_secs.max(1)) }
    }

    pub fn failed(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }

    pub fn ok(&mut self) {
        self.next = Duration::from_secs(1);
    }
}

/// Logs a failed POST when its error differs from the last one (a receiver down for a day
/// writes one line, not 1,440) and counts it.
pub fn failed(ctx: &Context, sink: &str, last_error: &mut Option<String>, e: &http::HttpError) {
    ctx.links.metrics.alerts_failures.get_or_create(&[("sink", sink.to_string()), ("error_code", e.code().to_string())]).inc();
    let text = e.to_string();
    if last_error.as_deref() != Some(text.as_str()) {
        tracing::warn!(message = "Alert sink not reachable; notifications wait in the audit log.", error_code = e.code(), sink, error = %text);
        *last_error = Some(text);
    }
}

/// Sleeps `d`, or less when the agent stops; true when it stopped.
pub async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}
