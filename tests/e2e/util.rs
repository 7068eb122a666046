//! Helpers shared by the e2e modules.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub fn medic() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_medic"));
    c.env_remove("MEDIC_LOG").env("NO_COLOR", "1");
    c
}

pub fn run(args: &[&str]) -> Output {
    medic().args(args).output().expect("medic runs")
}

pub fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// Copies a directory tree, symlinks as symlinks.
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let ft = e.file_type().unwrap();
        let dest = to.join(e.file_name());
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), dest).unwrap();
        } else if ft.is_dir() {
            copy_tree(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Writes a config for a fixture-driven agent: state dir, playbooks dir and procfs root. The
/// metrics endpoint is off unless `extra` configures it: many agents run at once in the suite.
pub fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let p = dir.join("medic.toml");
    let metrics = if extra.contains("[metrics]") { "" } else { "\n[metrics]\nlisten = \"\"\n" };
    std::fs::write(&p, format!("node = \"test-node\"\n{extra}{metrics}")).unwrap();
    p
}

pub fn audit_lines(state: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(state.join("audit.log")).unwrap_or_default().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub fn kinds(state: &Path) -> Vec<String> {
    audit_lines(state).iter().map(|r| r["kind"].as_str().unwrap().to_string()).collect()
}

/// A child process (an agent the test started) that is stopped when the guard goes, even when
/// the test fails: SIGTERM, then SIGKILL after 10 s. Only this child, by its pid.
pub struct Reaped(pub std::process::Child);

impl Reaped {
    pub fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(self.0.id() as i32).expect("a child has a pid")
    }

    /// SIGTERM and wait; true when it exited successfully.
    pub fn stop(mut self) -> bool {
        let _ = rustix::process::kill_process(self.pid(), rustix::process::Signal::TERM);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(st)) = self.0.try_wait() {
                return st.success();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = rustix::process::kill_process(self.pid(), rustix::process::Signal::KILL);
            let _ = self.0.wait();
        }
    }
}

/// `medic` as the unprivileged user nobody, with a HOME of its own and no config: a copy of
/// the binary in /tmp (the build tree may sit under a directory only root can enter).
pub struct Nobody {
    pub home: tempfile::TempDir,
    _bin_dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Nobody {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let home = tempfile::tempdir().unwrap();
        std::fs::set_permissions(home.path(), PermissionsExt::from_mode(0o777)).unwrap();
        let bin_dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(bin_dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
        let bin = bin_dir.path().join("medic");
        std::fs::copy(env!("CARGO_BIN_EXE_medic"), &bin).unwrap();
        Self { home, _bin_dir: bin_dir, bin }
    }

    pub fn run(&self, args: &[&str]) -> Output {
        use std::os::unix::process::CommandExt;
        Command::new(&self.bin)
            .args(args)
            .env_remove("XDG_STATE_HOME")
            .env("HOME", self.home.path())
            .current_dir(self.home.path())
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap()
    }
}

/// Polls `f` every 100 ms for up to `secs` seconds; true as soon as it holds.
/// The address a `medic run` whose stderr goes to `log` serves /metrics on (it logs
/// "Metrics endpoint listening." with `listen=`; port 0 in the config picks a free one).
pub fn metrics_addr(log: &Path) -> String {
    let mut addr = String::new();
    let found = wait_until(60, || {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        let Some(l) = t.lines().find(|l| l.contains("Metrics endpoint listening.")) else { return false };
        addr = l.split("listen=").nth(1).unwrap_or("").trim().to_string();
        true
    });
    assert!(found, "no metrics address in the log: {}", std::fs::read_to_string(log).unwrap_or_default());
    addr
}

pub fn wait_until(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(secs) {
        if f() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// `medic status --json` of the agent behind a control socket (Null if it does not answer).
pub fn status_json(socket: &Path) -> serde_json::Value {
    let o = run(&["status", "--json", "--socket", socket.to_str().unwrap()]);
    serde_json::from_slice(&o.stdout).unwrap_or_default()
}

fn nft() -> &'static str {
    ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"].into_iter().find(|p| std::path::Path::new(p).exists()).unwrap_or("nft")
}

/// An nftables table of the test's, removed on drop.
pub struct Nft(String);

impl Nft {
    /// Drops every TCP segment to `port` arriving on this host (the input hook): on loopback,
    /// every segment sent to it is lost and retransmitted.
    pub fn drop_port(port: u16) -> Self {
        let t = format!("medic_test_{}_{port}", std::process::id());
        let script =
            format!("table inet {t} {{\n chain input {{\n  type filter hook input priority 0;\n  tcp dport {port} drop\n }}\n}}\n");
        let st = Command::new(nft()).arg("-f").arg("-").stdin(Stdio::piped()).spawn().and_then(|mut c| {
            c.stdin.take().unwrap().write_all(script.as_bytes())?;
            c.wait()
        });
        assert!(st.is_ok_and(|s| s.success()), "nft (apt-get install nftables) must add the drop rule");
        Nft(t)
    }
}

impl Drop for Nft {
    fn drop(&mut self) {
        let _ = Command::new(nft()).args(["delete", "table", "inet", &self.0]).status();
    }
}

/// A tmpfs the test mounted (it runs as root) with mount options `opts` (`size=256k`,
/// `size=1g,nr_inodes=1000`), unmounted when the guard goes (lazily if still busy).
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn mount(path: &Path, opts: &str) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", opts, "medic-test"]).arg(path).status();
        assert!(st.is_ok_and(|s| s.success()), "mount -t tmpfs -o {opts} on {} (the tests run as root)", path.display());
        Tmpfs(path.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if !Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// A playbook's source: META with `actions` (rhai map literals), `rate` runs per hour and
/// `cooldown`, ticking every second, and `body` as its `evaluate`.
pub fn playbook_src(name: &str, actions: &str, rate: &str, cooldown: &str, body: &str) -> String {
    format!(
        "const META = #{{ name: \"{name}\", description: \"test\", interval: \"1s\", actions: [{actions}],\n  rate_limit: #{{ max: {rate}, per: \"1h\" }}, cooldown: \"{cooldown}\" }};\nfn evaluate(node, state) {{\n{body}\n}}\n"
    )
}

/// Writes `(file, source)` playbooks into `<dir>/pb` and returns that directory.
pub fn write_playbooks(dir: &Path, pbs: &[(&str, String)]) -> PathBuf {
    let d = dir.join("pb");
    std::fs::create_dir_all(&d).unwrap();
    for (f, src) in pbs {
        std::fs::write(d.join(f), src).unwrap();
    }
    d
}

/// An `escalated` decision (a breaker opening) for `playbook` restarting `target` live, as the
/// gate would have recorded it: a log written with it opens that breaker at the next start.
pub fn escalated(playbook: &str, target: &str) -> medic::audit::record::Record {
    use medic::audit::record::{Action, ActionAsked, PlaybookRef, Record, Trigger};
    Record::Action(Action {
        playbook: PlaybookRef::named(playbook),
        trigger: Trigger { signals: serde_json::json!({}), reason: "test".into() },
        action: ActionAsked { kind: medic::actions::ActionKind::RestartUnit, target: target.into(), params: serde_json::json!({}) },
        mode: medic::gate::Mode::Live,
        decision: medic::gate::Decision::Escalated,
        rule: "breaker".into(),
        detail: String::new(),
        outcome: serde_json::Value::Null,
    })
}
