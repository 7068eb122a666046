//! `signal_process`: signals a process through a pidfd, so the signal cannot reach another
//! process that reused the pid. The pid's identity is checked against the start time the
//! playbook saw. For TERM, INT and QUIT it waits for the process to exit and, after
//! `kill_after`, sends KILL; verified when the process is gone. Other signals are verified by
//! their delivery.

use super::{ActionRequest, ExecContext, Outcome, Status};
use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use serde_json::{json, Value};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

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

pub fn run(req: &ActionRequest, cx: &ExecContext) -> Outcome {
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
    if let Some(why) =
        crate::gate::protect::identify(std::path::Path::new("/proc"), pid).and_then(|id| crate::gate::protect::protected(&id, &[], &[]))
    {
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
