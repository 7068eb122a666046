//! Cutting a `playbook test` case from a replayed stretch of a flight recording, so a real
//! incident becomes a regression test: the frames the replay played and the decisions it made go
//! in, the text of a `<playbook>.test.toml` case comes out (run by `testing`).

use crate::signals::Snapshot;
use std::collections::BTreeMap;

/// Cuts a `playbook test` case from a replayed stretch of recording, so a real incident becomes
/// a regression test: the values of the keys the playbook read (held until changed, as a case's
/// timeline is), the process list, mounts and retransmitting peers when its source reads them
/// (and only when they change), and what it asked and the gate decided, as the expectation.
/// Times are relative to the first frame, rounded to `step_ms`.
pub struct CaseCutter {
    keys: std::collections::BTreeSet<String>,
    step_ms: i64,
    start_ms: Option<i64>,
    reads: (bool, bool, bool),
    last: Snapshot,
    timeline: Vec<toml::Table>,
    expect: BTreeMap<(String, String, String), usize>,
    /// Whether the playbook asked anything (else the case expects no request at all).
    asked: bool,
    end_ms: i64,
}

impl CaseCutter {
    /// For the playbook whose `source` read `keys` over the replay, at the recording's `step_ms`.
    pub fn new(source: &str, keys: std::collections::BTreeSet<String>, step_ms: i64) -> Self {
        let reads = (
            [".processes(", ".process(", ".units(", ".unit("].iter().any(|m| source.contains(m)),
            source.contains(".mounts("),
            source.contains(".tcp_peers("),
        );
        Self {
            keys,
            step_ms: step_ms.max(1),
            start_ms: None,
            reads,
            last: Snapshot::default(),
            timeline: Vec::new(),
            expect: BTreeMap::new(),
            asked: false,
            end_ms: 0,
        }
    }

    /// Adds one frame and the decisions the replay made on it ((kind, target, decision)).
    pub fn frame(&mut self, snap: &Snapshot, decisions: impl IntoIterator<Item = (String, String, String)>) {
        let start = *self.start_ms.get_or_insert(snap.ts_ms);
        let rel = ((snap.ts_ms - start) as f64 / self.step_ms as f64).round() as i64 * self.step_ms;
        self.end_ms = rel;
        let mut step = toml::Table::new();
        let mut metrics = toml::Table::new();
        let mut unset = Vec::new();
        for k in &self.keys {
            match (snap.metrics.get(k), self.last.metrics.get(k)) {
                (Some(v), old) if old != Some(v) && v.is_finite() => {
                    metrics.insert(k.clone(), toml::Value::Float(*v));
                }
                (None, Some(_)) => unset.push(toml::Value::String(k.clone())),
                _ => {}
            }
        }
        let first = self.timeline.is_empty();
        if self.reads.0 && (first || snap.processes != self.last.processes) {
            if let Some(v) = to_toml(&snap.processes) {
                step.insert("processes".into(), v);
            }
        }
        if self.reads.1 && (first || snap.mounts != self.last.mounts) {
            if let Some(v) = to_toml(&snap.mounts) {
                step.insert("mounts".into(), v);
            }
        }
        if self.reads.2 && (first || snap.tcp_peers != self.last.tcp_peers) {
            if let Some(v) = to_toml(&snap.tcp_peers) {
                step.insert("tcp_peers".into(), v);
            }
        }
        if !metrics.is_empty() {
            step.insert("metrics".into(), toml::Value::Table(metrics));
        }
        if !unset.is_empty() {
            step.insert("unset".into(), toml::Value::Array(unset));
        }
        if !step.is_empty() || first {
            step.insert("at".into(), toml::Value::String(format!("{rel}ms")));
            self.timeline.push(step);
        }
        // Refusals (`suppressed`, `denied`) are not expected one by one: which tick a cooldown
        // ends in depends on the recording's tick jitter, which the case's regular step does
        // not have. What would have been done is expected exactly.
        for (kind, target, decision) in decisions {
            self.asked = true;
            if matches!(decision.as_str(), "would_execute" | "executed" | "escalated") {
                *self.expect.entry((kind, target, decision)).or_default() += 1;
            }
        }
        for k in &self.keys {
            match snap.metrics.get(k) {
                Some(v) => self.last.metrics.insert(k.clone(), *v),
                None => self.last.metrics.remove(k),
            };
        }
        if self.reads.0 {
            self.last.processes = snap.processes.clone();
        }
        if self.reads.1 {
            self.last.mounts = snap.mounts.clone();
        }
        if self.reads.2 {
            self.last.tcp_peers = snap.tcp_peers.clone();
        }
    }

    /// The case file's text: one case named `name`.
    pub fn finish(self, name: &str) -> Result<String, String> {
        let mut case = toml::Table::new();
        case.insert("name".into(), name.into());
        case.insert("duration".into(), format!("{}ms", self.end_ms).into());
        case.insert("step".into(), format!("{}ms", self.step_ms).into());
        // The recording's own clock, so maintenance windows and active hours fall where they did.
        if let Some(start) = self.start_ms {
            case.insert("start".into(), crate::audit::now_rfc3339(start).into());
        }
        if !self.asked {
            case.insert("expect_none".into(), true.into());
        } else if self.expect.is_empty() {
            return Err("the playbook asked only for refused actions in this stretch: there is nothing to expect exactly; cut a stretch where it acts, or write the case by hand".into());
        } else {
            let expect: Vec<toml::Value> = self
                .expect
                .into_iter()
                .map(|((kind, target, decision), n)| {
                    let mut e = toml::Table::new();
                    e.insert("kind".into(), kind.into());
                    e.insert("target".into(), target.into());
                    e.insert("decision".into(), decision.into());
                    e.insert("min".into(), (n as i64).into());
                    e.insert("max".into(), (n as i64).into());
                    toml::Value::Table(e)
                })
                .collect();
            case.insert("expect".into(), toml::Value::Array(expect));
        }
        case.insert("timeline".into(), toml::Value::Array(self.timeline.into_iter().map(toml::Value::Table).collect()));
        let mut file = toml::Table::new();
        file.insert("case".into(), toml::Value::Array(vec![toml::Value::Table(case)]));
        toml::to_string(&file).map_err(|e| format!("the case cannot be written as TOML: {e}"))
    }
}

/// `v` as a TOML value: TOML has no null, so absent fields (`None`) are left out, as a case
/// file leaves them out.
fn to_toml<T: serde::Serialize>(v: &T) -> Option<toml::Value> {
    fn strip(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                serde_json::Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip(v))).collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.into_iter().map(strip).collect()),
            other => other,
        }
    }
    toml::Value::try_from(strip(serde_json::to_value(v).ok()?)).ok()
}
