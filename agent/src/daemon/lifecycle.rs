//! Start and stop. Start: open and lock the audit log and rebuild the gate's ledgers from it,
//! record the start (with how the previous run ended) and an `unknown` outcome for each action
//! the previous run did not see end, load the persisted mode, take a first sample, load the
//! playbooks. Stop: let running actions end and record them, write out coalesced decisions,
//! then `agent_stopped`.

use super::journal::Journal;
use super::runner::Runner;
use super::tick::Sensing;
use super::{repeats, Agent};
use crate::actions::{ExecContext, Status};
use crate::audit::record::{self, Record, Stored};
use crate::audit::{AuditError, AuditLog};
use crate::config::Config;
use crate::control::mode::ModeState;
use crate::decide::{Backoff, Decider};
use crate::gate::Gate;
use crate::playbooks::{self, Runtime};
use crate::signals::history::History;
use crate::signals::{Roots, Sampler};
use crate::telemetry::ids;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How the previous run ended, read from the log at start: it ended cleanly when the log's last
/// record is its `agent_stopped` (nothing is written after it); anything else (kill -9, a
/// watchdog abort, a crash, power loss) leaves its last record something else.
#[derive(Debug, Default)]
struct PreviousRun {
    /// Whether a record was seen, and whether the last one was an `agent_stopped`.
    last: Option<bool>,
    last_seq: u64,
    /// seq of the last `agent_started` not followed by an `agent_stopped`.
    started_seq: Option<u64>,
}

impl PreviousRun {
    fn observe(&mut self, rec: &Stored) {
        let stopped = matches!(rec.record, Ok(Record::AgentStopped(_)));
        match rec.record {
            Ok(Record::AgentStarted(_)) => self.started_seq = Some(rec.seq),
            Ok(Record::AgentStopped(_)) => self.started_seq = None,
            _ => {}
        }
        self.last = Some(stopped);
        self.last_seq = rec.seq;
    }

    /// The `previous_run` field of `agent_started`.
    fn summary(&self) -> record::PreviousRun {
        match self.last {
            None => record::PreviousRun::None,
            Some(true) => record::PreviousRun::Clean { last_seq: self.last_seq },
            Some(false) => record::PreviousRun::Unclean { last_seq: self.last_seq, started_seq: self.started_seq },
        }
    }
}

impl Agent {
    /// Opens the audit log, rebuilds the gate from it, records the start and any action whose
    /// end the previous run did not record, loads the mode and the playbooks, and takes a first
    /// sample so that rates are known from the first tick.
    pub fn start(cfg: &Config, playbooks_dir: Option<PathBuf>, state_dir: PathBuf) -> anyhow::Result<Self> {
        let node = cfg.node_name();
        // One pass over the suffix of the log that covers the gate's windows (streamed, and its
        // chain verified): the gate's ledgers; open breakers and executed actions without an
        // outcome come from the audit module, which carries them across segments in checkpoints.
        let mut gate = Gate::new(cfg.policy.clone()).with_maintenance(cfg.maintenance_windows());
        let mut audit_cfg = cfg.audit.clone();
        audit_cfg.replicated = cfg.mqtt.enabled;
        audit_cfg.group = cfg.control.group.as_deref().and_then(crate::control::group_id);
        let mut previous = PreviousRun::default();
        let (mut audit, torn) = AuditLog::open_with(&state_dir, &node, &audit_cfg, &mut |rec| {
            gate.replay(rec);
            previous.observe(rec);
        })?;
        if let Some(t) = torn {
            tracing::warn!(message = "Torn audit record set aside.", bytes = t.bytes, saved_as = %t.saved_as.display());
        }
        for rec in audit.breaker_records() {
            gate.replay(&rec);
        }
        let pending = audit.pending();
        let (mode, mode_problem) = match ModeState::load(&state_dir) {
            Ok(Some(m)) => (m, None),
            Ok(None) => (ModeState::fresh(), None),
            Err(e) => {
                tracing::error!(message = "Persisted mode unreadable; staying in dry-run.", error = %e);
                let mut m = ModeState::fresh();
                m.reason = format!("persisted mode unreadable ({e}); dry-run until an operator sets it");
                (m, Some(e))
            }
        };
        let roots = Roots { proc: cfg.signals.proc_root.clone(), sys: cfg.signals.sys_root.clone() };
        let ebpf = crate::signals::ebpf::EbpfSignals::start(&cfg.signals.ebpf);
        let sensors = super::sensors::AgentSensors::new(cfg);
        let mut sampler = Sampler::with_socket_scan_every(roots, cfg.signals.socket_scan_every)
            .with_ebpf(ebpf)
            .with_board(sensors.board())
            .with_files(cfg.files.clone());
        let files_declared = sampler.files_declared();
        let interval_ms = cfg.signals.interval_ms();
        let mut history = History::new(cfg.signals.history_ms(), interval_ms, cfg.signals.max_series);
        let first = sampler.sample(crate::audit::now_ms());
        history.push(&first);
        let recorder = cfg.recorder.enabled.then(|| {
            let dir = cfg.recorder.dir_in(&state_dir);
            match crate::recorder::Recorder::open(&dir, &cfg.recorder) {
                Ok(r) => {
                    tracing::info!(message = "Recording signals.", dir = %dir.display(), max_bytes = cfg.recorder.max_bytes, max_age_secs = cfg.recorder.max_age_secs);
                    Some(r)
                }
                Err(e) => {
                    tracing::warn!(message = "Flight recorder off: its directory cannot be used.", error_code = e.code(), error = %e);
                    None
                }
            }
        });
        for (family, why) in &first.unavailable {
            tracing::warn!(message = "Signal unavailable.", family = %family, reason = %why);
        }
        let previous_run = previous.summary();
        if matches!(previous_run, record::PreviousRun::Unclean { .. }) {
            tracing::warn!(
                message = "The previous run ended uncleanly (no agent_stopped after its last record).",
                message_id = ids::PREVIOUS_RUN_UNCLEAN,
                last_seq = previous.last_seq,
                started_seq = previous.started_seq,
            );
        }
        audit.append(&Record::AgentStarted(record::AgentStarted {
            version: env!("CARGO_PKG_VERSION").to_string(),
            previous_run: Some(previous_run),
            mode: Some(mode.mode),
            mode_state: Some(mode.clone()),
            pid: std::process::id(),
            playbooks_dir: playbooks_dir.as_ref().map_or("bundled".to_string(), |p| p.display().to_string()),
            unavailable: first.unavailable.clone(),
            history_bound_bytes: history.bound_bytes() as u64,
            history: json!(history.status()),
        }))?;
        if let Some(error) = mode_problem {
            audit.append(&Record::ModeUnknown { error, mode: crate::gate::Mode::DryRun })?;
        }
        for (seq, playbook, action) in pending {
            tracing::warn!(message = "Action outcome unknown: the agent stopped while it ran.", seq);
            let outcome = record::OutcomeRecord {
                status: Status::Unknown,
                duration_ms: None,
                error_code: Some("agent_restarted".into()),
                error: Some("the agent stopped before this action's end was recorded".into()),
                verified: false,
                detail: None,
            };
            audit.append(&Record::ActionOutcome(record::ActionOutcome { ref_seq: seq, playbook, action, outcome }))?;
        }
        let metrics = {
            use crate::metrics::collect;
            let ebpf = sampler.ebpf();
            let programs = ebpf.map(|e| e.programs.clone()).unwrap_or_default();
            let m = crate::metrics::Metrics::new()
                .with_collector(Box::new(collect::Process::new("/proc")))
                .with_collector(Box::new(collect::Bpf::new(programs, cfg.metrics.bpf_stats)));
            m.ebpf_families(&ebpf.map(|e| e.loaded()).unwrap_or_default());
            audit.time_appends(m.audit_fsync_seconds.clone());
            Arc::new(m)
        };
        let rt = Arc::new(Runtime::new(cfg.playbooks.limits).with_history(playbooks::HistoryReach::of(&cfg.signals)));
        let backoff = Backoff { first_ms: cfg.playbooks.disable_ms(), max_ms: cfg.playbooks.max_disable_ms() };
        let mut agent = Self {
            journal: Journal::new(audit, repeats::Repeats::new(cfg.audit.repeat_window_secs)),
            node,
            decider: Decider::new(rt, gate, backoff),
            runner: Runner::new(ExecContext::from_config(cfg)),
            history_status: json!(history.status()),
            sense: Some(Sensing { sampler, history: Arc::new(history), recorder: recorder.flatten(), recorder_warned_ms: 0 }),
            evaluating: None,
            overruns: 0,
            playbooks_dir,
            local_playbooks_dir: cfg.local_playbooks_dir.clone(),
            files_declared,
            state_dir,
            mode,
            force_next: crate::signals::wake::Wake::NONE,
            fast: (cfg.signals.fast_interval_ms, cfg.signals.fast_step_pct),
            replication: None,
            verifier: Default::default(),
            groups: cfg.mqtt.groups.clone(),
            prefix: cfg.mqtt.prefix.clone(),
            rejections: BTreeMap::new(),
            unavailable: first.unavailable.clone(),
            metrics,
            sensors,
        };
        agent.expire_mode(crate::audit::now_ms())?;
        agent.reload()?;
        agent.publish_metrics();
        Ok(agent)
    }

    /// Lets running actions end (recording them, for at most `actions.timeout_secs` + 5 s),
    /// writes out coalesced decisions, then records the stop. An evaluation still running is
    /// abandoned (its requests are never gated) and named in the record.
    pub fn stop(mut self, reason: &str) -> Result<(), AuditError> {
        let max = self.runner.exec.timeout.saturating_add(Duration::from_secs(5));
        self.runner.wait(max, &mut self.journal, self.decider.gate_mut(), &self.metrics);
        let still = self.runner.running.len();
        self.flush_rejections(i64::MAX); // counted rejections of the last minute, summarised
        let now = crate::audit::now_ms();
        for t in self.journal.repeats.ended(i64::MAX) {
            if let Err(e) = self.journal.close_repeat(&t, now) {
                tracing::error!(message = "Repeated decisions not recorded at stop.", error_code = e.code(), error = %e);
                break;
            }
        }
        self.sensors.stop();
        let abandoned = self.evaluating.take().map(|r| r.playbooks);
        if let Some(r) = self.sense.as_mut().and_then(|s| s.recorder.as_mut()) {
            if let Err(e) = r.close() {
                tracing::warn!(message = "Flight recorder not closed cleanly.", error_code = e.code(), error = %e);
            }
        }
        let rec = Record::AgentStopped(record::AgentStopped {
            reason: reason.to_string(),
            actions_still_running: still as u64,
            evaluation_abandoned: abandoned,
        });
        self.journal.record(&rec, now)?;
        Ok(())
    }

    /// Waits up to `max` for running actions to end, recording their outcomes.
    pub fn wait_actions(&mut self, max: Duration) {
        self.runner.wait(max, &mut self.journal, self.decider.gate_mut(), &self.metrics);
    }
}
