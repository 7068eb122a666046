//! The command side of the broker: a connection of its own (client id `medic-<node>-cmd`)
//! subscribed to the node's, its groups' and the fleet's command topics, handing each publish
//! to the agent's loop and publishing the loop's acks.
//!
//! Why a second connection: rumqttc (0.25, MQTT 3.1.1) closes a connection on any incoming
//! packet larger than its limit, before reading it, and a retained message is delivered again
//! at every subscription; so anyone who can publish a large retained message on `fleet/cmd`
//! could keep every node's connection failing. Here that costs the command connection only;
//! the audit records keep flowing on the replication connection, which subscribes to nothing.
//!
//! Bounds: this connection reads packets up to [`TRANSPORT_LIMIT`] (4 MiB); a command over
//! `remote::MAX_COMMAND` (16 KiB) but within that is handed on cut, and refused and recorded by
//! the loop without dropping anything. A packet over 4 MiB still closes this connection (the
//! client cannot skip it): that is counted, recorded, and retried with a growing backoff, and
//! a retained one keeps commands out until it is cleared on the broker (its `message_size_limit`
//! should be set below 4 MiB; see docs/SAFETY.md). Retained messages are handed on marked and
//! never applied.
//!
//! Nothing is dropped silently: publishes wait in a queue of [`PENDING`]; while it is full the
//! connection is not read (backpressure to the broker), and a switch to dry-run goes to the
//! front of the queue.

use super::{Backoff, MqttConfig};
use crate::control::command::Incoming;
use rumqttc::{AsyncClient, ConnectionError, Event, Packet, QoS};
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Largest packet this connection reads; larger ones close it.
pub const TRANSPORT_LIMIT: usize = 4 << 20;
/// Publishes waiting for the loop; past this the connection is not read.
pub const PENDING: usize = 256;
/// Acks waiting to be published (while the broker is away); past this the oldest go, counted.
pub const MAX_ACKS: usize = 4096;

/// The topics this node takes commands from.
pub fn topics(cfg: &MqttConfig, node: &str) -> Vec<String> {
    std::iter::once(format!("{}/node/{node}/cmd", cfg.prefix))
        .chain(cfg.groups.iter().map(|g| format!("{}/group/{g}/cmd", cfg.prefix)))
        .chain(std::iter::once(format!("{}/fleet/cmd", cfg.prefix)))
        .collect()
}

/// Runs until `stop` turns true.
pub async fn run(
    cfg: MqttConfig,
    node: String,
    commands: mpsc::Sender<Incoming>,
    mut acks: mpsc::Receiver<(String, String)>,
    mut stop: watch::Receiver<bool>,
) {
    let topics = topics(&cfg, &node);
    let broker = format!("{}:{}", cfg.host, cfg.port);
    let mut opts = match super::connection_options(&cfg, format!("medic-{node}-cmd")) {
        Ok(o) => o,
        Err(_) => return, // the replication side reports it
    };
    opts.set_max_packet_size(TRANSPORT_LIMIT, 64 * 1024);
    opts.set_clean_session(true);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let mut pending: VecDeque<Incoming> = VecDeque::new();
    let mut outbox: VecDeque<(String, String)> = VecDeque::new();
    let mut acks_dropped: u64 = 0;
    let mut backoff = Backoff::default();
    let mut connected = false;
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            permit = commands.reserve(), if !pending.is_empty() => match permit {
                Ok(p) => {
                    if let Some(inc) = pending.pop_front() {
                        p.send(inc);
                    }
                }
                Err(_) => break, // the loop is gone
            },
            Some(a) = acks.recv() => {
                if outbox.len() >= MAX_ACKS {
                    outbox.pop_front();
                    acks_dropped += 1;
                    tracing::warn!(message = "Command acks dropped while the broker is away (the commands are recorded).", dropped = acks_dropped);
                }
                outbox.push_back(a);
            }
            _ = tick.tick() => {
                while let Some((topic, ack)) = outbox.front().cloned().filter(|_| connected) {
                    if client.try_publish(topic, QoS::AtLeastOnce, false, ack).is_err() {
                        break;
                    }
                    outbox.pop_front();
                }
            }
            ev = events.poll(), if pending.len() < PENDING => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected = true;
                    backoff.connected(std::time::Instant::now());
                    for t in &topics {
                        if client.try_subscribe(t.clone(), QoS::AtLeastOnce).is_err() {
                            tracing::warn!(message = "Could not subscribe to a command topic.", topic = %t);
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if topics.contains(&p.topic) {
                        let inc = Incoming::new(&p.topic, &p.payload, p.retain);
                        if inc.is_dry_run() {
                            pending.push_front(inc);
                        } else {
                            pending.push_back(inc);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if let ConnectionError::MqttState(rumqttc::StateError::Deserialization(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(n))) = &e {
                        // The loop records it (rate-limited) under the topic "?": the packet was not read.
                        pending.push_back(Incoming { topic: "?".into(), payload: Vec::new(), bytes: *n, retained: false });
                    }
                    if connected {
                        tracing::warn!(message = "Command connection to the broker lost.", broker = %broker, error = %e);
                    }
                    connected = false;
                    tokio::time::sleep(backoff.failed(std::time::Instant::now())).await;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(300), async {
        let _ = client.disconnect().await;
        while events.poll().await.is_ok() {}
    })
    .await;
}
