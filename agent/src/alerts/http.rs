//! The one HTTP call alert delivery makes: [`post_json`], a single HTTP/1.1 POST on a fresh
//! connection (hyper 1's client connection over a tokio `TcpStream`, tokio-rustls for https),
//! with the whole exchange under one timeout and at most [`MAX_RESPONSE_BYTES`] of the answer
//! read. A receiver that is slow, never answers, or answers with gigabytes costs one timeout and
//! a few KiB, never a stalled agent. Kept behind this one function so it can move onto the
//! shared client of `agent/src/http/` without touching the sinks.

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio_rustls::rustls;

/// Bytes of a response body read (for the error text of a refusal); the rest is never read.
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// Why a POST did not get a 2xx answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL is not `http://` or `https://` with a host.
    #[error("bad URL {0:?}: must be http:// or https:// with a host")]
    Url(String),
    /// The TCP connection could not be made.
    #[error("connect {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    /// The TLS handshake failed (certificate, name, protocol).
    #[error("TLS with {host}: {source}")]
    Tls { host: String, source: std::io::Error },
    /// The HTTP exchange failed (a closed connection, a malformed answer).
    #[error("HTTP: {0}")]
    Protocol(String),
    /// No whole answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The receiver answered, but not with 2xx.
    #[error("HTTP status {status}: {body}")]
    Status { status: u16, body: String },
}

impl HttpError {
    /// Stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Url(_) => "alert_http_url",
            Self::Connect { .. } => "alert_http_connect",
            Self::Tls { .. } => "alert_http_tls",
            Self::Protocol(_) => "alert_http_protocol",
            Self::Timeout(_) => "alert_http_timeout",
            Self::Status { .. } => "alert_http_status",
        }
    }
}

/// Where a sink posts: parsed once from its configured URL.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub uri: hyper::Uri,
    https: bool,
    host: String,
    port: u16,
    /// The TLS client (roots from `ca_file` or the system's), for https.
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl Endpoint {
    /// Parses `url` (http or https); for https, trusts `ca_file` when given, else the system's
    /// roots.
    pub fn parse(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{url:?}: must start with http:// or https://")),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("{url:?}: no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tls = if https { Some(Arc::new(tls_config(ca_file)?)) } else { None };
        Ok(Self { uri, https, host, port, tls })
    }

    /// The same endpoint with another path (Alertmanager's `/api/v2/alerts` under its base URL).
    pub fn with_path(&self, path: &str) -> Result<Self, String> {
        let base = self.uri.path().trim_end_matches('/');
        let mut parts = self.uri.clone().into_parts();
        parts.path_and_query = Some(format!("{base}{path}").parse().map_err(|e| format!("path {path:?}: {e}"))?);
        let uri = hyper::Uri::from_parts(parts).map_err(|e| e.to_string())?;
        Ok(Self { uri, ..self.clone() })
    }
}

fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(p) => {
            for c in CertificateDer::pem_file_iter(p).map_err(|e| format!("ca_file {}: {e}", p.display()))? {
                let c = c.map_err(|e| format!("ca_file {}: {e}", p.display()))?;
                roots.add(c).map_err(|e| format!("ca_file {}: {e}", p.display()))?;
            }
        }
        None => {
            for c in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(c);
            }
        }
    }
    if roots.is_empty() {
        return Err("no trusted CA certificate (set ca_file)".into());
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// POSTs `body` (JSON) to `to` with `headers`; Ok(status) for a 2xx answer. The connection,
/// TLS handshake, request and response head and the first [`MAX_RESPONSE_BYTES`] of the body
/// all fit in `timeout`; the connection is then dropped.
pub async fn post_json(to: &Endpoint, headers: &[(String, String)], body: Vec<u8>, timeout: Duration) -> Result<u16, HttpError> {
    match tokio::time::timeout(timeout, exchange(to, headers, body)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout(timeout)),
    }
}

async fn exchange(to: &Endpoint, headers: &[(String, String)], body: Vec<u8>) -> Result<u16, HttpError> {
    let addr = format!("{}:{}", to.host, to.port);
    let tcp = tokio::net::TcpStream::connect((to.host.as_str(), to.port))
        .await
        .map_err(|source| HttpError::Connect { addr: addr.clone(), source })?;
    let _ = tcp.set_nodelay(true);
    let host_header = if (to.https && to.port == 443) || (!to.https && to.port == 80) {
        to.uri.host().unwrap_or_default().to_string()
    } else {
        format!("{}:{}", to.uri.host().unwrap_or_default(), to.port)
    };
    let mut req = hyper::Request::post(to.uri.path_and_query().map_or("/", |p| p.as_str()))
        .header(hyper::header::HOST, host_header)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("medic/", env!("CARGO_PKG_VERSION")));
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| HttpError::Protocol(e.to_string()))?;
    match &to.tls {
        None => send(TokioIo::new(tcp), req).await,
        Some(cfg) => {
            let name = rustls::pki_types::ServerName::try_from(to.host.clone())
                .map_err(|e| HttpError::Tls { host: to.host.clone(), source: std::io::Error::other(e) })?;
            let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|source| HttpError::Tls { host: to.host.clone(), source })?;
            send(TokioIo::new(tls), req).await
        }
    }
}

async fn send<T>(io: TokioIo<T>, req: hyper::Request<Full<Bytes>>) -> Result<u16, HttpError>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.map_err(|e| HttpError::Protocol(e.to_string()))?;
    // The connection is driven beside the request and dropped with it (the caller's timeout).
    let conn = AbortOnDrop(tokio::spawn(conn));
    let result = async {
        let resp = sender.send_request(req).await.map_err(|e| HttpError::Protocol(e.to_string()))?;
        let status = resp.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(status);
        }
        // Only the start of a refusal's body, for its error text; a limit hit is no error here.
        let text = match Limited::new(resp.into_body(), MAX_RESPONSE_BYTES).collect().await {
            Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
            Err(_) => String::new(),
        };
        Err(HttpError::Status { status, body: crate::signals::parse::bounded(text.trim().to_string(), 512) })
    }
    .await;
    drop(conn);
    result
}

/// Ends the connection's task when the exchange ends or is dropped (the timeout): a receiver
/// that never answers must not keep a task and a socket alive.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
