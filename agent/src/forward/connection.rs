//! Connecting to the broker: `[mqtt]` (`MqttConfig`), the connection options it gives
//! (credentials, TLS) and the reconnect backoff. Shared by the forwarder, the command connection
//! (`commands.rs`) and the fleet commands of the CLI.

use rumqttc::MqttOptions;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::{Duration, Instant};

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
            max_rate: 20000,
            max_inflight: 1000,
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
