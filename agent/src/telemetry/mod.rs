//! Logging: structured `tracing` events. Under systemd, when stderr is the journal stream
//! (`JOURNAL_STREAM` names stderr's device and inode, as sd_journal_stream_fd(3) says to check),
//! events go to journald natively through `tracing-journald`, each field its own journal field
//! (`playbook` → `PLAYBOOK`, no prefix) and the important ones with a `MESSAGE_ID` ([`ids`]);
//! elsewhere they stay human-readable lines on stderr (without the message ids).
//! `MEDIC_LOG` overrides the configured level with an `EnvFilter` directive.
//!
//! Field names are chosen not to collide with the journal's own: tracing-journald writes the
//! event's module path as `TARGET`, so an action's target is logged as `action_target`.

pub mod ids;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Where logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Stderr,
}

pub fn init(level: &str) -> Sink {
    let filter = || {
        let f = std::env::var("MEDIC_LOG").unwrap_or_else(|_| level.to_string());
        tracing_subscriber::EnvFilter::try_new(&f).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let mut journal_error = None;
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                let layer = layer.with_field_prefix(None).with_syslog_identifier("medic".to_string());
                if tracing_subscriber::registry().with(filter()).with(layer).try_init().is_ok() {
                    return Sink::Journald;
                }
            }
            Err(e) => journal_error = Some(e),
        }
    }
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .fmt_fields(Fields)
        .try_init();
    if let Some(e) = journal_error {
        tracing::warn!(message = "Journal socket not usable; logging to stderr.", error = %e);
    }
    Sink::Stderr
}

/// True when stderr is connected to the journal: `JOURNAL_STREAM` is `<device>:<inode>` of it.
/// (A child started by a service inherits the variable with a different stderr: checked, so
/// such a child writes to its own stderr.)
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = v.split_once(':') else { return false };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else { return false };
    match rustix::fs::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// stderr's field format: as tracing-subscriber's default (`message` bare, `name=value` for the
/// rest) but without `message_id`, which is for the journal's eyes.
struct Fields;

impl<'w> tracing_subscriber::field::MakeVisitor<tracing_subscriber::fmt::format::Writer<'w>> for Fields {
    type Visitor = FieldsVisitor<'w>;
    fn make_visitor(&self, w: tracing_subscriber::fmt::format::Writer<'w>) -> FieldsVisitor<'w> {
        FieldsVisitor { w, seen: false, res: Ok(()) }
    }
}

struct FieldsVisitor<'w> {
    w: tracing_subscriber::fmt::format::Writer<'w>,
    seen: bool,
    res: std::fmt::Result,
}

impl FieldsVisitor<'_> {
    fn put(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        let name = field.name();
        if name == "message_id" || name.starts_with("log.") || self.res.is_err() {
            return;
        }
        let sep = if std::mem::replace(&mut self.seen, true) { " " } else { "" };
        self.res = if name == "message" {
            write!(self.w, "{sep}{value:?}")
        } else {
            write!(self.w, "{sep}{}={value:?}", name.strip_prefix("r#").unwrap_or(name))
        };
    }
}

impl tracing::field::Visit for FieldsVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.put(field, &format_args!("{value}"));
        } else {
            self.put(field, &value);
        }
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.put(field, value);
    }
}

impl tracing_subscriber::field::VisitOutput<std::fmt::Result> for FieldsVisitor<'_> {
    fn finish(self) -> std::fmt::Result {
        self.res
    }
}

impl tracing_subscriber::field::VisitFmt for FieldsVisitor<'_> {
    fn writer(&mut self) -> &mut dyn std::fmt::Write {
        &mut self.w
    }
}
