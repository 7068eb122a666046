//! Actions under hostile conditions: a tree that changes under `clean_files`, argument patterns
//! a playbook tries to escape, processes that pretend to be (or hide) what they are, config
//! values that cannot work, and names that try to write to an operator's terminal. Each test
//! reproduces an attack seen on the old code (issue 9) on real files, mounts and processes.

use medic::actions::{execute, ActionKind, ActionRequest, ExecContext};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

fn cx(allowed: &[&Path]) -> ExecContext {
    ExecContext {
        timeout: Duration::from_secs(10),
        kill_after: Duration::from_secs(1),
        systemd_bus: None,
        max_output_bytes: 4096,
        allowed_paths: allowed.iter().map(|p| p.to_path_buf()).collect(),
        command: None,
    }
}

fn request(kind: ActionKind, target: &str, params: Value) -> ActionRequest {
    let params: BTreeMap<String, Value> = serde_json::from_value(params).unwrap();
    ActionRequest { kind, target: target.into(), params, reason: "test".into(), signals: BTreeMap::new() }
}

/// A file with an mtime an hour ago.
fn old_file(path: &Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let f = std::fs::File::create(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600)).unwrap();
}

fn clean(dir: &Path) -> ActionRequest {
    request(ActionKind::CleanFiles, dir.to_str().unwrap(), json!({ "glob": "*.log", "older_than_secs": 60 }))
}

#[test]
fn clean_files_symlink_swap_race_never_deletes_outside_the_allowed_root() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    let outside = tmp.path().join("outside");
    // allowed/a/b is what the playbook asks for; allowed/a is swapped, atomically and over and
    // over, with a symlink to `outside`, which has a b/ of its own.
    std::fs::create_dir_all(allowed.join("a/b")).unwrap();
    std::fs::create_dir_all(outside.join("b")).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("swap")).unwrap();
    let secret = outside.join("b/secret.log");
    old_file(&secret);
    let stop = Arc::new(AtomicBool::new(false));
    let racer = {
        let (stop, a, swap) = (stop.clone(), allowed.join("a"), allowed.join("swap"));
        std::thread::spawn(move || {
            let mut swaps = 0u64;
            while !stop.load(Ordering::Relaxed) {
                rustix::fs::renameat_with(rustix::fs::CWD, &a, rustix::fs::CWD, &swap, rustix::fs::RenameFlags::EXCHANGE).unwrap();
                swaps += 1;
            }
            swaps
        })
    };
    let c = cx(&[&allowed]);
    let (mut ok, mut refused, mut lost) = (0, 0, 0);
    for i in 0..1000 {
        // Something to delete inside, wherever `a` is at the moment.
        let _ = std::fs::File::create(allowed.join(format!("a/b/in-{i}.log")))
            .and_then(|f| f.set_modified(SystemTime::now() - Duration::from_secs(3600)));
        let out = execute(&clean(&allowed.join("a/b")), &c);
        if out.error_code.is_none() {
            ok += 1;
            let d = out.detail["directory"].as_str().unwrap();
            assert!(Path::new(d).starts_with(&allowed), "the record names the directory really opened: {d}");
        } else {
            refused += 1;
        }
        if !secret.exists() {
            lost += 1;
            old_file(&secret);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    eprintln!("1000 attempts: {ok} cleaned, {refused} refused, {lost} outside files deleted, {swaps} swaps");
    assert_eq!(lost, 0, "a file outside the allowed root was deleted");
    assert!(ok > 0 && refused > 0, "the race really raced: {ok} cleaned, {refused} refused");
}

#[test]
fn clean_files_refuses_a_symlink_in_the_middle_and_names_what_it_opened() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    let outside = tmp.path().join("outside");
    old_file(&outside.join("b/secret.log"));
    std::fs::create_dir_all(&allowed).unwrap();
    std::os::unix::fs::symlink(&outside, allowed.join("a")).unwrap();
    let out = execute(&clean(&allowed.join("a/b")), &cx(&[&allowed]));
    assert_eq!(out.error_code, Some("symlink_refused"), "{out:?}");
    assert!(outside.join("b/secret.log").exists());
    // `..` in the request cannot climb out either.
    let up = format!("{}/../outside/b", allowed.display());
    let out = execute(&clean(Path::new(&up)), &cx(&[&allowed]));
    assert!(out.error_code.is_some(), "{out:?}");
    assert!(outside.join("b/secret.log").exists());
}

/// A bind mount, unmounted on drop.
struct BindMount(PathBuf);

impl BindMount {
    fn new(from: &Path, at: &Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let st = std::process::Command::new("mount").arg("--bind").arg(from).arg(at).status().unwrap();
        assert!(st.success(), "mount --bind (the test runs as root)");
        Self(at.to_path_buf())
    }
}

impl Drop for BindMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn clean_files_does_not_cross_a_bind_mount_of_the_same_filesystem() {
    let tmp = tempfile::tempdir().unwrap();
    let allowed = tmp.path().join("allowed");
    let outside = tmp.path().join("outside");
    old_file(&allowed.join("logs/old.log"));
    old_file(&outside.join("secret.log"));
    old_file(&outside.join("deeper/secret.log"));
    let _m = BindMount::new(&outside, &allowed.join("logs/mnt"));
    // Same filesystem: the old st_dev check saw nothing to stop at.
    assert_eq!(
        std::fs::metadata(&outside).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).unwrap(),
        std::fs::metadata(allowed.join("logs/mnt")).map(|m| std::os::unix::fs::MetadataExt::dev(&m)).unwrap()
    );
    let c = cx(&[&allowed]);
    let out = execute(&clean(&allowed.join("logs")), &c);
    assert_eq!(out.error_code, None, "{out:?}");
    assert_eq!(out.detail["deleted"], 1, "{}", out.detail);
    assert_eq!(out.detail["skipped"]["other_filesystems"], 1, "{}", out.detail);
    assert!(!allowed.join("logs/old.log").exists());
    assert!(outside.join("secret.log").exists() && outside.join("deeper/secret.log").exists());
    // Asking for the mount point itself, or for a directory beneath it, is refused.
    for t in [allowed.join("logs/mnt"), allowed.join("logs/mnt/deeper")] {
        let out = execute(&clean(&t), &c);
        assert_eq!(out.error_code, Some("other_mount"), "{}: {out:?}", t.display());
    }
    assert!(outside.join("secret.log").exists() && outside.join("deeper/secret.log").exists());
}

/// An overlayfs mount (a container's root is one), unmounted on drop.
struct Overlay(PathBuf);

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn clean_files_deletes_on_overlayfs_where_files_report_their_layers_device() {
    // The bug: a file on overlayfs reports the device of its layer, its directory the overlay's;
    // compared by device, every file was skipped as "another filesystem" and the outcome said
    // ok with nothing deleted (found under the hardened unit in the booted container).
    let tmp = tempfile::tempdir().unwrap();
    // As in the container: the lower layer on disk, the upper one on a tmpfs.
    let rw = tmp.path().join("rw");
    std::fs::create_dir_all(&rw).unwrap();
    let _rw = crate::util::Tmpfs::mount(&rw, "size=1m");
    let (lower, upper, work, merged) = (tmp.path().join("lower"), rw.join("upper"), rw.join("work"), tmp.path().join("merged"));
    for d in [&upper, &work, &merged] {
        std::fs::create_dir_all(d).unwrap();
    }
    old_file(&lower.join("logs/from-lower.log"));
    old_file(&upper.join("logs/from-upper.log"));
    let opts = format!("lowerdir={},upperdir={},workdir={}", lower.display(), upper.display(), work.display());
    let st = std::process::Command::new("mount").args(["-t", "overlay", "overlay", "-o", &opts]).arg(&merged).status().unwrap();
    assert!(st.success(), "mount -t overlay (the test runs as root)");
    let _m = Overlay(merged.clone());
    let dir = |p: &Path| std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(p).unwrap());
    assert_ne!(dir(&merged.join("logs")), dir(&merged.join("logs/from-lower.log")), "overlayfs reports the layer's device for a file");
    let out = execute(&clean(&merged.join("logs")), &cx(&[&merged]));
    assert_eq!(out.error_code, None, "{out:?}");
    assert_eq!(out.detail["deleted"], 2, "{}", out.detail);
    assert_eq!(out.detail["skipped"]["other_filesystems"], 0, "{}", out.detail);
    assert!(!merged.join("logs/from-lower.log").exists() && !merged.join("logs/from-upper.log").exists());
}

fn playbook(name: &str, actions: &str, body: &str) -> String {
    crate::util::playbook_src(name, actions, "100", "0s", body)
}

/// A live agent on `dir` with the given playbooks and config.
fn live_agent(dir: &Path, pbs: &[(&str, String)], cfg: &str) -> (medic::daemon::Agent, PathBuf) {
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    medic::control::mode::ModeState {
        mode: medic::gate::Mode::Live,
        since_ms: 1,
        actor: "test".into(),
        reason: "test".into(),
        ..medic::control::mode::ModeState::fresh()
    }
    .save(&state)
    .unwrap();
    let pb = dir.join("pb");
    std::fs::create_dir_all(&pb).unwrap();
    for (f, src) in pbs {
        std::fs::write(pb.join(f), src).unwrap();
    }
    let cfg = medic::config::Config::parse("test.toml", cfg).unwrap();
    (medic::daemon::Agent::start(&cfg, Some(pb), state.clone()).unwrap(), state)
}

#[test]
fn run_command_arg_glob_cannot_climb_out_with_dotdot_or_cross_slashes_or_become_an_option() {
    let tmp = tempfile::tempdir().unwrap();
    let app = tmp.path().join("log/app");
    std::fs::create_dir_all(app.join("sub")).unwrap();
    std::fs::write(app.join("ok.log"), "fine\n").unwrap();
    std::fs::write(app.join("sub/deeper.log"), "DEEPER-CONTENT\n").unwrap();
    std::fs::write(tmp.path().join("shadow"), "SECRET-CONTENT\n").unwrap();
    let a = app.display();
    let body = format!(
        "run_command(\"/bin/cat\", [\"{a}/ok.log\"], \"allowed\");\n\
         run_command(\"/bin/cat\", [\"{a}/../../shadow\"], \"climb\");\n\
         run_command(\"/bin/cat\", [\"{a}/..\"], \"dotdot\");\n\
         run_command(\"/bin/cat\", [\"{a}/sub/deeper.log\"], \"deeper\");\n\
         run_command(\"/bin/cat\", [\"--version\"], \"option\");"
    );
    let pb = playbook("cat", "#{ kind: \"run_command\", target: \"/bin/cat\" }", &body);
    // Each refusal is checked on its own record: no coalescing of repeated refusals here.
    let cfg =
        format!("[audit]\nrepeat_window_secs = 0\n[policy]\ncommands = [{{ path = \"/bin/cat\", args = [\"{a}/*\"], user = \"root\" }}]\n");
    let (mut agent, state) = live_agent(tmp.path(), &[("c.rhai", pb)], &cfg);
    agent.tick(medic::audit::now_ms()).unwrap();
    agent.wait_actions(Duration::from_secs(20));
    agent.stop("test").unwrap();
    let recs = crate::util::audit_lines(&state);
    let acts: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "action").collect();
    assert_eq!(acts.len(), 5);
    for r in &acts {
        let expect = if r["trigger"]["reason"] == "allowed" { "executed" } else { "denied" };
        assert_eq!(r["decision"], expect, "{r}");
    }
    let log = std::fs::read_to_string(state.join("audit.log")).unwrap();
    assert!(log.contains("fine\\n"), "the allowed file was read");
    assert!(!log.contains("SECRET-CONTENT") && !log.contains("DEEPER-CONTENT"), "nothing outside the pattern was read");
}

#[test]
fn run_command_executor_rechecks_arguments_whatever_the_gate_said() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("shadow"), "SECRET-CONTENT\n").unwrap();
    let pattern = format!("{}/app/*", tmp.path().display());
    let mut c = cx(&[]);
    c.command = Some(medic::config::CommandRule { path: "/bin/cat".into(), args: vec![pattern], user: "root".into(), timeout_secs: 5 });
    let arg = format!("{}/app/../shadow", tmp.path().display());
    let out = execute(&request(ActionKind::RunCommand, "/bin/cat", json!({ "args": [arg] })), &c);
    assert_eq!(out.error_code, Some("not_allowed"), "{out:?}");
    assert!(!out.detail.to_string().contains("SECRET"));
}

/// A child process, killed and reaped on drop.
struct Proc(std::process::Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A cgroup v2 directory of the test's (e.g. `ssh.service`), removed on drop once empty.
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(rel: &str) -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("a cgroup2 mount");
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {} (cgroup v2): {e}", dir.display()));
        Self(dir)
    }

    fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // The process was killed before: the directory empties soon; then its test-only parent.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                if let Some(parent) = self.0.parent() {
                    let _ = std::fs::remove_dir(parent);
                }
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The gate's policy verdict (and the executor's, for a process the gate let through).
fn signal_verdict(pid: u32, name: &str) -> Option<(&'static str, String)> {
    let gate = medic::gate::Gate::new(medic::config::PolicyConfig::default());
    gate.policy_refuses(&request(ActionKind::SignalProcess, name, json!({ "pid": pid, "signal": "TERM" })))
}

fn spawn(cmd: &mut std::process::Command) -> Proc {
    Proc(cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap())
}

/// Waits until /proc/<pid>/comm reads `name`.
fn wait_comm(pid: u32, name: &str) {
    assert!(
        crate::util::wait_until(10, || std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)),
        "pid {pid} never named itself {name}"
    );
}

#[test]
fn a_process_naming_itself_sshd_is_not_protected_and_gets_signalled() {
    let tmp = tempfile::tempdir().unwrap();
    // A copy of sleep called sshd (comm and argv[0] both say sshd).
    let fake = tmp.path().join("sshd");
    std::fs::copy("/bin/sleep", &fake).unwrap();
    let mut copy = spawn(std::process::Command::new(&fake).arg("300"));
    wait_comm(copy.0.id(), "sshd");
    // A process that renames itself (writes /proc/self/comm, as prctl(PR_SET_NAME) does).
    let renamed = spawn(
        std::process::Command::new("python3").args(["-c", "open('/proc/self/comm','w').write('sshd'); import time; time.sleep(300)"]),
    );
    wait_comm(renamed.0.id(), "sshd");
    for p in [&copy, &renamed] {
        assert_eq!(signal_verdict(p.0.id(), "sshd"), None, "a name is not an identity");
    }
    // The executor signals it too: the old name list made `sshd` untouchable.
    let out = execute(&request(ActionKind::SignalProcess, "sshd", json!({ "pid": copy.0.id(), "signal": "KILL" })), &cx(&[]));
    assert_eq!(out.error_code, None, "{out:?}");
    assert!(copy.0.try_wait().unwrap().is_some() || crate::util::wait_until(5, || copy.0.try_wait().unwrap().is_some()));
}

#[test]
fn a_process_in_a_protected_unit_or_running_a_protected_exe_is_protected_whatever_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    // A plain sleep, moved into a cgroup called ssh.service: protected as what it is.
    let cg = Cgroup::new(&format!("medic-test-{}-unit.slice/ssh.service", std::process::id()));
    let sleeper = spawn(std::process::Command::new("/bin/sleep").arg("300"));
    cg.add(sleeper.0.id());
    let v = signal_verdict(sleeper.0.id(), "innocent-name").expect("protected by its cgroup");
    assert!(v.1.contains("ssh.service"), "{v:?}");
    // A real protected executable (dbus-daemon, from /usr/bin), asked for under another name.
    let bus = tmp.path().join("bus");
    let dbus = spawn(std::process::Command::new("/usr/bin/dbus-daemon").args([
        "--session",
        "--nofork",
        &format!("--address=unix:path={}", bus.display()),
    ]));
    assert!(crate::util::wait_until(10, || std::fs::read_link(format!("/proc/{}/exe", dbus.0.id())).is_ok()));
    let v = signal_verdict(dbus.0.id(), "not-dbus").expect("protected by its executable");
    assert!(v.1.contains("/usr/bin/dbus-daemon"), "{v:?}");
    // The executor refuses it as well, whatever the gate said.
    let out = execute(&request(ActionKind::SignalProcess, "x", json!({ "pid": sleeper.0.id(), "signal": "KILL" })), &cx(&[]));
    assert_eq!(out.error_code, Some("protected"), "{out:?}");
    drop(sleeper);
    drop(dbus);
    drop(cg);
}

#[test]
fn a_login_session_leader_is_protected_and_its_jobs_are_not() {
    let cg = Cgroup::new(&format!("medic-test-{}-login.slice/session-9999.scope", std::process::id()));
    // setsid: the shell an operator logged in with leads its session.
    let leader = spawn(std::process::Command::new("setsid").args(["/bin/sleep", "300"]));
    let job = spawn(std::process::Command::new("/bin/sleep").arg("300"));
    assert!(
        crate::util::wait_until(10, || std::fs::read_to_string(format!("/proc/{}/comm", leader.0.id())).is_ok_and(|c| c.trim() == "sleep"))
    );
    cg.add(leader.0.id());
    cg.add(job.0.id());
    assert!(signal_verdict(leader.0.id(), "sleep").is_some(), "the session's leader is protected");
    assert_eq!(signal_verdict(job.0.id(), "sleep"), None, "a job in the session is not");
    drop(leader);
    drop(job);
    drop(cg);
}

#[test]
fn a_process_named_with_escape_sequences_cannot_write_to_the_terminal_through_signals_or_audit_show() {
    let tmp = tempfile::tempdir().unwrap();
    // A real process names itself with an OSC (retitle the terminal) and a bidi override, and
    // spins so that it is in `medic signals`'s top 15 by CPU.
    let evil = "\u{1b}]0;pwn\u{7}\u{202e}x";
    let spin = spawn(
        std::process::Command::new("python3")
            .args(["-c", "open('/proc/self/comm','w').write('\\x1b]0;pwn\\x07\\u202ex')\nwhile True: pass"]),
    );
    assert!(crate::util::wait_until(10, || std::fs::read_to_string(format!("/proc/{}/comm", spin.0.id()))
        .is_ok_and(|c| c.trim_end_matches('\n') == evil)));
    std::thread::sleep(Duration::from_millis(500));
    let o = crate::util::run(&["signals"]);
    assert!(o.status.success(), "{}", crate::util::text(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(out.contains("\\u{1b}]0;pwn\\u{7}\\u{202e}x"), "the name is shown, escaped:\n{out}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\u{202e}'), "no raw control character");
    // JSON stays JSON (and carries the name exactly).
    let o = crate::util::run(&["signals", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["processes"].as_array().unwrap().iter().any(|p| p["name"] == evil));
    // The same name and a reason with escapes reach the log through a playbook; `audit show`
    // escapes them.
    let body = "for p in node.processes() { if p.name.contains(\"pwn\") { signal_process(p.pid, \"TERM\", \"spins: \\x1b[2J\\u202e\" + p.name); } }";
    let pb = playbook("evil", "#{ kind: \"signal_process\", target: \"*\" }", body);
    let pbdir = tmp.path().join("pb");
    std::fs::create_dir_all(&pbdir).unwrap();
    std::fs::write(pbdir.join("e.rhai"), pb).unwrap();
    let state = tmp.path().join("state");
    let o = crate::util::run(&["run", "--once", "--playbooks", pbdir.to_str().unwrap(), "--state-dir", state.to_str().unwrap()]);
    assert!(o.status.success(), "{}", crate::util::text(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(out.contains("would_execute"), "{out}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{202e}'), "run --once escapes too:\n{out}");
    let o = crate::util::run(&["audit", "show", "--state-dir", state.to_str().unwrap()]);
    assert!(o.status.success(), "{}", crate::util::text(&o));
    let out = String::from_utf8(o.stdout.clone()).unwrap();
    assert!(out.contains("spins: \\u{1b}[2J\\u{202e}"), "{out}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}') && !out.contains('\u{202e}'), "no raw control character:\n{out}");
    let o = crate::util::run(&["audit", "show", "--json", "--state-dir", state.to_str().unwrap()]);
    let first = String::from_utf8(o.stdout).unwrap();
    assert!(first.lines().all(|l| serde_json::from_str::<Value>(l).is_ok()), "JSON stays JSON");
}
