//! eBPF signals on the real kernel, with real traffic, as root. These tests do not skip: on
//! this project's machines and CI the programs load, and a family that does not is a failure.

use crate::util::Nft;
use medic::signals::ebpf::tcp::{Tcp, TestFlood};
use medic::signals::ebpf::{EbpfConfig, EbpfSignals};
use medic::signals::Snapshot;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn loaded(cfg: &EbpfConfig) -> EbpfSignals {
    let e = EbpfSignals::start(cfg);
    assert_eq!(e.loaded(), vec!["tcp", "sock", "sched", "block"], "every family loads here: {:?}", e.unavailable);
    e
}

fn sample(e: &mut EbpfSignals) -> Snapshot {
    let mut s = Snapshot { ts_ms: medic::audit::now_ms(), ..Default::default() };
    e.sample(&mut s);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    s
}

fn sink(l: TcpListener) {
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while c.read(&mut buf).is_ok_and(|n| n > 0) {}
            });
        }
    });
}

#[test]
fn retransmits_are_counted_for_exactly_the_dropped_peer_and_the_owning_process() {
    let mut e = loaded(&EbpfConfig::default());
    let (dropped, clean) = (TcpListener::bind("127.0.0.1:0").unwrap(), TcpListener::bind("127.0.0.1:0").unwrap());
    let (dport, cport) = (dropped.local_addr().unwrap().port(), clean.local_addr().unwrap().port());
    sink(dropped);
    sink(clean);
    let mut a = TcpStream::connect(("127.0.0.1", dport)).unwrap();
    let mut b = TcpStream::connect(("127.0.0.1", cport)).unwrap();
    let a_local = a.local_addr().unwrap().port();
    let rule = Nft::drop_port(dport);
    a.write_all(b"lost in the void").unwrap();
    b.write_all(b"delivered").unwrap();
    let me = std::process::id();
    let key = format!("ebpf.tcp.peer.127.0.0.1:{dport}.retrans");
    let t = Instant::now();
    let mut snap = sample(&mut e);
    while snap.metrics.get(&key).copied().unwrap_or(0.0) < 2.0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        snap = sample(&mut e);
    }
    drop(rule);
    assert!(snap.metrics[&key] >= 2.0, "retransmits to the dropped peer: {:?}", snap.metrics.get(&key));
    assert_eq!(snap.metrics.get(&format!("ebpf.tcp.peer.127.0.0.1:{cport}.retrans")), None, "none to the clean peer");
    assert!(snap.metrics[&format!("ebpf.proc.{me}.retrans")] >= 2.0, "attributed to the owning process");
    let entry = snap.ebpf_retrans.iter().find(|r| r.peer == format!("127.0.0.1:{dport}")).unwrap();
    assert_eq!((entry.pid, entry.local_port), (me, a_local));
    assert!(entry.cgroup > 0);
    assert!(snap.metrics["ebpf.tcp.retrans"] >= 2.0);
    drop(b);
}

fn python_server(n: usize) -> (Child, u16) {
    let code = "import socket,sys\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('127.0.0.1',0))\ns.listen(64)\nprint(s.getsockname()[1],flush=True)\nkeep=[]\nwhile True:\n  c,_=s.accept()\n  keep.append(c)\n";
    let mut c = Command::new("python3").args(["-c", code]).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    let mut out = c.stdout.take().unwrap();
    let mut byte = [0u8; 1];
    while out.read(&mut byte).is_ok_and(|n| n == 1) && byte[0] != b'\n' {
        line.push(byte[0] as char);
    }
    let _ = n;
    (c, line.trim().parse().unwrap())
}

#[test]
fn a_server_that_never_closes_shows_its_close_wait_count() {
    let mut e = loaded(&EbpfConfig::default());
    let (mut server, port) = python_server(5);
    let clients: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(500)); // accepted
    drop(clients); // the clients close; the server never does
    let key = format!("ebpf.proc.{}.sock.close_wait", server.id());
    let t = Instant::now();
    let mut snap = sample(&mut e);
    while snap.metrics.get(&key) != Some(&5.0) && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
        snap = sample(&mut e);
    }
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(snap.metrics.get(&key), Some(&5.0), "{:?}", snap.metrics.iter().filter(|(k, _)| k.contains(".sock.")).collect::<Vec<_>>());
    assert!(snap.metrics["ebpf.sock.transitions.close_wait"] >= 5.0);
}

/// A cgroup v2 directory of the test's, removed on drop (after its processes are gone).
struct Cgroup(PathBuf, Vec<Child>);

impl Cgroup {
    fn new(name: &str) -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[2] == "cgroup2").then(|| PathBuf::from(f[1]))
        });
        let dir = root.expect("a cgroup2 mount").join(format!("medic-test-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Cgroup(dir, Vec::new())
    }

    fn id(&self) -> u64 {
        std::fs::metadata(&self.0).unwrap().ino()
    }

    /// Starts `sh -c script` pinned to `cpu`, inside this cgroup.
    fn spawn(&mut self, cpu: usize, script: &str) {
        // taskset pins, then execs the shell: the child's pid is the shell's.
        let child = Command::new("taskset").args(["-c", &cpu.to_string(), "sh", "-c", script]).stdout(Stdio::null()).spawn().unwrap();
        std::fs::write(self.0.join("cgroup.procs"), child.id().to_string()).unwrap();
        self.1.push(child);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for c in &mut self.1 {
            // The shell's children die with its process group... kill the group we made.
            let _ =
                rustix::process::kill_process_group(rustix::process::Pid::from_raw(c.id() as i32).unwrap(), rustix::process::Signal::KILL);
            let _ = c.kill();
            let _ = c.wait();
        }
        let procs = self.0.join("cgroup.procs");
        let t = Instant::now();
        while std::fs::read_to_string(&procs).is_ok_and(|p| !p.trim().is_empty()) && t.elapsed() < Duration::from_secs(5) {
            for pid in std::fs::read_to_string(&procs).unwrap_or_default().lines() {
                if let Some(p) = pid.trim().parse().ok().and_then(rustix::process::Pid::from_raw) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[test]
fn busy_threads_on_one_core_raise_their_cgroups_run_queue_p99_above_an_idle_baseline() {
    // Every task followed per cgroup (the default follows 1 in 8 at a time), so both cgroups
    // have enough waits within seconds even on a loaded machine.
    let mut e = loaded(&EbpfConfig { sched_sample_every: 1, ..Default::default() });
    let mut idle = Cgroup::new("idle");
    let mut busy = Cgroup::new("busy");
    // exec: the spinner is the shell's own process, so killing the child kills the spinner.
    idle.spawn(1, "exec sh -c 'while :; do sleep 0.01; done'");
    // Eight spinners on one core: each waits for the seven others' slices, tens of ms.
    for _ in 0..8 {
        busy.spawn(0, "exec sh -c 'while :; do :; done'");
    }
    let (idle_id, busy_id) = (idle.id(), busy.id());
    let t = Instant::now();
    let (mut idle_p99, mut busy_p99) = (None, None);
    while t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(500));
        let snap = sample(&mut e);
        let get = |id| snap.ebpf_runq.iter().find(|r| r.cgroup == id).filter(|r| r.total_samples >= 20).and_then(|r| r.total_p99_us);
        (idle_p99, busy_p99) = (get(idle_id), get(busy_id));
        if idle_p99.is_some() && busy_p99.is_some() && t.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    let (idle_p99, busy_p99) = (idle_p99.expect("idle cgroup sampled"), busy_p99.expect("busy cgroup sampled"));
    assert!(busy_p99 > idle_p99, "busy p99 {busy_p99} µs should exceed idle p99 {idle_p99} µs");
    assert!(busy_p99 >= 4000.0, "eight spinners on one core wait milliseconds: {busy_p99} µs");
}

#[repr(C, align(4096))]
struct Page([u8; 4096]);

/// The whole-disk name of the device holding `path` (a partition's parent disk).
fn disk_of(path: &std::path::Path) -> String {
    let dev = std::fs::metadata(path).unwrap().dev();
    let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
    let mut sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}")).unwrap();
    if sys.join("partition").exists() {
        sys = sys.parent().unwrap().to_path_buf();
    }
    sys.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn direct_writes_show_completions_and_latency_for_their_device() {
    let mut e = loaded(&EbpfConfig::default());
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let file = dir.path().join("direct");
    let disk = disk_of(dir.path());
    let key = format!("ebpf.blk.{disk}.completions");
    let before = sample(&mut e).metrics.get(&key).copied().unwrap_or(0.0);
    let fd = rustix::fs::open(
        &file,
        rustix::fs::OFlags::CREATE | rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::DIRECT,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .expect("O_DIRECT open (the file system must support it)");
    let page = Box::new(Page([7u8; 4096]));
    for i in 0..64u64 {
        rustix::io::pwrite(&fd, &page.0, i * 4096).unwrap();
        rustix::fs::fsync(&fd).unwrap();
    }
    std::thread::sleep(Duration::from_millis(200));
    let snap = sample(&mut e);
    let after = snap.metrics.get(&key).copied().unwrap_or(0.0);
    assert!(after - before >= 64.0, "{disk}: {before} → {after} completions");
    assert!(snap.metrics.contains_key(&format!("ebpf.blk.{disk}.p99_us")), "a latency histogram for {disk}");
    assert!(snap.metrics[&format!("ebpf.blk.{disk}.bytes")] >= 64.0 * 4096.0);
}

#[test]
fn a_ring_buffer_forced_to_overflow_counts_exactly_what_it_lost() {
    let me = std::process::id();
    let sent = 1000;
    let mut t = Tcp::load(&EbpfConfig::default(), Some(TestFlood { tgid: me, events: sent, ring_bytes: 4096 })).unwrap();
    let _ = rustix::process::getppid();
    let delivered = t.drain().len() as u64;
    let dropped = t.dropped();
    assert!(delivered > 0 && dropped > 0, "delivered {delivered}, dropped {dropped}");
    assert_eq!(delivered + dropped, sent as u64, "every event is either delivered or counted as dropped");
}

#[test]
fn without_privileges_ebpf_is_unavailable_and_procfs_signals_go_on() {
    let nobody = crate::util::Nobody::new();
    let o = nobody.run(&["run", "--once"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let log = std::fs::read_to_string(nobody.home.path().join(".local/state/medic/audit.log")).unwrap();
    let started: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    for f in ["tcp", "sock", "sched", "block"] {
        assert!(started["unavailable"][format!("ebpf.{f}")].as_str().is_some_and(|r| !r.is_empty()), "ebpf.{f} reported: {started}");
    }
    let o = nobody.run(&["signals", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["metrics"]["cpu.util_pct"].is_number(), "procfs signals keep working");
    assert!(v["unavailable"]["ebpf.sched"].is_string());
}

#[test]
fn a_close_wait_count_crossing_its_threshold_wakes_the_evaluation_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pbs = dir.path().join("pb");
    std::fs::create_dir_all(&pbs).unwrap();
    std::fs::write(
        pbs.join("cw.rhai"),
        "const META = #{ name: \"cw\", description: \"t\", interval: \"1m\", actions: [#{ kind: \"notify\", target: \"*\" }],\n  rate_limit: #{ max: 100, per: \"1h\" }, cooldown: \"0s\" };\nfn evaluate(node, state) {\n  for k in node.keys(\"ebpf.proc.\") {\n    if k.ends_with(\".sock.close_wait\") && node.value(k) >= 3 { notify(\"close_wait\", #{ key: k }); }\n  }\n}\n",
    )
    .unwrap();
    let state = dir.path().join("state");
    // A minute between ticks: only a wake-up can evaluate again within seconds.
    let cfg = crate::util::write_config(
        dir.path(),
        &format!(
            "[control]\nsocket = \"{}\"\n[signals]\ninterval_secs = 60\nhistory_secs = 600\n[signals.ebpf]\nclose_wait_threshold = 3\n",
            dir.path().join("c.sock").display()
        ),
    );
    let agent = crate::util::Reaped(
        crate::util::medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let notices = || crate::util::audit_lines(&state).into_iter().filter(|r| r["kind"] == "action").count();
    let t = Instant::now();
    while crate::util::audit_lines(&state).iter().filter(|r| r["kind"] == "playbook_loaded").count() == 0
        && t.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300)); // the first (immediate) tick is past; the playbook is not due for a minute
    assert_eq!(notices(), 0);
    let (mut server, port) = python_server(3);
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(300));
    drop(clients);
    let t = Instant::now();
    while notices() == 0 && t.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = server.kill();
    let _ = server.wait();
    assert!(notices() >= 1, "the CLOSE_WAIT event woke an evaluation well before the next tick");
    assert!(t.elapsed() < Duration::from_secs(15));
    assert!(agent.stop());
}

/// A python3 process driven line by line over stdin, answering one line per command.
struct Py {
    child: Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Py {
    fn start(code: &str) -> Self {
        let mut child = Command::new("python3").args(["-c", code]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Py { child, out }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn send(&mut self, cmd: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{cmd}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The next line the process prints.
    fn line(&mut self) -> String {
        use std::io::BufRead;
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert!(!line.is_empty(), "python3 {} exited", self.pid());
        line.trim().to_string()
    }

    fn ask(&mut self, cmd: &str) -> String {
        self.send(cmd);
        self.line()
    }
}

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sockets in CLOSE_WAIT per process, as `ss -tanp` shows them (the kernel's own socket table).
fn ss_close_wait() -> std::collections::BTreeMap<u32, u32> {
    let o = Command::new("ss").args(["-tanpH", "state", "close-wait"]).output().expect("ss (iproute2)");
    assert!(o.status.success(), "ss: {}", String::from_utf8_lossy(&o.stderr));
    let mut per_pid = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        // users:(("python3",pid=123,fd=4),...): a socket shared by processes counts once for each.
        let mut pids: Vec<u32> =
            line.split("pid=").skip(1).filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()).collect();
        pids.sort_unstable();
        pids.dedup();
        for p in pids {
            *per_pid.entry(p).or_default() += 1;
        }
    }
    per_pid
}

/// Polls `ss` until `pid` has `n` sockets in CLOSE_WAIT (5 s at most); the last reading.
fn ss_close_wait_reaches(pid: u32, n: u32) -> std::collections::BTreeMap<u32, u32> {
    let t = Instant::now();
    let mut ss = ss_close_wait();
    while ss.get(&pid) != Some(&n) && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
        ss = ss_close_wait();
    }
    ss
}

fn close_wait_of(snap: &Snapshot, pid: u32) -> u32 {
    snap.metrics.get(&format!("ebpf.proc.{pid}.sock.close_wait")).copied().unwrap_or(0.0) as u32
}

/// Per line `n`: closes the connections it holds, accepts `n` new ones, says `accepted`.
const PILE_UP_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', 0))
s.listen(256)
print(s.getsockname()[1], flush=True)
keep = []
for line in sys.stdin:
    for c in keep:
        c.close()
    keep = [s.accept()[0] for _ in range(int(line))]
    print('accepted', flush=True)
"#;

/// `connect PORT N`: opens N connections to PORT. `close N`: closes them, then makes N
/// connections to its own listener that the listener resets, and reads and writes each after
/// the reset (the receive after TCP_CLOSE that used to leave a stale owner behind).
const PILE_UP_CLIENT: &str = r#"
import socket, struct, sys
rl = socket.socket()
rl.bind(('127.0.0.1', 0))
rl.listen(256)
cs = []
for line in sys.stdin:
    w = line.split()
    if w[0] == 'connect':
        cs = [socket.create_connection(('127.0.0.1', int(w[1]))) for _ in range(int(w[2]))]
        print('connected', flush=True)
        continue
    for c in cs:
        c.close()
    for _ in range(int(w[1])):
        c = socket.create_connection(rl.getsockname())
        a, _ = rl.accept()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        a.close()
        for op in (lambda: c.recv(1), lambda: c.send(b'x'), lambda: c.recv(1)):
            try:
                op()
            except OSError:
                pass
        c.close()
    print('closed', flush=True)
"#;

/// Regression: socket owners were kept in a hash keyed by the `struct sock` address, and an
/// entry outlived its socket (re-created by a receive or send after TCP_CLOSE; or its close
/// went unseen, a classic tracepoint program being skipped while another tracing program ran
/// on the CPU). The next socket the kernel put at that address, often a server's accepted one,
/// was then counted under the old socket's process: CLOSE_WAIT pile-ups of 60 came out short,
/// the rest counted under the client's pid.
///
/// Each round, a client process opens 60 connections to a server that never closes them and
/// closes its ends, leaving 60 server sockets in CLOSE_WAIT, then churns reset connections
/// that it still reads and writes. The server closes the last round's sockets as it accepts
/// the next, so freed sockets' memory is reused every round. medic's count for each process
/// must be what `ss -tanp` shows, every round, and the client has none.
#[test]
fn close_wait_per_process_equals_ss_when_socket_memory_is_reused() {
    const ROUNDS: usize = 60;
    const CONNS: u32 = 60;
    let mut e = loaded(&EbpfConfig::default());
    let mut server = Py::start(PILE_UP_SERVER);
    let mut client = Py::start(PILE_UP_CLIENT);
    let port: u16 = server.line().parse().unwrap();
    let (spid, cpid) = (server.pid(), client.pid());
    let t0 = Instant::now();
    let mut bad = Vec::new();
    for round in 1..=ROUNDS {
        server.send(&CONNS.to_string());
        assert_eq!(client.ask(&format!("connect {port} {CONNS}")), "connected");
        assert_eq!(server.line(), "accepted");
        assert_eq!(client.ask(&format!("close {CONNS}")), "closed");
        // The kernel's view first: all 60 server ends in CLOSE_WAIT (at once, on loopback).
        let ss = ss_close_wait_reaches(spid, CONNS);
        let snap = sample(&mut e);
        let (medic_s, medic_c) = (close_wait_of(&snap, spid), close_wait_of(&snap, cpid));
        let (ss_s, ss_c) = (ss.get(&spid).copied().unwrap_or(0), ss.get(&cpid).copied().unwrap_or(0));
        if (medic_s, medic_c) != (ss_s, ss_c) || medic_c != 0 {
            bad.push(format!("round {round}: server {spid}: medic {medic_s}, ss {ss_s}; client {cpid}: medic {medic_c}, ss {ss_c}"));
        }
    }
    assert!(bad.is_empty(), "{} of {ROUNDS} rounds miscounted CLOSE_WAIT:\n{}", bad.len(), bad.join("\n"));
    eprintln!("{ROUNDS} rounds of {CONNS} connections in {:?}", t0.elapsed());
}

/// The listener's process forks a worker that accepts and reads (a pre-forked server, or
/// systemd's socket activation): the accepted sockets start under the listener's owner and move
/// to the worker at its first receive, where `ss -tanp` shows them too.
const FORKED_WORKER: &str = r#"
import os, socket, sys
s = socket.socket()
s.bind(('127.0.0.1', 0))
s.listen(64)
n = int(sys.stdin.readline())
print(s.getsockname()[1], flush=True)
if os.fork() == 0:
    keep = [s.accept()[0] for _ in range(n)]
    for c in keep:
        try:
            c.recv(1, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
    print(os.getpid(), flush=True)
    sys.stdin.readline()
    os._exit(0)
sys.stdin.readline()
"#;

#[test]
fn sockets_a_worker_accepted_and_read_count_under_the_worker_not_the_listeners_process() {
    const CONNS: u32 = 10;
    let mut e = loaded(&EbpfConfig::default());
    let mut parent = Py::start(FORKED_WORKER);
    let port: u16 = parent.ask(&CONNS.to_string()).parse().unwrap();
    let clients: Vec<TcpStream> = (0..CONNS).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let worker: u32 = parent.line().parse().unwrap();
    drop(clients);
    let ss = ss_close_wait_reaches(worker, CONNS);
    let snap = sample(&mut e);
    let ppid = parent.pid();
    let (w, p) = (
        (close_wait_of(&snap, worker), ss.get(&worker).copied().unwrap_or(0)),
        (close_wait_of(&snap, ppid), ss.get(&ppid).copied().unwrap_or(0)),
    );
    parent.send("");
    assert_eq!(w, (CONNS, CONNS), "worker {worker}: (medic, ss)");
    assert_eq!(p, (0, 0), "listener's process {ppid}: (medic, ss)");
}

/// Regression (issue 10): on a fresh machine without tracefs mounted, classic tracepoints did
/// not attach and three of four families were unavailable, while CI passed where tracefs
/// happened to be mounted. In a private mount namespace with every tracefs (and debugfs, which
/// automounts one) unmounted, all four families load.
#[test]
fn all_four_families_load_with_tracefs_unmounted() {
    let script = r#"
        set -e
        findmnt -rn -t tracefs,debugfs -o TARGET | sort -r | while read -r m; do umount -l "$m"; done
        if grep -qE ' (tracefs|debugfs) ' /proc/self/mounts; then echo "tracefs still mounted" >&2; exit 97; fi
        exec "$MEDIC" signals --json
    "#;
    let o = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", script])
        .env("MEDIC", env!("CARGO_BIN_EXE_medic"))
        .output()
        .expect("unshare (util-linux)");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let unavailable: Vec<&String> =
        v["unavailable"].as_object().map(|m| m.keys().filter(|k| k.starts_with("ebpf.")).collect()).unwrap_or_default();
    assert!(unavailable.is_empty(), "families unavailable without tracefs: {}", v["unavailable"]);
    let metrics = v["metrics"].as_object().unwrap();
    for family in ["ebpf.tcp.", "ebpf.sock.", "ebpf.runq."] {
        assert!(
            metrics.keys().any(|k| k.starts_with(family)),
            "no {family}* metric: {:?}",
            metrics.keys().filter(|k| k.starts_with("ebpf.")).collect::<Vec<_>>()
        );
    }
}

/// The BPF maps of `medic run` with all four families, by map id, from its map fds'
/// fdinfo: (map id, max_entries, memlock bytes).
fn agent_maps(pid: u32) -> Vec<(u32, u64, u64)> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap().flatten() {
        if std::fs::read_link(fd.path()).map(|l| l.to_string_lossy() != "anon_inode:bpf-map").unwrap_or(true) {
            continue;
        }
        let info = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy())).unwrap();
        let field = |k: &str| info.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().parse::<u64>().unwrap()).unwrap();
        let id = field("map_id:") as u32;
        if seen.insert(id) {
            out.push((id, field("max_entries:"), field("memlock:")));
        }
    }
    out
}

#[test]
fn the_agents_bpf_maps_lock_at_most_4_mib_and_report_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let cfg = dir.path().join("medic.toml");
    std::fs::write(&cfg, format!("state_dir = \"{d}/state\"\n[control]\nsocket = \"{d}/control.sock\"\n[metrics]\nlisten = \"\"\n"))
        .unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let mut agent =
        Command::new(env!("CARGO_BIN_EXE_medic")).args(["run", "--config"]).arg(&cfg).stdout(Stdio::null()).stderr(log).spawn().unwrap();
    let t0 = Instant::now();
    while !std::fs::read_to_string(dir.path().join("log")).unwrap().contains("Started.") {
        assert!(t0.elapsed() < Duration::from_secs(60), "not started: {}", std::fs::read_to_string(dir.path().join("log")).unwrap());
        assert!(agent.try_wait().unwrap().is_none(), "exited: {}", std::fs::read_to_string(dir.path().join("log")).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    let maps = agent_maps(agent.id());
    let _ = agent.kill();
    let _ = agent.wait();
    let total: u64 = maps.iter().map(|m| m.2).sum();
    assert!(maps.len() >= 20, "every family's maps: {maps:?}");
    assert!(total <= 4 << 20, "{total} bytes locked by BPF maps: {maps:?}");
    // What the counters of a full map are read as (docs/PLAYBOOKS.md).
    let mut e = loaded(&EbpfConfig::default());
    let s = sample(&mut e);
    for k in ["ebpf.tcp.retrans_untracked", "ebpf.sock.states_full", "ebpf.blk.unmatched", "ebpf.blk.devices_full"] {
        assert!(s.metrics.contains_key(k), "{k} missing");
    }
}
