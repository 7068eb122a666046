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
//!
//! Files: `connection.rs` (`[mqtt]`, connection options and the reconnect backoff, shared with
//! the command connection), `spool.rs` (the audit log as the spool: the cursor and reading the
//! records after it across segments), `commands.rs` (the command connection), and here the
//! replication loop and the status it reports.

pub mod commands;
mod connection;
pub(crate) mod spool;

pub use connection::{connection_options, Backoff, MqttConfig, BACKOFF_MAX, BACKOFF_MIN, HEALTHY};
pub use spool::{read_cursor, CURSOR_FILE};

use rumqttc::{AsyncClient, Event, LastWill, Outgoing, Packet, QoS};
use spool::{last_seq, write_cursor, Tail};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::watch;

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
///
/// Replication runs on a thread of its own (`medic-forward`, with its own single-threaded
/// runtime): on the agent's loop thread it stalled whenever a tick wrote its records (an fsync
/// each), and at 3,000 records per tick it drained 681 records/s (issue 13). The channels in
/// `links` are runtime-agnostic; this future only waits for that thread to end.
pub async fn run(cfg: MqttConfig, node: String, state_dir: PathBuf, links: Links) {
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new().name("medic-forward".into()).spawn(move || {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(replicate(cfg, node, state_dir, links)),
            Err(e) => tracing::error!(message = "MQTT forwarder runtime could not start; not replicating.", error = %e),
        }
        let _ = done_tx.send(());
    });
    match spawned {
        Ok(_) => {
            let _ = done_rx.await;
        }
        Err(e) => tracing::error!(message = "MQTT forwarder thread could not start; not replicating.", error = %e),
    }
}

async fn replicate(cfg: MqttConfig, node: String, state_dir: PathBuf, links: Links) {
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
    let mut written_cursor = cursor;
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
                    if cursor != written_cursor && write_cursor(&state_dir, cursor).is_ok() {
                        written_cursor = cursor;
                    }
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
