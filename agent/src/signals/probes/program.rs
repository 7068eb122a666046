//! Program sensors (`[[programs]]`, the operator's allowlist; never from a playbook): a program
//! run every `interval_secs` as a configured user, with a cleared environment, stdin from
//! /dev/null, cwd `/`, in a process group of its own that is killed at the timeout; its exit
//! status and the numbers it prints (the first 64 KiB of stdout) become signals.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::time::Duration;

/// Bytes of stdout read; the rest is not (the pipe is closed).
pub const MAX_STDOUT: usize = 64 * 1024;
/// Values taken from one run's output.
pub const MAX_VALUES: usize = 64;
/// Longest key.
pub const MAX_KEY: usize = 64;
/// Most programs, and the longest timeout.
pub const MAX_PROGRAMS: usize = 32;
pub const MAX_TIMEOUT_SECS: u64 = 300;
/// Arguments of one program, and their bytes together.
pub const MAX_ARGS: usize = 64;
pub const MAX_ARG_BYTES: usize = 4096;

/// `[[programs]]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProgramConfig {
    /// Signals are `program.<name>.*`.
    pub name: String,
    /// The program (an absolute path) and its arguments; no shell.
    pub argv: Vec<String>,
    /// Who it runs as (a name in /etc/passwd). Default `nobody`.
    #[serde(default = "nobody")]
    pub user: String,
    #[serde(default = "default_interval")]
    pub interval_secs: u64,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn nobody() -> String {
    "nobody".into()
}
const fn default_interval() -> u64 {
    60
}
const fn default_timeout() -> u64 {
    10
}

impl ProgramConfig {
    /// Its bounds; the error names the field (`programs[0].argv: ...`).
    pub fn check(&self, at: &str) -> Result<(), String> {
        if !super::spec::valid_name(&self.name) {
            return Err(format!("{at}.name: {:?} must be 1 to 64 letters, digits, '-' or '_'", self.name));
        }
        match self.argv.first() {
            Some(p) if p.starts_with('/') => {}
            _ => return Err(format!("{at}.argv: the first element must be the program's absolute path")),
        }
        if self.argv.len() > MAX_ARGS
            || self.argv.iter().map(|a| a.len() + 1).sum::<usize>() > MAX_ARG_BYTES
            || self.argv.iter().any(|a| a.contains('\0'))
        {
            return Err(format!("{at}.argv: at most {MAX_ARGS} arguments and {MAX_ARG_BYTES} bytes, without NUL"));
        }
        if self.user.is_empty() || self.user.contains([':', '\n', '/']) {
            return Err(format!("{at}.user: {:?} is not a user name", self.user));
        }
        if !(1..=86_400).contains(&self.interval_secs) {
            return Err(format!("{at}.interval_secs: {} is out of range: must be 1..=86400 seconds", self.interval_secs));
        }
        let max = self.interval_secs.min(MAX_TIMEOUT_SECS);
        if !(1..=max).contains(&self.timeout_secs) {
            return Err(format!(
                "{at}.timeout_secs: {} is out of range: must be 1..={max} seconds (the interval, at most {MAX_TIMEOUT_SECS})",
                self.timeout_secs
            ));
        }
        Ok(())
    }
}

/// (uid, gid) of `user` from /etc/passwd.
pub fn lookup_user(passwd: &str, user: &str) -> Option<(u32, u32)> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 3 && f[0] == user).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// One run's result: the metrics (without the `program.<name>.` prefix), and why it failed.
#[derive(Debug, Default)]
pub struct RunResult {
    pub values: Vec<(String, f64)>,
    pub ok: bool,
    pub reason: Option<String>,
}

/// Kills the program's process group when dropped (at the timeout, or when the sensor stops).
struct GroupKill(Option<rustix::process::Pid>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pg) = self.0 {
            let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::KILL);
        }
    }
}

/// Runs the program once.
pub async fn run_once(p: &ProgramConfig) -> RunResult {
    use tokio::io::AsyncReadExt;
    let failed = |reason: String| RunResult { values: vec![("exit".into(), -1.0), ("ok".into(), 0.0)], ok: false, reason: Some(reason) };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let Some((uid, gid)) = lookup_user(&passwd, &p.user) else { return failed(format!("user {:?} not in /etc/passwd", p.user)) };
    let Some((prog, args)) = p.argv.split_first() else { return failed("no argv".into()) };
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .current_dir("/")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    // std drops supplementary groups (setgroups(0)) when root sets a uid.
    if rustix::process::getuid().as_raw() != uid {
        cmd.uid(uid).gid(gid);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("cannot start {prog}: {e}")),
    };
    let mut guard = GroupKill(child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)));
    let mut out = Vec::new();
    let mut truncated = false;
    let timeout = Duration::from_secs(p.timeout_secs);
    let ran = tokio::time::timeout(timeout, async {
        if let Some(stdout) = child.stdout.take() {
            let _ = stdout.take(MAX_STDOUT as u64 + 1).read_to_end(&mut out).await;
            // The pipe is closed here: a program still writing gets EPIPE.
        }
        if out.len() > MAX_STDOUT {
            out.truncate(MAX_STDOUT);
            truncated = true;
        }
        child.wait().await
    })
    .await;
    let status = match ran {
        Ok(Ok(st)) => st,
        Ok(Err(e)) => return failed(format!("wait: {e}")),
        Err(_) => {
            drop(guard); // the whole group, now
            let _ = child.wait().await;
            return failed(format!("killed at its timeout of {} s", p.timeout_secs));
        }
    };
    guard.0 = None; // ended: its pid (and group) may be reused
    let exit = status.code().map_or(-1.0, f64::from);
    let ok = status.success();
    let mut values = parse_output(&String::from_utf8_lossy(&out));
    values.push(("exit".into(), exit));
    values.push(("ok".into(), if ok { 1.0 } else { 0.0 }));
    let mut reasons = Vec::new();
    if !ok {
        reasons.push(match status.code() {
            Some(c) => format!("exited with status {c}"),
            None => "killed by a signal".to_string(),
        });
    }
    if truncated {
        reasons.push(format!("stdout cut at {MAX_STDOUT} bytes"));
    }
    RunResult { values, ok, reason: (!reasons.is_empty()).then(|| reasons.join("; ")) }
}

/// Numbers on stdout: `key value` or `key=value` lines (keys sanitized to `[a-z0-9_]`), and a
/// line holding only a number as `value`; at most [`MAX_VALUES`], the first of each key kept.
pub fn parse_output(text: &str) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for line in text.lines() {
        if out.len() >= MAX_VALUES {
            break;
        }
        let l = line.trim();
        let (key, val) = if let Some((k, v)) = l.split_once('=') {
            (k.trim(), v.trim())
        } else if let Some((k, v)) = l.split_once(char::is_whitespace) {
            (k.trim(), v.trim())
        } else {
            ("value", l)
        };
        let Ok(v) = val.parse::<f64>() else { continue };
        if !v.is_finite() {
            continue;
        }
        let key: String = key.chars().take(MAX_KEY).map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
        if key.is_empty() || key == "exit" || key == "ok" || out.iter().any(|(k, _)| *k == key) {
            continue;
        }
        out.push((key, v));
    }
    out
}

/// The program's path, for messages.
pub fn program_path(p: &ProgramConfig) -> PathBuf {
    PathBuf::from(p.argv.first().cloned().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_on_stdout_become_values() {
        let v = parse_output("queue 12\nlag_seconds=3.5\n42\nHello world\nuid 65534\nexit 3\nBad-Key! 7\nnan_v NaN\n");
        assert_eq!(
            v,
            vec![
                ("queue".into(), 12.0),
                ("lag_seconds".into(), 3.5),
                ("value".into(), 42.0),
                ("uid".into(), 65534.0),
                ("bad_key_".into(), 7.0)
            ]
        );
        let many: String = (0..200).map(|i| format!("k{i} {i}\n")).collect();
        assert_eq!(parse_output(&many).len(), MAX_VALUES);
    }

    #[test]
    fn a_program_is_bounded() {
        let p =
            ProgramConfig { name: "q".into(), argv: vec!["/bin/true".into()], user: "nobody".into(), interval_secs: 10, timeout_secs: 5 };
        assert!(p.check("programs[0]").is_ok());
        let rel = ProgramConfig { argv: vec!["true".into()], ..p.clone() };
        assert!(rel.check("programs[0]").unwrap_err().contains("programs[0].argv"));
        let slow = ProgramConfig { timeout_secs: 11, ..p.clone() };
        assert!(slow.check("programs[0]").unwrap_err().contains("timeout_secs"));
        assert_eq!(lookup_user("root:x:0:0::/root:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n", "nobody"), Some((65534, 65534)));
    }
}
