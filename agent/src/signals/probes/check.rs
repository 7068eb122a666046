//! One run of a probe, within its timeout: a TCP or unix connect, a TLS handshake, or an HTTP
//! GET through `crate::http`, into its signals (`ok`, `latency_ms`, `status`,
//! `cert_days_left`) and, when it failed, why.

use super::spec::{body_regex, split_host_port, ProbeSpec, Reach, Target};
use crate::http::{self, HttpError};
use std::time::{Duration, Instant};

/// Body bytes an HTTP probe reads and matches.
pub const MAX_BODY: usize = 64 * 1024;
/// Header bytes an HTTP probe accepts.
pub const MAX_HEADERS: usize = 16 * 1024;

/// What one run found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub ok: bool,
    pub latency_ms: Option<f64>,
    pub status: Option<u16>,
    pub cert_days_left: Option<i64>,
    pub reason: Option<String>,
}

impl Outcome {
    /// The metric keys under `prefix` (`probe.<name>`).
    pub fn metrics(&self, prefix: &str) -> Vec<(String, f64)> {
        let mut m = vec![(format!("{prefix}.ok"), if self.ok { 1.0 } else { 0.0 })];
        if let Some(l) = self.latency_ms {
            m.push((format!("{prefix}.latency_ms"), l));
        }
        if let Some(s) = self.status {
            m.push((format!("{prefix}.status"), f64::from(s)));
        }
        if let Some(d) = self.cert_days_left {
            m.push((format!("{prefix}.cert_days_left"), d as f64));
        }
        m
    }

    fn failed(reason: String) -> Self {
        Self { reason: Some(reason), ..Default::default() }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

fn days(der: &[u8]) -> Option<i64> {
    http::tls::days_left(der, crate::audit::now_ms() / 1000)
}

/// Runs `p` once.
pub async fn run(p: &ProbeSpec, reach: &Reach) -> Outcome {
    let timeout = Duration::from_millis(p.timeout_ms);
    match &p.target {
        Target::Http { url, status, body, tls } => {
            let host = http::client::parse_url(url).map(|t| t.host).unwrap_or_default();
            let opts = http::Options {
                timeout,
                max_body: MAX_BODY,
                max_header_bytes: MAX_HEADERS,
                tls: tls.options(),
                allow: reach.filter(host.trim_start_matches('[').trim_end_matches(']')),
            };
            match http::request(http::Method::GET, url, &[], Vec::new(), &opts).await {
                Ok(r) => {
                    let mut o = Outcome {
                        ok: true,
                        latency_ms: Some(ms(r.latency)),
                        status: Some(r.status),
                        cert_days_left: r.peer_cert.as_deref().and_then(days),
                        reason: None,
                    };
                    if r.status != *status {
                        o.ok = false;
                        o.reason = Some(format!("status {} (expected {status})", r.status));
                    } else if let Some(pat) = body {
                        let text = String::from_utf8_lossy(&r.body);
                        match body_regex(pat) {
                            Ok(re) if re.is_match(&text) => {}
                            Ok(_) => {
                                o.ok = false;
                                o.reason = Some(format!("body (first {} bytes) does not match {pat:?}", r.body.len()));
                            }
                            Err(e) => {
                                o.ok = false;
                                o.reason = Some(format!("body pattern: {e}"));
                            }
                        }
                    }
                    o
                }
                Err(e) => {
                    let mut o = Outcome::failed(e.to_string());
                    if let HttpError::Tls { peer_cert: Some(c), .. } = &e {
                        o.cert_days_left = days(c);
                    }
                    o
                }
            }
        }
        Target::Tcp { addr } => {
            let started = Instant::now();
            match tokio::time::timeout(timeout, connect_tcp(addr, reach)).await {
                Ok(Ok(_)) => Outcome { ok: true, latency_ms: Some(ms(started.elapsed())), ..Default::default() },
                Ok(Err(e)) => Outcome::failed(e.to_string()),
                Err(_) => Outcome::failed(HttpError::Timeout { ms: p.timeout_ms }.to_string()),
            }
        }
        Target::Unix { path } => {
            let started = Instant::now();
            match tokio::time::timeout(timeout, tokio::net::UnixStream::connect(path)).await {
                Ok(Ok(_)) => Outcome { ok: true, latency_ms: Some(ms(started.elapsed())), ..Default::default() },
                Ok(Err(e)) => Outcome::failed(format!("connect {}: {e}", path.display())),
                Err(_) => Outcome::failed(HttpError::Timeout { ms: p.timeout_ms }.to_string()),
            }
        }
        Target::Tls { addr, tls } => {
            let started = Instant::now();
            let handshake = async {
                let (tcp, host) = connect_tcp(addr, reach).await?;
                http::tls::connect(tcp, &host, &tls.options(), &[]).await
            };
            match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok((_s, leaf))) => Outcome {
                    ok: true,
                    latency_ms: Some(ms(started.elapsed())),
                    cert_days_left: leaf.as_deref().and_then(days),
                    ..Default::default()
                },
                Ok(Err(e)) => {
                    let mut o = Outcome::failed(e.to_string());
                    if let HttpError::Tls { peer_cert: Some(c), .. } = &e {
                        o.cert_days_left = days(c);
                    }
                    o
                }
                Err(_) => Outcome::failed(HttpError::Timeout { ms: p.timeout_ms }.to_string()),
            }
        }
    }
}

/// Resolves `host:port` into an allowed address and connects.
async fn connect_tcp(addr: &str, reach: &Reach) -> Result<(tokio::net::TcpStream, String), HttpError> {
    let (host, port) = split_host_port(addr).map_err(|reason| HttpError::Url { url: addr.to_string(), reason })?;
    let a = http::client::resolve(&host, port, reach.filter(&host).as_ref()).await?;
    let s = tokio::net::TcpStream::connect(a).await.map_err(|e| HttpError::Connect { addr: a.to_string(), reason: e.to_string() })?;
    Ok((s, host))
}
