//! Socket signals at scale, against the kernel's own tool. Thousands of real loopback
//! connections in mixed states (ESTABLISHED, CLOSE_WAIT, FIN_WAIT2, TIME_WAIT, LISTEN), held
//! by real processes, in a network namespace of the test's own so that nothing else on the
//! machine (other tests, their TIME_WAIT sockets) moves the counts between the two readings:
//! medic's counts per state, node-wide and per owning process, equal what `ss -tan` /
//! `ss -tanp` report at the same moment. Also: the close-wait-leak playbook fires on the procfs
//! path (eBPF off) for a real server leaking CLOSE_WAIT sockets among thousands of healthy
//! connections. Regression tests for "the socket tables are cut short" (a single read() of
//! /proc/net/tcp returned its first ~26 sockets).

use crate::util::Reaped;
use medic::config::Config;
use medic::daemon::Agent;
use medic::signals::{Roots, Sampler};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// A server holding every connection it accepts on four listeners: the first and second keep
/// them (ESTABLISHED; CLOSE_WAIT once the client closes), the third closes each at once (so the
/// server's end goes to TIME_WAIT after the client closes too), the fourth keeps them on IPv6
/// (::1); plus idle listeners. Prints its pid and the four ports.
const SERVER: &str = r#"
import os, resource, socket, sys, threading
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
ls = []
for i in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(4096)
    ls.append(s)
s6 = socket.socket(socket.AF_INET6)
s6.bind(("::1", 0))
s6.listen(4096)
ls.insert(3, s6)
keep = []
def accept(s, close):
    while True:
        c, _ = s.accept()
        if close:
            c.close()
        else:
            keep.append(c)
for i in range(4):
    threading.Thread(target=accept, args=(ls[i], i == 2), daemon=True).start()
print(os.getpid(), *[s.getsockname()[1] for s in ls[:4]], flush=True)
sys.stdin.read()
"#;

/// The clients: `est` connections kept open (one in ten over IPv6), `cw` connections closed
/// (their server ends stay in CLOSE_WAIT, their own ends become orphaned FIN_WAIT2), `tw`
/// connections the server closes first (its ends go to TIME_WAIT). Prints its pid, then "ready".
const CLIENT: &str = r#"
import os, resource, socket, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (resource.getrlimit(resource.RLIMIT_NOFILE)[1],) * 2)
p_est, p_cw, p_tw, p_v6, est, cw, tw = map(int, sys.argv[1:8])
print(os.getpid(), flush=True)
keep = [socket.create_connection(("127.0.0.1", p_est)) for _ in range(est - est // 10)]
keep += [socket.create_connection(("::1", p_v6)) for _ in range(est // 10)]
leak = [socket.create_connection(("127.0.0.1", p_cw)) for _ in range(cw)]
for _ in range(tw):
    c = socket.create_connection(("127.0.0.1", p_tw))
    c.recv(1)
    c.close()
for c in leak:
    c.close()
print("ready", flush=True)
sys.stdin.read()
"#;

/// A network namespace of the test's, deleted on drop (after the processes in it are gone).
struct Netns {
    name: String,
    procs: Vec<Reaped>,
}

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("medic-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "delete", &name]).stderr(Stdio::null()).status();
        assert!(Command::new("ip").args(["netns", "add", &name]).status().is_ok_and(|s| s.success()), "ip netns add (iproute2)");
        let ns = Self { name, procs: Vec::new() };
        assert!(ns.cmd("ip").args(["link", "set", "lo", "up"]).status().unwrap().success());
        ns
    }

    /// A command run inside the namespace.
    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Starts a Python script inside the namespace; returns its stdout.
    fn python(&mut self, script: &str, args: &[String]) -> BufReader<ChildStdout> {
        let mut c: Child =
            self.cmd("python3").arg("-c").arg(script).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let out = BufReader::new(c.stdout.take().unwrap());
        self.procs.push(Reaped(c));
        out
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.procs.clear();
        let _ = Command::new("ip").args(["netns", "delete", &self.name]).status();
    }
}

fn line(r: &mut impl BufRead) -> String {
    let mut l = String::new();
    r.read_line(&mut l).unwrap();
    l.trim().to_string()
}

/// ss's state names in medic's words.
fn state_of_ss(s: &str) -> &'static str {
    match s {
        "ESTAB" => "established",
        "SYN-SENT" => "syn_sent",
        "SYN-RECV" => "syn_recv",
        "FIN-WAIT-1" => "fin_wait1",
        "FIN-WAIT-2" => "fin_wait2",
        "TIME-WAIT" => "time_wait",
        "UNCONN" | "CLOSE" => "close",
        "CLOSE-WAIT" => "close_wait",
        "LAST-ACK" => "last_ack",
        "LISTEN" => "listen",
        "CLOSING" => "closing",
        other => panic!("unknown ss state {other:?}"),
    }
}

type Counts = BTreeMap<String, u64>;

/// `ss -tanp` in the namespace: counts per state node-wide, and per (pid, state).
fn ss(ns: &Netns) -> (Counts, BTreeMap<u32, Counts>) {
    let o = ns.cmd("ss").args(["-tanpH"]).output().unwrap();
    assert!(o.status.success(), "ss: {}", String::from_utf8_lossy(&o.stderr));
    let (mut all, mut per_pid) = (Counts::new(), BTreeMap::<u32, Counts>::new());
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let Some(st) = l.split_whitespace().next() else { continue };
        let st = state_of_ss(st);
        *all.entry(st.into()).or_default() += 1;
        // users:(("python3",pid=123,fd=4),("python3",pid=124,fd=9))
        for part in l.split("pid=").skip(1) {
            let pid: u32 = part.split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap();
            *per_pid.entry(pid).or_default().entry(st.into()).or_default() += 1;
        }
    }
    (all, per_pid)
}

/// `medic signals --json` run in the namespace: node-wide counts per state (non-zero ones) and
/// the snapshot's processes. The table must come from netlink (the text fallback is checked on
/// its own below).
fn medic_signals(ns: &Netns) -> (Counts, Vec<Value>) {
    let o = ns.cmd(env!("CARGO_BIN_EXE_medic")).args(["signals", "--json"]).env("NO_COLOR", "1").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let snap: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(snap["socket_source"], "netlink", "{:?}", snap["errors"]);
    let counts = snap["metrics"]
        .as_object()
        .unwrap()
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("sock.tcp.")?.to_string(), v.as_f64()? as u64)))
        .filter(|(k, v)| k != "total" && *v > 0)
        .collect();
    (counts, snap["processes"].as_array().unwrap().clone())
}

fn tcp_of(procs: &[Value], pid: u32) -> Counts {
    let p = procs.iter().find(|p| p["pid"] == pid).unwrap_or_else(|| panic!("pid {pid} not in medic's process list"));
    p["tcp"].as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_u64().unwrap())).collect()
}

#[test]
fn socket_counts_per_state_equal_ss_with_ten_thousand_connections() {
    let mut ns = Netns::new("sock");
    let mut server = ns.python(SERVER, &["20".into()]);
    let head = line(&mut server);
    let f: Vec<u32> = head.split_whitespace().map(|x| x.parse().unwrap()).collect();
    let (spid, ports) = (f[0], &f[1..]);
    let (est, cw, tw) = (7000, 2000, 1000);
    let args: Vec<String> = ports.iter().chain(&[est, cw, tw]).map(u32::to_string).collect();
    let mut client = ns.python(CLIENT, &args);
    let cpid: u32 = line(&mut client).parse().unwrap();
    assert_eq!(line(&mut client), "ready");
    // Wait until the server has accepted everything and the closes have settled.
    let want_server = |c: &Counts| c.get("established") == Some(&(est as u64)) && c.get("close_wait") == Some(&(cw as u64));
    let settled = Instant::now();
    while !ss(&ns).1.get(&spid).is_some_and(want_server) {
        assert!(
            settled.elapsed() < Duration::from_secs(30),
            "the server never held {est} ESTABLISHED and {cw} CLOSE_WAIT: {:?}",
            ss(&ns).1.get(&spid)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The same moment: medic's reading between two identical ss readings (TIME_WAIT and the
    // orphaned FIN_WAIT2 ends live 60 s, so they may expire between readings; then retry).
    let mut tries = 0;
    let (before, medic_counts, procs) = loop {
        let before = ss(&ns);
        let (m, procs) = medic_signals(&ns);
        let after = ss(&ns);
        if before == after {
            break (before, m, procs);
        }
        tries += 1;
        assert!(tries < 10, "the namespace's sockets never held still");
    };
    let (all, per_pid) = before;
    assert!(all.values().sum::<u64>() >= 19_000, "about 20,000 sockets in the namespace: {all:?}");
    for st in ["established", "close_wait", "fin_wait2", "time_wait", "listen"] {
        assert!(all.get(st).is_some_and(|n| *n > 0), "the mix has {st}: {all:?}");
    }
    assert_eq!(medic_counts, all, "node-wide counts per state: medic (left) vs ss -tan (right)");
    for pid in [spid, cpid] {
        assert_eq!(tcp_of(&procs, pid), per_pid[&pid], "pid {pid}: medic (left) vs ss -tanp (right)");
    }

    // The text tables, read to their end, tell the same (the fallback where netlink is not
    // available). /proc/<pid>/net is the table of that process's namespace.
    let mut text = Sampler::new(Roots { proc: PathBuf::from(format!("/proc/{spid}")), sys: "/sys".into() });
    let mut tries = 0;
    loop {
        let before = ss(&ns).0;
        let snap = text.sample(1000 + tries);
        let after = ss(&ns).0;
        assert_eq!(snap.socket_source, "procfs");
        let text_counts: Counts = snap
            .metrics
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("sock.tcp.")?.to_string(), *v as u64)))
            .filter(|(k, v)| k != "total" && *v > 0)
            .collect();
        if before == after {
            assert_eq!(text_counts, before, "the /proc/net/tcp{{,6}} fallback (left) vs ss -tan (right)");
            break;
        }
        tries += 1;
        assert!(tries < 10, "the namespace's sockets never held still");
    }
}

/// A *.service cgroup of the test's (cgroup v2), removed on drop after its process is gone.
struct ServiceCgroup {
    dir: PathBuf,
    child: Option<Reaped>,
}

impl ServiceCgroup {
    fn new(unit: &str) -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let root = mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
        });
        let dir = root.expect("a cgroup2 mount").join(unit);
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {} (cgroup v2): {e}", dir.display()));
        Self { dir, child: None }
    }
}

impl Drop for ServiceCgroup {
    fn drop(&mut self) {
        // The process first (killed by its pid), then the empty cgroup.
        self.child.take();
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Raises this process's soft fd limit to its hard limit (the test holds thousands of sockets).
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let l = getrlimit(Resource::Nofile);
    setrlimit(Resource::Nofile, Rlimit { current: l.maximum, maximum: l.maximum }).unwrap();
}

#[test]
fn close_wait_leak_fires_on_the_procfs_path_among_thousands_of_healthy_connections() {
    raise_fd_limit();
    let unit = format!("medic-leak-{}.service", std::process::id());
    let mut cg = ServiceCgroup::new(&unit);
    // The leaking server: keeps every connection, never closes one.
    let code = "import os,resource,socket,sys\nresource.setrlimit(resource.RLIMIT_NOFILE,(resource.getrlimit(resource.RLIMIT_NOFILE)[1],)*2)\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(4096)\nprint(s.getsockname()[1],flush=True)\nkeep=[]\nwhile True:\n  c,_=s.accept()\n  keep.append(c)\n";
    let mut child = Command::new("python3").args(["-c", code]).stdout(Stdio::piped()).stdin(Stdio::null()).spawn().unwrap();
    std::fs::write(cg.dir.join("cgroup.procs"), child.id().to_string()).unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let port: u16 = line(&mut out).parse().unwrap();
    cg.child = Some(Reaped(child));
    // 3,000 healthy connections held open, 250 closed by the client: 250 CLOSE_WAIT in the unit.
    let healthy: Vec<TcpStream> = (0..3000).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    for _ in 0..250 {
        drop(TcpStream::connect(("127.0.0.1", port)).unwrap());
    }

    // Every connection accepted (a socket still in the accept queue belongs to no process).
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", cg.child.as_ref().unwrap().0.id())).map_or(0, |d| d.count());
    assert!(crate::util::wait_until(30, || fds() >= 3251), "the server accepted {} of 3,250 connections", fds());

    // The real agent's decide path on real procfs samples with eBPF off, on a simulated clock
    // (30 s between ticks, the playbook's interval) so its 10 minutes pass in seconds.
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::parse("test.toml", "node = \"t\"\n[signals]\nsocket_scan_every = 1\n[signals.ebpf]\nenabled = false\n").unwrap();
    let mut agent = Agent::start(&cfg, None, dir.path().join("state")).unwrap();
    let t0 = medic::audit::now_ms();
    let mut fired = None;
    for i in 1..=24 {
        let report = agent.tick(t0 + i * 30_000).unwrap();
        if let Some(d) = report.decisions.iter().find(|d| d.0 == "close-wait-leak") {
            fired = Some((i, d.clone()));
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = agent.status(t0 + 25 * 30_000);
    drop(healthy);
    let (tick, d) = fired.unwrap_or_else(|| panic!("close-wait-leak never fired; status: {status:#}"));
    assert_eq!((d.1.as_str(), d.2.as_str(), d.3.as_str()), ("restart_unit", unit.as_str(), "would_execute"), "{d:?}");
    assert!((20..=22).contains(&tick), "fired after 10 minutes of the leak, at tick {tick}");
    let recs = crate::util::audit_lines(&dir.path().join("state"));
    let rec = recs.iter().find(|r| r["kind"] == "action").unwrap();
    assert!(rec["trigger"]["reason"].as_str().unwrap().contains("now 250"), "{rec:#}");
}
