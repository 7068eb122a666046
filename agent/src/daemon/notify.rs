//! Telling systemd how the agent is doing (sd_notify(3) protocol, `Type=notify`): READY=1 once
//! the first tick is recorded, STATUS= with the mode and the last audit seq, RELOADING=1 around a
//! SIGHUP reload, STOPPING=1 when a stop begins, and WATCHDOG=1 each time a tick really
//! completed on the loop, never from a timer of its own: a loop that is stuck (or stopped with
//! SIGSTOP) stops feeding the watchdog, and systemd kills and restarts the agent.
//!
//! Our own few lines over a unix datagram socket rather than a crate: the protocol is one
//! datagram of `KEY=VALUE` lines to the path (or, with a leading `@`, the abstract address) in
//! `NOTIFY_SOCKET`; std does both, and the watchdog rules (WATCHDOG_PID, the interval check)
//! are ours to decide anyway. Without `NOTIFY_SOCKET` every call is a no-op.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Why a notification could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `NOTIFY_SOCKET` is neither an absolute path nor an `@` abstract name.
    #[error("NOTIFY_SOCKET {0:?} is neither an absolute path nor an @abstract name")]
    Address(String),
    /// The socket could not be made or the datagram not sent.
    #[error("sending to NOTIFY_SOCKET {addr}: {source}")]
    Io { addr: String, source: std::io::Error },
}

impl NotifyError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Address(_) => "notify_address",
            Self::Io { .. } => "notify_io",
        }
    }
}

/// The service manager's side, read once from the environment at start.
pub struct Notifier {
    target: Option<(String, SocketAddr)>,
    sock: Option<UnixDatagram>,
    /// The watchdog's timeout (`WATCHDOG_USEC`), when it is for this process.
    watchdog: Option<Duration>,
    last_status: String,
    ready: bool,
    /// A failure was logged (once: the next ones would say the same).
    warned: bool,
}

impl Notifier {
    /// From `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut n = Self::new(var("NOTIFY_SOCKET").as_deref(), var("WATCHDOG_USEC").as_deref(), var("WATCHDOG_PID").as_deref());
        if let Err(e) = &n.sock_ready() {
            tracing::warn!(message = "systemd notifications off.", error_code = e.code(), error = %e);
            n.target = None;
        }
        n
    }

    /// As [`Notifier::from_env`], from given values (tests).
    pub fn new(socket: Option<&str>, watchdog_usec: Option<&str>, watchdog_pid: Option<&str>) -> Self {
        let target = socket.map(|s| (s.to_string(), address(s)));
        let mut bad = None;
        let target = match target {
            Some((s, Ok(a))) => Some((s, a)),
            Some((s, Err(_))) => {
                bad = Some(s);
                None
            }
            None => None,
        };
        let for_us = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(std::process::id()));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us && target.is_some())
            .map(Duration::from_micros);
        if let Some(s) = bad {
            tracing::warn!(message = "systemd notifications off.", error_code = "notify_address", error = %NotifyError::Address(s));
        }
        Self { target, sock: None, watchdog, last_status: String::new(), ready: false, warned: false }
    }

    fn sock_ready(&mut self) -> Result<(), NotifyError> {
        let Some((name, _)) = &self.target else { return Ok(()) };
        if self.sock.is_none() {
            // Non-blocking: a manager that does not read (stuck, or a socket someone else
            // bound) fills the kernel's queue (net.unix.max_dgram_qlen, 10 by default), and a
            // blocking send would then stop the loop for ever. A full queue drops the datagram.
            let io = |source| NotifyError::Io { addr: name.clone(), source };
            let sock = UnixDatagram::unbound().map_err(io)?;
            sock.set_nonblocking(true).map_err(io)?;
            self.sock = Some(sock);
        }
        Ok(())
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog timeout, when systemd set one for this process.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends one datagram; a failure is logged once and otherwise ignored (the agent's work does
    /// not depend on the service manager hearing it).
    pub fn send(&mut self, msg: &str) {
        if self.target.is_none() {
            return;
        }
        let res = self.sock_ready().and_then(|()| {
            let (Some((name, addr)), Some(sock)) = (&self.target, &self.sock) else { return Ok(()) };
            sock.send_to_addr(msg.as_bytes(), addr).map(|_| ()).map_err(|source| NotifyError::Io { addr: name.clone(), source })
        });
        if let Err(e) = res {
            if !std::mem::replace(&mut self.warned, true) {
                tracing::warn!(message = "systemd notification not sent.", error_code = e.code(), error = %e);
            }
        }
    }

    /// READY=1, with the status, the first time (and again after a reload).
    pub fn ready(&mut self, status: &str) {
        self.last_status = status.to_string();
        self.ready = true;
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// Whether READY=1 was sent.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// STATUS=, when it changed.
    pub fn status(&mut self, status: &str) {
        if status != self.last_status {
            self.last_status = status.to_string();
            self.send(&format!("STATUS={status}"));
        }
    }

    /// WATCHDOG=1, when a watchdog is set: call it only when a tick completed.
    pub fn tick_completed(&mut self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }

    /// RELOADING=1 with the time it began (systemd ≥ 253 requires MONOTONIC_USEC; older ones
    /// ignore it); [`Notifier::ready`] ends it.
    pub fn reloading(&mut self) {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = (t.tv_sec as u64).saturating_mul(1_000_000).saturating_add(t.tv_nsec as u64 / 1000);
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading playbooks"));
    }

    /// STOPPING=1.
    pub fn stopping(&mut self, reason: &str) {
        self.send(&format!("STOPPING=1\nSTATUS=stopping ({reason})"));
    }
}

/// A path, or with a leading `@` an abstract name (Linux).
fn address(s: &str) -> Result<SocketAddr, NotifyError> {
    if let Some(name) = s.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes()).map_err(|_| NotifyError::Address(s.to_string()));
    }
    if !s.starts_with('/') {
        return Err(NotifyError::Address(s.to_string()));
    }
    SocketAddr::from_pathname(s).map_err(|_| NotifyError::Address(s.to_string()))
}

/// Whether a tick every `interval` can keep a watchdog of `timeout` fed: a tick completes within
/// one interval of the last (plus its evaluation time), so the interval must be at most half the
/// timeout, leaving the other half for a slow evaluation, a late wake-up and systemd's own
/// latency. `None` when it can; else why not, for the start-up warning.
pub fn watchdog_problem(interval: Duration, timeout: Duration) -> Option<String> {
    (interval.saturating_mul(2) > timeout).then(|| {
        format!(
            "signals.interval_secs ({} s) is more than half of the watchdog timeout (WatchdogSec={} ms): a tick may not complete \
             in time to feed it and systemd will kill the agent; set WatchdogSec to at least twice the interval",
            interval.as_secs(),
            timeout.as_millis()
        )
    })
}

/// The STATUS= text of the running agent.
pub fn status_of(agent: &super::Agent) -> String {
    status_line(&agent.mode, agent.journal.audit.last_seq(), agent.journal.down.is_none())
}

/// The STATUS= text: mode (with its expiry), last seq, and an audit outage if any.
pub fn status_line(mode: &crate::control::mode::ModeState, last_seq: u64, writable: bool) -> String {
    let expiry = match (mode.expires_ms, mode.revert_to) {
        (Some(e), Some(r)) => format!(" until {}, then {}", crate::audit::now_rfc3339(e), r.as_str()),
        (Some(e), None) => format!(" until {}", crate::audit::now_rfc3339(e)),
        _ => String::new(),
    };
    let audit = if writable { "" } else { "; AUDIT LOG NOT WRITABLE: not acting" };
    format!("mode {}{expiry}; last seq {last_seq}{audit}", mode.mode.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaches_a_path_and_an_abstract_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let mut n = Notifier::new(path.to_str(), Some("2000000"), None);
        assert_eq!(n.watchdog(), Some(Duration::from_secs(2)));
        n.ready("mode dry-run; last seq 3");
        let mut buf = [0u8; 512];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=mode dry-run; last seq 3");
        n.status("mode dry-run; last seq 3"); // unchanged: not sent
        n.tick_completed();
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1");

        use std::os::linux::net::SocketAddrExt;
        let name = format!("medic-notify-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let mut n = Notifier::new(Some(&format!("@{name}")), None, None);
        n.stopping("SIGTERM");
        let len = rx.recv(&mut buf).unwrap();
        assert!(buf[..len].starts_with(b"STOPPING=1\n"));
    }

    #[test]
    fn a_manager_that_never_reads_does_not_block_the_sender() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let _rx = UnixDatagram::bind(&path).unwrap();
        let mut n = Notifier::new(path.to_str(), Some("2000000"), None);
        // Far past the kernel's queue (10 datagrams by default): each is dropped, none blocks.
        for _ in 0..100 {
            n.tick_completed();
        }
        assert!(n.warned, "the full queue was reported");
    }

    #[test]
    fn no_socket_no_watchdog_and_another_pids_watchdog_is_not_ours() {
        let mut n = Notifier::new(None, Some("1000000"), None);
        assert!(!n.enabled());
        assert_eq!(n.watchdog(), None);
        n.ready("x"); // a no-op, not an error
        let n = Notifier::new(Some("/run/x"), Some("1000000"), Some("1"));
        assert_eq!(n.watchdog(), None, "WATCHDOG_PID names another process");
        let n = Notifier::new(Some("relative"), Some("1000000"), None);
        assert!(!n.enabled());
        let n = Notifier::new(Some("/run/x"), Some("junk"), None);
        assert_eq!(n.watchdog(), None);
        // Zero, negative and overflowing values are no watchdog; the largest is kept, unharmed.
        for bad in ["0", "-5", "18446744073709551616", " "] {
            assert_eq!(Notifier::new(Some("/run/x"), Some(bad), None).watchdog(), None, "{bad}");
        }
        let huge = Notifier::new(Some("/run/x"), Some("18446744073709551615"), None).watchdog().unwrap();
        assert!(watchdog_problem(Duration::from_secs(86_400), huge).is_none());
        // A path longer than sun_path is refused, not truncated to another socket.
        assert!(!Notifier::new(Some(&format!("/{}", "x".repeat(200))), None, None).enabled());
    }

    #[test]
    fn the_interval_must_be_at_most_half_the_watchdog() {
        assert!(watchdog_problem(Duration::from_secs(1), Duration::from_secs(30)).is_none());
        assert!(watchdog_problem(Duration::from_secs(15), Duration::from_secs(30)).is_none());
        assert!(watchdog_problem(Duration::from_secs(16), Duration::from_secs(30)).unwrap().contains("WatchdogSec"));
    }

    #[test]
    fn status_names_mode_expiry_and_seq() {
        use crate::control::mode::ModeState;
        use crate::gate::Mode;
        let m = ModeState { mode: Mode::Live, expires_ms: Some(0), revert_to: Some(Mode::DryRun), ..ModeState::fresh() };
        assert_eq!(status_line(&m, 7, true), "mode live until 1970-01-01T00:00:00.000Z, then dry-run; last seq 7");
        assert!(status_line(&ModeState::fresh(), 1, false).ends_with("NOT WRITABLE: not acting"));
    }
}
