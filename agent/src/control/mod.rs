//! Control: the local Unix socket that `medic mode`, `medic status` and `medic breaker` talk
//! to, and the persisted node mode (`mode`). One JSON request per connection, one JSON answer.
//! Only root, the agent's own user, or members of `control.group` may use it; the actor of a
//! change is taken from the peer's credentials (SO_PEERCRED), never from the request.
//! A request is parsed into a `command::Command` and applied by the same path as a fleet
//! command (`daemon::Agent::apply`).

pub mod command;
pub mod mode;
pub mod remote;
pub mod verify;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Largest request accepted, in bytes.
pub const MAX_REQUEST: usize = 64 * 1024;

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Status,
    SetMode {
        mode: String,
        reason: String,
        ttl_secs: Option<u64>,
    },
    Breakers,
    ResetBreaker {
        playbook: String,
        action: String,
        target: String,
        reason: String,
    },
    Reload,
    /// Why each playbook did (not) act, and what would block it now (`medic explain`).
    Explain {
        #[serde(default)]
        playbook: Option<String>,
        #[serde(default)]
        target: Option<String>,
    },
}

/// The answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default)]
    pub result: Value,
    #[serde(default)]
    pub error: Option<String>,
}

impl Response {
    pub fn ok(result: Value) -> Self {
        Self { ok: true, result, error: None }
    }
    pub fn err(e: impl Into<String>) -> Self {
        Self { ok: false, result: Value::Null, error: Some(e.into()) }
    }
}

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

fn passwd_field(file: &str, id: u32) -> Option<String> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2] == id.to_string()).then(|| f[0].to_string())
    })
}

impl Peer {
    /// `uid=0(root) pid=1234(bash)`: recorded as the actor of a change.
    pub fn actor(&self) -> String {
        let user = passwd_field("/etc/passwd", self.uid).unwrap_or_else(|| "?".into());
        let comm = std::fs::read_to_string(format!("/proc/{}/comm", self.pid)).map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into());
        format!("uid={}({user}) pid={}({comm})", self.uid, self.pid)
    }

    /// Whether this peer may use the socket.
    pub fn allowed(&self, group: Option<&str>) -> bool {
        if self.uid == 0 || self.uid == rustix::process::geteuid().as_raw() {
            return true;
        }
        let Some(group) = group else { return false };
        let Some(gid) = group_id(group) else { return false };
        if self.gid == gid {
            return true;
        }
        // Supplementary groups of the peer process.
        std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok().is_some_and(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
        })
    }
}

/// The gid of a group from /etc/group.
pub fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[0] == name).then(|| f[2].parse().ok())?
    })
}

/// Client side: sends one request and reads the answer.
pub fn call(socket: &Path, req: &Request) -> Result<Response, String> {
    let mut s = UnixStream::connect(socket)
        .map_err(|e| format!("cannot reach the agent at {}: {e} (is `medic run` running?)", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut line = serde_json::to_string(req).map_err(|e| e.to_string())?;
    line.push('\n');
    s.write_all(line.as_bytes()).map_err(|e| format!("{}: {e}", socket.display()))?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(|e| format!("{}: {e}", socket.display()))?;
    serde_json::from_str(&answer).map_err(|e| format!("{}: bad answer from the agent: {e}", socket.display()))
}

/// Creates a new state file (a temp file to be renamed into place) 0600 whatever the umask,
/// replacing whatever was at `path` and never writing through a link left there.
pub(crate) fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32).open(path)
}

#[cfg(test)]
mod private_file_tests {
    use std::os::unix::fs::PermissionsExt;

    /// A link left where a state file's temp file goes is replaced, never written through, and
    /// the file is 0600 whatever the umask asks for.
    #[test]
    fn a_link_in_place_of_a_state_file_is_replaced_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let tmp = dir.path().join(".mode.json.tmp");
        std::os::unix::fs::symlink(&victim, &tmp).unwrap();
        std::io::Write::write_all(&mut super::create_private(&tmp).unwrap(), b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert_eq!(std::fs::read_to_string(&tmp).unwrap(), "new");
        assert_eq!(std::fs::metadata(&tmp).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
