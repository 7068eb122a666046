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
//!
//! A file per job: `lifecycle` (start, stop), `tick` (plan on the loop, sample and evaluate on
//! the worker, settle on the loop: the decide step itself is `crate::decide`, shared with
//! `playbook test`, `explain` and `replay`), `journal` (every record, fail-closed), `runner`
//! (actions on their threads, their outcomes), `commands` (control and fleet commands, the mode),
//! `reload`, `status`, `control_socket` (the listener), `serve` (the async loop), `repeats`
//! (coalesced refusals), `notify` (sd_notify), `sensors` (probes and program sensors: which
//! run, from the playbooks' META and the config).

mod commands;
mod control_socket;
mod journal;
mod lifecycle;
pub mod notify;
mod reload;
pub mod repeats;
mod runner;
mod sensors;
mod serve;
mod status;
mod tick;

pub use control_socket::{CONTROL_READ_TIMEOUT, MAX_CONTROL_CONNECTIONS};
pub use serve::{run, StopSignals};
pub use tick::{EvalJob, Evaluated, TickReport};

use crate::control::mode::ModeState;
use crate::decide::Decider;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

/// The running agent.
pub struct Agent {
    pub node: String,
    /// The playbooks, their timers and back-offs, and the gate.
    decider: Decider,
    /// The audit log as the agent writes it (fail-closed state, coalesced refusals).
    journal: journal::Journal,
    /// Executed actions on their threads.
    runner: runner::Runner,
    /// `None` while an evaluation holds it.
    sense: Option<tick::Sensing>,
    /// The history's status as of the last tick (the history itself may be on the worker).
    history_status: Value,
    evaluating: Option<tick::Running>,
    overruns: u64,
    playbooks_dir: Option<PathBuf>,
    /// Local playbooks added to the bundled ones (config `local_playbooks_dir`).
    local_playbooks_dir: Option<PathBuf>,
    /// The loaded playbooks' META `files`, handed to the sampler at each (re)load.
    files_declared: crate::signals::files::Declared,
    state_dir: PathBuf,
    mode: ModeState,
    /// What woke the next tick early (eBPF events, the fast disk watch): the playbooks that read
    /// it evaluate, due or not.
    force_next: crate::signals::wake::Wake,
    /// `signals.fast_interval_ms` and `fast_step_pct`: the fast watch `serve` starts.
    fast: (u64, f64),
    /// How replication to the broker is doing, when it is on.
    pub replication: Option<tokio::sync::watch::Receiver<crate::forward::Health>>,
    /// Checks signed fleet commands.
    pub verifier: crate::control::remote::Verifier,
    /// Fleet groups this node belongs to (shown in its retained status).
    pub groups: Vec<String>,
    /// The MQTT topic prefix: a fleet command's topic names its scope under it.
    prefix: String,
    /// Rejected commands per topic in the current minute (see `Agent::remote`).
    rejections: BTreeMap<String, commands::Rejections>,
    unavailable: BTreeMap<String, String>,
    metrics: Arc<crate::metrics::Metrics>,
    /// Probes and program sensors (`sensors.rs`): their tasks and the board the sampler reads.
    sensors: sensors::AgentSensors,
}

impl Agent {
    pub fn audit_path(&self) -> PathBuf {
        self.journal.audit.path().to_path_buf()
    }

    pub fn playbook_names(&self) -> Vec<String> {
        self.decider.playbook_names()
    }

    pub fn mode(&self) -> &ModeState {
        &self.mode
    }

    /// The metrics the agent keeps, for the `/metrics` endpoint.
    pub fn metrics(&self) -> Arc<crate::metrics::Metrics> {
        self.metrics.clone()
    }
}
