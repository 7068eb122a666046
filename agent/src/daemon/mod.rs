//! The core loop: every tick, sense → push to history → evaluate the due playbooks → gate each
//! request → record each decision (fsync'd) before moving on. Also start-up (open the audit
//! log, load playbooks), reload (SIGHUP: a broken file is rejected and its last good version
//! stays), and an orderly stop (the last record is `agent_stopped`).

use crate::audit::{AuditError, AuditLog};
use crate::config::Config;
use crate::gate::{Gate, Mode};
use crate::playbooks::{self, api::State, Playbook, Runtime};
use crate::signals::history::History;
use crate::signals::{Roots, Sampler, Snapshot};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// One loaded playbook and its run-time state.
struct Slot {
    pb: Playbook,
    state: State,
    last_eval_ms: Option<i64>,
    disabled_until: Option<i64>,
    failures: u32,
}

/// What one tick decided, for `--once` output and tests.
#[derive(Debug, Default, Clone)]
pub struct TickReport {
    pub evaluated: Vec<String>,
    /// (playbook, action kind, target, decision, rule)
    pub decisions: Vec<(String, String, String, String, String)>,
    /// (playbook, error)
    pub disabled: Vec<(String, String)>,
}

/// The running agent.
pub struct Agent {
    pub node: String,
    rt: Runtime,
    /// Keyed by file, so a reload replaces each file's playbook in place.
    slots: BTreeMap<String, Slot>,
    gate: Gate,
    audit: AuditLog,
    sampler: Sampler,
    history: Arc<History>,
    playbooks_dir: Option<PathBuf>,
    disable_ms: i64,
    max_disable_ms: i64,
    mode: Mode,
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn pb_ref(pb: &Playbook) -> Value {
    json!({ "name": pb.meta.name, "sha256": pb.sha256 })
}

impl Agent {
    /// Opens the audit log, records the start, loads the playbooks (recording each), and takes
    /// a first sample so that rates are known from the first tick.
    pub fn start(cfg: &Config, playbooks_dir: Option<PathBuf>, state_dir: PathBuf) -> anyhow::Result<Self> {
        let node = cfg.node_name();
        let (mut audit, torn) = AuditLog::open(&state_dir, &node)?;
        if let Some(t) = torn {
            tracing::warn!(message = "Torn audit record set aside.", bytes = t.bytes, saved_as = %t.saved_as.display());
        }
        let roots = Roots { proc: cfg.signals.proc_root.clone(), sys: cfg.signals.sys_root.clone() };
        let mut sampler = Sampler::with_socket_scan_every(roots, cfg.signals.socket_scan_every);
        let interval_ms = cfg.signals.interval_secs as i64 * 1000;
        let mut history = History::new(cfg.signals.history_secs as i64 * 1000, interval_ms, cfg.signals.max_series);
        let first = sampler.sample(crate::audit::now_ms());
        history.push(&first);
        for (family, why) in &first.unavailable {
            tracing::warn!(message = "Signal unavailable.", family = %family, reason = %why);
        }
        audit.append(
            "agent_started",
            obj(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "mode": Mode::DryRun.as_str(),
                "pid": std::process::id(),
                "playbooks_dir": playbooks_dir.as_ref().map_or("bundled".to_string(), |p| p.display().to_string()),
                "unavailable": first.unavailable,
                "history_bound_bytes": history.bound_bytes(),
            })),
        )?;
        let mut agent = Self {
            node,
            rt: Runtime::new(cfg.playbooks.limits),
            slots: BTreeMap::new(),
            gate: Gate::new(),
            audit,
            sampler,
            history: Arc::new(history),
            playbooks_dir,
            disable_ms: cfg.playbooks.disable_secs as i64 * 1000,
            max_disable_ms: cfg.playbooks.max_disable_secs as i64 * 1000,
            mode: Mode::DryRun,
        };
        agent.reload()?;
        Ok(agent)
    }

    pub fn audit_path(&self) -> PathBuf {
        self.audit.path().to_path_buf()
    }

    pub fn playbook_names(&self) -> Vec<String> {
        self.slots.values().map(|s| s.pb.meta.name.clone()).collect()
    }

    /// (Re)loads the playbooks directory. A file that fails keeps its last good version (if
    /// any) and is recorded as rejected; a file that disappeared is unloaded.
    pub fn reload(&mut self) -> Result<(), AuditError> {
        let loaded = match playbooks::load(&self.rt, self.playbooks_dir.as_deref()) {
            Ok(l) => l,
            Err(e) => {
                let dir = self.playbooks_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default();
                tracing::error!(message = "Playbooks directory unreadable; keeping the loaded set.", dir = %dir, error = %e);
                self.audit
                    .append("playbook_rejected", obj(json!({ "file": dir, "error": e.to_string(), "kept": self.playbook_names() })))?;
                return Ok(());
            }
        };
        let mut seen = Vec::new();
        for res in loaded {
            match res {
                Ok(pb) => {
                    seen.push(pb.file.clone());
                    if self.slots.get(&pb.file).is_some_and(|s| s.pb.sha256 == pb.sha256) {
                        continue;
                    }
                    tracing::info!(message = "Playbook loaded.", playbook = %pb.meta.name, file = %pb.file);
                    self.audit.append("playbook_loaded", obj(json!({ "playbook": pb_ref(&pb), "file": pb.file, "meta": pb.meta })))?;
                    self.slots.insert(
                        pb.file.clone(),
                        Slot { pb, state: State::default(), last_eval_ms: None, disabled_until: None, failures: 0 },
                    );
                }
                Err(e) => {
                    seen.push(e.file.clone());
                    let kept = self.slots.get(&e.file).map(|s| pb_ref(&s.pb));
                    tracing::error!(message = "Playbook rejected.", error = %e, kept_previous = kept.is_some());
                    self.audit.append("playbook_rejected", obj(json!({ "file": e.file, "error": e.to_string(), "kept": kept })))?;
                }
            }
        }
        let gone: Vec<String> = self.slots.keys().filter(|k| !seen.contains(k)).cloned().collect();
        for file in gone {
            if let Some(s) = self.slots.remove(&file) {
                self.audit.append("playbook_unloaded", obj(json!({ "playbook": pb_ref(&s.pb), "file": file })))?;
            }
        }
        Ok(())
    }

    /// One tick at `now_ms`: sample, then evaluate what is due.
    pub fn tick(&mut self, now_ms: i64) -> Result<TickReport, AuditError> {
        let snap = self.sampler.sample(now_ms);
        self.tick_with(snap)
    }

    /// One tick on a given snapshot (the sampler's, or a test's).
    pub fn tick_with(&mut self, snap: Snapshot) -> Result<TickReport, AuditError> {
        let now = snap.ts_ms;
        Arc::make_mut(&mut self.history).push(&snap);
        let snap = Arc::new(snap);
        let mut report = TickReport::default();
        for slot in self.slots.values_mut() {
            let name = slot.pb.meta.name.clone();
            if let Some(until) = slot.disabled_until {
                if now < until {
                    continue;
                }
                slot.disabled_until = None;
                self.audit.append_at("playbook_enabled", obj(json!({ "playbook": pb_ref(&slot.pb) })), now)?;
            }
            if slot.last_eval_ms.is_some_and(|t| now - t < slot.pb.meta.interval_ms) {
                continue;
            }
            slot.last_eval_ms = Some(now);
            report.evaluated.push(name.clone());
            match self.rt.evaluate(&slot.pb, snap.clone(), self.history.clone(), &slot.state) {
                Ok(requests) => {
                    slot.failures = 0;
                    for req in requests {
                        let v = self.gate.decide(&slot.pb.meta, &req, self.mode, now);
                        let body = json!({
                            "playbook": pb_ref(&slot.pb),
                            "trigger": { "signals": req.signals, "reason": req.reason },
                            "action": { "kind": req.kind, "target": req.target, "params": req.params },
                            "mode": self.mode.as_str(),
                            "decision": v.decision.as_str(),
                            "rule": v.rule,
                            "detail": v.detail,
                            "outcome": Value::Null,
                        });
                        self.audit.append_at("action", obj(body), now)?;
                        tracing::info!(message = "Decision.", playbook = %name, action = %req.kind, target = %req.target, decision = v.decision.as_str(), rule = v.rule);
                        report.decisions.push((name.clone(), req.kind.to_string(), req.target, v.decision.as_str().into(), v.rule.into()));
                    }
                }
                Err(e) => {
                    slot.failures += 1;
                    let backoff = self.disable_ms.saturating_mul(1 << (slot.failures - 1).min(16)).min(self.max_disable_ms);
                    slot.disabled_until = Some(now + backoff);
                    tracing::warn!(message = "Playbook disabled.", playbook = %name, error_code = e.code, error = %e.message, for_secs = backoff / 1000);
                    self.audit.append_at(
                        "playbook_disabled",
                        obj(json!({
                            "playbook": pb_ref(&slot.pb),
                            "error_code": e.code,
                            "error": e.message,
                            "until": crate::audit::now_rfc3339(now + backoff),
                            "failures": slot.failures,
                        })),
                        now,
                    )?;
                    report.disabled.push((name, e.to_string()));
                }
            }
        }
        Ok(report)
    }

    /// Records the stop; the last record of an orderly run.
    pub fn stop(mut self, reason: &str) -> Result<(), AuditError> {
        self.audit.append("agent_stopped", obj(json!({ "reason": reason })))?;
        Ok(())
    }
}

/// Runs the agent until SIGTERM/SIGINT; SIGHUP reloads the playbooks.
pub async fn run(mut agent: Agent, interval_secs: u64) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(interval_secs));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let reason = loop {
        tokio::select! {
            _ = ticker.tick() => {
                if let Err(e) = agent.tick(crate::audit::now_ms()) {
                    // Fail closed: nothing counts as decided until it is recorded.
                    tracing::error!(message = "Audit log not writable; no decisions this tick.", error_code = e.code(), error = %e);
                }
            }
            _ = hup.recv() => {
                tracing::info!(message = "Reloading playbooks (SIGHUP).");
                if let Err(e) = agent.reload() {
                    tracing::error!(message = "Reload not recorded.", error_code = e.code(), error = %e);
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    tracing::info!(message = "Stopping.", reason);
    agent.stop(reason)?;
    Ok(())
}
