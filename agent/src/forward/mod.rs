//! Replication: forwards the local audit log to an MQTT broker, in `seq` order, at least once.
//! The local log is the spool; a cursor (`<state_dir>/forward.cursor`, the highest `seq` the
//! broker acknowledged with every lower one) is advanced only on PUBACK and persisted, so
//! nothing is lost when the broker is down for hours or the agent is killed: after every
//! CONNACK everything past the cursor is published again (a duplicate carries the same
//! (node, seq)). The backlog drains at `max_rate` records per second.
//!
//! rumqttc keeps in-flight QoS 1 publishes only in memory, drops them on a reconnect without a
//! session, and has no per-publish completion: so this module maps packet ids to `seq` from
//! the `Outgoing::Publish(pkid)` events (in request order) and advances on `PubAck(pkid)`; at
//! every CONNACK it empties rumqttc's resend queue and publishes again from the cursor.
//!
//! MQTT 3.1.1 (rumqttc's v4 client): what every broker in this field speaks, and all that QoS 1
//! with retained status and a last will needs. Also a retained status on
//! `<prefix>/node/<node>/status`, updated on change (at most every 5 s) and set offline by the
//! last will.
//!
//! Fleet commands use a connection of their own (`commands.rs`), so nothing published on a
//! command topic can disturb replication. Reconnects back off from 200 ms to 30 s while
//! attempts fail, and start over only after a connection stayed up for 30 s (`Backoff`).

pub mod commands;

use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// `[mqtt]` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// Replicate to a broker at all.
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// Topic prefix: records go to `<prefix>/node/<node>/audit`.
    pub prefix: String,
    pub keep_alive_secs: u64,
    /// Records per second when draining a backlog.
    pub max_rate: u32,
    /// Publishes awaiting PUBACK at once.
    pub max_inflight: u16,
    /// Username, with the password read from `password_file` (first line).
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    /// TLS: the CA that signed the broker's certificate (PEM). Setting it turns TLS on; the
    /// broker's certificate must name `host` (a DNS name or an IP address).
    pub ca_file: Option<PathBuf>,
    /// TLS client certificate and its key (PEM), when the broker asks for one.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Groups this node belongs to (commands on `<prefix>/group/<group>/cmd`).
    pub groups: Vec<String>,
    /// Public keys (`*.pub`, 64 hex digits) that may sign live-mode and breaker commands.
    /// Default: `<state_dir>/trusted-keys`.
    pub trusted_keys_dir: Option<PathBuf>,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".into(),
            port: 1883,
            prefix: "medic/v1".into(),
            keep_alive_secs: 30,
            max_rate: 1000,
            max_inflight: 100,
            username: None,
            password_file: None,
            groups: Vec::new(),
            trusted_keys_dir: None,
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

pub const CURSOR_FILE: &str = "forward.cursor";

/// The last `seq` acknowledged (with all before it); 0 when nothing was.
pub fn read_cursor(state_dir: &Path) -> u64 {
    std::fs::read_to_string(state_dir.join(CURSOR_FILE)).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

fn write_cursor(state_dir: &Path, seq: u64) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = state_dir.join(format!(".{CURSOR_FILE}.tmp"));
    // Private whatever the umask (the state dir's files are 0600).
    let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
    f.write_all(format!("{seq}\n").as_bytes())?;
    std::fs::rename(&tmp, state_dir.join(CURSOR_FILE))
}

/// Reads records after a `seq`, across the log's segments (see `audit::segments`): a closed
/// segment is read to its end, then the next one; the active one through an open descriptor,
/// so a rotation (a rename) loses nothing. Lines are read with a bounded buffer.
struct Tail {
    dir: PathBuf,
    path: PathBuf,
    reader: std::io::BufReader<std::fs::File>,
    /// (device, inode) when reading the active segment; None for a closed one.
    active: Option<(u64, u64)>,
    /// The last `seq` returned (or the one to start after).
    last: u64,
    /// The start of a line not yet whole (the agent is writing it).
    partial: Vec<u8>,
}

impl Tail {
    /// Positioned after the record with `seq`: in the first closed segment that holds a later
    /// one, else in the active segment.
    fn after(dir: &Path, seq: u64) -> std::io::Result<Self> {
        use crate::audit::segments;
        let segs = segments::list(dir)?;
        let seg = segs
            .iter()
            .find(|s| s.last.is_some_and(|l| l > seq))
            .or_else(|| segs.iter().find(|s| s.first.is_none()))
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no audit log"))?;
        let f = std::fs::File::open(&seg.path)?;
        let active = if seg.first.is_none() {
            let st = rustix::fs::fstat(&f)?;
            Some((st.st_dev, st.st_ino))
        } else {
            None
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            path: seg.path.clone(),
            reader: std::io::BufReader::new(f),
            active,
            last: seq,
            partial: Vec::new(),
        })
    }

    /// Whether the active segment read is still the file at `audit.log`.
    fn still_active(&self) -> bool {
        let st = rustix::fs::stat(self.dir.join(crate::audit::FILE_NAME));
        matches!((st, self.active), (Ok(st), Some(id)) if (st.st_dev, st.st_ino) == id)
    }

    /// Up to `max` whole records after the last one returned.
    fn next(&mut self, max: usize) -> std::io::Result<Vec<(u64, String)>> {
        use crate::audit::segments::{read_line, Line, MAX_LINE};
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut drained_after_rotation = false;
        while out.len() < max {
            let (kind, _) = read_line(&mut self.reader, &mut buf, MAX_LINE)?;
            match kind {
                Line::Whole => {
                    let line = if self.partial.is_empty() {
                        String::from_utf8_lossy(&buf).into_owned()
                    } else {
                        self.partial.extend_from_slice(&buf);
                        String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned()
                    };
                    if let Some(seq) = seq_of(&line).filter(|s| *s > self.last) {
                        self.last = seq;
                        out.push((seq, line));
                    }
                }
                Line::TooLong => self.partial.clear(),
                Line::Torn => self.partial.extend_from_slice(&buf),
                Line::Eof => {
                    if self.active.is_some() {
                        if self.still_active() {
                            break;
                        }
                        if !drained_after_rotation {
                            // Rotated: what was written before the rename is read first.
                            drained_after_rotation = true;
                            continue;
                        }
                    }
                    // The end of a closed (or rotated) segment: on to the next one.
                    let next = Self::after(&self.dir, self.last)?;
                    if next.path == self.path && next.active.is_none() {
                        tracing::warn!(message = "Audit segment ends before the seq its name says; run `medic audit verify`.", segment = %self.path.display(), seq = self.last);
                        break;
                    }
                    *self = next;
                    drained_after_rotation = false;
                }
            }
        }
        Ok(out)
    }
}

/// The `seq` of the last record written (from the audit log's anchor: no read of the log).
fn last_seq(state_dir: &Path) -> u64 {
    crate::audit::anchor::read(state_dir).map_or(0, |a| a.seq)
}

fn seq_of(line: &str) -> Option<u64> {
    // Canonical records have sorted keys; parse rather than guess at positions.
    serde_json::from_str::<serde_json::Value>(line).ok()?.get("seq")?.as_u64()
}

/// Connection options for `[mqtt]`: broker, keep-alive, packet size, credentials (the password
/// is the first line of `password_file`) and TLS when `ca_file` is set. Shared by the forwarder
/// and the fleet commands of the CLI.
pub fn connection_options(cfg: &MqttConfig, client_id: String) -> Result<MqttOptions, String> {
    let mut opts = MqttOptions::new(client_id, cfg.host.clone(), cfg.port);
    opts.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.max(5)));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    if let Some(user) = &cfg.username {
        let pass = cfg
            .password_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .map(|s| s.lines().next().unwrap_or("").to_string())
            .unwrap_or_default();
        opts.set_credentials(user.clone(), pass);
    }
    if let Some(ca) = &cfg.ca_file {
        // ring: a provider that builds without cmake.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("TLS: {}: {e}", p.display()));
        let client_auth = match (&cfg.cert_file, &cfg.key_file) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let tls = rumqttc::TlsConfiguration::Simple { ca: read(ca)?, alpn: None, client_auth };
        opts.set_transport(rumqttc::Transport::tls_with_config(tls));
    }
    Ok(opts)
}

/// Reconnect delays: 200 ms, doubling to 30 s while attempts fail. A CONNACK alone does not
/// start over (a broker that accepts and then drops the connection at once, as on a packet
/// over the limit, is a failure that repeats); a connection that stayed up for [`HEALTHY`] does.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    up_since: Option<Instant>,
}

/// Backoff bounds.
pub const BACKOFF_MIN: Duration = Duration::from_millis(200);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How long a connection must stay up before the backoff starts over.
pub const HEALTHY: Duration = Duration::from_secs(30);

impl Default for Backoff {
    fn default() -> Self {
        Self { next: BACKOFF_MIN, up_since: None }
    }
}

impl Backoff {
    /// A connection was made at `now`.
    pub fn connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// A connection or an attempt failed at `now`: how long to wait before the next.
    pub fn failed(&mut self, now: Instant) -> Duration {
        if self.up_since.take().is_some_and(|t| now.saturating_duration_since(t) >= HEALTHY) {
            self.next = BACKOFF_MIN;
        }
        let d = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        d
    }
}

/// How replication is doing, for `medic status`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Health {
    pub broker: String,
    pub connected: bool,
    /// The last `seq` the broker acknowledged (with every one before it).
    pub cursor: u64,
    /// Why the last connection attempt failed (a bad password, an unreachable broker, ...).
    pub error: Option<String>,
}

/// The channels between the forwarder and the agent's loop.
pub struct Links {
    /// The retained status to publish (JSON), updated every tick.
    pub status: watch::Receiver<String>,
    /// Turns true when the agent stops.
    pub stop: watch::Receiver<bool>,
    /// How replication is doing, for `medic status`.
    pub health: watch::Sender<Health>,
    /// Fleet commands received (sent with backpressure: never dropped).
    pub commands: tokio::sync::mpsc::Sender<crate::control::command::Incoming>,
    /// Acks to publish: (topic, payload).
    pub acks: tokio::sync::mpsc::Receiver<(String, String)>,
}

/// Runs until `stop` turns true. Never returns an error: a broker that cannot be reached is
/// retried with backoff while the agent goes on deciding and recording locally.
pub async fn run(cfg: MqttConfig, node: String, state_dir: PathBuf, links: Links) {
    let Links { status, mut stop, health, commands, acks } = links;
    let command_side = tokio::spawn(commands::run(cfg.clone(), node.clone(), commands, acks, stop.clone()));
    let audit_topic = format!("{}/node/{node}/audit", cfg.prefix);
    let status_topic = format!("{}/node/{node}/status", cfg.prefix);
    let broker = format!("{}:{}", cfg.host, cfg.port);
    let mut opts = match connection_options(&cfg, format!("medic-{node}")) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(message = "MQTT settings unusable; not replicating.", error = %e);
            let _ = health.send(Health { broker: broker.clone(), connected: false, cursor: read_cursor(&state_dir), error: Some(e) });
            let _ = stop.changed().await;
            return;
        }
    };
    opts.set_clean_session(true);
    opts.set_inflight(cfg.max_inflight.max(1));
    let offline = serde_json::json!({ "node": node, "online": false }).to_string();
    opts.set_last_will(LastWill::new(status_topic.clone(), offline, QoS::AtLeastOnce, true));
    let (client, mut events) = AsyncClient::new(opts, cfg.max_inflight as usize * 2);
    let mut cursor = read_cursor(&state_dir);
    let mut tail = None;
    let mut connected = false;
    let mut unassigned: VecDeque<u64> = VecDeque::new();
    let mut inflight: HashMap<u16, u64> = HashMap::new();
    let mut acked: BTreeSet<u64> = BTreeSet::new();
    // Records published since the cursor, in log order: the cursor moves along this list, not
    // by +1, so the jump an `audit_rewound` record makes in `seq` does not stall it.
    let mut sent: VecDeque<u64> = VecDeque::new();
    let mut published_upto = cursor;
    let mut last_cursor_write = Instant::now();
    let mut backoff = Backoff::default();
    let mut last_status = String::new();
    let mut last_status_at = Instant::now() - Duration::from_secs(60);
    let budget_per_tick = (cfg.max_rate as usize / 20).max(1);
    let report = |connected: bool, cursor: u64, error: Option<String>| {
        let h = Health { broker: broker.clone(), connected, cursor, error };
        health.send_if_modified(|old| {
            let changed = *old != h;
            *old = h;
            changed
        });
    };
    report(false, cursor, None);
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    // On stop, keep forwarding for a moment so that the agent's last records (its stop) go too.
    let mut drain_until: Option<Instant> = None;
    loop {
        if let Some(d) = drain_until {
            let last = last_seq(&state_dir);
            if Instant::now() >= d || cursor >= last {
                break;
            }
        }
        tokio::select! {
            _ = stop.changed(), if drain_until.is_none() => {
                drain_until = Some(Instant::now() + Duration::from_secs(2));
            }
            // Not while connecting: `events.poll()` is not cancel-safe until the CONNACK, and a
            // tick every 50 ms dropped every TLS handshake slower than that (reconnect loop).
            _ = tick.tick(), if connected => {
                // Publish more while the window allows, at most max_rate per second.
                let room = (cfg.max_inflight as usize).saturating_sub(inflight.len() + unassigned.len()).min(budget_per_tick);
                if room > 0 {
                    if tail.is_none() {
                        tail = Tail::after(&state_dir, published_upto).ok();
                    }
                    if let Some(t) = tail.as_mut() {
                        for (seq, line) in t.next(room).unwrap_or_default() {
                            if seq <= published_upto {
                                continue;
                            }
                            if client.try_publish(audit_topic.clone(), QoS::AtLeastOnce, false, line).is_err() {
                                tail = None; // re-read from published_upto next time
                                break;
                            }
                            unassigned.push_back(seq);
                            sent.push_back(seq);
                            published_upto = seq;
                        }
                    }
                }
                let st = status.borrow().clone();
                let due = !st.is_empty() && st != last_status && last_status_at.elapsed() >= Duration::from_secs(5);
                if due && client.try_publish(status_topic.clone(), QoS::AtLeastOnce, true, st.clone()).is_ok() {
                    last_status = st;
                    last_status_at = Instant::now();
                    unassigned.push_back(0); // a status publish: no seq
                }
                if last_cursor_write.elapsed() >= Duration::from_millis(200) {
                    let _ = write_cursor(&state_dir, cursor);
                    last_cursor_write = Instant::now();
                    report(true, cursor, None);
                }
            }
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    tracing::info!(message = "Connected to the broker.", session_present = ack.session_present, cursor);
                    connected = true;
                    backoff.connected(Instant::now());
                    report(true, cursor, None);
                    // In-flight publishes are gone with the old connection: drop rumqttc's own resend
                    // queue (its packet ids would not match our map) and send again from the cursor.
                    // Requests still in the channel go out in order and keep their place in
                    // `unassigned`.
                    events.pending.clear();
                    inflight.clear();
                    acked.clear();
                    sent.clear();
                    published_upto = cursor;
                    tail = None;
                    last_status.clear();
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(seq) = unassigned.pop_front() {
                        if seq > 0 {
                            inflight.insert(pkid, seq);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if let Some(seq) = inflight.remove(&ack.pkid) {
                        acked.insert(seq);
                        while let Some(next) = sent.front().copied().filter(|s| acked.remove(s)) {
                            sent.pop_front();
                            cursor = next;
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let error = format!("{broker}: {e}");
                    if connected || health.borrow().error.as_deref() != Some(error.as_str()) {
                        tracing::warn!(message = "Broker not reachable; records stay in the local log and are sent when it is.", error = %error);
                    }
                    report(false, cursor, Some(error));
                    connected = false;
                    tokio::time::sleep(backoff.failed(Instant::now())).await;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), command_side).await;
    let _ = write_cursor(&state_dir, cursor);
    let _ = client.try_publish(status_topic, QoS::AtLeastOnce, true, serde_json::json!({ "node": node, "online": false }).to_string());
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let _ = client.disconnect().await;
        while events.poll().await.is_ok() {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_while_connections_fail_at_once_and_starts_over_after_a_healthy_one() {
        let t0 = Instant::now();
        let mut b = Backoff::default();
        let mut waits = Vec::new();
        for i in 0..10 {
            // Connected, then dropped 10 ms later (an oversized retained message does that).
            let at = t0 + Duration::from_secs(i);
            b.connected(at);
            waits.push(b.failed(at + Duration::from_millis(10)));
        }
        assert_eq!(waits[0], BACKOFF_MIN);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
        let at = t0 + Duration::from_secs(100);
        b.connected(at);
        assert_eq!(b.failed(at + HEALTHY), BACKOFF_MIN);
    }
}
