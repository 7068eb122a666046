//! Running executed actions: each on a thread of its own (so a slow restart never delays the
//! loop), and recording each outcome (`action_outcome`) when it ends, before the gate forgets
//! it as in flight. An outcome that cannot be recorded yet waits and is tried again.

use super::journal::Journal;
use crate::actions::{self, ActionRequest, ExecContext, Outcome, Status};
use crate::audit::record::{self, ActionRef, PlaybookRef, Record};
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::telemetry::ids;
use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::Duration;

/// An action that ended on its thread, waiting to be recorded.
pub(super) struct Finished {
    seq: u64,
    playbook: PlaybookRef,
    req: ActionRequest,
    outcome: Outcome,
}

pub(super) struct Runner {
    pub exec: ExecContext,
    done_tx: mpsc::Sender<Finished>,
    done_rx: mpsc::Receiver<Finished>,
    /// Finished actions whose outcome could not be recorded yet.
    unrecorded: Vec<Finished>,
    /// seq of executed decisions still running.
    pub running: BTreeSet<u64>,
}

impl Runner {
    pub fn new(exec: ExecContext) -> Self {
        let (done_tx, done_rx) = mpsc::channel();
        Self { exec, done_tx, done_rx, unrecorded: Vec::new(), running: BTreeSet::new() }
    }

    /// Starts an executed (and recorded) action on its own thread.
    pub fn launch(&mut self, seq: u64, playbook: PlaybookRef, req: ActionRequest, command: Option<crate::config::CommandRule>) {
        let mut cx = self.exec.clone();
        cx.command = command;
        let tx = self.done_tx.clone();
        self.running.insert(seq);
        let spawned = std::thread::Builder::new().name(format!("action-{seq}")).spawn(move || {
            let outcome = actions::execute(&req, &cx);
            let _ = tx.send(Finished { seq, playbook, req, outcome });
        });
        if let Err(e) = spawned {
            tracing::error!(message = "Could not start an action thread.", seq, error = %e);
        }
    }

    /// Records the outcomes of actions that ended.
    pub fn record_finished(&mut self, journal: &mut Journal, gate: &mut Gate, metrics: &Metrics) {
        while let Ok(f) = self.done_rx.try_recv() {
            self.unrecorded.push(f);
        }
        while let Some(f) = self.unrecorded.first() {
            let rec = Record::ActionOutcome(record::ActionOutcome {
                ref_seq: f.seq,
                playbook: f.playbook.clone(),
                action: ActionRef { kind: f.req.kind, target: f.req.target.clone() },
                outcome: (&f.outcome).into(),
            });
            if journal.record(&rec, crate::audit::now_ms()).is_err() {
                return;
            }
            let f = self.unrecorded.remove(0);
            metrics.action_ended(f.req.kind.as_str(), f.outcome.status.as_str(), f.outcome.duration_ms as f64 / 1000.0);
            let playbook = f.playbook.name.as_str();
            if f.outcome.status == Status::Ok {
                tracing::info!(message = "Action ended.", message_id = ids::ACTION_SUCCEEDED, seq = f.seq, playbook, action = %f.req.kind, action_target = %f.req.target, status = ?f.outcome.status);
            } else {
                tracing::warn!(message = "Action failed.", message_id = ids::ACTION_FAILED, seq = f.seq, playbook, action = %f.req.kind, action_target = %f.req.target, status = ?f.outcome.status, error_code = f.outcome.error_code.unwrap_or(""), error = f.outcome.error.as_deref().unwrap_or(""));
            }
            self.running.remove(&f.seq);
            gate.finished(f.req.kind, &f.req.target);
        }
    }

    /// Waits up to `max` for running actions to end, recording their outcomes.
    pub fn wait(&mut self, max: Duration, journal: &mut Journal, gate: &mut Gate, metrics: &Metrics) {
        let deadline =
            std::time::Instant::now().checked_add(max).unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(86_400));
        while !self.running.is_empty() && std::time::Instant::now() < deadline {
            if let Ok(f) = self.done_rx.recv_timeout(Duration::from_millis(50)) {
                self.unrecorded.push(f);
            }
            self.record_finished(journal, gate, metrics);
        }
    }
}
