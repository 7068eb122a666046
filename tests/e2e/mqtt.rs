//! Audit replication to a real mosquitto that the tests start on a free loopback port with
//! their own config: nothing lost and nothing out of order across a broker outage and across
//! `kill -9` of the agent at random moments.

use crate::util::{audit_lines, medic, Reaped};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A mosquitto of the test's, with persistence in its own directory.
pub struct Broker {
    conf: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl Broker {
    fn new(dir: &Path) -> Self {
        Self::listening_on(dir, &["127.0.0.1"])
    }

    /// A broker listening on one port at each of `addrs` (the first must be 127.0.0.1).
    pub fn listening_on(dir: &Path, addrs: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let listeners: String = addrs.iter().map(|a| format!("listener {port} {a}\n")).collect();
        let data = dir.join("mosquitto");
        std::fs::create_dir_all(&data).unwrap();
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "user root\n{listeners}allow_anonymous true\npersistence true\npersistence_location {}/\nautosave_interval 1\nmax_queued_messages 0\n",
                data.display()
            ),
        )
        .unwrap();
        Self { conf, port, child: None }
    }

    pub fn start(&mut self) {
        let bin = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"].into_iter().find(|p| Path::new(p).exists()).unwrap_or("mosquitto");
        let child = Command::new(bin)
            .arg("-c")
            .arg(&self.conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto (apt-get install mosquitto)");
        self.child = Some(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(10), "mosquitto did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = rustix::process::kill_process(rustix::process::Pid::from_raw(c.id() as i32).unwrap(), rustix::process::Signal::TERM);
            let _ = c.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A subscriber with a persistent session, collecting (node, seq) of every audit record.
pub struct Subscriber {
    got: Arc<Mutex<Vec<(String, u64)>>>,
}

impl Subscriber {
    /// Connects, subscribes with QoS 1, and keeps collecting on a thread until `secs` pass.
    pub fn run(port: u16, id: &str, secs: u64) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        let id = id.to_string();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut opts = MqttOptions::new(id, "127.0.0.1", port);
            opts.set_clean_session(false);
            opts.set_keep_alive(Duration::from_secs(5));
            let (client, mut conn) = Client::new(opts, 100);
            client.subscribe("medic/v1/node/+/audit", QoS::AtLeastOnce).unwrap();
            let end = Instant::now() + Duration::from_secs(secs);
            for ev in conn.iter() {
                if Instant::now() > end {
                    break;
                }
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                        g.lock().unwrap().push((v["node"].as_str().unwrap_or("").to_string(), v["seq"].as_u64().unwrap_or(0)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    _ => {}
                }
            }
            let _ = client.disconnect();
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).expect("subscribed");
        Self { got }
    }

    pub fn seqs(&self, node: &str) -> Vec<u64> {
        self.got.lock().unwrap().iter().filter(|(n, _)| n == node).map(|(_, s)| *s).collect()
    }
}

fn write_setup(dir: &Path, port: u16, node: &str, per_tick: u32) -> (PathBuf, PathBuf, PathBuf) {
    let pbs = dir.join("pb");
    std::fs::create_dir_all(&pbs).unwrap();
    std::fs::write(
        pbs.join("n.rhai"),
        format!("const META = #{{ name: \"chatter\", description: \"t\", interval: \"1s\", actions: [#{{ kind: \"notify\", target: \"*\" }}],\n  rate_limit: #{{ max: 1000000, per: \"1h\" }}, cooldown: \"0s\" }};\nfn evaluate(node, state) {{ for i in 0..{per_tick} {{ notify(`n${{i}}`); }} }}\n"),
    )
    .unwrap();
    let cfg = dir.join("medic.toml");
    std::fs::write(
        &cfg,
        format!(
            "node = \"{node}\"\n[control]\nsocket = \"{}\"\n[metrics]\nlisten = \"\"\n[mqtt]\nenabled = true\nport = {port}\nkeep_alive_secs = 5\n",
            dir.join("c.sock").display()
        ),
    )
    .unwrap();
    (cfg, pbs, dir.join("state"))
}

fn agent(cfg: &Path, pbs: &Path, state: &Path) -> Reaped {
    Reaped(
        medic()
            .args(["run", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

fn log_seqs(state: &Path) -> Vec<u64> {
    audit_lines(state).iter().map(|r| r["seq"].as_u64().unwrap()).collect()
}

/// Received in seq order (a re-sent duplicate may repeat an earlier seq, never skip ahead).
fn assert_in_order(got: &[u64]) {
    let mut max = 0;
    for s in got {
        assert!(*s <= max + 1, "seq {s} arrived before seq {}: {got:?}", max + 1);
        max = max.max(*s);
    }
}

#[test]
fn records_written_while_the_broker_is_down_all_arrive_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    broker.start();
    // A persistent session, made while the broker is up, then left offline.
    drop(Subscriber::run(broker.port, "auditor-1", 1));
    std::thread::sleep(Duration::from_millis(1200));
    broker.stop();
    let (cfg, pbs, state) = write_setup(dir.path(), broker.port, "node-a", 3);
    let a = agent(&cfg, &pbs, &state);
    // Records pile up locally (waited for, not slept on: start-up takes seconds on a busy host).
    assert!(crate::util::wait_until(30, || log_seqs(&state).len() >= 6), "{}", log_seqs(&state).len());
    let written = log_seqs(&state).len();
    broker.start();
    let sub = Subscriber::run(broker.port, "auditor-1", 60);
    assert!(crate::util::wait_until(30, || medic::forward::read_cursor(&state) >= written as u64), "the backlog drains");
    assert!(a.stop());
    let all = log_seqs(&state);
    assert!(
        crate::util::wait_until(20, || {
            let got: std::collections::BTreeSet<u64> = sub.seqs("node-a").into_iter().collect();
            got == all.iter().copied().collect()
        }),
        "the subscriber has every record of the log"
    );
    assert_in_order(&sub.seqs("node-a"));
}

#[test]
fn kill_9_at_random_moments_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    broker.start();
    let sub = Subscriber::run(broker.port, "auditor-2", 120);
    let (cfg, pbs, state) = write_setup(dir.path(), broker.port, "node-k", 20);
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("seed {seed}");
    for _ in 0..4 {
        let mut a = agent(&cfg, &pbs, &state);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(700 + seed % 1500));
        a.0.kill().unwrap(); // SIGKILL, while it forwards
        a.0.wait().unwrap();
    }
    let a = agent(&cfg, &pbs, &state);
    std::thread::sleep(Duration::from_secs(2));
    assert!(a.stop());
    let all: std::collections::BTreeSet<u64> = log_seqs(&state).into_iter().collect();
    assert!(
        crate::util::wait_until(30, || {
            let got: std::collections::BTreeSet<u64> = sub.seqs("node-k").into_iter().collect();
            got == all
        }),
        "every (node, seq) of the log reached the subscriber"
    );
}

#[test]
fn password_authentication_works_and_a_wrong_password_is_reported_while_recording_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    let pwfile = dir.path().join("passwd");
    let st = Command::new("mosquitto_passwd").args(["-b", "-c"]).arg(&pwfile).args(["medic", "s3cret"]).status().unwrap();
    assert!(st.success());
    let conf = std::fs::read_to_string(&broker.conf)
        .unwrap()
        .replace("allow_anonymous true", &format!("allow_anonymous false\npassword_file {}", pwfile.display()));
    std::fs::write(&broker.conf, conf).unwrap();
    broker.start();
    let good = dir.path().join("good.pw");
    let bad = dir.path().join("bad.pw");
    std::fs::write(&good, "s3cret\n").unwrap();
    std::fs::write(&bad, "guess\n").unwrap();
    let mut seqs = Vec::new();
    for (name, pw) in [("good", &good), ("bad", &bad)] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let (cfg, pbs, state) = write_setup(&d, broker.port, &format!("node-{name}"), 1);
        let text = format!("{}username = \"medic\"\npassword_file = \"{}\"\n", std::fs::read_to_string(&cfg).unwrap(), pw.display());
        std::fs::write(&cfg, text).unwrap();
        let a = agent(&cfg, &pbs, &state);
        let sock = d.join("c.sock");
        let status = || crate::util::status_json(&sock);
        if name == "good" {
            assert!(crate::util::wait_until(20, || status()["replication"]["cursor"].as_u64() >= Some(3)), "{}", status());
            assert_eq!(status()["replication"]["connected"], true);
        } else {
            assert!(crate::util::wait_until(20, || status()["replication"]["error"].as_str().is_some()), "{}", status());
            let st = status();
            assert_eq!(st["replication"]["connected"], false);
            let err = st["replication"]["error"].as_str().unwrap().to_lowercase();
            assert!(err.contains("password") || err.contains("auth") || err.contains("refused"), "a clear error: {err}");
            let o = crate::util::run(&["status", "--socket", sock.to_str().unwrap()]);
            assert!(crate::util::text(&o).contains("NOT CONNECTED"), "{}", crate::util::text(&o));
            // It keeps deciding and recording locally.
            let before = log_seqs(&state).len();
            assert!(crate::util::wait_until(10, || log_seqs(&state).len() > before));
        }
        assert!(a.stop());
        seqs.push(log_seqs(&state).len());
    }
    assert!(seqs.iter().all(|n| *n > 0));
}

/// Publishes one command and collects the acks on `<topic>/ack` for `secs`.
fn command(port: u16, topic: &str, cmd: &serde_json::Value, secs: u64) -> Vec<serde_json::Value> {
    let mut opts = MqttOptions::new(format!("operator-{}", std::process::id()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 100);
    client.subscribe(format!("{topic}/ack"), QoS::AtLeastOnce).unwrap();
    let mut acks = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    let mut sent = false;
    for ev in conn.iter() {
        if Instant::now() > end {
            break;
        }
        match ev {
            Ok(Event::Incoming(Packet::SubAck(_))) if !sent => {
                client.publish(topic, QoS::AtLeastOnce, false, cmd.to_string().into_bytes()).unwrap();
                sent = true;
            }
            Ok(Event::Incoming(Packet::Publish(p))) => acks.push(serde_json::from_slice(&p.payload).unwrap()),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
            _ => {}
        }
    }
    acks
}

fn sign(cmd: &mut serde_json::Value, key: &ed25519_dalek::SigningKey) {
    use ed25519_dalek::Signer;
    let sig = key.sign(&medic::control::remote::signed_bytes(cmd));
    cmd["sig"] = serde_json::Value::String(hex::encode(sig.to_bytes()));
}

#[test]
fn a_fleet_of_three_follows_fleet_and_group_commands_and_rejects_unsigned_live() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    broker.start();
    let key = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let nodes = [("n1", "web"), ("n2", "web"), ("n3", "db")];
    let mut agents = Vec::new();
    let mut states = Vec::new();
    for (node, group) in nodes {
        let d = dir.path().join(node);
        std::fs::create_dir_all(d.join("state/trusted-keys")).unwrap();
        std::fs::write(d.join("state/trusted-keys/ops.pub"), hex::encode(key.verifying_key().to_bytes())).unwrap();
        let (cfg, pbs, state) = write_setup(&d, broker.port, node, 0);
        std::fs::write(&cfg, format!("{}groups = [\"{group}\"]\n", std::fs::read_to_string(&cfg).unwrap())).unwrap();
        medic::control::mode::ModeState {
            mode: medic::gate::Mode::Live,
            since_ms: 1,
            actor: "test".into(),
            reason: "test".into(),
            expires_ms: None,
            revert_to: None,
            previous: None,
        }
        .save(&state)
        .unwrap();
        agents.push(agent(&cfg, &pbs, &state));
        states.push(state);
    }
    let mode_of = |s: &Path| -> String {
        let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(s.join("mode.json")).unwrap()).unwrap();
        m["mode"].as_str().unwrap().to_string()
    };
    let connected = |s: &Path| medic::forward::read_cursor(s) > 0;
    assert!(crate::util::wait_until(20, || states.iter().all(|s| connected(s))), "all three connected");
    std::thread::sleep(Duration::from_millis(500)); // subscribed to their command topics

    // The whole fleet to dry-run for 6 s: unsigned is fine in the safe direction.
    let cmd =
        serde_json::json!({ "id": "c1", "op": "set_mode", "mode": "dry-run", "reason": "incident 42", "actor": "oncall", "ttl_secs": 6 });
    let acks = command(broker.port, "medic/v1/fleet/cmd", &cmd, 2);
    let ok: std::collections::BTreeSet<String> =
        acks.iter().filter(|a| a["ok"] == true).map(|a| a["node"].as_str().unwrap().to_string()).collect();
    assert_eq!(ok, ["n1", "n2", "n3"].map(String::from).into_iter().collect(), "{acks:?}");
    assert!(states.iter().all(|s| mode_of(s) == "dry-run"));
    // At expiry each reverts to live by itself, and records it.
    assert!(crate::util::wait_until(10, || states.iter().all(|s| mode_of(s) == "live")));
    assert!(crate::util::wait_until(5, || states.iter().all(|s| audit_lines(s).iter().any(|r| r["kind"] == "mode_expired"))));

    // A group command switches only that group.
    let cmd = serde_json::json!({ "id": "c2", "op": "set_mode", "mode": "dry-run", "reason": "web deploy", "actor": "oncall" });
    let acks = command(broker.port, "medic/v1/group/web/cmd", &cmd, 2);
    assert_eq!(acks.iter().filter(|a| a["ok"] == true).count(), 2, "{acks:?}");
    assert_eq!([mode_of(&states[0]), mode_of(&states[1]), mode_of(&states[2])], ["dry-run", "dry-run", "live"]);

    // Live without a signature: rejected by all three, and recorded.
    let cmd = serde_json::json!({ "id": "c3", "op": "set_mode", "mode": "live", "reason": "yolo", "actor": "mallory" });
    let acks = command(broker.port, "medic/v1/fleet/cmd", &cmd, 2);
    assert_eq!(acks.iter().filter(|a| a["ok"] == false).count(), 3, "{acks:?}");
    assert_eq!(mode_of(&states[0]), "dry-run");
    // Signed by the trusted key: accepted; the same nonce again: a replay, rejected.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut cmd = serde_json::json!({ "id": "c4", "op": "set_mode", "scope": "node/n1", "mode": "live", "reason": "deploy done", "actor": "oncall", "ts": now, "nonce": "n-1" });
    sign(&mut cmd, &key);
    let acks = command(broker.port, "medic/v1/node/n1/cmd", &cmd, 2);
    assert_eq!(acks.len(), 1);
    assert_eq!(acks[0]["ok"], true, "{acks:?}");
    assert_eq!(mode_of(&states[0]), "live");
    let acks = command(broker.port, "medic/v1/node/n1/cmd", &cmd, 2);
    assert!(acks[0]["error"].as_str().unwrap().contains("replayed"), "{acks:?}");
    // Malformed: rejected with a record, mode unchanged, the agent alive.
    let acks = command(
        broker.port,
        "medic/v1/node/n3/cmd",
        &serde_json::json!({ "id": "c5", "op": "set_mode", "mode": "dry-run", "reason": "x", "evil": 1 }),
        2,
    );
    assert!(acks[0]["error"].as_str().unwrap().contains("unknown field"), "{acks:?}");
    assert_eq!(mode_of(&states[2]), "live");
    for s in &states {
        let cmds: Vec<_> = audit_lines(s).into_iter().filter(|r| r["kind"] == "command").collect();
        assert!(cmds.iter().any(|c| c["accepted"] == false), "rejections are recorded");
    }
    for a in agents {
        assert!(a.stop());
    }
}

#[test]
fn the_cli_switches_a_group_lists_the_fleet_and_signs_live_commands() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    broker.start();
    let secret = [9u8; 32];
    let key = ed25519_dalek::SigningKey::from_bytes(&secret);
    let mut agents = Vec::new();
    let mut states = Vec::new();
    for node in ["cli-a", "cli-b"] {
        let d = dir.path().join(node);
        std::fs::create_dir_all(d.join("state/trusted-keys")).unwrap();
        std::fs::write(d.join("state/trusted-keys/ops.pub"), hex::encode(key.verifying_key().to_bytes())).unwrap();
        let (cfg, pbs, state) = write_setup(&d, broker.port, node, 0);
        std::fs::write(&cfg, format!("{}groups = [\"edge\"]\n", std::fs::read_to_string(&cfg).unwrap())).unwrap();
        agents.push(agent(&cfg, &pbs, &state));
        states.push(state);
    }
    assert!(crate::util::wait_until(20, || states.iter().all(|s| medic::forward::read_cursor(s) > 0)));
    std::thread::sleep(Duration::from_secs(6)); // retained statuses published (every 5 s at most)
    let op_cfg = dir.path().join("operator.toml");
    std::fs::write(&op_cfg, format!("[mqtt]\nport = {}\n", broker.port)).unwrap();
    let c = op_cfg.to_str().unwrap();
    let o = crate::util::run(&["fleet", "status", "--config", c]);
    let out = crate::util::text(&o);
    assert!(out.contains("cli-a") && out.contains("cli-b"), "{out}");
    let o = crate::util::run(&["mode", "dry-run", "--group", "edge", "--reason", "maintenance", "--wait", "3", "--config", c]);
    let out = crate::util::text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("2 confirmed, 0 rejected, 0 did not answer"), "{out}");
    let o = crate::util::run(&["mode", "live", "--fleet", "--reason", "unsigned", "--wait", "3", "--config", c]);
    assert_eq!(o.status.code(), Some(1));
    assert!(crate::util::text(&o).contains("REJECTED"), "{}", crate::util::text(&o));
    let keyfile = dir.path().join("ops.key");
    std::fs::write(&keyfile, hex::encode(secret)).unwrap();
    let o = crate::util::run(&[
        "mode",
        "live",
        "--node",
        "cli-a",
        "--reason",
        "signed",
        "--sign-key",
        keyfile.to_str().unwrap(),
        "--wait",
        "3",
        "--config",
        c,
    ]);
    assert!(o.status.success(), "{}", crate::util::text(&o));
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(states[0].join("mode.json")).unwrap()).unwrap();
    assert_eq!(m["mode"], "live");
    for a in agents {
        assert!(a.stop());
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl");
    assert!(o.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&o.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made for this test.
fn make_certs(dir: &Path) {
    for ca in ["ca", "other-ca"] {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=medic-test-{ca}"),
            ],
        );
    }
    std::fs::write(dir.join("server.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (who, cn) in [("server", "127.0.0.1"), ("client", "medic-node")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{who}.key"),
                "-out",
                &format!("{who}.csr"),
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{who}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{who}.pem"),
                "-days",
                "2",
                "-extfile",
                &format!("{who}.ext"),
            ],
        );
    }
}

#[test]
fn tls_with_a_client_certificate_works_and_a_wrong_ca_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    make_certs(&certs);
    let mut broker = Broker::new(dir.path());
    let c = |f: &str| certs.join(f).display().to_string();
    let conf = format!(
        "{}cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
        std::fs::read_to_string(&broker.conf).unwrap(),
        c("ca.pem"),
        c("server.pem"),
        c("server.key")
    );
    std::fs::write(&broker.conf, conf).unwrap();
    broker.start();
    for (name, ca) in [("good", "ca.pem"), ("wrong-ca", "other-ca.pem")] {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let (cfg, pbs, state) = write_setup(&d, broker.port, &format!("tls-{name}"), 1);
        let text = format!(
            "{}ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            std::fs::read_to_string(&cfg).unwrap(),
            c(ca),
            c("client.pem"),
            c("client.key")
        );
        std::fs::write(&cfg, text).unwrap();
        assert!(crate::util::run(&["validate", "--config", cfg.to_str().unwrap(), "--playbooks", pbs.to_str().unwrap()]).status.success());
        let a = agent(&cfg, &pbs, &state);
        let sock = d.join("c.sock");
        let status = || crate::util::status_json(&sock);
        if name == "good" {
            assert!(crate::util::wait_until(20, || status()["replication"]["cursor"].as_u64() >= Some(3)), "{}", status());
        } else {
            assert!(crate::util::wait_until(20, || status()["replication"]["error"].as_str().is_some()), "{}", status());
            let err = status()["replication"]["error"].as_str().unwrap().to_lowercase();
            assert!(err.contains("certificate") || err.contains("issuer") || err.contains("tls"), "a clear error: {err}");
            let before = log_seqs(&state).len();
            assert!(crate::util::wait_until(10, || log_seqs(&state).len() > before), "it keeps recording locally");
            assert_eq!(medic::forward::read_cursor(&state), 0);
        }
        assert!(a.stop());
    }
}

#[test]
fn audit_tail_fleet_streams_every_nodes_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    broker.start();
    let op_cfg = dir.path().join("operator.toml");
    std::fs::write(&op_cfg, format!("[mqtt]\nport = {}\n", broker.port)).unwrap();
    let tail = Reaped(
        medic()
            .args(["audit", "tail", "--fleet", "--json", "--config", op_cfg.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(Duration::from_secs(1)); // subscribed
    let (cfg, pbs, state) = write_setup(dir.path(), broker.port, "tailed", 1);
    let a = agent(&cfg, &pbs, &state);
    assert!(crate::util::wait_until(20, || medic::forward::read_cursor(&state) >= 5));
    assert!(a.stop());
    let mut tail = tail;
    let mut stdout = tail.0.stdout.take().unwrap();
    let _ = tail.0.kill();
    let _ = tail.0.wait();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut text).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(lines.len() >= 5, "{} records streamed", lines.len());
    assert!(lines.iter().all(|r| r["node"] == "tailed" && r["schema"] == "medic.audit/v1"));
}

fn all_seqs(state: &Path) -> std::collections::BTreeSet<u64> {
    let mut s = std::collections::BTreeSet::new();
    medic::audit::verify::for_each_record(state, |r| {
        s.insert(r.unwrap()["seq"].as_u64().unwrap());
    })
    .unwrap();
    s
}

/// The forwarder read one file: after rotation it must follow the segments, and after a rewind
/// (a jump in `seq`) its cursor must not wait for the lost seq values forever.
#[test]
fn the_forwarder_follows_segments_and_goes_on_after_a_rewind() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    broker.start();
    let sub = Subscriber::run(broker.port, "auditor-seg", 120);
    let (cfg, pbs, state) = write_setup(dir.path(), broker.port, "node-s", 10);
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("[audit]\nsegment_bytes = 4096\n");
    std::fs::write(&cfg, text).unwrap();
    let a = agent(&cfg, &pbs, &state);
    std::thread::sleep(Duration::from_secs(5));
    assert!(a.stop());
    let segs = medic::audit::segments::list(&state).unwrap();
    assert!(segs.len() >= 3, "rotated: {segs:?}, {} records", all_seqs(&state).len());
    let all = all_seqs(&state);
    assert!(
        crate::util::wait_until(30, || sub.seqs("node-s").into_iter().collect::<std::collections::BTreeSet<_>>() == all),
        "every record of every segment reached the broker"
    );
    // Cut off the active segment's last records: the next start records a rewind and jumps.
    let log = state.join("audit.log");
    let good = std::fs::read(&log).unwrap();
    let lines: Vec<&[u8]> = good.split_inclusive(|b| *b == b'\n').collect();
    let kept = &lines[..lines.len().saturating_sub(3).max(1)];
    std::fs::write(&log, kept.concat()).unwrap();
    // As if the broker had not acknowledged the last two kept records yet: the forwarder sends
    // them, then the rewind record, whose seq jumps past the lost ones.
    let last_kept = serde_json::from_slice::<serde_json::Value>(kept.last().unwrap()).unwrap()["seq"].as_u64().unwrap();
    std::fs::write(state.join("forward.cursor"), format!("{}\n", last_kept - 2)).unwrap();
    let a = agent(&cfg, &pbs, &state);
    std::thread::sleep(Duration::from_secs(3));
    assert!(a.stop());
    let after = all_seqs(&state);
    let max = *after.iter().max().unwrap();
    assert!(max > *all.iter().max().unwrap());
    assert!(
        crate::util::wait_until(30, || sub.seqs("node-s").contains(&max)),
        "records after the rewind reached the broker (the cursor went past the jump)"
    );
    assert!(medic::forward::read_cursor(&state) >= max - 1);
}

// ---- Issue 9: the broker (and local users) cannot turn nodes live or silence them. ----

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Publishes raw payloads (QoS 1, optionally retained) and waits until the broker has them all.
fn publish_raw(port: u16, msgs: &[(String, Vec<u8>, bool)]) {
    let mut opts = MqttOptions::new(format!("publisher-{}-{}", std::process::id(), msgs.len()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    opts.set_max_packet_size(8 << 20, 8 << 20);
    let (client, mut conn) = Client::new(opts, msgs.len() + 10);
    for (topic, payload, retain) in msgs {
        client.publish(topic.clone(), QoS::AtLeastOnce, *retain, payload.clone()).unwrap();
    }
    let mut acked = 0;
    let end = Instant::now() + Duration::from_secs(30);
    for ev in conn.iter() {
        if let Ok(Event::Incoming(Packet::PubAck(_))) = ev {
            acked += 1;
            if acked == msgs.len() {
                break;
            }
        }
        assert!(ev.is_ok() && Instant::now() < end, "publishing: {ev:?}");
    }
}

/// Starts one agent per (node, group) with the test key trusted and the mode set; waits until
/// each is connected.
fn fleet(
    dir: &Path,
    port: u16,
    nodes: &[(&str, &str)],
    key: &ed25519_dalek::SigningKey,
    live: bool,
    per_tick: u32,
) -> (Vec<Reaped>, Vec<PathBuf>) {
    let (mut agents, mut states) = (Vec::new(), Vec::new());
    for (node, group) in nodes {
        let d = dir.join(node);
        std::fs::create_dir_all(d.join("state/trusted-keys")).unwrap();
        std::fs::write(d.join("state/trusted-keys/ops.pub"), hex::encode(key.verifying_key().to_bytes())).unwrap();
        let (cfg, pbs, state) = write_setup(&d, port, node, per_tick);
        std::fs::write(&cfg, format!("{}groups = [\"{group}\"]\n", std::fs::read_to_string(&cfg).unwrap())).unwrap();
        let mode = if live { medic::gate::Mode::Live } else { medic::gate::Mode::DryRun };
        medic::control::mode::ModeState { mode, ..medic::control::mode::ModeState::fresh() }.save(&state).unwrap();
        agents.push(agent(&cfg, &pbs, &state));
        states.push(state);
    }
    assert!(crate::util::wait_until(20, || states.iter().all(|s| medic::forward::read_cursor(s) > 0)), "connected");
    (agents, states)
}

/// Publishes one command and returns its ack (by id), waiting up to 10 s for it.
fn ack(port: u16, topic: &str, cmd: &serde_json::Value) -> serde_json::Value {
    let mut opts = MqttOptions::new(format!("operator-ack-{}", std::process::id()), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut conn) = Client::new(opts, 100);
    client.subscribe(format!("{topic}/ack"), QoS::AtLeastOnce).unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    for ev in conn.iter() {
        assert!(Instant::now() < end, "no ack for {} on {topic}", cmd["id"]);
        match ev {
            Ok(Event::Incoming(Packet::SubAck(_))) => client.publish(topic, QoS::AtLeastOnce, false, cmd.to_string().into_bytes()).unwrap(),
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let a: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                if a["id"] == cmd["id"] {
                    return a;
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
            _ => {}
        }
    }
    unreachable!()
}

fn mode_json(state: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(state.join("mode.json")).unwrap()).unwrap()
}

fn commands_of(state: &Path) -> Vec<serde_json::Value> {
    audit_lines(state).into_iter().filter(|r| r["kind"] == "command").collect()
}

/// Waits until the command connection has subscribed: an unsigned reload is acked.
fn commands_ready(port: u16, node: &str) {
    let cmd = serde_json::json!({ "id": format!("ready-{node}"), "op": "reload" });
    assert!(
        crate::util::wait_until(30, || command(port, &format!("medic/v1/node/{node}/cmd"), &cmd, 1).iter().any(|a| a["ok"] == true)),
        "{node} takes commands"
    );
}

#[test]
fn a_signed_live_command_for_one_node_does_not_switch_another_node_its_group_or_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    broker.start();
    let key = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let (agents, states) = fleet(dir.path(), broker.port, &[("sa", "web"), ("sb", "web")], &key, false, 0);
    commands_ready(broker.port, "sa");
    commands_ready(broker.port, "sb");
    // The exact bytes signed for node sa, published on sb's, the group's and the fleet's topic.
    let mut cmd = serde_json::json!({ "id": "s1", "op": "set_mode", "scope": "node/sa", "mode": "live", "reason": "deploy", "actor": "oncall", "ts": now_s(), "nonce": "scope-1" });
    sign(&mut cmd, &key);
    for topic in ["medic/v1/node/sb/cmd", "medic/v1/group/web/cmd", "medic/v1/fleet/cmd"] {
        let acks = command(broker.port, topic, &cmd, 2);
        assert!(!acks.is_empty() && acks.iter().all(|a| a["ok"] == false && a["error_code"] == "command_scope"), "{topic}: {acks:?}");
    }
    assert!(states.iter().all(|s| mode_json(s)["mode"] == "dry-run"));
    // The same command without a scope (as signed before this fix): refused everywhere.
    let mut old =
        serde_json::json!({ "id": "s2", "op": "set_mode", "mode": "live", "reason": "deploy", "ts": now_s(), "nonce": "scope-2" });
    sign(&mut old, &key);
    assert_eq!(ack(broker.port, "medic/v1/node/sa/cmd", &old)["error_code"], "command_scope");
    // A duplicate key after the signed fields: refused, whichever value a reader would keep.
    let text = cmd.to_string();
    let doubled = format!("{},\"mode\":\"live\"}}", &text[..text.len() - 1]);
    publish_raw(broker.port, &[("medic/v1/node/sa/cmd".into(), doubled.into_bytes(), false)]);
    assert!(crate::util::wait_until(10, || commands_of(&states[0]).iter().any(|c| c["error_code"] == "command_duplicate_key")));
    assert_eq!(mode_json(&states[0])["mode"], "dry-run");
    // On its own node's topic it is accepted.
    let a = ack(broker.port, "medic/v1/node/sa/cmd", &cmd);
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(mode_json(&states[0])["mode"], "live");
    assert_eq!(mode_json(&states[1])["mode"], "dry-run");
    for a in agents {
        assert!(a.stop());
    }
}

#[test]
fn a_signed_command_accepted_once_is_refused_after_the_agent_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    broker.start();
    let key = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let (mut agents, states) = fleet(dir.path(), broker.port, &[("ra", "web")], &key, false, 0);
    commands_ready(broker.port, "ra");
    let mut cmd = serde_json::json!({ "id": "r1", "op": "set_mode", "scope": "node/ra", "mode": "live", "reason": "deploy", "ts": now_s(), "nonce": "restart-1" });
    sign(&mut cmd, &key);
    assert_eq!(ack(broker.port, "medic/v1/node/ra/cmd", &cmd)["ok"], true);
    // Back to dry-run, then kill -9 and start again.
    let dry = serde_json::json!({ "id": "r2", "op": "set_mode", "mode": "dry-run", "reason": "incident" });
    assert_eq!(ack(broker.port, "medic/v1/node/ra/cmd", &dry)["ok"], true);
    let mut a = agents.pop().unwrap();
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let d = dir.path().join("ra");
    let a = agent(&d.join("medic.toml"), &d.join("pb"), &states[0]);
    commands_ready(broker.port, "ra");
    assert_eq!(ack(broker.port, "medic/v1/node/ra/cmd", &cmd)["error_code"], "command_replayed");
    assert_eq!(mode_json(&states[0])["mode"], "dry-run");
    assert!(a.stop());
}

#[test]
fn a_ttl_dry_run_on_a_node_live_for_an_hour_reverts_to_that_hour_over_mqtt_and_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    broker.start();
    let key = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let (agents, states) = fleet(dir.path(), broker.port, &[("ta", "web")], &key, false, 0);
    let sock = dir.path().join("ta/c.sock");
    let s = sock.to_str().unwrap();
    let o = crate::util::run(&["mode", "live", "--ttl", "1h", "--reason", "one hour", "--socket", s]);
    assert!(o.status.success(), "{}", crate::util::text(&o));
    let hour = mode_json(&states[0])["expires_ms"].as_i64().expect("live for an hour");
    commands_ready(broker.port, "ta");
    // Unsigned, over the broker: a one-second dry-run.
    let dry = serde_json::json!({ "id": "t1", "op": "set_mode", "mode": "dry-run", "reason": "blip", "ttl_secs": 1 });
    assert_eq!(ack(broker.port, "medic/v1/node/ta/cmd", &dry)["ok"], true);
    assert!(crate::util::wait_until(10, || mode_json(&states[0])["mode"] == "live"));
    assert_eq!(mode_json(&states[0])["expires_ms"].as_i64(), Some(hour), "live with the hour's expiry, not forever");
    // The same over the local socket.
    let o = crate::util::run(&["mode", "dry-run", "--ttl", "1s", "--reason", "blip", "--socket", s]);
    assert!(o.status.success(), "{}", crate::util::text(&o));
    assert!(crate::util::wait_until(10, || mode_json(&states[0])["mode"] == "live"));
    assert_eq!(mode_json(&states[0])["expires_ms"].as_i64(), Some(hour));
    let expired: Vec<_> = audit_lines(&states[0]).into_iter().filter(|r| r["kind"] == "mode_expired").collect();
    assert_eq!(expired.len(), 2);
    assert!(expired.iter().all(|r| r["to"] == "live" && r["expires"].is_string()), "{expired:?}");
    for a in agents {
        assert!(a.stop());
    }
}

#[test]
fn an_oversized_retained_fleet_command_neither_stops_replication_nor_loops_and_retained_commands_are_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    broker.start();
    // Before the node starts: 1.5 MiB retained on the fleet topic, a valid dry-run retained on
    // the group's.
    let dry = serde_json::json!({ "id": "ret-1", "op": "set_mode", "mode": "dry-run", "reason": "left behind" });
    publish_raw(
        broker.port,
        &[("medic/v1/fleet/cmd".into(), vec![b'x'; 3 << 19], true), ("medic/v1/group/web/cmd".into(), dry.to_string().into_bytes(), true)],
    );
    let key = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let (agents, states) = fleet(dir.path(), broker.port, &[("oa", "web")], &key, true, 1);
    let state = &states[0];
    // Both are refused as retained and recorded, without dropping the connection (the 1.5 MiB
    // is read, then refused by the 16 KiB command limit and the retained flag).
    assert!(crate::util::wait_until(15, || commands_of(state).iter().filter(|c| c["error_code"] == "command_retained").count() >= 2));
    let cmds = commands_of(state);
    assert!(cmds.iter().any(|c| c["payload_bytes"] == 3 << 19 && c["topic"] == "medic/v1/fleet/cmd"), "{cmds:?}");
    assert_eq!(mode_json(state)["mode"], "live", "the retained dry-run is never applied");
    commands_ready(broker.port, "oa");
    // A fresh dry-run still works: the command connection is up.
    let fresh = serde_json::json!({ "id": "fresh", "op": "set_mode", "mode": "dry-run", "reason": "now", "ttl_secs": 2 });
    assert_eq!(ack(broker.port, "medic/v1/node/oa/cmd", &fresh)["ok"], true);
    assert!(crate::util::wait_until(10, || mode_json(state)["mode"] == "live"));
    assert_eq!(commands_of(state).iter().filter(|c| c["topic"] == "?").count(), 0, "the connection was never dropped");
    // Past the 4 MiB transport limit the client must drop the connection: only the command
    // connection, and its reconnects back off instead of looping every 200 ms.
    publish_raw(broker.port, &[("medic/v1/fleet/cmd".into(), vec![b'y'; 5 << 20], true)]);
    let t = Instant::now();
    assert!(crate::util::wait_until(15, || commands_of(state).iter().any(|c| c["topic"] == "?")), "the dropped packet is recorded");
    let cursor = medic::forward::read_cursor(state);
    std::thread::sleep(Duration::from_secs(8));
    let last = audit_lines(state).last().unwrap()["seq"].as_u64().unwrap();
    assert!(last > cursor);
    assert!(
        crate::util::wait_until(15, || medic::forward::read_cursor(state) >= last),
        "replication goes on: seq {last} reached the broker"
    );
    let drops = commands_of(state).iter().filter(|c| c["topic"] == "?" && c["payload_bytes"].as_u64() > Some(4 << 20)).count();
    let secs = t.elapsed().as_secs();
    assert!((2..=7).contains(&drops) && secs < 60, "{drops} reconnects in {secs} s: the backoff grows");
    assert_eq!(mode_json(state)["mode"], "live");
    for a in agents {
        assert!(a.stop());
    }
}

#[test]
fn a_flood_of_commands_loses_none_keeps_the_dry_run_and_bounds_rejection_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    broker.start();
    let key = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    let (agents, states) = fleet(dir.path(), broker.port, &[("fa", "web")], &key, true, 0);
    commands_ready(broker.port, "fa");
    let topic = "medic/v1/node/fa/cmd".to_string();
    let actor = "m".repeat(15 * 1024);
    let mut msgs: Vec<(String, Vec<u8>, bool)> = (0..3000)
        .map(|i| {
            let c = serde_json::json!({ "id": format!("flood-{i}"), "op": "set_mode", "mode": "live", "reason": "x", "actor": actor });
            (topic.clone(), c.to_string().into_bytes(), false)
        })
        .collect();
    let dry = serde_json::json!({ "id": "oncall-dry", "op": "set_mode", "mode": "dry-run", "reason": "on call", "actor": "oncall" });
    msgs.insert(1500, (topic.clone(), dry.to_string().into_bytes(), false));
    let acks = Arc::new(Mutex::new(0usize));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    {
        let acks = acks.clone();
        let port = broker.port;
        std::thread::spawn(move || {
            let mut opts = MqttOptions::new("ack-counter", "127.0.0.1", port);
            opts.set_keep_alive(Duration::from_secs(5));
            let (client, mut conn) = Client::new(opts, 100);
            client.subscribe("medic/v1/node/fa/cmd/ack", QoS::AtLeastOnce).unwrap();
            for ev in conn.iter() {
                match ev {
                    Ok(Event::Incoming(Packet::SubAck(_))) => ready_tx.send(()).unwrap(),
                    Ok(Event::Incoming(Packet::Publish(_))) => *acks.lock().unwrap() += 1,
                    Err(_) => break,
                    _ => {}
                }
            }
        });
    }
    ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let t = Instant::now();
    publish_raw(broker.port, &msgs);
    println!("3001 commands published in {:?}", t.elapsed());
    assert!(crate::util::wait_until(120, || *acks.lock().unwrap() >= 3001), "every command acked: {}", acks.lock().unwrap());
    println!("3001 commands applied or refused, and acked, in {:?}", t.elapsed());
    assert_eq!(mode_json(&states[0])["mode"], "dry-run", "the on-call dry-run is applied");
    let sock = dir.path().join("fa/c.sock");
    assert!(crate::util::status_json(&sock)["node"] == "fa");
    let state = states[0].clone();
    for a in agents {
        assert!(a.stop());
    }
    let cmds = commands_of(&state);
    let recorded_rejections =
        cmds.iter().filter(|c| c["accepted"] == false && c["command_id"].as_str().unwrap_or("").starts_with("flood")).count();
    let summarised: u64 =
        audit_lines(&state).iter().filter(|r| r["kind"] == "commands_rejected").map(|r| r["count"].as_u64().unwrap()).sum();
    println!("{recorded_rejections} rejections recorded one by one, {summarised} counted in commands_rejected");
    assert!(cmds.iter().any(|c| c["command_id"] == "oncall-dry" && c["accepted"] == true));
    assert_eq!(recorded_rejections as u64 + summarised, 3000, "every rejection recorded or counted");
    assert!(recorded_rejections <= 20, "{recorded_rejections} records of their own");
    assert!(cmds.iter().all(|c| c["actor"].as_str().unwrap().len() <= 300), "claimed actors are bounded");
}

#[test]
fn a_breaker_reset_that_cannot_be_recorded_leaves_the_breaker_open_from_the_broker_and_the_socket() {
    use medic::control::command::Incoming;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _fs = crate::util::Tmpfs::mount(&state, "size=256k");
    // An escalated decision in the log: the agent's replay opens the breaker.
    let (mut log, _) = medic::audit::AuditLog::open(&state, "bk").unwrap();
    log.append(&crate::util::escalated("pb", "x.service")).unwrap();
    drop(log);
    let pbs = dir.path().join("pb");
    std::fs::create_dir_all(&pbs).unwrap();
    let cfg_path = dir.path().join("medic.toml");
    std::fs::write(&cfg_path, "node = \"bk\"\n").unwrap();
    let (cfg, _) = medic::config::Config::load(Some(&cfg_path)).unwrap();
    let mut agent = medic::daemon::Agent::start(&cfg, Some(pbs), state.clone()).unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&[42u8; 32]);
    agent.verifier = medic::control::remote::Verifier::with_keys(vec![("ops".into(), key.verifying_key())]);
    let open = |a: &medic::daemon::Agent| a.status(medic::audit::now_ms())["open_breakers"].as_array().map_or(0, |b| b.len());
    assert_eq!(open(&agent), 1);
    // Fill the filesystem, then use up the log's last page with rejected commands.
    let topic = "medic/v1/node/bk/cmd";
    {
        use std::io::Write;
        let mut f = std::fs::File::create(state.join("filler")).unwrap();
        while f.write_all(&[0u8; 4096]).and_then(|_| f.sync_data()).is_ok() {}
    }
    // Small rejection records (10 a minute on each topic) until one does not fit: what is
    // left of the page is less than a breaker reset with its long reason needs.
    for t in [topic, "medic/v1/fleet/cmd", "elsewhere"] {
        for _ in 0..10 {
            if agent.status(medic::audit::now_ms())["audit"]["writable"] == false {
                break;
            }
            agent.remote(&Incoming::new(t, b"{", false));
        }
    }
    assert_eq!(agent.status(medic::audit::now_ms())["audit"]["writable"], false, "the log is full");
    let records = || audit_lines(&state).len();
    let before = records();
    // Over the broker, signed: refused, and the breaker stays open.
    let mut cmd = serde_json::json!({ "id": "rb", "op": "reset_breaker", "scope": "node/bk", "playbook": "pb", "action": "restart_unit", "target": "x.service", "reason": "r".repeat(250), "ts": now_s(), "nonce": "rb-1" });
    sign(&mut cmd, &key);
    let a = agent.remote(&Incoming::new(topic, cmd.to_string().as_bytes(), false)).unwrap();
    assert_eq!(a["ok"], false, "{a}");
    assert_eq!(a["error_code"], "command_not_recorded", "{a}");
    assert_eq!(open(&agent), 1, "not reset without a record");
    // Over the socket: the same path, the same answer.
    let peer = medic::control::Peer { uid: 0, gid: 0, pid: std::process::id() as i32 };
    let req = medic::control::Request::ResetBreaker {
        playbook: "pb".into(),
        action: "restart_unit".into(),
        target: "x.service".into(),
        reason: "r".repeat(250),
    };
    let r = agent.control(req.clone(), &peer);
    assert!(!r.ok && r.error.as_deref().unwrap_or("").contains("not recorded"), "{r:?}");
    assert_eq!(open(&agent), 1);
    assert_eq!(records(), before);
    assert!(audit_lines(&state).iter().all(|r| r["kind"] != "breaker_reset"));
    // Space returns: the reset is recorded, then made.
    std::fs::remove_file(state.join("filler")).unwrap();
    agent.tick(medic::audit::now_ms()).unwrap();
    assert!(agent.control(req, &peer).ok);
    assert_eq!(open(&agent), 0);
    assert!(audit_lines(&state).iter().any(|r| r["kind"] == "breaker_reset"));
    agent.stop("test").unwrap();
}

/// Regression (issue 9): a playbook that slept or spun stopped replication and fleet commands
/// along with the control socket. Now, while an evaluation spins on the worker, a dry-run sent
/// over the broker is applied and acked, and its record reaches an auditor on the broker.
#[test]
fn replication_and_fleet_commands_go_on_while_a_playbook_spins() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::new(dir.path());
    broker.start();
    let sub = Subscriber::run(broker.port, "auditor-spin", 120);
    let pbs = dir.path().join("pb");
    std::fs::create_dir_all(&pbs).unwrap();
    std::fs::write(
        pbs.join("spin.rhai"),
        "const META = #{ name: \"spin\", description: \"t\", interval: \"1s\", actions: [#{ kind: \"notify\", target: \"*\" }],\n  rate_limit: #{ max: 100, per: \"1h\" }, cooldown: \"0s\" };\n\
         fn evaluate(node, state) { let x = 0; while x < 1_000_000_000_000 { x += 1; } }\n",
    )
    .unwrap();
    let sock = dir.path().join("c.sock");
    let cfg = dir.path().join("medic.toml");
    std::fs::write(
        &cfg,
        format!(
            "node = \"spinner\"\n[control]\nsocket = \"{}\"\n[metrics]\nlisten = \"\"\n[mqtt]\nenabled = true\nport = {}\nkeep_alive_secs = 5\n[playbooks.limits]\nmax_operations = 1000000000\ndeadline_ms = 60000\n",
            sock.display(),
            broker.port
        ),
    )
    .unwrap();
    let state = dir.path().join("state");
    let a = agent(&cfg, &pbs, &state);
    let spinning = || crate::util::status_json(&sock)["evaluation"]["playbooks"].as_array().is_some_and(|p| p.iter().any(|n| n == "spin"));
    assert!(crate::util::wait_until(30, spinning), "the spin runs on the worker");
    commands_ready(broker.port, "spinner");
    let dry = serde_json::json!({ "id": "brake", "op": "set_mode", "mode": "dry-run", "reason": "on-call brake" });
    assert_eq!(ack(broker.port, "medic/v1/node/spinner/cmd", &dry)["ok"], true, "the brake is applied and acked");
    let brake_seq = audit_lines(&state)
        .iter()
        .find(|r| r["kind"] == "command" && r["command_id"] == "brake")
        .and_then(|r| r["seq"].as_u64())
        .expect("the command is recorded");
    assert!(crate::util::wait_until(20, || sub.seqs("spinner").contains(&brake_seq)), "its record reaches the broker");
    assert!(spinning(), "all of this while the evaluation still spins");
    assert!(a.stop());
}
