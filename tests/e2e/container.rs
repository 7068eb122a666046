//! A booted Debian container with a real systemd as PID 1 (PID 1 on this machine is not
//! systemd): `Container::boot` starts a pristine copy of the root made by `.ci/prepare-rootfs`
//! with systemd-nspawn (`--volatile=overlay`: writes go to a tmpfs), `exec`/`sh` run commands in
//! it, `path` maps a path inside it to the host, and drop halts it and removes its cgroups. See
//! ../shared/notes/systemd-container.md for why each flag is there.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Held by a test whose container runs medic on the default `metrics.listen`
/// (127.0.0.1:9464): containers share the host's network, so two such agents at once would
/// fight over the port (the loser logs `metrics_bind_failed` and runs on without /metrics).
pub static DEFAULT_METRICS_PORT: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn rootfs() -> PathBuf {
    let root = PathBuf::from(std::env::var("MEDIC_TEST_ROOTFS").unwrap_or_else(|_| "/var/cache/medic-test/bookworm".into()));
    assert!(
        root.join("lib/systemd/systemd").exists(),
        "no Debian root at {}: run `bash .ci/prepare-rootfs` (as root) first",
        root.display()
    );
    root
}

/// A booted container; halted and cleaned up on drop.
pub struct Container {
    pub name: String,
    nspawn: Child,
    /// The container's PID 1 as the host sees it.
    pub leader: i32,
}

fn cgroup_dirs(name: &str) -> [PathBuf; 2] {
    [PathBuf::from(format!("/sys/fs/cgroup/unified/nspawn-{name}")), PathBuf::from(format!("/sys/fs/cgroup/systemd/nspawn-{name}"))]
}

fn remove_tree(dir: &Path) {
    // Depth-first: cgroup directories are removed with rmdir, children before parents.
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}

impl Container {
    pub fn boot(name: &str) -> Self {
        Self::boot_with(name, &[])
    }

    /// Boots with extra systemd-nspawn arguments (e.g. `--bind-ro=/host/dir:/dir`).
    pub fn boot_with(name: &str, extra: &[&str]) -> Self {
        let root = rootfs();
        for d in cgroup_dirs(name) {
            remove_tree(&d);
            std::fs::create_dir_all(&d).unwrap();
        }
        let script = format!(
            "for h in unified systemd; do echo $$ > /sys/fs/cgroup/$h/nspawn-{name}/cgroup.procs; done; \
             exec systemd-nspawn --quiet --boot --directory={} --machine={name} --register=no --keep-unit \
             --console=read-only --capability=all --system-call-filter='bpf perf_event_open' --volatile=overlay {}",
            root.display(),
            extra.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(" ")
        );
        let nspawn = Command::new("setsid")
            .args(["bash", "-c", &script])
            .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("systemd-nspawn (apt-get install systemd-container)");
        let mut c = Self { name: name.into(), nspawn, leader: 0 };
        let t = Instant::now();
        while c.leader == 0 && t.elapsed() < Duration::from_secs(30) {
            c.leader = find_leader(c.nspawn.id() as i32).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(c.leader > 0, "container {name} did not start");
        let t = Instant::now();
        loop {
            let o = c.exec(&["systemctl", "is-system-running"]);
            let state = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if state == "running" || state == "degraded" {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "container {name} not running: {state}");
            std::thread::sleep(Duration::from_millis(200));
        }
        c
    }

    pub fn exec(&self, cmd: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.leader.to_string(), "-a", "env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"])
            .args(cmd)
            .output()
            .unwrap()
    }

    pub fn sh(&self, script: &str) -> String {
        let o = self.exec(&["sh", "-c", script]);
        assert!(o.status.success(), "{script}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    pub fn bus(&self) -> String {
        format!("unix:path=/proc/{}/root/run/dbus/system_bus_socket", self.leader)
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // An orderly halt, then the host cgroup directories.
        let pid = rustix::process::Pid::from_raw(self.nspawn.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Ok(None) = self.nspawn.try_wait() {
            let _ = self.nspawn.kill();
            let _ = self.nspawn.wait();
        }
        for d in cgroup_dirs(&self.name) {
            remove_tree(&d);
        }
    }
}

/// The container's PID 1: a child of nspawn whose innermost pid is 1.
fn find_leader(nspawn: i32) -> Option<i32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else { continue };
        let ppid = status.lines().find_map(|l| l.strip_prefix("PPid:")).map(|v| v.trim().parse::<i32>().unwrap_or(0));
        let nspid_last =
            status.lines().find_map(|l| l.strip_prefix("NSpid:")).and_then(|v| v.split_whitespace().last().map(str::to_string));
        if ppid == Some(nspawn) && nspid_last.as_deref() == Some("1") {
            return Some(pid);
        }
    }
    None
}

impl Container {
    /// A path inside the running container, as the host sees it.
    pub fn path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{}", self.leader, inside))
    }
}
