//! `[alerts]`: the sinks an operator configures (`[[alerts.alertmanager]]`, `[[alerts.webhook]]`),
//! what each delivers, and the bounds `medic validate` holds them to ([`AlertsConfig::validate`]).

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Most sinks of both kinds together.
pub const MAX_SINKS: usize = 8;
/// Most extra headers per sink.
pub const MAX_HEADERS: usize = 16;
/// Most records a webhook POST carries.
pub const MAX_BATCH: usize = 500;
/// 30 days: the longest `max_age_secs`.
pub const MAX_AGE_SECS: u64 = 30 * 86_400;

/// What a sink delivers (config `deliver`, docs/AUDIT.md "Notifications").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// `notify` requests the gate let through (`executed`, or `would_execute`).
    Notify,
    /// Other actions decided `executed` or `would_execute`.
    Action,
    /// How executed actions ended (`action_outcome`).
    Outcome,
    /// A breaker opened (`escalated`), and its reset.
    Escalation,
    /// The audit log unwritable (from memory) and writable again (`audit_recovered`).
    Audit,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notify => "notify",
            Self::Action => "action",
            Self::Outcome => "outcome",
            Self::Escalation => "escalation",
            Self::Audit => "audit",
        }
    }
}

/// `[alerts]`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    pub alertmanager: Vec<SinkConfig>,
    pub webhook: Vec<SinkConfig>,
}

/// One sink (`[[alerts.alertmanager]]` or `[[alerts.webhook]]`); the keys that apply to one
/// kind only say so.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkConfig {
    /// Names the cursor file (`<state_dir>/alerts/<name>.cursor`) and the metrics' `sink` label.
    /// Default: `alertmanager`, `webhook` (with `-2`, `-3`... for the next ones).
    pub name: Option<String>,
    /// Alertmanager's base URL (`http://127.0.0.1:9093`; alerts go to `<url>/api/v2/alerts`),
    /// or the webhook's URL.
    pub url: String,
    /// What it delivers. Default: Alertmanager `notify`, `escalation`, `audit`; webhook all.
    pub deliver: Option<Vec<Class>>,
    /// One POST, from connect to the answer's head.
    pub timeout_secs: u64,
    /// Failed POSTs are retried after 1 s, doubling up to this.
    pub max_backoff_secs: u64,
    /// A record older than this when its turn comes is not delivered (counted, logged): the
    /// bound on what a long outage leaves to send.
    pub max_age_secs: u64,
    /// A file whose content (trimmed) is sent as `Authorization: Bearer <token>`.
    pub bearer_token_file: Option<PathBuf>,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// CA certificates (PEM) for an https URL. Default: the system's.
    pub ca_file: Option<PathBuf>,
    /// Webhook: most records per POST.
    pub batch: usize,
    /// Alertmanager: how often firing alerts are posted again (each with `endsAt` 3 of these
    /// ahead, so Alertmanager resolves them itself if medic stops).
    pub repost_secs: u64,
    /// Alertmanager: a notification resolves when its playbook has not asked for it for this
    /// long. 0: automatic, 2 × the playbook's interval, plus `audit.repeat_window_secs` when its
    /// cooldown or rate limit can suppress (and so coalesce) its requests.
    pub resolve_after_secs: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            name: None,
            url: String::new(),
            deliver: None,
            timeout_secs: 5,
            max_backoff_secs: 60,
            max_age_secs: 86_400,
            bearer_token_file: None,
            headers: BTreeMap::new(),
            ca_file: None,
            batch: 50,
            repost_secs: 60,
            resolve_after_secs: 0,
        }
    }
}

/// Which kind of sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Alertmanager,
    Webhook,
}

impl SinkKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alertmanager => "alertmanager",
            Self::Webhook => "webhook",
        }
    }
}

impl AlertsConfig {
    /// Every sink with its kind and resolved name, in the file's order.
    pub fn sinks(&self) -> Vec<(SinkKind, String, &SinkConfig)> {
        let mut out = Vec::new();
        for (kind, list) in [(SinkKind::Alertmanager, &self.alertmanager), (SinkKind::Webhook, &self.webhook)] {
            for (i, s) in list.iter().enumerate() {
                let name =
                    s.name.clone().unwrap_or_else(
                        || {
                            if i == 0 {
                                kind.as_str().to_string()
                            } else {
                                format!("{}-{}", kind.as_str(), i + 1)
                            }
                        },
                    );
                out.push((kind, name, s));
            }
        }
        out
    }

    /// Holds the sinks to their bounds: `Err((key, reason))`, the key as written.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let sinks = self.sinks();
        if sinks.len() > MAX_SINKS {
            return Err(("alerts.webhook", format!("alerts: {} sinks; at most {MAX_SINKS}", sinks.len())));
        }
        // A sink's name names its cursor: with two of a kind, a name by position would hand a
        // cursor to another sink when the file's order changes.
        for (list, key, kind) in [(&self.alertmanager, "alerts.alertmanager", "alertmanager"), (&self.webhook, "alerts.webhook", "webhook")]
        {
            if list.len() > 1 && list.iter().any(|s| s.name.is_none()) {
                return Err((key, format!("alerts.{kind}: {} sinks of this kind: give each a `name` (it names its cursor)", list.len())));
            }
        }
        let mut names = std::collections::BTreeSet::new();
        for (kind, name, s) in &sinks {
            let key = |k: &'static str| -> &'static str {
                match (kind, k) {
                    (SinkKind::Alertmanager, "name") => "alerts.alertmanager.name",
                    (SinkKind::Alertmanager, "url") => "alerts.alertmanager.url",
                    (SinkKind::Alertmanager, "headers") => "alerts.alertmanager.headers",
                    (SinkKind::Alertmanager, _) => "alerts.alertmanager",
                    (SinkKind::Webhook, "name") => "alerts.webhook.name",
                    (SinkKind::Webhook, "url") => "alerts.webhook.url",
                    (SinkKind::Webhook, "headers") => "alerts.webhook.headers",
                    (SinkKind::Webhook, _) => "alerts.webhook",
                }
            };
            let at = format!("alerts.{}[{name}]", kind.as_str());
            if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                return Err((key("name"), format!("{at}.name: {name:?} must be 1-64 letters, digits, '-' or '_'")));
            }
            if !names.insert(name.clone()) {
                return Err((key("name"), format!("{at}.name: {name:?} names two sinks (it names the cursor file)")));
            }
            if s.url.len() > 2048 {
                return Err((key("url"), format!("{at}.url: longer than 2048 bytes")));
            }
            // Parsed without the TLS roots: they are read at start.
            let uri: Result<hyper::Uri, _> = s.url.parse();
            let ok =
                uri.as_ref().is_ok_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some_and(|h| !h.is_empty()));
            if !ok {
                return Err((key("url"), format!("{at}.url: {:?} must be an http:// or https:// URL with a host", s.url)));
            }
            let range = |k: &str, v: u64, min: u64, max: u64| -> Result<(), (&'static str, String)> {
                if v < min || v > max {
                    return Err((key(""), format!("{at}.{k}: {v} is out of range: must be {min}..={max}")));
                }
                Ok(())
            };
            range("timeout_secs", s.timeout_secs, 1, 60)?;
            range("max_backoff_secs", s.max_backoff_secs, 1, 3_600)?;
            range("max_age_secs", s.max_age_secs, 60, MAX_AGE_SECS)?;
            range("batch", s.batch as u64, 1, MAX_BATCH as u64)?;
            range("repost_secs", s.repost_secs, 5, 3_600)?;
            range("resolve_after_secs", s.resolve_after_secs, 0, 86_400)?;
            if s.headers.len() > MAX_HEADERS {
                return Err((key("headers"), format!("{at}.headers: {} headers; at most {MAX_HEADERS}", s.headers.len())));
            }
            for (k, v) in &s.headers {
                let name_ok = hyper::header::HeaderName::from_bytes(k.as_bytes()).is_ok();
                let fixed = ["host", "content-type", "content-length", "transfer-encoding", "connection"];
                if !name_ok || fixed.contains(&k.to_ascii_lowercase().as_str()) {
                    return Err((key("headers"), format!("{at}.headers: {k:?} is not a header medic lets a config set")));
                }
                if hyper::header::HeaderValue::from_str(v).is_err() || v.len() > 1024 {
                    return Err((
                        key("headers"),
                        format!("{at}.headers.{k}: not a valid header value (visible ASCII, at most 1024 bytes)"),
                    ));
                }
            }
            for (k, p) in [("bearer_token_file", &s.bearer_token_file), ("ca_file", &s.ca_file)] {
                if p.as_ref().is_some_and(|p| !p.is_absolute()) {
                    return Err((key(""), format!("{at}.{k}: must be an absolute path")));
                }
            }
        }
        Ok(())
    }
}

impl SinkConfig {
    /// What this sink delivers, its default by kind applied.
    pub fn classes(&self, kind: SinkKind) -> Vec<Class> {
        self.deliver.clone().unwrap_or_else(|| match kind {
            SinkKind::Alertmanager => vec![Class::Notify, Class::Escalation, Class::Audit],
            SinkKind::Webhook => vec![Class::Notify, Class::Action, Class::Outcome, Class::Escalation, Class::Audit],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<(), String> {
        crate::config::Config::parse("m.toml", text).map(|_| ()).map_err(|e| e.to_string())
    }

    #[test]
    fn sinks_parse_with_defaults_and_names() {
        let cfg = crate::config::Config::parse(
            "m.toml",
            "[[alerts.alertmanager]]\nurl = \"http://127.0.0.1:9093\"\n[[alerts.webhook]]\nname = \"webhook\"\nurl = \"https://h.example/x\"\n[[alerts.webhook]]\nname = \"webhook-2\"\nurl = \"http://h/\"\ndeliver = [\"notify\"]\n",
        )
        .unwrap();
        let s = cfg.alerts.sinks();
        let names: Vec<_> = s.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(names, ["alertmanager", "webhook", "webhook-2"]);
        assert_eq!(s[0].2.classes(SinkKind::Alertmanager), [Class::Notify, Class::Escalation, Class::Audit]);
        assert_eq!(s[2].2.classes(SinkKind::Webhook), [Class::Notify]);
    }

    #[test]
    fn bad_sinks_are_named() {
        let e = parse("[[alerts.webhook]]\nurl = \"ftp://x\"\n").unwrap_err();
        assert!(e.contains("alerts.webhook[webhook].url") && e.contains("m.toml:2"), "{e}");
        let e = parse("[[alerts.webhook]]\nurl = \"http://x\"\ntimeout_secs = 0\n").unwrap_err();
        assert!(e.contains("timeout_secs"), "{e}");
        let e = parse("[[alerts.webhook]]\nurl = \"http://x\"\nheaders = { Host = \"y\" }\n").unwrap_err();
        assert!(e.contains("Host"), "{e}");
        let e = parse("[[alerts.webhook]]\nname = \"a\"\nurl = \"http://x\"\n[[alerts.webhook]]\nname = \"a\"\nurl = \"http://y\"\n")
            .unwrap_err();
        assert!(e.contains("names two sinks"), "{e}");
        // Two of a kind: each needs a name (a name by position would move with the file's order).
        let e = parse("[[alerts.webhook]]\nurl = \"http://x\"\n[[alerts.webhook]]\nname = \"b\"\nurl = \"http://y\"\n").unwrap_err();
        assert!(e.contains("give each a `name`"), "{e}");
        let e = parse("[[alerts.webhook]]\nurl = \"http://x\"\ndeliver = [\"mail\"]\n").unwrap_err();
        assert!(e.contains("mail"), "{e}");
    }
}
