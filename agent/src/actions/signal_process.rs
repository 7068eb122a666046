//! `signal_process`: signals a process through a pidfd, so the signal cannot reach another
//! process that reused the pid. The pid's identity is checked against the start time the
//! playbook saw. For TERM, INT and QUIT it waits for the process to exit and, after
//! `kill_after`, sends KILL; verified when the process is gone. Other signals are verified by
//! their delivery.
//!
//! Playbooks ask with `signal_process(pid, signal, reason)`, for a process in the snapshot (its
//! start time and unit go into the request). The policy refuses PID 1, medic itself and
//! protected processes by what they are ([`super::protect`]; config keys: `protected_processes`,
//! `protected_units`).

use super::glob::glob_match;
use super::request::{ask, err, evaluation, Evaluation, RhaiResult};
use super::{protect, ActionKind, ActionRequest, ExecContext, Outcome, Policy, Status};
use rhai::{Engine, NativeCallContext};
use std::collections::BTreeMap;
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use serde_json::{json, Value};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// Signals a playbook may send.
pub const SIGNALS: &[&str] = &["TERM", "KILL", "HUP", "INT", "QUIT", "USR1", "USR2", "STOP", "CONT"];

fn signal_of(name: &str) -> Option<Signal> {
    Some(match name {
        "TERM" => Signal::TERM,
        "KILL" => Signal::KILL,
        "HUP" => Signal::HUP,
        "INT" => Signal::INT,
        "QUIT" => Signal::QUIT,
        "USR1" => Signal::USR1,
        "USR2" => Signal::USR2,
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        _ => return None,
    })
}

/// Start time (seconds since the epoch) of `pid`, computed as the sampler does.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let st = crate::signals::process::parse_pid_stat(std::path::Path::new("stat"), &stat).ok()?;
    let boot = crate::signals::cpu::read_stat(std::path::Path::new("/proc")).ok()?.boot_time;
    Some(boot + st.start_ticks / rustix::param::clock_ticks_per_second().max(1))
}

/// Waits until the process behind `fd` exits or `d` passes; true when it exited.
fn wait_exit(fd: &OwnedFd, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ts = rustix::event::Timespec { tv_sec: left.as_secs() as i64, tv_nsec: left.subsec_nanos() as i64 };
        let mut fds = [PollFd::new(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(n) if n > 0 => return true,
            Ok(_) => return false,
            Err(rustix::io::Errno::INTR) if !left.is_zero() => continue,
            Err(_) => return false,
        }
    }
}

/// `signal_process(pid, signal, reason)`: false when no process in the snapshot has `pid`.
pub fn register<E: Evaluation>(e: &mut Engine) {
    e.register_fn("signal_process", |ctx: NativeCallContext, pid: i64, signal: &str, reason: &str| -> RhaiResult<bool> {
        let sig = signal.trim_start_matches("SIG");
        if !SIGNALS.contains(&sig) {
            return Err(err(format!("signal_process: unknown signal {signal:?} (one of {})", SIGNALS.join(", "))));
        }
        let eval = evaluation::<E>(&ctx)?;
        // Only a process in this snapshot can be asked for; its start time guards against pid reuse.
        let Some(p) = eval.snapshot().processes.iter().find(|p| p.pid == pid) else { return Ok(false) };
        let mut params = BTreeMap::new();
        params.insert("pid".into(), pid.into());
        params.insert("signal".into(), sig.into());
        params.insert("start_time".into(), p.start_time.into());
        params.insert("unit".into(), p.unit.clone().map_or(Value::Null, Value::String));
        let name = p.name.clone();
        ask::<E>(&ctx, ActionKind::SignalProcess, name, params, reason)
    });
}

/// PID 1 and medic itself; then what the process is (its executable and cgroup, never what it
/// calls itself); then the unit the playbook saw it in.
pub fn policy_check(p: &Policy, req: &ActionRequest) -> Option<(&'static str, String)> {
    let pid = req.params.get("pid").and_then(Value::as_i64).unwrap_or(0);
    if pid <= 1 || pid == p.self_pid {
        return Some(("protected", format!("pid {pid} is protected (PID 1 or medic itself)")));
    }
    if let Some(procfs) = p.procfs {
        if let Some(why) =
            protect::identify(procfs, pid).and_then(|id| protect::protected(&id, p.protected_units, p.protected_processes))
        {
            return Some(("protected", format!("pid {pid} is protected: {why}")));
        }
    } else if protect::PROTECTED_EXES.contains(&req.target.as_str()) || p.protected_processes.iter().any(|pat| glob_match(pat, &req.target))
    {
        return Some(("protected", format!("process {:?} is protected", req.target)));
    }
    if let Some(u) = req.params.get("unit").and_then(Value::as_str) {
        if protect::unit_protected(u, p.protected_units) {
            return Some(("protected", format!("pid {pid} belongs to protected unit {u}")));
        }
    }
    None
}

pub fn execute(req: &ActionRequest, cx: &ExecContext) -> Outcome {
    let p = &req.params;
    let pid = p.get("pid").and_then(Value::as_i64).unwrap_or(0);
    let sig_name = p.get("signal").and_then(Value::as_str).unwrap_or("");
    let Some(sig) = signal_of(sig_name) else {
        return Outcome::fail(Status::Failed, "bad_request", format!("unknown signal {sig_name:?}"), Value::Null);
    };
    let Some(raw) = i32::try_from(pid).ok().filter(|p| *p > 1).and_then(Pid::from_raw) else {
        return Outcome::fail(Status::Failed, "bad_request", format!("pid {pid} cannot be signalled"), Value::Null);
    };
    let fd = match pidfd_open(raw, PidfdFlags::empty()) {
        Ok(fd) => fd,
        Err(e) => return Outcome::fail(Status::Failed, "no_such_process", format!("pid {pid}: {e}"), Value::Null),
    };
    // With the pidfd held, the pid cannot be reused: check it is still the process the playbook saw.
    let want = p.get("start_time").and_then(Value::as_u64);
    let have = start_time(raw.as_raw_nonzero().get());
    if want.is_some() && have != want {
        return Outcome::fail(
            Status::Failed,
            "pid_reused",
            format!("pid {pid} started at {have:?}, the request saw {want:?}"),
            Value::Null,
        );
    }
    // Again here, with the pidfd held: what the process is now (it may have exec'd since the gate).
    if let Some(why) = protect::identify(std::path::Path::new("/proc"), pid).and_then(|id| protect::protected(&id, &[], &[])) {
        return Outcome::fail(Status::Failed, "protected", format!("pid {pid} is protected: {why}"), Value::Null);
    }
    if let Err(e) = pidfd_send_signal(&fd, sig) {
        return Outcome::fail(Status::Failed, "signal_failed", format!("pid {pid}: {e}"), Value::Null);
    }
    if !matches!(sig_name, "TERM" | "INT" | "QUIT" | "KILL") {
        return Outcome::ok(json!({ "pid": pid, "signal": sig_name, "delivered": true }));
    }
    let first_wait = if sig_name == "KILL" || cx.kill_after.is_zero() { cx.timeout } else { cx.kill_after.min(cx.timeout) };
    if wait_exit(&fd, first_wait) {
        return Outcome::ok(json!({ "pid": pid, "signal": sig_name, "exited": true, "killed": false }));
    }
    if sig_name == "KILL" || cx.kill_after.is_zero() {
        return Outcome::fail(Status::TimedOut, "still_running", format!("pid {pid} still runs after {sig_name}"), json!({ "pid": pid }));
    }
    if let Err(e) = pidfd_send_signal(&fd, Signal::KILL) {
        return Outcome::fail(Status::Failed, "signal_failed", format!("pid {pid}: KILL: {e}"), Value::Null);
    }
    if wait_exit(&fd, cx.timeout.saturating_sub(first_wait).max(Duration::from_secs(1))) {
        Outcome::ok(json!({ "pid": pid, "signal": sig_name, "exited": true, "killed": true }))
    } else {
        Outcome::fail(Status::TimedOut, "still_running", format!("pid {pid} still runs after KILL"), json!({ "pid": pid }))
    }
}
