//! The core loop: every tick, record the outcomes of finished actions → expire a timed mode
//! change → sense → push to history → evaluate the due playbooks → gate each request → record
//! each decision (fsync'd) → only then start an executed action on a thread of its own.
//!
//! Also start-up (open the audit log, rebuild the gate's ledgers from it, record the outcome of
//! any action the previous run did not see end as `unknown`, load the mode and playbooks),
//! reload (SIGHUP: a broken file is rejected and its last good version stays), the control
//! socket's requests, and an orderly stop (running actions end and are recorded, then
//! `agent_stopped`).
//!
//! The loop never waits on a playbook or a procfs read: a tick's sampling and evaluation run on a
//! worker thread ([`EvalJob`]) while the loop keeps serving the control socket, fleet commands,
//! signals and the forwarder; the requests come back to the loop, which gates them with the mode
//! current *then* and records them. One evaluation at a time: a tick that finds the last one still
//! running is an overrun (logged, recorded once per evaluation, counted in `medic status`).
//! Records are bounded in bytes (`audit::bound`) and repeated refusals are coalesced
//! (`repeats`).
//!
//! Fail-closed: when a record cannot be written, nothing is decided or started; the agent keeps
//! sensing, says why in its log and in `medic status`, tries again every tick, and records the
//! outage (`audit_recovered`) as soon as it can write again.

use crate::actions::{self, ActionRequest, ExecContext, Outcome, Status};
use crate::audit::{AuditError, AuditLog};
use crate::config::Config;
use crate::control::command::{Command, CommandError, Incoming, Origin};
use crate::control::mode::ModeState;
use crate::control::{Peer, Request, Response};
use crate::gate::{Decision, Gate, Mode};
use crate::playbooks::{self, api::State, EvalError, Playbook, Runtime};
use crate::signals::history::History;
use crate::signals::{Roots, Sampler, Snapshot};
use crate::telemetry::ids;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};

pub mod notify;
pub mod repeats;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

/// One loaded playbook and its run-time state.
struct Slot {
    pb: Playbook,
    state: State,
    last_eval_ms: Option<i64>,
    disabled_until: Option<i64>,
    failures: u32,
    last_error: Option<String>,
}

/// An action that ended on its thread, waiting to be recorded.
struct Finished {
    seq: u64,
    playbook: Value,
    req: ActionRequest,
    outcome: Outcome,
}

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
struct Sensing {
    sampler: Sampler,
    history: Arc<History>,
}

/// A playbook due in this tick, with what it evaluates with.
struct Due {
    file: String,
    pb: Playbook,
    state: State,
}

/// One tick's sampling and evaluation, owned, to run anywhere ([`EvalJob::run`]): on the
/// daemon's worker thread, or inline for `--once` and tests.
pub struct EvalJob {
    rt: Arc<Runtime>,
    sense: Sensing,
    /// The snapshot to use (a test's); `None`: sample at `now`.
    input: Option<Snapshot>,
    now: i64,
    due: Vec<Due>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// What an [`EvalJob`] gives back: sensing, and each due playbook's requests or error.
pub struct Evaluated {
    sense: Sensing,
    now: i64,
    unavailable: BTreeMap<String, String>,
    results: Vec<(Due, Result<Vec<ActionRequest>, EvalError>)>,
}

impl EvalJob {
    /// The names of the playbooks it evaluates.
    pub fn playbooks(&self) -> Vec<String> {
        self.due.iter().map(|d| d.pb.meta.name.clone()).collect()
    }

    /// Samples (unless given a snapshot), pushes into the history, evaluates each due playbook.
    /// A panic inside one evaluation is that playbook's error, not the worker's end.
    pub fn run(self) -> Evaluated {
        let EvalJob { rt, mut sense, input, now, due, metrics } = self;
        let t = std::time::Instant::now();
        let snap = input.unwrap_or_else(|| sense.sampler.sample(now));
        metrics.sampled(t.elapsed().as_secs_f64());
        for family in ["tcp", "sock"] {
            if let Some(n) = snap.metrics.get(&format!("ebpf.{family}.events_dropped")) {
                metrics.ring_drops(family, *n as u64);
            }
        }
        Arc::make_mut(&mut sense.history).push(&snap);
        let unavailable = snap.unavailable.clone();
        let snap = Arc::new(snap);
        let mut results = Vec::with_capacity(due.len());
        for d in due {
            let t = std::time::Instant::now();
            let run = std::panic::AssertUnwindSafe(|| rt.evaluate(&d.pb, snap.clone(), sense.history.clone(), &d.state));
            let res = std::panic::catch_unwind(run).unwrap_or_else(|p| {
                let what = p.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| p.downcast_ref::<String>().cloned());
                Err(EvalError {
                    code: "runtime_error",
                    message: format!("{}: evaluation panicked: {}", d.pb.file, what.unwrap_or_default()),
                })
            });
            metrics.evaluated(&d.pb.meta.name, t.elapsed().as_secs_f64());
            results.push((d, res));
        }
        Evaluated { sense, now, unavailable, results }
    }
}

/// An evaluation running on the worker, for `medic status` and overrun records.
#[derive(Debug, Clone)]
struct Running {
    since_ms: i64,
    started: std::time::Instant,
    playbooks: Vec<String>,
    overruns: u64,
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

/// How the previous run ended, read from the log at start: it ended cleanly when the log's last
/// record is its `agent_stopped` (nothing is written after it); anything else (kill -9, a
/// watchdog abort, a crash, power loss) leaves its last record something else.
#[derive(Debug, Default)]
struct PreviousRun {
    last_kind: Option<String>,
    last_seq: u64,
    /// seq of the last `agent_started` not followed by an `agent_stopped`.
    started_seq: Option<u64>,
}

impl PreviousRun {
    fn observe(&mut self, rec: &Map<String, Value>) {
        let kind = rec.get("kind").and_then(Value::as_str).unwrap_or("");
        let seq = rec.get("seq").and_then(Value::as_u64).unwrap_or(0);
        match kind {
            "agent_started" => self.started_seq = Some(seq),
            "agent_stopped" => self.started_seq = None,
            _ => {}
        }
        self.last_kind = Some(kind.to_string());
        self.last_seq = seq;
    }

    /// The `previous_run` field of `agent_started`.
    fn summary(&self) -> Value {
        match self.last_kind.as_deref() {
            None => json!({ "ended": "none" }),
            Some("agent_stopped") => json!({ "ended": "clean", "last_seq": self.last_seq }),
            Some(_) => json!({ "ended": "unclean", "last_seq": self.last_seq, "started_seq": self.started_seq }),
        }
    }
}

/// The running agent.
pub struct Agent {
    pub node: String,
    rt: Arc<Runtime>,
    /// Keyed by file, so a reload replaces each file's playbook in place.
    slots: BTreeMap<String, Slot>,
    gate: Gate,
    audit: AuditLog,
    /// `None` while an evaluation holds it.
    sense: Option<Sensing>,
    /// The history's status as of the last tick (the history itself may be on the worker).
    history_status: Value,
    repeats: repeats::Repeats,
    evaluating: Option<Running>,
    overruns: u64,
    playbooks_dir: Option<PathBuf>,
    /// Local playbooks added to the bundled ones (config `local_playbooks_dir`).
    local_playbooks_dir: Option<PathBuf>,
    state_dir: PathBuf,
    disable_ms: i64,
    max_disable_ms: i64,
    mode: ModeState,
    exec: ExecContext,
    done_tx: mpsc::Sender<Finished>,
    done_rx: mpsc::Receiver<Finished>,
    /// Finished actions whose outcome could not be recorded yet.
    unrecorded: Vec<Finished>,
    /// seq of executed decisions still running.
    running: BTreeSet<u64>,
    /// Since when (ms) and why records cannot be written.
    audit_down: Option<(i64, String)>,
    /// The next tick evaluates every playbook, due or not (set by an eBPF wake-up).
    force_next: bool,
    /// How replication to the broker is doing, when it is on.
    pub replication: Option<tokio::sync::watch::Receiver<crate::forward::Health>>,
    /// Checks signed fleet commands.
    pub verifier: crate::control::remote::Verifier,
    /// Fleet groups this node belongs to (shown in its retained status).
    pub groups: Vec<String>,
    /// The MQTT topic prefix: a fleet command's topic names its scope under it.
    prefix: String,
    /// Rejected commands per topic in the current minute (see `Agent::remote`).
    rejections: BTreeMap<String, Rejections>,
    unavailable: BTreeMap<String, String>,
    metrics: Arc<crate::metrics::Metrics>,
}

/// Rejected commands recorded one by one per topic and minute; past that they are counted
/// and summarised in one `commands_rejected` record when the minute ends.
const REJECTIONS_RECORDED_PER_MIN: u32 = 10;

/// Rejected commands of one topic within a minute.
#[derive(Debug, Default)]
struct Rejections {
    since_ms: i64,
    recorded: u32,
    suppressed: u64,
    by_code: BTreeMap<&'static str, u64>,
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
        let mut gate = Gate::new(cfg.policy.clone());
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
        let mut sampler = Sampler::with_socket_scan_every(roots, cfg.signals.socket_scan_every).with_ebpf(ebpf);
        let interval_ms = cfg.signals.interval_ms();
        let mut history = History::new(cfg.signals.history_ms(), interval_ms, cfg.signals.max_series);
        let first = sampler.sample(crate::audit::now_ms());
        history.push(&first);
        for (family, why) in &first.unavailable {
            tracing::warn!(message = "Signal unavailable.", family = %family, reason = %why);
        }
        let previous_run = previous.summary();
        if previous_run["ended"] == "unclean" {
            tracing::warn!(
                message = "The previous run ended uncleanly (no agent_stopped after its last record).",
                message_id = ids::PREVIOUS_RUN_UNCLEAN,
                last_seq = previous.last_seq,
                started_seq = previous.started_seq,
            );
        }
        audit.append(
            "agent_started",
            obj(json!({
                "version": env!("CARGO_PKG_VERSION"),
                "previous_run": previous_run,
                "mode": mode.mode.as_str(),
                "mode_state": mode,
                "pid": std::process::id(),
                "playbooks_dir": playbooks_dir.as_ref().map_or("bundled".to_string(), |p| p.display().to_string()),
                "unavailable": first.unavailable,
                "history_bound_bytes": history.bound_bytes(),
                "history": history.status(),
            })),
        )?;
        if let Some(e) = mode_problem {
            audit.append("mode_unknown", obj(json!({ "error": e, "mode": "dry-run" })))?;
        }
        for (seq, playbook, action) in pending {
            tracing::warn!(message = "Action outcome unknown: the agent stopped while it ran.", seq);
            audit.append(
                "action_outcome",
                obj(json!({
                    "ref_seq": seq,
                    "playbook": playbook,
                    "action": action,
                    "outcome": { "status": Status::Unknown, "error_code": "agent_restarted", "error": "the agent stopped before this action's end was recorded", "verified": false },
                })),
            )?;
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
        let (done_tx, done_rx) = mpsc::channel();
        let exec = ExecContext::from_config(cfg);
        let mut agent = Self {
            node,
            rt: Arc::new(Runtime::new(cfg.playbooks.limits).with_history(playbooks::HistoryReach::of(&cfg.signals))),
            slots: BTreeMap::new(),
            gate,
            audit,
            history_status: json!(history.status()),
            sense: Some(Sensing { sampler, history: Arc::new(history) }),
            repeats: repeats::Repeats::new(cfg.audit.repeat_window_secs),
            evaluating: None,
            overruns: 0,
            playbooks_dir,
            local_playbooks_dir: cfg.local_playbooks_dir.clone(),
            state_dir,
            disable_ms: cfg.playbooks.disable_ms(),
            max_disable_ms: cfg.playbooks.max_disable_ms(),
            mode,
            exec,
            done_tx,
            done_rx,
            unrecorded: Vec::new(),
            running: BTreeSet::new(),
            audit_down: None,
            force_next: false,
            replication: None,
            verifier: Default::default(),
            groups: cfg.mqtt.groups.clone(),
            prefix: cfg.mqtt.prefix.clone(),
            rejections: BTreeMap::new(),
            unavailable: first.unavailable.clone(),
            metrics,
        };
        agent.expire_mode(crate::audit::now_ms())?;
        agent.reload()?;
        agent.publish_metrics();
        Ok(agent)
    }

    pub fn audit_path(&self) -> PathBuf {
        self.audit.path().to_path_buf()
    }

    pub fn playbook_names(&self) -> Vec<String> {
        self.slots.values().map(|s| s.pb.meta.name.clone()).collect()
    }

    pub fn mode(&self) -> &ModeState {
        &self.mode
    }

    /// The metrics the agent keeps, for the `/metrics` endpoint.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.metrics.clone()
    }

    /// Sets the state gauges (mode, audit, forwarder, playbooks): once a tick and on a mode change.
    fn publish_metrics(&self) {
        let m = &self.metrics;
        let last = self.audit.last_seq();
        m.mode(self.mode.mode.as_str(), self.mode.expires_ms);
        m.audit(last, self.audit_down.is_none());
        m.forwarder(self.replication.as_ref().map(|r| (r.borrow().connected, r.borrow().cursor)), last);
        let now = crate::audit::now_ms();
        m.playbooks(self.slots.len(), self.slots.values().filter(|s| s.disabled_until.is_some_and(|u| u > now)).count());
    }

    /// Appends a record; on failure the agent falls back to observing (see the module note).
    /// Every record is bounded in bytes first (`audit::bound`).
    fn record(&mut self, kind: &str, mut body: Map<String, Value>, ts: i64) -> Result<u64, AuditError> {
        if let Some(from) = crate::audit::bound::bound(&mut body, &self.node, kind) {
            tracing::warn!(
                message = "Audit record truncated to its byte bound.",
                kind,
                from_bytes = from,
                bound = crate::audit::bound::MAX_RECORD_BYTES
            );
        }
        match self.audit.append_at(kind, body, ts) {
            Ok(seq) => Ok(seq),
            Err(e) => {
                if self.audit_down.is_none() {
                    tracing::error!(message = "AUDIT LOG NOT WRITABLE: no action will be decided or started until it is.", message_id = ids::AUDIT_UNWRITABLE, error_code = e.code(), error = %e);
                    self.audit_down = Some((ts, e.to_string()));
                }
                Err(e)
            }
        }
    }

    /// (Re)loads the playbooks directory. A file that fails keeps its last good version (if
    /// any) and is recorded as rejected; a file that disappeared is unloaded.
    pub fn reload(&mut self) -> Result<(), AuditError> {
        let now = crate::audit::now_ms();
        let loaded = match playbooks::load_with(&self.rt, self.playbooks_dir.as_deref(), self.local_playbooks_dir.as_deref()) {
            Ok(l) => l,
            Err(e) => {
                let dir =
                    self.playbooks_dir.as_ref().or(self.local_playbooks_dir.as_ref()).map(|d| d.display().to_string()).unwrap_or_default();
                tracing::error!(message = "Playbooks directory unreadable; keeping the loaded set.", message_id = ids::PLAYBOOK_REJECTED, dir = %dir, error = %e);
                let kept = self.playbook_names();
                self.record("playbook_rejected", obj(json!({ "file": dir, "error": e.to_string(), "kept": kept })), now)?;
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
                    self.gate.note_playbook(&pb.meta);
                    self.record("playbook_loaded", obj(json!({ "playbook": pb_ref(&pb), "file": pb.file, "meta": pb.meta })), now)?;
                    self.slots.insert(
                        pb.file.clone(),
                        Slot { pb, state: State::default(), last_eval_ms: None, disabled_until: None, failures: 0, last_error: None },
                    );
                }
                Err(e) => {
                    seen.push(e.file.clone());
                    let kept = self.slots.get(&e.file).map(|s| pb_ref(&s.pb));
                    tracing::error!(message = "Playbook rejected.", message_id = ids::PLAYBOOK_REJECTED, file = %e.file, error = %e, kept_previous = kept.is_some());
                    self.record("playbook_rejected", obj(json!({ "file": e.file, "error": e.to_string(), "kept": kept })), now)?;
                }
            }
        }
        let gone: Vec<String> = self.slots.keys().filter(|k| !seen.contains(k)).cloned().collect();
        for file in gone {
            if let Some(s) = self.slots.remove(&file) {
                self.record("playbook_unloaded", obj(json!({ "playbook": pb_ref(&s.pb), "file": file })), now)?;
            }
        }
        Ok(())
    }

    /// Reverts a mode change whose TTL has passed to exactly the state before it (or dry-run
    /// when that expired too; `ModeState::successor`), and records it. Also writes the summary
    /// of rejected commands whose minute ended.
    fn expire_mode(&mut self, now: i64) -> Result<(), AuditError> {
        self.flush_rejections(now);
        let Some(next) = self.mode.successor(now) else { return Ok(()) };
        let old = self.mode.clone();
        self.apply_mode(next, &old, "mode_expired", now)
    }

    /// Persists and records a mode change: the safer state is always durable first (a switch to
    /// dry-run takes effect and is saved before it is recorded, so the brake works even when the
    /// log cannot be written; a switch to live is recorded, then saved, then takes effect).
    fn apply_mode(&mut self, next: ModeState, old: &ModeState, kind: &str, now: i64) -> Result<(), AuditError> {
        let (actor, reason) = if kind == "mode_expired" {
            let back = if next.since_ms == now {
                next.reason.clone()
            } else {
                format!("back to the state set by {} ({})", next.actor, next.reason)
            };
            ("medic (ttl expiry)".to_string(), format!("ttl of the change by {} expired; {back}", old.actor))
        } else {
            (next.actor.clone(), next.reason.clone())
        };
        let body = obj(json!({
            "from": old.mode.as_str(), "to": next.mode.as_str(), "actor": actor, "reason": reason,
            "expires": next.expires_ms.map(crate::audit::now_rfc3339), "revert_to": next.revert_to.map(Mode::as_str),
        }));
        let save = |m: &ModeState, dir: &std::path::Path| {
            m.save(dir).map_err(|source| AuditError::Io { path: dir.join(crate::control::mode::FILE_NAME), source })
        };
        if next.mode == Mode::DryRun {
            self.mode = next.clone();
            save(&next, &self.state_dir)?;
            self.record(kind, body, now)?;
        } else {
            self.record(kind, body, now)?;
            save(&next, &self.state_dir)?;
            self.mode = next.clone();
        }
        tracing::warn!(
            message = "Mode changed.",
            message_id = ids::MODE_CHANGED,
            from = old.mode.as_str(),
            to = next.mode.as_str(),
            actor = %actor,
            reason = %reason,
            expires = next.expires_ms.map(crate::audit::now_rfc3339),
        );
        self.publish_metrics();
        Ok(())
    }

    /// Applies one command, whatever its origin (the control socket or the broker): the one
    /// path, so that the two cannot drift. Authorization is the edge's (peer credentials, or a
    /// signature checked in `remote`); here each command is validated, recorded, and only then
    /// changes state (except a switch to dry-run, see `apply_mode`).
    pub fn apply(&mut self, cmd: Command, origin: &Origin, now: i64) -> Result<Value, CommandError> {
        use crate::control::command::bounded;
        match cmd {
            Command::Status => Ok(self.status(now)),
            Command::Breakers => Ok(json!(self.gate.open_breakers())),
            Command::SetMode { mode, reason, ttl_secs } => {
                let old = self.mode.clone();
                let next = old.change(mode, origin.actor(), bounded(&reason), ttl_secs, now);
                if let Err(e) = self.apply_mode(next, &old, "mode_change", now) {
                    let already = if mode == Mode::DryRun && self.mode.mode == Mode::DryRun { "dry-run is in effect, but " } else { "" };
                    return Err(CommandError::NotRecorded(format!("{already}{e}")));
                }
                Ok(self.status(now)["mode"].clone())
            }
            Command::ResetBreaker { playbook, action, target, reason } => {
                if !self.gate.open_breakers().iter().any(|b| b.playbook == playbook && b.action == action && b.target == target) {
                    return Err(CommandError::NoBreaker(format!("{} {action} {:?}", bounded(&playbook), bounded(&target))));
                }
                let body = obj(
                    json!({ "playbook": playbook, "action": action, "target": target, "actor": origin.actor(), "reason": bounded(&reason) }),
                );
                self.record("breaker_reset", body, now).map_err(|e| CommandError::NotRecorded(e.to_string()))?;
                self.gate.reset(&(playbook, action, target));
                Ok(json!({ "reset": true }))
            }
            Command::Reload => {
                self.reload().map_err(|e| CommandError::NotRecorded(e.to_string()))?;
                Ok(json!({ "playbooks": self.playbook_names() }))
            }
        }
    }

    /// Whether a rejected command on `channel` gets a record of its own; past
    /// `REJECTIONS_RECORDED_PER_MIN` a minute it is only counted.
    fn rejection_recorded(&mut self, channel: &str, code: &'static str, now: i64) -> bool {
        self.flush_rejections(now);
        let r = self.rejections.entry(channel.to_string()).or_insert_with(|| Rejections { since_ms: now, ..Default::default() });
        if r.recorded < REJECTIONS_RECORDED_PER_MIN {
            r.recorded += 1;
            return true;
        }
        r.suppressed += 1;
        *r.by_code.entry(code).or_default() += 1;
        false
    }

    /// Records one summary per topic whose minute of rejections ended with some only counted.
    fn flush_rejections(&mut self, now: i64) {
        let due: Vec<String> =
            self.rejections.iter().filter(|(_, r)| now.saturating_sub(r.since_ms) >= 60_000).map(|(k, _)| k.clone()).collect();
        for k in due {
            let Some(r) = self.rejections.remove(&k) else { continue };
            if r.suppressed == 0 {
                continue;
            }
            let until = if now == i64::MAX { crate::audit::now_ms() } else { now };
            let body = obj(json!({
                "topic": k, "count": r.suppressed, "by_code": r.by_code,
                "since": crate::audit::now_rfc3339(r.since_ms), "until": crate::audit::now_rfc3339(until),
            }));
            tracing::warn!(message = "Fleet commands rejected without a record each.", topic = %k, count = r.suppressed);
            if self.record("commands_rejected", body, until).is_err() {
                self.rejections.insert(k, r); // tried again at the next tick
            }
        }
    }

    /// Records the outcomes of actions that ended.
    fn record_finished(&mut self) {
        while let Ok(f) = self.done_rx.try_recv() {
            self.unrecorded.push(f);
        }
        while let Some(f) = self.unrecorded.first() {
            let body = obj(
                json!({ "ref_seq": f.seq, "playbook": f.playbook, "action": { "kind": f.req.kind, "target": f.req.target }, "outcome": f.outcome }),
            );
            if self.record("action_outcome", body, crate::audit::now_ms()).is_err() {
                return;
            }
            let f = self.unrecorded.remove(0);
            let status = serde_json::to_value(f.outcome.status).ok();
            let status = status.as_ref().and_then(Value::as_str).unwrap_or("unknown");
            self.metrics.action_ended(f.req.kind.as_str(), status, f.outcome.duration_ms as f64 / 1000.0);
            let playbook = f.playbook.get("name").and_then(Value::as_str).unwrap_or("");
            if f.outcome.status == Status::Ok {
                tracing::info!(message = "Action ended.", message_id = ids::ACTION_SUCCEEDED, seq = f.seq, playbook, action = %f.req.kind, action_target = %f.req.target, status = ?f.outcome.status);
            } else {
                tracing::warn!(message = "Action failed.", message_id = ids::ACTION_FAILED, seq = f.seq, playbook, action = %f.req.kind, action_target = %f.req.target, status = ?f.outcome.status, error_code = f.outcome.error_code.unwrap_or(""), error = f.outcome.error.as_deref().unwrap_or(""));
            }
            self.running.remove(&f.seq);
            self.gate.finished(f.req.kind, &f.req.target);
        }
    }

    /// Starts an executed action on its own thread.
    fn launch(&mut self, seq: u64, playbook: Value, req: ActionRequest) {
        let mut cx = self.exec.clone();
        cx.command = self.gate.command_rule(&req).cloned();
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
        if let Err(e) = self.audit.check(now) {
            self.audit_down.get_or_insert((now, e.to_string()));
            return Err(e);
        }
        self.record_finished();
        if let Some((since, error)) = self.audit_down.clone() {
            let body = obj(json!({ "since": crate::audit::now_rfc3339(since), "error": error, "running_actions": self.running.len() }));
            self.audit.append_at("audit_recovered", body, now)?;
            tracing::warn!(message = "Audit log writable again; acting resumes.", message_id = ids::AUDIT_RECOVERED, down_since = %crate::audit::now_rfc3339(since));
            self.audit_down = None;
            self.record_finished();
        }
        self.expire_mode(now)?;
        for t in self.repeats.ended(now) {
            self.close_repeat(&t, now)?;
        }
        Ok(())
    }

    /// Writes out a coalescing window (if it counted anything) and closes it.
    fn close_repeat(&mut self, t: &repeats::Target, now: i64) -> Result<(), AuditError> {
        let Some(o) = self.repeats.take(t) else { return Ok(()) };
        self.write_repeat(t.clone(), o, now)
    }

    fn write_repeat(&mut self, t: repeats::Target, o: repeats::Open, now: i64) -> Result<(), AuditError> {
        if o.count == 0 {
            return Ok(());
        }
        let body = repeats::body(&t, &o, self.repeats.window_ms);
        match self.record("decision_repeated", body, now) {
            Ok(seq) => {
                tracing::info!(message = "Repeated decision.", seq, playbook = %t.0, action = %t.1, action_target = %t.2, decision = o.what.0, rule = o.what.1, count = o.count);
                Ok(())
            }
            Err(e) => {
                self.repeats.restore(t, o);
                Err(e)
            }
        }
    }

    /// Starts a tick: housekeeping, then the playbooks due at `now` (none while records cannot
    /// be written: sensing goes on). `None` while an evaluation holds the sensing state. The
    /// second value is why nothing may be decided, if so.
    pub fn begin(&mut self, now: i64, input: Option<Snapshot>) -> Option<(EvalJob, Result<(), AuditError>)> {
        let sense = self.sense.take()?;
        let mut due = Vec::new();
        let ready = self.housekeeping(now).and_then(|()| self.plan(now, &mut due));
        let job = EvalJob { rt: self.rt.clone(), sense, input, now, due, metrics: self.metrics.clone() };
        let started = std::time::Instant::now();
        self.evaluating = Some(Running { since_ms: now, started, playbooks: job.playbooks(), overruns: 0 });
        Some((job, ready))
    }

    /// The playbooks due at `now` (every one after an eBPF wake-up), re-enabling those whose
    /// back-off ended.
    fn plan(&mut self, now: i64, due: &mut Vec<Due>) -> Result<(), AuditError> {
        let force = std::mem::take(&mut self.force_next);
        let files: Vec<String> = self.slots.keys().cloned().collect();
        for file in files {
            let Some(slot) = self.slots.get_mut(&file) else { continue };
            if let Some(until) = slot.disabled_until {
                if now < until {
                    continue;
                }
                slot.disabled_until = None;
                let pbref = pb_ref(&slot.pb);
                self.record("playbook_enabled", obj(json!({ "playbook": pbref })), now)?;
            }
            let Some(slot) = self.slots.get_mut(&file) else { continue };
            if !force && slot.last_eval_ms.is_some_and(|t| now - t < slot.pb.meta.interval_ms) {
                continue;
            }
            slot.last_eval_ms = Some(now);
            due.push(Due { file, pb: slot.pb.clone(), state: slot.state.clone() });
        }
        Ok(())
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
            let body =
                obj(json!({ "playbooks": r.playbooks, "started": crate::audit::now_rfc3339(r.since_ms), "running_ms": now - r.since_ms }));
            let _ = self.record("evaluation_overrun", body, now);
        }
        if let Err(e) = self.housekeeping(now) {
            tracing::error!(message = "Audit log not writable.", error_code = e.code(), error = %e);
        }
    }

    /// Ends a tick: takes the sensing state back, then gates each request with the mode current
    /// now, records it, and starts what was executed; disables a playbook that failed. Counted
    /// and timed in the metrics, which it then brings up to date.
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
        let Evaluated { sense, now: started, unavailable, results } = done;
        self.history_status = json!(sense.history.status());
        self.sense = Some(sense);
        self.unavailable = unavailable;
        if let Some(r) = self.evaluating.take().filter(|r| r.overruns > 0) {
            tracing::warn!(message = "Evaluation ended after overrunning.", playbooks = ?r.playbooks, ticks_skipped = r.overruns, took_ms = now - started);
        }
        let mut report = TickReport::default();
        for (d, res) in results {
            let name = d.pb.meta.name.clone();
            report.evaluated.push(name.clone());
            // Reloaded or unloaded meanwhile: that version no longer speaks for the file.
            if self.slots.get(&d.file).is_none_or(|s| s.pb.sha256 != d.pb.sha256) {
                tracing::warn!(message = "Playbook changed during its evaluation; its requests are dropped.", playbook = %name, file = %d.file);
                continue;
            }
            let pbref = pb_ref(&d.pb);
            match res {
                Ok(requests) => {
                    if let Some(slot) = self.slots.get_mut(&d.file) {
                        slot.failures = 0;
                    }
                    for req in requests {
                        self.decide_one(&d.pb.meta, &pbref, req, now, &mut report)?;
                    }
                }
                Err(e) => {
                    let Some(slot) = self.slots.get_mut(&d.file) else { continue };
                    slot.failures += 1;
                    slot.last_error = Some(e.to_string());
                    let backoff = self.disable_ms.saturating_mul(1 << (slot.failures - 1).min(16)).min(self.max_disable_ms);
                    slot.disabled_until = Some(now + backoff);
                    let failures = slot.failures;
                    self.metrics.eval_failed(&name, e.code);
                    tracing::warn!(message = "Playbook disabled.", message_id = ids::PLAYBOOK_DISABLED, playbook = %name, error_code = e.code, error = %e.message, for_secs = backoff / 1000);
                    self.record(
                        "playbook_disabled",
                        obj(json!({ "playbook": pbref, "error_code": e.code, "error": e.message, "until": crate::audit::now_rfc3339(now + backoff), "failures": failures })),
                        now,
                    )?;
                    report.disabled.push((name, e.to_string()));
                }
            }
        }
        Ok(report)
    }

    /// Gates one request, records the decision (or counts it into an open repeat window), and
    /// starts it when executed.
    fn decide_one(
        &mut self,
        meta: &crate::playbooks::meta::Meta,
        pbref: &Value,
        req: ActionRequest,
        now: i64,
        report: &mut TickReport,
    ) -> Result<(), AuditError> {
        let name = meta.name.clone();
        let v = self.gate.decide(meta, &req, self.mode.mode, now);
        self.metrics.decided(&name, v.decision.as_str(), v.rule);
        report.decisions.push((name.clone(), req.kind.to_string(), req.target.clone(), v.decision.as_str().into(), v.rule.into()));
        let t: repeats::Target = (name.clone(), req.kind.to_string(), req.target.clone());
        let what = (v.decision.as_str(), v.rule, v.mode.as_str());
        if self.repeats.closes(&t, what, now) {
            self.close_repeat(&t, now)?;
        }
        let coalesce = repeats::coalescible(v.decision) && self.repeats.window_ms > 0;
        if coalesce && self.repeats.absorb(&t, now) {
            report.coalesced += 1;
            tracing::debug!(message = "Decision repeated.", playbook = %name, action = %req.kind, action_target = %req.target, decision = v.decision.as_str(), rule = v.rule);
            return Ok(());
        }
        let body = json!({
            "playbook": pbref,
            "trigger": { "signals": req.signals, "reason": req.reason },
            "action": { "kind": req.kind, "target": req.target, "params": req.params },
            "mode": v.mode.as_str(),
            "decision": v.decision.as_str(),
            "rule": v.rule,
            "detail": v.detail,
            "outcome": Value::Null,
        });
        // Write-ahead: the decision is durable before the action starts.
        let seq = match self.record("action", obj(body), now) {
            Ok(seq) => seq,
            Err(e) => {
                if v.decision == Decision::Executed {
                    self.gate.finished(req.kind, &req.target);
                }
                return Err(e);
            }
        };
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
            if let Some((t, o)) = self.repeats.open(t, open) {
                self.write_repeat(t, o, now)?;
            }
        }
        if v.decision == Decision::Executed && req.kind != actions::ActionKind::Notify {
            self.launch(seq, pbref.clone(), req);
        }
        Ok(())
    }

    /// File descriptors of the eBPF event rings (readable when an event should wake a tick).
    pub fn event_fds(&self) -> Vec<std::os::fd::OwnedFd> {
        self.sense.as_ref().and_then(|s| s.sampler.ebpf()).map(|e| e.event_fds()).unwrap_or_default()
    }

    /// Takes pending eBPF events; returns how many there were. When there were any, the next
    /// tick evaluates every playbook at once, due or not. None are taken while an evaluation
    /// holds the sampler (they wait in their ring).
    pub fn drain_events(&mut self) -> usize {
        let n = self.sense.as_mut().and_then(|s| s.sampler.ebpf_mut()).map(|e| e.drain_events().len()).unwrap_or(0);
        self.force_next |= n > 0;
        n
    }

    /// Waits up to `max` for running actions to end, recording their outcomes.
    pub fn wait_actions(&mut self, max: Duration) {
        let deadline =
            std::time::Instant::now().checked_add(max).unwrap_or_else(|| std::time::Instant::now() + Duration::from_secs(86_400));
        while !self.running.is_empty() && std::time::Instant::now() < deadline {
            if let Ok(f) = self.done_rx.recv_timeout(Duration::from_millis(50)) {
                self.unrecorded.push(f);
            }
            self.record_finished();
        }
    }

    /// Answers one control request from `peer`.
    pub fn control(&mut self, req: Request, peer: &Peer) -> Response {
        let now = crate::audit::now_ms();
        let result = Command::from_request(req).and_then(|cmd| self.apply(cmd, &Origin::Local { actor: peer.actor() }, now));
        match result {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(e.to_string()),
        }
    }

    /// Handles a publish on a command topic (see `control::remote`) and returns its ack (none
    /// for a packet whose topic is not known). Refused: retained messages, payloads over the
    /// limit, duplicate keys, a scope that is not the topic's or does not include this node,
    /// and unsigned live or breaker commands. Every command is recorded, its claimed fields
    /// bounded; rejections past `REJECTIONS_RECORDED_PER_MIN` a minute on a topic are counted
    /// and summarised instead.
    pub fn remote(&mut self, inc: &Incoming) -> Option<Value> {
        use crate::control::command::bounded;
        use crate::control::remote::{self, Scope};
        let now = crate::audit::now_ms();
        let scope = Scope::of_topic(&self.prefix, &inc.topic).filter(|s| s.includes(&self.node, &self.groups));
        let parsed = if inc.retained { Err(CommandError::Retained) } else { remote::parse(&inc.payload, inc.bytes) };
        let (id, op, claimed) = match &parsed {
            Ok((c, _)) => (bounded(&c.id), bounded(&c.op), bounded(c.actor.as_deref().unwrap_or("unknown"))),
            Err(_) => (String::new(), String::new(), "unknown".to_string()),
        };
        let result = parsed.and_then(|(env, raw)| {
            let scope = scope.clone().ok_or_else(|| CommandError::Scope("not a command topic of this node".into()))?;
            if let Some(named) = env.scope.as_deref() {
                if Scope::parse(named).as_ref() != Some(&scope) {
                    return Err(CommandError::Scope(format!("names {:?}, received on the topic of {scope}", bounded(named))));
                }
            }
            let cmd = env.command()?;
            let key = if cmd.needs_signature() { Some(self.verifier.check(&env, &raw, &scope, now / 1000)?) } else { None };
            let origin = Origin::Remote { topic: inc.topic.clone(), actor: claimed.clone(), key };
            self.apply(cmd, &origin, now)
        });
        let channel = if scope.is_some() { bounded(&inc.topic) } else { "other".to_string() };
        let (ok, detail, code) = match &result {
            Ok(v) => (true, v.clone(), None),
            Err(e) => (false, json!(bounded(&e.to_string())), Some(e.code())),
        };
        let body = obj(json!({
            "topic": bounded(&inc.topic), "command_id": id, "op": op, "actor": claimed, "accepted": ok,
            "result": if ok { detail.clone() } else { Value::Null }, "error": if ok { Value::Null } else { detail.clone() },
            "error_code": code, "payload_bytes": inc.bytes, "retained": inc.retained,
        }));
        let recorded = match code {
            None => true,
            Some(c) => self.rejection_recorded(&channel, c, now),
        };
        if recorded {
            if let Err(e) = self.record("command", body, now) {
                tracing::error!(message = "Fleet command not recorded.", error_code = e.code(), error = %e);
            }
        }
        if let Some(c) = code {
            tracing::warn!(message = "Fleet command rejected.", topic = %channel, id = %id, error_code = c, error = %detail);
        }
        scope.as_ref()?;
        Some(
            json!({ "node": self.node, "id": id, "ok": ok, "result": if ok { detail.clone() } else { Value::Null }, "error": if ok { Value::Null } else { detail }, "error_code": code }),
        )
    }

    /// The retained status published on the broker: what changes rarely (not budgets or seq).
    pub fn public_status(&self) -> String {
        let st = self.status(crate::audit::now_ms());
        serde_json::json!({
            "node": st["node"], "online": true, "version": st["version"], "mode": st["mode"],
            "playbooks": st["playbooks"].as_array().map(|a| a.iter().map(|p| json!({ "name": p["name"], "sha256": p["sha256"] })).collect::<Vec<_>>()),
            "open_breakers": st["open_breakers"], "audit_writable": st["audit"]["writable"], "last_seq": st["last_seq"],
            "audit_rewound": st["audit"]["integrity"]["rewound"], "audit_chain_broken": st["audit"]["integrity"]["chain_broken"],
            "groups": self.groups,
        })
        .to_string()
    }

    /// What `medic status` shows.
    pub fn status(&self, now: i64) -> Value {
        let m = &self.mode;
        let playbooks: Vec<Value> = self
            .slots
            .values()
            .map(|s| {
                json!({
                    "name": s.pb.meta.name, "file": s.pb.file, "sha256": s.pb.sha256, "forced_dry_run": s.pb.meta.dry_run,
                    "disabled_until": s.disabled_until.filter(|u| *u > now).map(crate::audit::now_rfc3339),
                    "last_error": s.last_error,
                })
            })
            .collect();
        json!({
            "node": self.node,
            "version": env!("CARGO_PKG_VERSION"),
            "mode": {
                "mode": m.mode.as_str(), "since": (m.since_ms > 0).then(|| crate::audit::now_rfc3339(m.since_ms)),
                "actor": m.actor, "reason": m.reason, "expires": m.expires_ms.map(crate::audit::now_rfc3339),
                "revert_to": m.revert_to.map(Mode::as_str),
            },
            "playbooks": playbooks,
            "budget_left": self.gate.budget_left(now),
            "open_breakers": self.gate.open_breakers(),
            "running_actions": self.running.len(),
            "last_seq": self.audit.last_seq(),
            "audit": {
                "path": self.audit.path().display().to_string(),
                "writable": self.audit_down.is_none(),
                "down_since": self.audit_down.as_ref().map(|(t, _)| crate::audit::now_rfc3339(*t)),
                "error": self.audit_down.as_ref().map(|(_, e)| e.clone()),
                "integrity": self.audit.status(),
            },
            "unavailable_signals": self.unavailable,
            "history": self.history_status,
            "evaluation": {
                "running_since": self.evaluating.as_ref().map(|r| crate::audit::now_rfc3339(r.since_ms)),
                "playbooks": self.evaluating.as_ref().map(|r| r.playbooks.clone()),
                "overruns": self.overruns,
            },
            "gate_ledger_keys": self.gate.ledger_len(),
            "repeat_windows_open": self.repeats.len(),
            "replication": self.replication.as_ref().map(|r| json!(*r.borrow())),
        })
    }

    /// Lets running actions end (recording them, for at most `actions.timeout_secs` + 5 s),
    /// writes out coalesced decisions, then records the stop. An evaluation still running is
    /// abandoned (its requests are never gated) and named in the record.
    pub fn stop(mut self, reason: &str) -> Result<(), AuditError> {
        self.wait_actions(self.exec.timeout.saturating_add(Duration::from_secs(5)));
        let still = self.running.len();
        self.flush_rejections(i64::MAX); // counted rejections of the last minute, summarised
        let now = crate::audit::now_ms();
        for t in self.repeats.ended(i64::MAX) {
            if let Err(e) = self.close_repeat(&t, now) {
                tracing::error!(message = "Repeated decisions not recorded at stop.", error_code = e.code(), error = %e);
                break;
            }
        }
        let abandoned = self.evaluating.take().map(|r| r.playbooks);
        self.record(
            "agent_stopped",
            obj(json!({ "reason": reason, "actions_still_running": still, "evaluation_abandoned": abandoned })),
            now,
        )?;
        Ok(())
    }
}

/// Binds the control socket: only root (or the agent's user, or `group`) may connect.
fn bind_control(path: &std::path::Path, group: Option<&str>) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!("{} is in use: another medic is running", path.display());
        }
        std::fs::remove_file(path)?;
    }
    let l = tokio::net::UnixListener::bind(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let gid = group.and_then(crate::control::group_id);
    if let (Some(g), Some(name)) = (gid, group) {
        rustix::fs::chown(path, None, Some(rustix::process::Gid::from_raw(g)))
            .map_err(|e| anyhow::anyhow!("{}: chown to group {name}: {e}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(if gid.is_some() { 0o660 } else { 0o600 }))?;
    Ok(l)
}

/// How long a control connection may take to send its request.
pub const CONTROL_READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Control connections served at once; one more is answered "busy" and closed.
pub const MAX_CONTROL_CONNECTIONS: usize = 128;

/// A control request read and checked by its connection's task, for the loop to answer.
struct ControlCall {
    req: Request,
    peer: Peer,
    reply: tokio::sync::oneshot::Sender<Response>,
}

/// Accepts control connections; each is read in a task of its own (peer check, one line of at
/// most `MAX_REQUEST` bytes within [`CONTROL_READ_TIMEOUT`]), so an idle or slow client stalls
/// nothing; only a whole request reaches the loop.
async fn accept_control(listener: tokio::net::UnixListener, group: Option<String>, calls: tokio::sync::mpsc::Sender<ControlCall>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of fds, most likely: wait rather than spin.
                tracing::warn!(message = "Control socket accept failed.", error = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(message = "Control connection refused: too many at once.", max = MAX_CONTROL_CONNECTIONS);
            let mut out =
                serde_json::to_string(&Response::err("busy: too many control connections at once; try again")).unwrap_or_default();
            out.push('\n');
            let _ = stream.try_write(out.as_bytes());
            continue;
        };
        let (calls, group) = (calls.clone(), group.clone());
        tokio::spawn(async move {
            serve(stream, group.as_deref(), calls).await;
            drop(permit);
        });
    }
}

/// Reads one request from a control connection, has the loop answer it, writes the answer.
async fn serve(stream: tokio::net::UnixStream, group: Option<&str>, calls: tokio::sync::mpsc::Sender<ControlCall>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let Ok(cred) = stream.peer_cred() else { return };
    let peer = Peer { uid: cred.uid(), gid: cred.gid(), pid: cred.pid().unwrap_or(0) };
    let (r, mut w) = stream.into_split();
    let answer = if !peer.allowed(group) {
        tracing::warn!(message = "Control request refused.", actor = %peer.actor());
        Response::err("permission denied: only root or the control group may use this socket")
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(r.take(crate::control::MAX_REQUEST as u64));
        match tokio::time::timeout(CONTROL_READ_TIMEOUT, reader.read_line(&mut line)).await {
            Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
                Ok(req) => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    if calls.send(ControlCall { req, peer, reply }).await.is_err() {
                        Response::err("the agent is stopping")
                    } else {
                        answer.await.unwrap_or_else(|_| Response::err("the agent is stopping"))
                    }
                }
                Err(e) => Response::err(format!("bad request: {e}")),
            },
            _ => Response::err(format!("no request within {} s", CONTROL_READ_TIMEOUT.as_secs())),
        }
    };
    let mut out = serde_json::to_string(&answer).unwrap_or_default();
    out.push('\n');
    let _ = tokio::time::timeout(CONTROL_READ_TIMEOUT, w.write_all(out.as_bytes())).await;
}

/// Registers an eBPF ring's fd with the reactor.
#[allow(unsafe_code)]
fn ring_fd(fd: std::os::fd::OwnedFd) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd (a dup of the ring's fd) for its whole life, so the
    // descriptor stays open and refers to the same ring until the AsyncFd is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE).ok() }
}

/// Resolves when `fd` is readable; never when there is none.
async fn readable(fd: Option<&tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>) {
    match fd {
        Some(fd) => {
            if let Ok(mut g) = fd.readable().await {
                g.clear_ready();
            }
        }
        None => std::future::pending().await,
    }
}

/// SIGTERM and SIGINT, listened for from before the agent starts: one that arrives while the
/// audit log is opened or the eBPF programs load must neither kill the agent half-way (the
/// default action) nor be lost; it stops the agent as soon as the loop runs. Made inside the
/// runtime that will run the loop.
pub struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    pub fn listen() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }
}

/// Runs the agent until SIGTERM/SIGINT; SIGHUP reloads the playbooks; control connections are
/// served by tasks of their own and answered by the loop; each tick's sampling and evaluation
/// run on a worker thread while the loop keeps serving; an eBPF event (a retransmit burst, a
/// CLOSE_WAIT count crossing its threshold) runs a tick at once (at most one every 200 ms).
///
/// SIGTERM stops the agent whatever a playbook does: an evaluation in progress is abandoned
/// (its thread dies with the process), running actions get `actions.timeout_secs` + 5 s to end,
/// the forwarder 3 s to send the last records.
pub async fn run(
    mut agent: Agent,
    stops: StopSignals,
    interval_secs: u64,
    control: PathBuf,
    group: Option<String>,
    mqtt: crate::forward::MqttConfig,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut sd = notify::Notifier::from_env();
    if let Some(timeout) = sd.watchdog() {
        match notify::watchdog_problem(Duration::from_secs(interval_secs), timeout) {
            Some(why) => tracing::warn!(message = "Watchdog cannot be kept fed.", error_code = "watchdog_interval", reason = %why),
            None => tracing::info!(message = "Watchdog on: fed after each completed tick.", timeout_ms = timeout.as_millis() as u64),
        }
    }
    let (status_tx, status_rx) = tokio::sync::watch::channel(String::new());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::channel::<Incoming>(64);
    let (ack_tx, ack_rx) = tokio::sync::mpsc::channel::<(String, String)>(64);
    let forwarder = mqtt.enabled.then(|| {
        let state_dir = agent.audit_path().parent().map(PathBuf::from).unwrap_or_default();
        let keys = mqtt.trusted_keys_dir.clone().unwrap_or_else(|| state_dir.join("trusted-keys"));
        agent.verifier = crate::control::remote::Verifier::load(&keys, &state_dir);
        let (health_tx, health_rx) = tokio::sync::watch::channel(crate::forward::Health::default());
        agent.replication = Some(health_rx);
        let links = crate::forward::Links { status: status_rx, stop: stop_rx, health: health_tx, commands: cmd_tx, acks: ack_rx };
        tokio::spawn(crate::forward::run(mqtt.clone(), agent.node.clone(), state_dir, links))
    });
    let listener = match bind_control(&control, group.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            // A start that cannot serve ends in order: the next start must not report a crash.
            let _ = agent.stop("the control socket could not be bound");
            return Err(e);
        }
    };
    let (call_tx, mut call_rx) = tokio::sync::mpsc::channel::<ControlCall>(MAX_CONTROL_CONNECTIONS);
    let acceptor = tokio::spawn(accept_control(listener, group.clone(), call_tx));
    // The evaluation worker: one thread for the agent's life, one job at a time. It is never
    // joined: at stop a job still running is abandoned with the process.
    let (job_tx, job_rx) = std::sync::mpsc::channel::<EvalJob>();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Evaluated>(1);
    std::thread::Builder::new().name("medic-eval".into()).spawn(move || {
        while let Ok(job) = job_rx.recv() {
            if done_tx.blocking_send(job.run()).is_err() {
                break;
            }
        }
    })?;
    let StopSignals { mut term, mut int } = stops;
    let mut hup = signal(SignalKind::hangup())?;
    let mut ticker = tokio::time::interval(Duration::from_secs(interval_secs));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let rings: Vec<_> = agent.event_fds().into_iter().filter_map(ring_fd).collect();
    let mut last_wake = tokio::time::Instant::now() - Duration::from_secs(1);
    // An eBPF wake-up waiting for its 200 ms spacing, or for the running evaluation to end.
    let mut wake_at: Option<tokio::time::Instant> = None;
    let mut woken_while_busy = false;
    let mut busy = false;
    let reason = loop {
        tokio::select! {
            _ = readable(rings.first()) => {
                if busy { woken_while_busy = true } else { wake_at = wake(&mut agent, last_wake).or(wake_at) }
            }
            _ = readable(rings.get(1)) => {
                if busy { woken_while_busy = true } else { wake_at = wake(&mut agent, last_wake).or(wake_at) }
            }
            _ = tokio::time::sleep_until(wake_at.unwrap_or_else(tokio::time::Instant::now)), if wake_at.is_some() && !busy => {
                wake_at = None;
                last_wake = tokio::time::Instant::now();
                tracing::info!(message = "Woken by an eBPF event.");
                busy = start_tick(&mut agent, &job_tx);
            }
            _ = ticker.tick() => {
                if busy {
                    agent.overrun(crate::audit::now_ms());
                } else {
                    busy = start_tick(&mut agent, &job_tx);
                }
                let _ = status_tx.send(agent.public_status());
            }
            Some(done) = done_rx.recv() => {
                busy = false;
                let now = crate::audit::now_ms().max(done.now);
                if let Err(e) = agent.finish(done, now) {
                    tracing::error!(message = "Audit log not writable; no decisions this tick.", error_code = e.code(), error = %e);
                }
                if std::mem::take(&mut woken_while_busy) {
                    wake_at = wake(&mut agent, last_wake).or(wake_at);
                }
                let _ = status_tx.send(agent.public_status());
                // A tick completed on the loop: the only thing that feeds the watchdog.
                sd.tick_completed();
                if sd.is_ready() { sd.status(&notify::status_of(&agent)) } else { sd.ready(&notify::status_of(&agent)) }
            }
            Some(call) = call_rx.recv() => {
                let answer = agent.control(call.req, &call.peer);
                let _ = call.reply.send(answer);
            }
            Some(inc) = cmd_rx.recv() => {
                if let Some(ack) = agent.remote(&inc) {
                    let _ = ack_tx.try_send((format!("{}/ack", inc.topic), ack.to_string()));
                }
                let _ = status_tx.send(agent.public_status());
            }
            _ = hup.recv() => {
                tracing::info!(message = "Reloading playbooks (SIGHUP).");
                sd.reloading();
                if let Err(e) = agent.reload() {
                    tracing::error!(message = "Reload not recorded.", error_code = e.code(), error = %e);
                }
                // Ready again, unless the first tick (which sends READY=1) has not completed yet.
                if sd.is_ready() {
                    sd.ready(&notify::status_of(&agent));
                }
            }
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
        }
    };
    tracing::info!(message = "Stopping.", reason, evaluation_abandoned = busy);
    sd.stopping(reason);
    acceptor.abort();
    drop(call_rx);
    drop(rings);
    let _ = std::fs::remove_file(&control);
    agent.stop(reason)?;
    tracing::info!(message = "Stopped.", message_id = ids::STOPPED, reason);
    // The forwarder gets a moment to send the last records, the stop among them.
    let _ = stop_tx.send(true);
    if let Some(f) = forwarder {
        let _ = tokio::time::timeout(Duration::from_secs(3), f).await;
    }
    Ok(())
}

/// Starts a tick on the worker; true when one is running.
fn start_tick(agent: &mut Agent, jobs: &std::sync::mpsc::Sender<EvalJob>) -> bool {
    let Some((job, ready)) = agent.begin(crate::audit::now_ms(), None) else { return true };
    if let Err(e) = ready {
        tracing::error!(message = "Audit log not writable; no decisions this tick.", error_code = e.code(), error = %e);
    }
    match jobs.send(job) {
        Ok(()) => true,
        Err(std::sync::mpsc::SendError(job)) => {
            // The worker is gone (it cannot be, short of a bug): evaluate here rather than never.
            tracing::error!(message = "Evaluation worker gone; evaluating on the loop.");
            let now = job.now;
            if let Err(e) = agent.finish(job.run(), now) {
                tracing::error!(message = "Audit log not writable; no decisions this tick.", error_code = e.code(), error = %e);
            }
            false
        }
    }
}

/// An eBPF event: drains the rings; when there were events, the time of the tick they call for
/// (at once, or 200 ms after the last such tick).
fn wake(agent: &mut Agent, last: tokio::time::Instant) -> Option<tokio::time::Instant> {
    let n = agent.drain_events();
    if n == 0 {
        return None;
    }
    tracing::debug!(message = "eBPF events.", events = n);
    Some((last + Duration::from_millis(200)).max(tokio::time::Instant::now()))
}
