//! One tick of the agent. Planned on the loop ([`Agent::begin`]: housekeeping, then the decide
//! step's plan), sampled and evaluated on the `medic-eval` worker ([`EvalJob::run`]), settled back
//! on the loop ([`Agent::finish`]: the decide step gates each request with the mode current then;
//! the events of one settle are recorded as one batch, fsync'd once, before any counts, and only
//! then is an executed action started). `--once` and tests run the three inline ([`Agent::tick`]).

use super::journal::Journal;
use super::{repeats, Agent};
use crate::actions::{self, ActionRequest};
use crate::audit::record::{self, PlaybookRef, Record};
use crate::audit::AuditError;
use crate::decide::{self, Done, Due, Event};
use crate::gate::Decision;
use crate::metrics::Metrics;
use crate::playbooks::Runtime;
use crate::signals::history::History;
use crate::signals::wake::Wake;
use crate::signals::{Sampler, Snapshot};
use crate::telemetry::ids;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What one tick decided, for `--once` output and tests.
#[derive(Debug, Default, Clone)]
pub struct TickReport {
    pub evaluated: Vec<String>,
    /// (playbook, action kind, target, decision, rule)
    pub decisions: Vec<(String, String, String, String, String)>,
    /// (playbook, error)
    pub disabled: Vec<(String, String)>,
    /// Decisions counted into an open `decision_repeated` window instead of written.
    pub coalesced: usize,
}

/// What sensing owns: moved to the evaluation worker for a tick and back, so the loop never
/// waits on a procfs read or on the history.
pub(super) struct Sensing {
    pub sampler: Sampler,
    pub history: Arc<History>,
    /// The flight recorder (`[recorder]`), when on: every sample, as the history got it.
    pub recorder: Option<crate::recorder::Recorder>,
    pub recorder_warned_ms: i64,
}

impl Sensing {
    /// Records a sample (a failure is logged, at most once a minute: the recording is for
    /// replay, never a reason to stop sensing or deciding).
    pub fn record(&mut self, snap: &Snapshot, forced: Wake) {
        if let Some(r) = self.recorder.as_mut() {
            if let Err(e) = r.record(snap, forced) {
                let now = snap.ts_ms;
                if now.saturating_sub(self.recorder_warned_ms) >= 60_000 {
                    self.recorder_warned_ms = now;
                    tracing::warn!(message = "Flight recorder could not record a sample.", error_code = e.code(), error = %e);
                }
            }
        }
    }
}

/// One tick's sampling and evaluation, owned, to run anywhere ([`EvalJob::run`]): on the
/// daemon's worker thread, or inline for `--once` and tests.
pub struct EvalJob {
    rt: Arc<Runtime>,
    sense: Sensing,
    /// The snapshot to use (a test's); `None`: sample at `now`.
    input: Option<Snapshot>,
    pub(super) now: i64,
    /// What woke this tick early (recorded with the sample, for replay): the playbooks that
    /// read it evaluate, due or not.
    forced: Wake,
    due: Vec<Due>,
    metrics: Arc<Metrics>,
}

/// What an [`EvalJob`] gives back: sensing, and each due playbook's evaluation.
pub struct Evaluated {
    sense: Sensing,
    pub(super) now: i64,
    unavailable: BTreeMap<String, String>,
    done: Vec<Done>,
}

impl EvalJob {
    /// The names of the playbooks it evaluates.
    pub fn playbooks(&self) -> Vec<String> {
        self.due.iter().map(|d| d.pb.meta.name.clone()).collect()
    }

    /// Samples (unless given a snapshot), pushes into the history, evaluates each due playbook
    /// (`decide::evaluate`).
    pub fn run(self) -> Evaluated {
        let EvalJob { rt, mut sense, input, now, forced, due, metrics } = self;
        let t = std::time::Instant::now();
        let snap = input.unwrap_or_else(|| sense.sampler.sample_woken(now, forced));
        metrics.sampled(t.elapsed().as_secs_f64());
        for family in ["tcp", "sock"] {
            if let Some(n) = snap.metrics.get(&format!("ebpf.{family}.events_dropped")) {
                metrics.ring_drops(family, *n as u64);
            }
        }
        Arc::make_mut(&mut sense.history).push(&snap);
        sense.record(&snap, forced);
        let unavailable = snap.unavailable.clone();
        let snap = Arc::new(snap);
        let done = decide::evaluate(&rt, due, &snap, &sense.history, &mut |name, secs| metrics.evaluated(name, secs));
        Evaluated { sense, now, unavailable, done }
    }
}

/// An evaluation running on the worker, for `medic status` and overrun records.
#[derive(Debug, Clone)]
pub(super) struct Running {
    pub since_ms: i64,
    pub started: std::time::Instant,
    pub playbooks: Vec<String>,
    pub overruns: u64,
}

impl Agent {
    /// One tick at `now_ms`: sample, then evaluate what is due, all on this thread.
    pub fn tick(&mut self, now_ms: i64) -> Result<TickReport, AuditError> {
        self.tick_inline(now_ms, None)
    }

    /// One tick on a given snapshot (the sampler's, or a test's), all on this thread.
    pub fn tick_with(&mut self, snap: Snapshot) -> Result<TickReport, AuditError> {
        self.tick_inline(snap.ts_ms, Some(snap))
    }

    fn tick_inline(&mut self, now: i64, input: Option<Snapshot>) -> Result<TickReport, AuditError> {
        // No worker holds the sensing state when ticks are run inline.
        let Some((job, ready)) = self.begin(now, input) else { return Ok(TickReport::default()) };
        let report = self.finish(job.run(), now);
        ready?;
        report
    }

    /// What a tick does on the loop before evaluating, also when an evaluation still runs:
    /// record the outcomes of actions that ended, try to record an audit outage's end, expire a
    /// timed mode, write out coalesced decisions whose window ended.
    pub fn housekeeping(&mut self, now: i64) -> Result<(), AuditError> {
        // The log must still be the one this agent writes (not deleted, replaced or cut off):
        // checked before anything is recorded or decided; what is found is recorded (audit module).
        if let Err(e) = self.journal.audit.check(now) {
            self.journal.down.get_or_insert((now, e.to_string()));
            return Err(e);
        }
        self.record_finished();
        if let Some((since, error)) = self.journal.down.clone() {
            let rec = Record::AuditRecovered(record::AuditRecovered {
                since: crate::audit::now_rfc3339(since),
                error,
                running_actions: self.runner.running.len() as u64,
            });
            self.journal.audit.append_at(&rec, now)?;
            tracing::warn!(message = "Audit log writable again; acting resumes.", message_id = ids::AUDIT_RECOVERED, down_since = %crate::audit::now_rfc3339(since));
            self.journal.down = None;
            self.record_finished();
        }
        self.expire_mode(now)?;
        for t in self.journal.repeats.ended(now) {
            self.journal.close_repeat(&t, now)?;
        }
        Ok(())
    }

    /// Records the outcomes of actions that ended.
    pub(super) fn record_finished(&mut self) {
        self.runner.record_finished(&mut self.journal, self.decider.gate_mut(), &self.metrics);
    }

    /// Starts a tick: housekeeping, then the playbooks due at `now` (every one after an eBPF
    /// wake-up; none while records cannot be written: sensing goes on). `None` while an
    /// evaluation holds the sensing state. The second value is why nothing may be decided, if so.
    pub fn begin(&mut self, now: i64, input: Option<Snapshot>) -> Option<(EvalJob, Result<(), AuditError>)> {
        let sense = self.sense.take()?;
        let mut due = Vec::new();
        let force = std::mem::take(&mut self.force_next);
        let ready = self.housekeeping(now).and_then(|()| {
            let journal = &mut self.journal;
            due = self.decider.plan(now, force, &mut |ev| match ev {
                Event::Enabled { pb } => journal.record(&Record::PlaybookEnabled { playbook: PlaybookRef::of(pb) }, now).map(drop),
                _ => Ok(()),
            })?;
            Ok(())
        });
        let job = EvalJob { rt: self.decider.runtime().clone(), sense, input, now, forced: force, due, metrics: self.metrics.clone() };
        let started = std::time::Instant::now();
        self.evaluating = Some(Running { since_ms: now, started, playbooks: job.playbooks(), overruns: 0 });
        Some((job, ready))
    }

    /// A tick came while the evaluation started at `since_ms` still runs: it is skipped (only
    /// housekeeping runs). The first overrun of an evaluation is recorded, the others counted.
    pub fn overrun(&mut self, now: i64) {
        self.overruns += 1;
        self.metrics.overrun();
        let Some(r) = self.evaluating.as_mut() else { return };
        r.overruns += 1;
        let r = r.clone();
        if r.overruns == 1 {
            tracing::warn!(message = "Evaluation overran its tick; ticks are skipped until it ends.", message_id = ids::EVALUATION_OVERRUN, playbooks = ?r.playbooks, running_ms = now - r.since_ms);
            let rec = Record::EvaluationOverrun(record::EvaluationOverrun {
                playbooks: r.playbooks.clone(),
                started: crate::audit::now_rfc3339(r.since_ms),
                running_ms: now - r.since_ms,
            });
            let _ = self.journal.record(&rec, now);
        }
        if let Err(e) = self.housekeeping(now) {
            tracing::error!(message = "Audit log not writable.", error_code = e.code(), error = %e);
        }
    }

    /// Ends a tick: takes the sensing state back, then has the decide step gate each request
    /// with the mode current now; records each event and starts what was executed. Counted and
    /// timed in the metrics, which it then brings up to date.
    pub fn finish(&mut self, done: Evaluated, now: i64) -> Result<TickReport, AuditError> {
        let started = self.evaluating.as_ref().map(|r| r.started);
        let report = self.finish_tick(done, now);
        if let Some(t) = started {
            self.metrics.tick(t.elapsed().as_secs_f64());
        }
        self.publish_metrics();
        report
    }

    fn finish_tick(&mut self, done: Evaluated, now: i64) -> Result<TickReport, AuditError> {
        let Evaluated { sense, now: started, unavailable, done } = done;
        self.history_status = json!(sense.history.status());
        self.sense = Some(sense);
        self.unavailable = unavailable;
        if let Some(r) = self.evaluating.take().filter(|r| r.overruns > 0) {
            tracing::warn!(message = "Evaluation ended after overrunning.", playbooks = ?r.playbooks, ticks_skipped = r.overruns, took_ms = now - started);
        }
        let mut report = TickReport { evaluated: done.iter().map(|d| d.due.pb.meta.name.clone()).collect(), ..Default::default() };
        let mut launches = Vec::new();
        let (journal, metrics) = (&mut self.journal, &self.metrics);
        // Group commit: the settle's records are staged and made durable with one fsync after it;
        // nothing executed starts before that.
        journal.begin();
        let settled =
            // Gated, and recorded, at the time of the sample the playbooks saw (as `playbook
            // replay` gates a recorded frame): the gate rebuilt from the log at the next start
            // then holds exactly the times it held before.
            self.decider.settle(done, self.mode.mode, started, &mut |ev| record_event(journal, metrics, &mut report, &mut launches, ev, started));
        // What was staged before a record failed is still committed (as it was written before).
        if let Err(e) = self.journal.commit(started) {
            // None of the batch counts: every executed verdict in it is undone in the gate (the
            // one whose record failed to stage, if any, the decide step undid already).
            for (_, _, req) in &launches {
                self.decider.gate_mut().finished(req.kind, &req.target);
            }
            return Err(e);
        }
        // What was recorded as executed starts, also when a later record failed.
        for (seq, playbook, req) in launches {
            let command = self.decider.gate().command_rule(&req).cloned();
            self.runner.launch(seq, playbook, req, command);
        }
        for name in settled? {
            tracing::warn!(message = "Playbook changed during its evaluation; its requests are dropped.", playbook = %name);
        }
        Ok(report)
    }

    /// File descriptors of the eBPF event rings (readable when an event should wake a tick).
    pub fn event_fds(&self) -> Vec<std::os::fd::OwnedFd> {
        self.sense.as_ref().and_then(|s| s.sampler.ebpf()).map(|e| e.event_fds()).unwrap_or_default()
    }

    /// Takes pending eBPF events; returns what they woke (none when there were none). The next
    /// tick then evaluates the playbooks that read it, due or not. None are taken while an
    /// evaluation holds the sampler (they wait in their ring).
    pub fn drain_events(&mut self) -> Wake {
        let events = self.sense.as_mut().and_then(|s| s.sampler.ebpf_mut()).map(|e| e.drain_events()).unwrap_or_default();
        let woke = events.iter().fold(Wake::NONE, |w, e| w | Wake::of_event(e.kind));
        if woke.intersects(Wake::TCP) {
            if let Some(s) = self.sense.as_mut() {
                s.sampler.note_tcp_wake(crate::audit::now_ms());
            }
        }
        self.force_next |= woke;
        woke
    }

    /// Something outside the eBPF rings (the fast disk watch) woke the next tick.
    pub fn wake_next(&mut self, w: Wake) {
        self.force_next |= w;
    }

    /// What the next tick was woken by so far.
    pub fn woken(&self) -> Wake {
        self.force_next
    }

    /// Starts the fast watch (`signals::fast`), ringing `bell` when a mount's usage moves; off
    /// when `signals.fast_interval_ms` is 0. Only while no evaluation holds the sampler.
    pub fn start_fast_watch(&mut self, bell: Arc<crate::signals::wake::Doorbell>) {
        let (ms, step) = self.fast;
        let Some(sense) = self.sense.as_mut().filter(|_| ms > 0) else { return };
        // TCP counters only where retransmit bursts can wake a tick: with the eBPF tcp family.
        let snmp = sense.sampler.ebpf().is_some_and(|e| e.loaded().contains(&"tcp")).then(|| sense.sampler.roots().proc.join("net/snmp"));
        match crate::signals::fast::FastWatch::start(std::time::Duration::from_millis(ms), step, snmp, move |w| bell.ring(w)) {
            Ok(w) => sense.sampler.with_fast_watch(w),
            Err(e) => tracing::warn!(message = "Fast watch not started: disk changes wait for the next tick.", error = %e),
        }
    }
}

/// An executed decision, recorded, to start once the tick's events are settled.
type Launch = (u64, PlaybookRef, ActionRequest);

/// Records one event of the decide step: a decision (or counts it into an open repeat window),
/// or a playbook's back-off, staged in the tick's batch. An executed decision is queued in
/// `launches`, started once the batch is committed.
fn record_event(
    journal: &mut Journal,
    metrics: &Metrics,
    report: &mut TickReport,
    launches: &mut Vec<Launch>,
    ev: Event<'_>,
    now: i64,
) -> Result<(), AuditError> {
    match ev {
        Event::Enabled { pb } => journal.record(&Record::PlaybookEnabled { playbook: PlaybookRef::of(pb) }, now).map(drop),
        Event::Disabled { pb, error, until_ms, failures } => {
            let name = &pb.meta.name;
            metrics.eval_failed(name, error.code);
            tracing::warn!(message = "Playbook disabled.", message_id = ids::PLAYBOOK_DISABLED, playbook = %name, error_code = error.code, error = %error.message, for_secs = (until_ms - now) / 1000);
            let rec = Record::PlaybookDisabled(record::PlaybookDisabled {
                playbook: PlaybookRef::of(pb),
                error_code: error.code.to_string(),
                error: error.message.clone(),
                until: crate::audit::now_rfc3339(until_ms),
                failures,
            });
            journal.record(&rec, now)?;
            report.disabled.push((name.clone(), error.to_string()));
            Ok(())
        }
        Event::Decided { pb, request: req, verdict: v } => {
            let name = pb.meta.name.clone();
            let pbref = PlaybookRef::of(pb);
            metrics.decided(&name, v.decision.as_str(), v.rule);
            report.decisions.push((name.clone(), req.kind.to_string(), req.target.clone(), v.decision.as_str().into(), v.rule.into()));
            let t: repeats::Target = (name.clone(), req.kind, req.target.clone());
            let what = (v.decision, v.rule, v.mode);
            if journal.repeats.closes(&t, what, now) {
                journal.close_repeat(&t, now)?;
            }
            let coalesce = repeats::coalescible(v.decision) && journal.repeats.window_ms > 0;
            if coalesce && journal.repeats.absorb(&t, now) {
                report.coalesced += 1;
                tracing::debug!(message = "Decision repeated.", playbook = %name, action = %req.kind, action_target = %req.target, decision = v.decision.as_str(), rule = v.rule);
                return Ok(());
            }
            let rec = Record::Action(record::Action::of(pbref.clone(), &req, &v));
            // Write-ahead: staged here, durable at the batch's commit, before the action starts
            // (the decide step undoes an executed verdict in the gate when staging fails, the
            // tick every one of the batch when the commit fails).
            let seq = journal.record(&rec, now)?;
            match v.decision {
                Decision::Escalated => {
                    tracing::warn!(message = "Circuit breaker opened: escalated, not executed.", message_id = ids::BREAKER_OPENED, seq, playbook = %name, action = %req.kind, action_target = %req.target, decision = v.decision.as_str(), rule = v.rule)
                }
                Decision::Executed => {
                    tracing::info!(message = "Decision: executing.", message_id = ids::ACTION_EXECUTED, seq, playbook = %name, action = %req.kind, action_target = %req.target, decision = v.decision.as_str(), rule = v.rule)
                }
                _ => {
                    tracing::info!(message = "Decision.", message_id = ids::DECISION, seq, playbook = %name, action = %req.kind, action_target = %req.target, decision = v.decision.as_str(), rule = v.rule)
                }
            }
            if coalesce {
                let open = repeats::Open { what, playbook: pbref.clone(), first_seq: seq, first_ms: now, last_ms: now, count: 0 };
                if let Some((t, o)) = journal.repeats.open(t, open) {
                    journal.write_repeat(t, o, now)?;
                }
            }
            if v.decision == Decision::Executed && req.kind != actions::ActionKind::Notify {
                launches.push((seq, pbref, req));
            }
            Ok(())
        }
    }
}
