//! The sensors Monit users look for, on real things: declared files (the agent reads a
//! playbook's META `files` and the config's `[[files.watch]]`; content only where
//! `files.content_paths` allows), network interfaces in a network namespace the test makes (a
//! veth pair, compared with `ip -s link`, link state flipped with `ip link set down`), and a
//! tmpfs remounted read-only. They need root and iproute2 (`.ci/setup` installs it) and do not
//! skip.

use crate::util::{audit_lines, medic, playbook_src, text, write_config, write_playbooks, Tmpfs};
use medic::config::Config;
use medic::daemon::Agent;
use std::path::Path;
use std::process::Command;

fn signals_json(config: &Path, netns: Option<&str>) -> serde_json::Value {
    let o = match netns {
        Some(ns) => Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_medic"), "signals", "--json", "--config"])
            .arg(config)
            .output()
            .expect("ip (apt-get install iproute2; .ci/setup installs it)"),
        None => medic().args(["signals", "--json", "--config"]).arg(config).output().unwrap(),
    };
    assert!(o.status.success(), "medic signals: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn declared_files_from_the_config_are_read_by_medic_signals_and_bounded() {
    let d = tempfile::tempdir().unwrap();
    let logs = d.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    std::fs::write(logs.join("app.log"), "ERROR one\nok\nFATAL two\n").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", logs.join("shadow")).unwrap();
    assert!(Command::new("mkfifo").arg(logs.join("fifo")).status().unwrap().success(), "mkfifo (coreutils)");
    let mut cfg = format!(
        "[signals.ebpf]\nenabled = false\n[files]\ncontent_paths = [\"{}/*\"]\n[[files.watch]]\nname = \"log\"\npath = \"{}/app.log\"\nhash = true\npattern = \"ERROR|FATAL\"\n",
        logs.display(),
        logs.display()
    );
    cfg.push_str(&format!("[[files.watch]]\nname = \"shadow\"\npath = \"{}/shadow\"\nhash = true\npattern = \"root\"\n", logs.display()));
    cfg.push_str("[[files.watch]]\nname = \"shadow_direct\"\npath = \"/etc/shadow\"\nhash = true\npattern = \"root\"\n");
    cfg.push_str(&format!("[[files.watch]]\nname = \"fifo\"\npath = \"{}/fifo\"\nhash = true\npattern = \"x\"\n", logs.display()));
    // 1,000 more: the first 256 in all are watched, the rest named as left out.
    for i in 0..1000 {
        cfg.push_str(&format!("[[files.watch]]\nname = \"many{i}\"\npath = \"{}/m{i}\"\n", logs.display()));
    }
    let config = write_config(d.path(), &cfg);
    let v = signals_json(&config, None);
    let m = &v["metrics"];
    assert_eq!(m["file.log.exists"], 1.0);
    assert_eq!(m["file.log.size"], 23.0);
    // `medic signals` samples twice: the second sees no new lines and the same hash.
    assert_eq!(m["file.log.matches"], 0.0, "{v:#}");
    assert_eq!(m["file.log.changed"], 0.0);
    for n in ["shadow", "shadow_direct", "fifo"] {
        assert_eq!(m[format!("file.{n}.exists")], 1.0, "{n}: stat-only signals stay");
        assert!(m.get(format!("file.{n}.matches")).is_none() && m.get(format!("file.{n}.changed")).is_none(), "{n}: {v:#}");
        assert!(v["unavailable"][format!("file.{n}.content")].is_string(), "{n}: {}", v["unavailable"]);
    }
    assert_eq!(m["file.shadow_direct.mode"], 0o640 as f64);
    let exists = m.as_object().unwrap().keys().filter(|k| k.starts_with("file.") && k.ends_with(".exists")).count();
    assert_eq!(exists, 256);
    assert!(
        v["unavailable"]["files"].as_str().unwrap().contains("748 declared files beyond files.max_files (256)"),
        "{}",
        v["unavailable"]
    );
}

#[test]
fn a_playbooks_meta_files_reach_the_sampler_and_a_growing_log_fires_it() {
    let d = tempfile::tempdir().unwrap();
    let logs = d.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let log = logs.join("app.log");
    std::fs::write(&log, "started\n").unwrap();
    let conf = logs.join("app.conf");
    std::fs::write(&conf, "a = 1\n").unwrap();
    let files = format!(
        "files: [#{{ name: \"log\", path: \"{}\", pattern: \"ERROR\", tail: \"64KiB\" }}, #{{ name: \"conf\", path: \"{}\", hash: true }}], ",
        log.display(),
        conf.display()
    );
    let src = playbook_src(
        "log-errors",
        "#{ kind: \"notify\", target: \"*\" }",
        "100",
        "0s",
        "if node.has(\"file.log.matches\") && node.value(\"file.log.matches\") > 0 { notify(\"log\"); }\nif node.has(\"file.conf.changed\") && node.value(\"file.conf.changed\") == 1 { notify(\"conf\"); }\nif node.has(\"file.conf.mode\") && node.value(\"file.conf.mode\") == 384 { notify(\"mode\"); }",
    )
    .replace("actions: [", &format!("{files}actions: ["));
    let pbs = write_playbooks(d.path(), &[("log.rhai", src)]);
    let state = d.path().join("state");
    let toml =
        format!("[signals.ebpf]\nenabled = false\n[recorder]\nenabled = false\n[files]\ncontent_paths = [\"{}/*\"]\n", logs.display());
    let cfg = Config::parse("t.toml", &toml).unwrap();
    let mut agent = Agent::start(&cfg, Some(pbs), state.clone()).unwrap();
    let t0 = medic::audit::now_ms();
    agent.tick(t0).unwrap();
    agent.tick(t0 + 1000).unwrap();
    let notified = || -> Vec<String> {
        audit_lines(&state)
            .iter()
            .filter(|r| r["kind"] == "action" && r["action"]["kind"] == "notify")
            .map(|r| r["action"]["target"].as_str().unwrap_or_default().to_string())
            .collect()
    };
    assert!(notified().is_empty(), "{:?}", notified());
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"ERROR disk full\n").unwrap();
    std::fs::write(&conf, "a = 2\n").unwrap();
    std::fs::set_permissions(&conf, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    agent.tick(t0 + 2000).unwrap();
    let mut got = notified();
    got.sort();
    assert_eq!(got, ["conf", "log", "mode"], "{:#?}", audit_lines(&state));
    agent.tick(t0 + 3000).unwrap();
    assert_eq!(notified().iter().filter(|t| *t == "log").count(), 1, "no new line, no new match");
    agent.stop("test").unwrap();
}

/// A network namespace (and a second for the veth's peer), deleted when the guard goes.
struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn ip(args: &[&str]) -> String {
    let o = Command::new("ip").args(args).output().expect("ip (apt-get install iproute2; .ci/setup installs it)");
    assert!(o.status.success(), "ip {}: {}", args.join(" "), text(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// `ip -s -j link show dev` counters: (rx bytes, rx packets, tx bytes, tx packets).
fn ip_stats(ns: &str, dev: &str) -> [f64; 4] {
    let v: serde_json::Value = serde_json::from_str(&ip(&["-n", ns, "-s", "-j", "link", "show", "dev", dev])).unwrap();
    let s = &v[0]["stats64"];
    [&s["rx"]["bytes"], &s["rx"]["packets"], &s["tx"]["bytes"], &s["tx"]["packets"]].map(|x| x.as_f64().unwrap())
}

#[test]
fn interfaces_in_a_namespace_match_ip_and_link_state_flips() {
    let (a, b) = (format!("medic-na-{}", std::process::id()), format!("medic-nb-{}", std::process::id()));
    let _g = Netns(vec![a.clone(), b.clone()]);
    ip(&["netns", "add", &a]);
    ip(&["netns", "add", &b]);
    ip(&["-n", &a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", &b]);
    ip(&["-n", &a, "addr", "add", "10.231.0.1/30", "dev", "va"]);
    ip(&["-n", &b, "addr", "add", "10.231.0.2/30", "dev", "vb"]);
    ip(&["-n", &a, "link", "set", "va", "up"]);
    ip(&["-n", &b, "link", "set", "vb", "up"]);
    // Traffic: five UDP datagrams to the peer (after the ARP exchange they wait for).
    ip(&["netns", "exec", &a, "bash", "-c", "for i in 1 2 3 4 5; do echo medic > /dev/udp/10.231.0.2/9; done"]);
    let d = tempfile::tempdir().unwrap();
    let config = write_config(d.path(), "[signals.ebpf]\nenabled = false\n");
    // IPv6 neighbour discovery may add a packet at any time: medic's count lies between two
    // readings of `ip -s link`.
    let before = ip_stats(&a, "va");
    let v = signals_json(&config, Some(&a));
    let after = ip_stats(&a, "va");
    let m = &v["metrics"];
    for (i, k) in ["rx_bytes", "rx_packets", "tx_bytes", "tx_packets"].iter().enumerate() {
        let got = m[format!("net.va.{k}")].as_f64().unwrap_or_else(|| panic!("no net.va.{k}: {v:#}"));
        assert!(before[i] <= got && got <= after[i], "net.va.{k} = {got}, ip says {} .. {}", before[i], after[i]);
    }
    assert!(m["net.va.tx_packets"].as_f64().unwrap() >= 5.0);
    assert!(m.get("net.va.rx_bytes_per_s").is_some_and(|r| r.as_f64().unwrap() >= 0.0));
    assert_eq!((&m["net.va.up"], &m["net.va.carrier"], &m["net.va.admin_up"]), (&1.0.into(), &1.0.into(), &1.0.into()));
    assert!(m.get("net.vb.up").is_none(), "the peer is in another namespace");
    assert_eq!(m["net.lo.up"], 0.0, "lo is down in a new namespace");

    // The peer down: va is still administratively up but has no carrier, so it is not up.
    ip(&["-n", &b, "link", "set", "vb", "down"]);
    let m = signals_json(&config, Some(&a))["metrics"].clone();
    assert_eq!((&m["net.va.up"], &m["net.va.carrier"], &m["net.va.admin_up"]), (&0.0.into(), &0.0.into(), &1.0.into()));
    // va itself down.
    ip(&["-n", &a, "link", "set", "va", "down"]);
    let m = signals_json(&config, Some(&a))["metrics"].clone();
    assert_eq!((&m["net.va.up"], &m["net.va.carrier"], &m["net.va.admin_up"]), (&0.0.into(), &0.0.into(), &0.0.into()));
}

#[test]
fn a_filesystem_remounted_read_only_is_seen() {
    let d = tempfile::tempdir().unwrap();
    let mp = d.path().join("ro");
    let _t = Tmpfs::mount(&mp, "size=1m,nr_inodes=64");
    let key = |k: &str| format!("disk.{}.{k}", mp.display());
    let mut s = medic::signals::Sampler::new(Default::default());
    let snap = s.sample(medic::audit::now_ms());
    assert_eq!(snap.metric(&key("ro")), Some(0.0), "{:?}", snap.metrics.keys().filter(|k| k.starts_with("disk.")).collect::<Vec<_>>());
    assert_eq!(snap.metric(&key("inodes_total")), Some(64.0));
    for i in 0..40 {
        std::fs::write(mp.join(format!("f{i}")), "").unwrap();
    }
    let st = Command::new("mount").args(["-o", "remount,ro"]).arg(&mp).status().unwrap();
    assert!(st.success(), "mount -o remount,ro");
    let snap = s.sample(medic::audit::now_ms());
    assert_eq!(snap.metric(&key("ro")), Some(1.0));
    assert!(snap.metric(&key("inodes_used_pct")).unwrap() > 60.0, "Monit's `if inode usage > 60%`");
    let st = Command::new("mount").args(["-o", "remount,rw"]).arg(&mp).status().unwrap();
    assert!(st.success());
    assert_eq!(s.sample(medic::audit::now_ms()).metric(&key("ro")), Some(0.0));
}
