//! What a process *is*, for the policy's `protected` rule (checked through the `restart_unit` and
//! `signal_process` policy checks, and again by the `signal_process` executor): its executable
//! and its cgroup, read from procfs, never its name. A name is whatever the process chose
//! (`prctl(PR_SET_NAME)`, `argv[0]`, a copy of a binary called `sshd`): protecting by name would
//! let any process opt out of remediation, and a renamed real daemon would lose its protection.
//!
//! A process is protected when any of these holds:
//! - it runs a protected executable: a file named in [`PROTECTED_EXES`] in a system directory
//!   ([`SYSTEM_DIRS`]), owned by root and writable by nobody else (so a user cannot plant one);
//!   the executable is read from `/proc/<pid>/exe`, which survives an upgrade that deleted it;
//! - it runs the same executable as this agent (another `medic`, the CLI included);
//! - its cgroup (v2, or the v1 `name=systemd` hierarchy) has a component that is a protected
//!   unit ([`PROTECTED_UNITS`], plus `policy.protected_units`): `ssh.service`, `init.scope`, ...;
//! - it leads a login session (`session-*.scope`, and its session id is its pid): the shell an
//!   operator logged in with. The jobs started from that shell are not protected, so a runaway
//!   someone started by hand can still be stopped;
//! - its executable matches `policy.protected_processes` (the file name, or the whole path when
//!   the pattern has a `/`).

use super::glob::glob_match;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Units never restarted, whose processes are never signalled, whatever the config says.
pub const PROTECTED_UNITS: &[&str] = &[
    "ssh.service",
    "sshd.service",
    "ssh.socket",
    "sshd.socket",
    "ssh@*.service",
    "sshd@*.service",
    "sshd-session@*.service",
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
    "systemd-logind.service",
    "systemd-networkd.service",
    "systemd-resolved.service",
    "systemd-udevd.service",
    "dbus.service",
    "dbus-broker.service",
    "dbus.socket",
    "polkit.service",
    "medic.service",
    "init.scope",
    "-.slice",
    // Starting one of these ends the node (or everything on it): never a remediation.
    "systemd-reboot.service",
    "systemd-poweroff.service",
    "systemd-halt.service",
    "systemd-kexec.service",
    "systemd-soft-reboot.service",
    "rescue.service",
    "emergency.service",
    "reboot.target",
    "poweroff.target",
    "halt.target",
    "kexec.target",
    "soft-reboot.target",
    "rescue.target",
    "emergency.target",
    "shutdown.target",
];

/// Executable file names that are protected when they live in a [`SYSTEM_DIRS`] directory.
pub const PROTECTED_EXES: &[&str] = &[
    "systemd",
    "init",
    "sshd",
    "sshd-session",
    "sshd-auth",
    "systemd-journald",
    "systemd-logind",
    "systemd-networkd",
    "systemd-resolved",
    "systemd-udevd",
    "systemd-executor",
    "dbus-daemon",
    "dbus-broker",
    "dbus-broker-launch",
    "polkitd",
    "agetty",
    "login",
    "medic",
];

/// Directories only root can write to, where the protected executables are installed.
pub const SYSTEM_DIRS: &[&str] = &[
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
    "/usr/lib/systemd",
    "/lib/systemd",
    "/usr/lib/openssh",
    "/usr/libexec/openssh",
    "/usr/libexec",
    "/usr/lib/polkit-1",
    "/usr/libexec/polkit-1",
];

/// What procfs says a process is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// `/proc/<pid>/exe`, without a ` (deleted)` suffix.
    pub exe: Option<PathBuf>,
    /// The executable is a root-owned file nobody else can write.
    pub exe_root_owned: bool,
    /// (device, inode) of the executable.
    pub exe_id: Option<(u64, u64)>,
    /// cgroup paths: the v2 one and the v1 `name=systemd` one, where present.
    pub cgroups: Vec<String>,
    /// Its session id is its pid.
    pub session_leader: bool,
}

/// Reads what `pid` is from `proc_root`; None when it is gone (or unreadable).
pub fn identify(proc_root: &Path, pid: i64) -> Option<Identity> {
    let dir = proc_root.join(pid.to_string());
    let cgroup = std::fs::read_to_string(dir.join("cgroup")).ok()?;
    let cgroups = cgroup
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let (id, ctrl, path) = (it.next()?, it.next()?, it.next()?);
            ((id == "0" && ctrl.is_empty()) || ctrl == "name=systemd").then(|| path.to_string())
        })
        .collect();
    let exe = std::fs::read_link(dir.join("exe")).ok().map(|p| {
        let s = p.to_string_lossy();
        s.strip_suffix(" (deleted)").map_or(p.clone(), PathBuf::from)
    });
    // The magic link opens the executable itself, deleted or not.
    let meta = std::fs::metadata(dir.join("exe")).ok();
    let stat = std::fs::read_to_string(dir.join("stat")).ok();
    let session_leader = stat
        .as_deref()
        .and_then(|s| s.rfind(')').map(|i| &s[i + 1..]))
        .and_then(|rest| rest.split_whitespace().nth(3))
        .is_some_and(|sid| sid == pid.to_string());
    Some(Identity {
        exe,
        exe_root_owned: meta.as_ref().is_some_and(|m| m.uid() == 0 && m.mode() & 0o022 == 0),
        exe_id: meta.as_ref().map(|m| (m.dev(), m.ino())),
        cgroups,
        session_leader,
    })
}

/// (device, inode) of this agent's own executable.
fn own_exe() -> Option<(u64, u64)> {
    std::fs::metadata("/proc/self/exe").ok().map(|m| (m.dev(), m.ino()))
}

/// Whether a unit name is protected by the built-in list or `extra` patterns.
pub fn unit_protected(unit: &str, extra: &[String]) -> bool {
    PROTECTED_UNITS.iter().any(|p| glob_match(p, unit)) || extra.iter().any(|p| glob_match(p, unit))
}

/// Why a process with this identity is protected, or None.
pub fn protected(id: &Identity, extra_units: &[String], extra_processes: &[String]) -> Option<String> {
    // What cannot be identified is not signalled: a kernel thread has no executable, and one that
    // cannot be read (no CAP_SYS_PTRACE, a sandbox) might be sshd's.
    let Some(exe) = &id.exe else {
        return Some("its executable cannot be read (a kernel thread, or no permission): medic signals only what it can identify".into());
    };
    let name = exe.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let in_system_dir = exe.parent().is_some_and(|d| SYSTEM_DIRS.iter().any(|s| d == Path::new(s)));
    if id.exe_root_owned && in_system_dir && PROTECTED_EXES.contains(&name.as_str()) {
        return Some(format!("it runs {}, a protected executable", exe.display()));
    }
    let exe_s = exe.to_string_lossy();
    if let Some(p) = extra_processes.iter().find(|p| if p.contains('/') { glob_match(p, &exe_s) } else { glob_match(p, &name) }) {
        return Some(format!("it runs {} (policy.protected_processes {p:?})", exe.display()));
    }
    if id.exe_id.is_some() && id.exe_id == own_exe() {
        return Some("it runs medic's own executable".into());
    }
    for cg in &id.cgroups {
        for c in cg.split('/').filter(|c| !c.is_empty()) {
            if unit_protected(c, extra_units) {
                return Some(format!("it is in cgroup {cg} of protected unit {c}"));
            }
            if id.session_leader && c.starts_with("session-") && c.ends_with(".scope") {
                return Some(format!("it leads the login session {c}"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(exe: &str, cg: &str) -> Identity {
        Identity { exe: Some(exe.into()), exe_root_owned: true, exe_id: None, cgroups: vec![cg.into()], session_leader: false }
    }

    #[test]
    fn exe_in_a_system_dir_protects_a_copy_elsewhere_does_not() {
        assert!(protected(&id("/usr/lib/openssh/sshd-session", "/"), &[], &[]).is_some());
        assert!(protected(&id("/usr/lib/systemd/systemd-logind", "/"), &[], &[]).is_some());
        assert!(protected(&id("/tmp/x/sshd", "/"), &[], &[]).is_none());
        let mut planted = id("/usr/sbin/sshd", "/");
        planted.exe_root_owned = false;
        assert!(protected(&planted, &[], &[]).is_none());
    }

    #[test]
    fn a_process_whose_executable_cannot_be_read_is_protected() {
        // The bug: an unreadable /proc/<pid>/exe (another user's process without CAP_SYS_PTRACE)
        // left exe None, and None passed every check.
        let mut unknown = id("/tmp/a", "/");
        unknown.exe = None;
        assert!(protected(&unknown, &[], &[]).unwrap().contains("cannot be read"));
    }

    #[test]
    fn cgroup_units_and_session_leaders() {
        assert!(protected(&id("/tmp/a", "/system.slice/ssh.service"), &[], &[]).is_some());
        assert!(protected(&id("/tmp/a", "/system.slice/sshd@3-10.0.0.1:22-10.0.0.2:5000.service"), &[], &[]).is_some());
        assert!(protected(&id("/tmp/a", "/system.slice/app.service"), &["app.*".into()], &[]).is_some());
        let mut job = id("/usr/bin/yes", "/user.slice/user-0.slice/session-4.scope");
        assert!(protected(&job, &[], &[]).is_none(), "a job in a session is not protected");
        job.session_leader = true;
        assert!(protected(&job, &[], &[]).is_some(), "the session's leader is");
    }
}
