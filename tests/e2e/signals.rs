//! Signal parsers on fixture /proc trees: every family read right from a good tree, and every
//! file malformed or truncated gives an error naming it (or, where the cut still leaves valid
//! content, a valid reading) and never a panic.

use crate::util::{copy_tree, fixtures};
use medic::signals::{self, cpu, disk, memory, sockets, tcp, Roots, Sampler};
use std::collections::BTreeMap;
use std::path::Path;

fn roots(p: &Path) -> Roots {
    Roots { proc: p.join("proc"), sys: p.join("sys") }
}

#[test]
fn fixture_tree_reads_every_family() {
    let mut s = Sampler::new(roots(&fixtures()));
    let first = s.sample(1_000_000);
    let snap = s.sample(1_001_000);
    assert!(first.errors.is_empty(), "{:?}", first.errors);
    let m = &snap.metrics;
    // CPU (the fixture does not change, so utilisation over the interval is 0), load, PSI.
    assert_eq!(m["cpu.count"], 2.0);
    assert_eq!(m["cpu.util_pct"], 0.0);
    assert!(m.contains_key("cpu.core.1.util_pct"));
    assert!(m.contains_key("load.1") && m.contains_key("load.15"));
    assert!(m.contains_key("psi.cpu.some.avg10"), "{:?}", snap.unavailable);
    assert!(m.contains_key("psi.io.full.total_us"));
    // Memory.
    assert!(m["mem.total_bytes"] > 0.0 && m["mem.available_bytes"] > 0.0);
    // Disk: / from the fixture's mounts (statvfs of the real /), /proc and /sys skipped.
    assert!(m["disk./.total_bytes"] > 0.0);
    assert!(m.contains_key("disk./.inodes_used_pct"));
    assert!(!m.keys().any(|k| k.starts_with("disk./proc")));
    assert!(m.keys().any(|k| k.starts_with("blk.") && k.ends_with(".write_bytes_per_s")));
    assert_eq!(m["disk./.ro"], 0.0);
    // Network interfaces: counters from net/dev, link state from sys/class/net (lo has none
    // in the fixture: down, no carrier).
    assert_eq!(m["net.eth0.rx_bytes"], 918_273_645.0);
    assert_eq!(m["net.eth0.rx_drops"], 7.0);
    assert_eq!(m["net.eth0.tx_packets"], 98_765.0);
    assert_eq!(m["net.eth0.rx_bytes_per_s"], 0.0);
    assert_eq!((m["net.eth0.up"], m["net.eth0.carrier"], m["net.eth0.speed_mbps"]), (1.0, 1.0, 1000.0));
    assert_eq!((m["net.lo.up"], m["net.lo.carrier"]), (0.0, 0.0));
    // Sockets: node-wide per state across tcp and tcp6.
    assert_eq!(m["sock.tcp.listen"], 2.0);
    assert_eq!(m["sock.tcp.close_wait"], 3.0);
    assert_eq!(m["sock.tcp.established"], 1.0);
    assert_eq!(m["sock.tcp.time_wait"], 1.0);
    // TCP counters and rates.
    assert!(m.contains_key("tcp.retrans_segs") && m.contains_key("tcp.listen_overflows"));
    assert_eq!(m["tcp.retrans_segs_per_s"], 0.0);
    assert!(m.contains_key("tcp.retrans_pct"));
    // Processes: per-process sockets matched by inode, unit from the cgroup.
    let p = snap.processes.iter().find(|p| p.pid == 4242).unwrap();
    assert_eq!(p.name, "api server");
    assert_eq!(p.cmdline, "/usr/bin/api --port 8080");
    assert_eq!(p.unit.as_deref(), Some("api.service"));
    assert_eq!(p.tcp.get("close_wait"), Some(&3));
    assert_eq!(p.tcp.get("listen"), Some(&1));
    assert_eq!(p.fds, Some(6));
    assert_eq!(p.threads, 4);
    assert_eq!(p.state, "S");
    assert_eq!(p.start_time, 1_764_000_000 + 500_000 / 100);
    assert_eq!(p.cpu_pct, Some(0.0));
    let u = &snap.units["api.service"];
    assert_eq!(u.memory_bytes, Some(524_288_000), "cgroup memory.current under the sys root");
    assert_eq!(snap.processes.iter().find(|p| p.pid == 1).unwrap().unit.as_deref(), Some("init.scope"));
    // Peers retransmitting now.
    assert_eq!(snap.tcp_peers.len(), 1);
    assert_eq!(snap.tcp_peers[0].peer, "127.0.0.1:50002");
    assert_eq!(snap.tcp_peers[0].timeouts, 3);
}

#[test]
fn missing_psi_is_unavailable_not_zero() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixtures(), dir.path());
    std::fs::remove_dir_all(dir.path().join("proc/pressure")).unwrap();
    let snap = Sampler::new(roots(dir.path())).sample(1000);
    assert!(!snap.metrics.keys().any(|k| k.starts_with("psi.")));
    for r in ["cpu", "memory", "io"] {
        assert!(snap.unavailable.contains_key(&format!("psi.{r}")), "{:?}", snap.unavailable);
    }
    assert!(snap.metrics.contains_key("mem.total_bytes"), "other families keep working");
}

/// Every file of the fixture tree cut at many points and garbled: no panic, and a file whose
/// content no longer parses is reported by name.
#[test]
fn truncated_and_malformed_files_never_panic() {
    let files = [
        "stat",
        "loadavg",
        "meminfo",
        "diskstats",
        "pressure/cpu",
        "pressure/io",
        "pressure/memory",
        "self/mounts",
        "net/snmp",
        "net/netstat",
        "net/tcp",
        "net/tcp6",
        "net/dev",
        "4242/stat",
        "4242/cgroup",
    ];
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixtures(), dir.path());
    let proc_root = dir.path().join("proc");
    for f in files {
        let path = proc_root.join(f);
        let good = std::fs::read(&path).unwrap();
        let mut variants: Vec<Vec<u8>> = Vec::new();
        let n = good.len();
        let cuts: Vec<usize> = if n <= 300 { (0..n).collect() } else { (0..n).step_by(n / 97 + 1).collect() };
        for c in cuts {
            variants.push(good[..c].to_vec());
        }
        // Digits turned into letters, and invalid UTF-8.
        variants.push(good.iter().map(|b| if b.is_ascii_digit() { b'x' } else { *b }).collect());
        variants.push([&good[..n / 2], &[0xff, 0xfe], &good[n / 2..]].concat());
        for v in variants {
            std::fs::write(&path, &v).unwrap();
            let mut s = Sampler::new(roots(dir.path()));
            s.sample(1000);
            let snap = s.sample(2000);
            let garbled = v.iter().any(|b| *b == b'x' || *b >= 0x80) && !good.contains(&b'x');
            if garbled && f != "4242/cgroup" {
                assert!(snap.errors.iter().any(|e| e.contains(f)), "{f} garbled but no error names it: {:?}", snap.errors);
            }
        }
        std::fs::write(&path, &good).unwrap();
    }
}

#[test]
fn parse_errors_name_file_line_and_field() {
    let f = Path::new("/proc/meminfo");
    let mut out = BTreeMap::new();
    let e = memory::parse_meminfo(f, "MemTotal: 12x kB\n", &mut out).unwrap_err();
    assert_eq!(e.to_string(), "/proc/meminfo:1: MemTotal: expected a number, found \"12x\"");
    let e = memory::parse_meminfo(f, "MemTotal: 1 kB\n", &mut out).unwrap_err();
    assert!(e.to_string().contains("MemAvailable"), "{e}");

    let f = Path::new("/proc/stat");
    let e = cpu::parse_stat(f, "cpu 1 2 3\n").unwrap_err();
    assert_eq!(e.line, 1);
    assert!(e.field.contains("column 4"), "{e}");
    let e = cpu::parse_stat(f, "intr 1\n").unwrap_err();
    assert!(e.to_string().contains("no aggregate"), "{e}");

    let f = Path::new("/proc/pressure/cpu");
    let e = cpu::parse_psi(f, "cpu", "some avg10=0.00 avg60=0.00\n", &mut out).unwrap_err();
    assert!(e.to_string().starts_with("/proc/pressure/cpu:1:"), "{e}");
    let e = cpu::parse_psi(f, "cpu", "bogus avg10=1\n", &mut out).unwrap_err();
    assert_eq!(e.line, 1);

    let f = Path::new("/proc/loadavg");
    let e = cpu::parse_loadavg(f, "0.5 0.4\n", &mut out).unwrap_err();
    assert_eq!(e.field, "load.15");

    let f = Path::new("/proc/net/snmp");
    let e = tcp::parse_snmp(f, "Tcp: RtoAlgorithm RetransSegs\nTcp: 1\n", &mut out).unwrap_err();
    assert!(e.to_string().contains("2 names but 1 values"), "{e}");
    let e = tcp::parse_snmp(f, "Ip: a\nIp: 1\n", &mut out).unwrap_err();
    assert!(e.to_string().contains("section not found"), "{e}");
    let e = tcp::parse_netstat(Path::new("/proc/net/netstat"), "TcpExt: ListenDrops\n", &mut out).unwrap_err();
    assert_eq!(e.line, 2);

    let f = Path::new("/proc/net/tcp");
    let mut table = sockets::SocketTable::default();
    let hdr = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n";
    let e = sockets::parse_tcp_table(f, &format!("{hdr}   0: 0100007F:1F90 00000000:0000 ZZ 0:0 0:0 0 0 0 5\n"), &mut table).unwrap_err();
    assert_eq!((e.line, e.field.as_str()), (2, "st"));
    let e = sockets::parse_tcp_table(f, &format!("{hdr}   0: 0100007F:1F90\n"), &mut table).unwrap_err();
    assert!(e.to_string().contains("at least 10 columns"), "{e}");

    let f = Path::new("/proc/diskstats");
    let e = disk::parse_diskstats(f, "   8 0 sda 1 2 3\n").unwrap_err();
    assert!(e.to_string().starts_with("/proc/diskstats:1:"), "{e}");
    let e = disk::parse_mounts(Path::new("/proc/self/mounts"), "/dev/sda1\n").unwrap_err();
    assert_eq!(e.line, 1);

    let f = Path::new("/proc/7/stat");
    let e = signals::process::parse_pid_stat(f, "7 (x) S 1 2").unwrap_err();
    assert!(e.to_string().contains("utime (14)"), "{e}");
    let e = signals::process::parse_pid_stat(f, "7 x) S").unwrap_err();
    assert!(e.to_string().contains("comm"), "{e}");
}

#[test]
fn special_cases_parse() {
    // A name with spaces and parentheses.
    let st = signals::process::parse_pid_stat(Path::new("stat"), "9 (a (b) c) R 1 9 9 0 -1 0 0 0 0 0 7 3 0 0 20 0 2 0 77 0 10 0").unwrap();
    assert_eq!((st.name.as_str(), st.cpu_ticks, st.threads, st.start_ticks, st.rss_pages), ("a (b) c", 10, 2, 77, 10));
    // Escaped mount points; a later mount hides an earlier one on the same point.
    let m =
        disk::parse_mounts(Path::new("m"), "/dev/a /mnt/my\\040disk ext4 rw 0 0\n/dev/b /x ext4 rw 0 0\n/dev/c /x xfs rw 0 0\n").unwrap();
    assert_eq!(m[0].mount_point, "/mnt/my disk");
    assert_eq!(m.len(), 2);
    assert_eq!(m[1].device, "/dev/c");
    // IPv6 and v4-mapped peers.
    assert_eq!(sockets::decode_addr("0100007F:0050").as_deref(), Some("127.0.0.1:80"));
    assert_eq!(sockets::decode_addr("0000000000000000FFFF00000100007F:1F90").as_deref(), Some("127.0.0.1:8080"));
    assert_eq!(sockets::decode_addr("00000000000000000000000001000000:0016").as_deref(), Some("[::1]:22"));
    assert_eq!(sockets::decode_addr("zz:1"), None);
    // cgroup v1 systemd hierarchy.
    let (u, _) = signals::process::parse_cgroup("12:name=systemd:/system.slice/cron.service\n3:cpu:/\n");
    assert_eq!(u.as_deref(), Some("cron.service"));
    // Hybrid: the unified hierarchy's root says nothing; the v1 systemd line names the unit.
    let (u, v2) = signals::process::parse_cgroup("9:name=systemd:/system.slice/cron.service\n1:cpu:/\n0::/\n");
    assert_eq!((u.as_deref(), v2.as_deref()), (Some("cron.service"), Some("/")));
    let (u, _) = signals::process::parse_cgroup("1:name=systemd:/system.slice/a.service\n0::/system.slice/b.service\n");
    assert_eq!(u.as_deref(), Some("b.service"), "v2 wins where it places the process");
}

#[test]
fn live_host_sample_has_this_process() {
    let mut s = Sampler::new(Roots::default());
    s.sample(signals_now() - 500);
    std::thread::sleep(std::time::Duration::from_millis(200));
    let snap = s.sample(signals_now());
    let me = std::process::id() as i64;
    let p = snap.processes.iter().find(|p| p.pid == me).expect("own process listed");
    assert!(p.rss_bytes > 0 && p.threads >= 1);
    assert!(snap.metrics.contains_key("cpu.util_pct"));
    assert!(snap.metrics.contains_key("mem.used_pct"));
}

/// A process that started since the previous sample has its CPU % on the first sample that
/// sees it (its average since it started), so a new runaway is not a tick late.
#[test]
fn a_new_busy_process_has_its_cpu_pct_on_the_first_sample_that_sees_it() {
    let mut s = Sampler::new(Roots::default());
    s.sample(signals_now());
    let busy = std::process::Command::new("/bin/sh").args(["-c", "while :; do :; done"]).spawn().unwrap();
    let idle = std::process::Command::new("/bin/sleep").arg("30").spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(600));
    let snap = s.sample(signals_now());
    let cpu = |pid: u32| snap.processes.iter().find(|p| p.pid == pid as i64).and_then(|p| p.cpu_pct);
    let (b, i) = (cpu(busy.id()), cpu(idle.id()));
    for mut c in [busy, idle] {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Two cores: the loop gets most of one (10 ms ticks over ~0.6 s: a few % either way).
    assert!(b.is_some_and(|v| v >= 70.0), "busy loop on its first sample: {b:?}");
    assert!(i.is_some_and(|v| v < 10.0), "sleeping process on its first sample: {i:?}");
    // The agent's own first sample cannot know how old a process's CPU time is: unknown.
    let first = Sampler::new(Roots::default()).sample(signals_now());
    let me = first.processes.iter().find(|p| p.pid == std::process::id() as i64).unwrap();
    assert_eq!(me.cpu_pct, None);
}

fn signals_now() -> i64 {
    medic::audit::now_ms()
}

#[test]
fn socket_tables_are_read_every_nth_sample() {
    let dir = tempfile::tempdir().unwrap();
    copy_tree(&fixtures(), dir.path());
    let mut s = Sampler::with_socket_scan_every(roots(dir.path()), 3);
    assert_eq!(s.sample(1000).metrics["sock.tcp.close_wait"], 3.0);
    // Drop the CLOSE_WAIT sockets from the table: the next two samples reuse the last scan.
    let tcp = dir.path().join("proc/net/tcp");
    let text: String = std::fs::read_to_string(&tcp).unwrap().lines().filter(|l| !l.contains(" 08 ")).map(|l| format!("{l}\n")).collect();
    std::fs::write(&tcp, text).unwrap();
    let second = s.sample(2000);
    assert_eq!(second.metrics["sock.tcp.close_wait"], 3.0);
    assert_eq!(second.processes.iter().find(|p| p.pid == 4242).unwrap().tcp.get("close_wait"), Some(&3));
    s.sample(3000);
    let fourth = s.sample(4000);
    assert_eq!(fourth.metrics["sock.tcp.close_wait"], 1.0, "tcp6 still has one");
    assert_eq!(fourth.processes.iter().find(|p| p.pid == 4242).unwrap().tcp.get("close_wait"), Some(&1));
}

/// An idle process started by the test with the given program path (its name is the path's
/// file name) and arguments (raw bytes), killed by its pid on drop.
fn idle_as(exe: &Path, args: &[&[u8]]) -> crate::util::Reaped {
    use std::os::unix::ffi::OsStrExt;
    let mut c = std::process::Command::new(exe);
    c.args(args.iter().map(|a| std::ffi::OsStr::from_bytes(a))).stdin(std::process::Stdio::piped());
    crate::util::Reaped(c.spawn().unwrap())
}

/// Regression: one process with a command line over 64 KiB made every playbook that scans
/// processes fail ("Length of string too large") and disabled it for 5 minutes, doubling; a
/// process name that was not UTF-8 hid the process from medic altogether.
#[test]
fn hostile_process_names_and_a_one_mib_command_line_disable_no_playbook() {
    use medic::playbooks::bundled;
    let dir = tempfile::tempdir().unwrap();
    // A 1 MiB command line (ten 100 KiB arguments: one argument may not exceed 128 KiB), with
    // bytes that are not UTF-8: a shell waiting on its stdin, its arguments unused.
    let big: Vec<Vec<u8>> = (0..10).map(|i| [vec![b'a' + i as u8; 100 * 1024], vec![0xff, 0xfe]].concat()).collect();
    let mut args: Vec<&[u8]> = vec![b"-c", b"read x", b"sh"];
    args.extend(big.iter().map(Vec::as_slice));
    let long = idle_as(Path::new("/bin/sh"), &args);
    // A name with parentheses, a newline and bytes that are not UTF-8 (the kernel takes the
    // name from the executable's file name, here a symlink's).
    let evil = dir.path().join(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(b"x) (\n\xff\xfeZ".to_vec()));
    std::os::unix::fs::symlink("/bin/sh", &evil).unwrap();
    let named = idle_as(&evil, &[b"-c", b"read x", b"--\n) S 1 2 3"]);

    let mut s = Sampler::new(Roots::default());
    s.sample(signals_now() - 1000);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let snap = s.sample(signals_now());
    let p = snap.processes.iter().find(|p| p.pid == long.0.id() as i64).expect("the 1 MiB process is listed");
    assert!(p.cmdline.len() <= signals::parse::MAX_CMDLINE && p.cmdline.ends_with(signals::parse::TRUNCATED), "{}", p.cmdline.len());
    let q = snap.processes.iter().find(|p| p.pid == named.0.id() as i64).expect("a process named with invalid UTF-8 is not hidden");
    assert!(q.name.starts_with("x) (\n"), "{:?}", q.name);
    assert!(q.cmdline.ends_with(") S 1 2 3"), "{:?}", q.cmdline);

    // Every bundled playbook, plus one that reads every text medic hands over (and doubles it),
    // evaluated by the agent on real samples: none fails.
    let pb = dir.path().join("pb");
    std::fs::create_dir(&pb).unwrap();
    for (f, src, _) in bundled::PLAYBOOKS {
        std::fs::write(pb.join(f), src).unwrap();
    }
    std::fs::write(
        pb.join("zz_reader.rhai"),
        r#"const META = #{ name: "reader", description: "reads every text", interval: "1s", actions: [#{ kind: "notify", target: "*" }],
    rate_limit: #{ max: 1, per: "1h" }, cooldown: "1h" };
fn evaluate(node, state) {
    let n = 0;
    for p in node.processes() { let s = p.cmdline + p.cmdline + p.name + p.state; if p.unit != () { s += p.unit; } n += s.len(); }
    for u in node.units() { n += (u.unit + u.unit).len(); }
    for m in node.mounts() { n += (m.mount + m.device + m.fs_type).len(); }
    for t in node.tcp_peers() { n += t.peer.len(); }
    for p in node.processes("cpu_pct", ">=", 0) { n += p.cmdline.len(); }
    if n == 0 { notify("nothing read"); }
}
"#,
    )
    .unwrap();
    let cfg = medic::config::Config::parse("t.toml", "node = \"t\"\n[signals.ebpf]\nenabled = false\n").unwrap();
    let mut agent = medic::daemon::Agent::start(&cfg, Some(pb), dir.path().join("state")).unwrap();
    let t0 = signals_now();
    for i in 1..=3 {
        std::thread::sleep(std::time::Duration::from_millis(300));
        let r = agent.tick(t0 + i * 60_000).unwrap();
        assert!(r.disabled.is_empty(), "tick {i}: {:?}", r.disabled);
        assert_eq!(r.evaluated.len(), bundled::PLAYBOOKS.len() + 1, "tick {i}: {:?}", r.evaluated);
    }
    drop((long, named));
}

/// Regression: rhai checks a list a function returns against the engine's limits by the sum of
/// everything nested in it, so on a busy node `node.processes()` (26,000 map entries and
/// hundreds of KiB of command lines for 2,000 processes) or `node.keys(...)` failed with "Size
/// of object map too large" and disabled the playbook. The agent's lists are not rhai arrays.
#[test]
fn lists_of_a_busy_node_do_not_trip_the_engines_limits() {
    use medic::playbooks::{api::State, Runtime};
    let mut snap = signals::Snapshot { ts_ms: 1_000_000, ..Default::default() };
    for pid in 0..5000 {
        snap.processes.push(signals::process::ProcessInfo {
            pid,
            name: format!("worker-{pid}"),
            cmdline: format!("/usr/bin/worker --id {pid} {}", "x".repeat(300)),
            unit: Some(format!("w{}.service", pid % 50)),
            ..Default::default()
        });
        snap.metrics.insert(format!("ebpf.proc.{pid}.sock.established"), 1.0);
    }
    snap.units = signals::process::units_of(&snap.processes);
    let rt = Runtime::new(Default::default());
    let src = r#"const META = #{ name: "lists", description: "t", interval: "1s", actions: [#{ kind: "notify", target: "*" }],
    rate_limit: #{ max: 1, per: "1h" }, cooldown: "1h" };
fn evaluate(node, state) {
    let ps = node.processes();
    let n = 0;
    for p in ps { n += p.cmdline.len(); }
    for k in node.keys("ebpf.proc.") { n += 1; }
    for u in node.units() { n += u.processes; }
    if ps.len() != 5000 || ps[0].pid != 0 || ps[-1].pid != 4999 || !("ebpf.proc.7.sock.established" in node.keys("ebpf.")) {
        throw "list API";
    }
    if ps.is_empty() || n == 0 { throw "empty"; }
}
"#;
    let pb = rt.compile("lists.rhai", src).unwrap();
    let history = std::sync::Arc::new(signals::history::History::new(600_000, 1000, 1024));
    rt.evaluate(&pb, std::sync::Arc::new(snap), history, &State::default()).unwrap();
}
