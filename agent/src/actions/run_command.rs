//! `run_command`: runs an allowlisted executable (absolute path, arguments matched against the
//! entry's patterns by the gate) as the entry's user, with a clean environment, no stdin, in a
//! process group of its own, killed as a group at the timeout. Its stdout and stderr, bounded,
//! go into the record. Verified by exit status 0.
//!
//! Argument patterns are path-like ([`arg_matches`]): `*` and `?` never match `/`, an argument
//! with a `..` component never matches, and an argument starting with `-` matches only a
//! pattern that itself starts with `-`. The executor checks the arguments against its entry
//! again before it runs anything, whatever the gate said.
//!
//! Playbooks ask with `run_command(path, args, reason)`. The policy allows only what matches a
//! `policy.commands` entry ([`CommandRule`], this kind's config fragment), and the gate hands the
//! entry it matched ([`rule`]) to the executor.

use super::glob::glob_match;
use super::request::{ask, err, Evaluation, RhaiResult};
use super::{ActionKind, ActionRequest, ExecContext, Outcome, Policy, Status};
use rhai::{Array, Engine, NativeCallContext};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use serde_json::{json, Value};
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One allowed command (`[[policy.commands]]`): an absolute path, argument patterns (`*`, `?`)
/// matched one to one, the user it runs as, and its timeout.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CommandRule {
    pub path: PathBuf,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default = "nobody")]
    pub user: String,
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn nobody() -> String {
    "nobody".into()
}

const fn default_timeout() -> u64 {
    30
}

/// Whether one argument matches one pattern of a `policy.commands` entry. `*` matches any run
/// of characters and `?` one character, neither ever a `/`: a pattern has as many `/`-separated
/// parts as the arguments it matches (`/var/log/app/*` matches `/var/log/app/x.log`, not
/// `/var/log/app/sub/x.log`). An argument with a `..` component (between `/` or after `=`) never
/// matches, so no pattern can be climbed out of. An argument starting with `-` matches only a
/// pattern that spells the `-`, so `*` is never an option.
pub fn arg_matches(pattern: &str, arg: &str) -> bool {
    if arg.split(['/', '=']).any(|c| c == "..") || pattern.split(['/', '=']).any(|c| c == "..") {
        return false;
    }
    if arg.starts_with('-') && !pattern.starts_with('-') {
        return false;
    }
    let (p, a): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), arg.split('/').collect());
    p.len() == a.len() && p.iter().zip(&a).all(|(p, a)| glob_match(p, a))
}

/// Whether `args` match an entry's patterns, one to one.
pub fn args_match(patterns: &[String], args: &[&str]) -> bool {
    patterns.len() == args.len() && patterns.iter().zip(args).all(|(p, a)| arg_matches(p, a))
}

/// The allowlist entry a request matches: path equal, arguments matched one to one against
/// the entry's path-like patterns ([`arg_matches`]).
pub fn rule<'a>(commands: &'a [CommandRule], req: &ActionRequest) -> Option<&'a CommandRule> {
    let args: Vec<&str> =
        req.params.get("args").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    commands.iter().find(|c| c.path == Path::new(&req.target) && args_match(&c.args, &args))
}

/// `run_command(path, args, reason)`: the arguments are kept as strings.
pub fn register<E: Evaluation>(e: &mut Engine) {
    e.register_fn("run_command", |ctx: NativeCallContext, path: &str, args: Array, reason: &str| -> RhaiResult<bool> {
        if !path.starts_with('/') {
            return Err(err(format!("run_command: {path:?} must be an absolute path")));
        }
        let args: Vec<Value> = args.iter().map(|a| Value::String(a.to_string())).collect();
        let mut params = BTreeMap::new();
        params.insert("args".into(), Value::Array(args));
        ask::<E>(&ctx, ActionKind::RunCommand, path.to_string(), params, reason)
    });
}

pub fn policy_check(p: &Policy, req: &ActionRequest) -> Option<(&'static str, String)> {
    if rule(p.commands, req).is_none() {
        return Some(("allowlist", format!("{} with these arguments is not in policy.commands", req.target)));
    }
    None
}

/// (uid, gid) of a user from /etc/passwd.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
    })
}

/// Reads a pipe to its end, keeping the first `max` bytes and counting the rest.
fn drain(mut r: impl Read + Send + 'static, max: usize) -> std::thread::JoinHandle<(Vec<u8>, u64)> {
    std::thread::spawn(move || {
        let (mut kept, mut total, mut buf) = (Vec::new(), 0u64, [0u8; 8192]);
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            total += n as u64;
            let room = max.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        (kept, total)
    })
}

pub fn execute(req: &ActionRequest, cx: &ExecContext) -> Outcome {
    let Some(rule) = &cx.command else {
        return Outcome::fail(Status::Failed, "not_allowed", format!("{} is not in policy.commands", req.target), Value::Null);
    };
    let args: Vec<String> = req
        .params
        .get("args")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(String::from)).collect())
        .unwrap_or_default();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    if req.target != rule.path.to_string_lossy() || !args_match(&rule.args, &refs) {
        return Outcome::fail(
            Status::Failed,
            "not_allowed",
            format!("{} with these arguments is not in policy.commands", req.target),
            Value::Null,
        );
    }
    let Some((uid, gid)) = lookup_user(&rule.user) else {
        return Outcome::fail(Status::Failed, "no_such_user", format!("user {:?} not found", rule.user), Value::Null);
    };
    let mut cmd = Command::new(&rule.path);
    cmd.args(&args).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin").env("LANG", "C.UTF-8");
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).current_dir("/").process_group(0);
    if rustix::process::geteuid().is_root() {
        cmd.uid(uid).gid(gid);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::fail(Status::Failed, "spawn_failed", format!("{}: {e}", rule.path.display()), Value::Null),
    };
    let out = drain(child.stdout.take().expect("piped"), cx.max_output_bytes);
    let err = drain(child.stderr.take().expect("piped"), cx.max_output_bytes);
    let timeout = Duration::from_secs(rule.timeout_secs);
    let start = Instant::now();
    let pgid = rustix::process::Pid::from_raw(child.id() as i32);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                if let Some(pg) = pgid {
                    let _ = rustix::process::kill_process_group(pg, rustix::process::Signal::KILL);
                }
                let _ = child.wait();
                break None;
            }
        }
    };
    // A grandchild that kept the pipes open is in the same group and was killed with it.
    let (o, ot) = out.join().unwrap_or_default();
    let (e, et) = err.join().unwrap_or_default();
    let detail = json!({
        "command": rule.path.display().to_string(),
        "args": args,
        "user": rule.user,
        "exit_code": status.and_then(|s| s.code()),
        "signal": status.and_then(|s| s.signal()),
        "stdout": String::from_utf8_lossy(&o),
        "stdout_bytes": ot,
        "stderr": String::from_utf8_lossy(&e),
        "stderr_bytes": et,
    });
    match status {
        None => Outcome::fail(Status::TimedOut, "timeout", format!("killed after {}s", rule.timeout_secs), detail),
        Some(s) if s.success() => Outcome::ok(detail),
        Some(s) if s.code().is_some() => {
            Outcome::fail(Status::Failed, "exit_status", format!("exited with {}", s.code().unwrap_or(-1)), detail)
        }
        Some(s) => Outcome::fail(Status::Failed, "killed_by_signal", format!("killed by signal {}", s.signal().unwrap_or(0)), detail),
    }
}

#[cfg(test)]
mod tests {
    use super::arg_matches;

    #[test]
    fn star_does_not_cross_a_slash_or_climb_or_become_an_option() {
        assert!(arg_matches("/var/log/app/*", "/var/log/app/x.log"));
        assert!(!arg_matches("/var/log/app/*", "/var/log/app/../../../../etc/shadow"));
        assert!(!arg_matches("/var/log/app/*", "/var/log/app/sub/x.log"));
        assert!(!arg_matches("/var/log/app/*", "/var/log/app/.."));
        assert!(arg_matches("/var/log/*/*.log", "/var/log/app/x.log"));
        assert!(!arg_matches("*", "--output=/etc/passwd"));
        assert!(!arg_matches("*", "-rf"));
        assert!(arg_matches("-n", "-n"));
        assert!(arg_matches("--lines=*", "--lines=20"));
        assert!(!arg_matches("--file=*", "--file=.."));
        assert!(!arg_matches("?", "/"));
        assert!(arg_matches("hello", "hello"));
    }
}
