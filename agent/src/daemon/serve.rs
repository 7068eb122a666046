//! The agent's async loop ([`run`]): ticks on an interval and on eBPF wake-ups, hands each
//! tick's evaluation to the `medic-eval` worker, and meanwhile answers control connections and
//! fleet commands, reloads on SIGHUP, feeds the systemd watchdog and stops in order on
//! SIGTERM/SIGINT.

use super::control_socket::{accept_control, bind_control, ControlCall, MAX_CONTROL_CONNECTIONS};
use super::notify;
use super::tick::{EvalJob, Evaluated};
use super::Agent;
use crate::control::command::Incoming;
use crate::telemetry::ids;
use std::path::PathBuf;
use std::time::Duration;

/// Registers an eBPF ring's fd with the reactor.
#[allow(unsafe_code)]
fn ring_fd(fd: std::os::fd::OwnedFd) -> Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the AsyncFd owns the OwnedFd (a dup of the ring's fd) for its whole life, so the
    // descriptor stays open and refers to the same ring until the AsyncFd is dropped.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE).ok() }
}

/// Resolves when any of the rings is readable (clearing its readiness); never when there are
/// none. One arm of the loop for every eBPF family's ring, however many are loaded.
async fn any_readable(fds: &[tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>]) {
    std::future::poll_fn(|cx| {
        for fd in fds {
            if let std::task::Poll::Ready(ready) = fd.poll_read_ready(cx) {
                if let Ok(mut g) = ready {
                    g.clear_ready();
                }
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
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
    alerts: (crate::alerts::AlertsConfig, i64),
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
    // The retained status goes to the broker only: built (a JSON document, with the audit log's
    // state) only when there is one.
    let publish_status = mqtt.enabled;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (cmd_tx, mut cmd_rx) = tokio::sync::mpsc::channel::<Incoming>(64);
    let (ack_tx, ack_rx) = tokio::sync::mpsc::channel::<(String, String)>(64);
    let forwarder = mqtt.enabled.then(|| {
        let state_dir = agent.audit_path().parent().map(PathBuf::from).unwrap_or_default();
        let keys = mqtt.trusted_keys_dir.clone().unwrap_or_else(|| state_dir.join("trusted-keys"));
        agent.verifier = crate::control::remote::Verifier::load(&keys, &state_dir);
        let (health_tx, health_rx) = tokio::sync::watch::channel(crate::forward::Health::default());
        agent.replication = Some(health_rx);
        let links = crate::forward::Links { status: status_rx, stop: stop_rx.clone(), health: health_tx, commands: cmd_tx, acks: ack_rx };
        tokio::spawn(crate::forward::run(mqtt.clone(), agent.node.clone(), state_dir, links))
    });
    // Alert sinks tail the audit log like the forwarder; the log's fail-closed state comes from
    // the loop (it cannot be in the log).
    let (down_tx, down_rx) = tokio::sync::watch::channel(agent.audit_down());
    let alerter = (!alerts.0.sinks().is_empty()).then(|| {
        let state_dir = agent.audit_path().parent().map(PathBuf::from).unwrap_or_default();
        let links = crate::alerts::Links { stop: stop_rx.clone(), audit_down: down_rx, metrics: agent.metrics() };
        let ctx = crate::alerts::Context { node: agent.node.clone(), state_dir, repeat_window_ms: alerts.1, links };
        tokio::spawn(crate::alerts::run(alerts.0, ctx))
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
    // Probes and program sensors run as tasks on this runtime from here on.
    agent.start_sensors();
    let bell = std::sync::Arc::new(crate::signals::wake::Doorbell::default());
    agent.start_fast_watch(bell.clone());
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
            _ = any_readable(&rings) => {
                if busy { woken_while_busy = true } else { wake_at = wake(&mut agent, last_wake).or(wake_at) }
            }
            w = bell.rung() => {
                agent.wake_next(w);
                if busy { woken_while_busy = true } else { wake_at = wake(&mut agent, last_wake).or(wake_at) }
            }
            _ = tokio::time::sleep_until(wake_at.unwrap_or_else(tokio::time::Instant::now)), if wake_at.is_some() && !busy => {
                wake_at = None;
                last_wake = tokio::time::Instant::now();
                tracing::info!(message = "Woken early.", woken_by = %agent.woken());
                busy = start_tick(&mut agent, &job_tx);
            }
            _ = ticker.tick() => {
                if busy {
                    agent.overrun(crate::audit::now_ms());
                } else {
                    busy = start_tick(&mut agent, &job_tx);
                }
                if publish_status {
                    let _ = status_tx.send(agent.public_status());
                }
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
                if publish_status {
                    let _ = status_tx.send(agent.public_status());
                }
                down_tx.send_if_modified(|d| {
                    let now = agent.audit_down();
                    let changed = *d != now;
                    *d = now;
                    changed
                });
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
                if publish_status {
                    let _ = status_tx.send(agent.public_status());
                }
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
    if let Some(a) = alerter {
        let _ = tokio::time::timeout(Duration::from_secs(1), a).await;
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

/// An eBPF event or the fast watch: drains the rings; when something woke the next tick, the
/// time of that tick (at once, or 200 ms after the last such tick, which bounds what a storm of
/// wake-ups costs).
fn wake(agent: &mut Agent, last: tokio::time::Instant) -> Option<tokio::time::Instant> {
    let events = agent.drain_events();
    if !events.is_empty() {
        tracing::debug!(message = "eBPF events.", woken_by = %events);
    }
    if agent.woken().is_empty() {
        return None;
    }
    Some((last + Duration::from_millis(200)).max(tokio::time::Instant::now()))
}
