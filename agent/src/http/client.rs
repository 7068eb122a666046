//! One HTTP/1.1 request on a connection of its own ([`request`]): resolve, keep only the
//! addresses the caller allows, connect, TLS for https, send, read the status and at most
//! `max_body` bytes of the body; the whole of it within `timeout`. hyper bounds the header
//! bytes it buffers (`max_header_bytes`).

use super::tls::{self, TlsOptions};
use super::HttpError;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which resolved addresses may be connected to.
pub type AddrFilter = Arc<dyn Fn(&SocketAddr) -> bool + Send + Sync>;

/// How a request is bounded and secured.
#[derive(Clone)]
pub struct Options {
    /// For everything: resolving, connecting, TLS, headers and body.
    pub timeout: Duration,
    /// Body bytes kept; the rest is not read.
    pub max_body: usize,
    /// Bytes of status line and headers hyper buffers before refusing the answer (at least 8 KiB).
    pub max_header_bytes: usize,
    pub tls: TlsOptions,
    /// Addresses that may be connected to; `None`: any.
    pub allow: Option<AddrFilter>,
}

impl Default for Options {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(5), max_body: 64 * 1024, max_header_bytes: 16 * 1024, tls: TlsOptions::default(), allow: None }
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// The first `max_body` bytes of the body.
    pub body: Vec<u8>,
    /// The body was longer than `max_body`.
    pub truncated: bool,
    /// From the start of the connection to the end of what was read.
    pub latency: Duration,
    /// The server's leaf certificate (DER), over https.
    pub peer_cert: Option<Vec<u8>>,
}

/// Aborts a spawned task when dropped (the connection's driver, when the request is dropped
/// at its timeout).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends `method url` with `headers` and `body`, and reads the answer, within `opts.timeout`.
pub async fn request(
    method: http::Method,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
    opts: &Options,
) -> Result<Response, HttpError> {
    let ms = u64::try_from(opts.timeout.as_millis()).unwrap_or(u64::MAX);
    match tokio::time::timeout(opts.timeout, send(method, url, headers, body, opts)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout { ms }),
    }
}

/// The parts of a URL a request needs.
pub struct Target {
    pub https: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, `/` when empty.
    pub path: String,
}

/// Parses an `http://` or `https://` URL.
pub fn parse_url(url: &str) -> Result<Target, HttpError> {
    let bad = |reason: &str| HttpError::Url { url: url.to_string(), reason: reason.to_string() };
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("the scheme must be http or https")),
    };
    let auth = uri.authority().ok_or_else(|| bad("no host"))?;
    if auth.as_str().contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    let host = auth.host().to_string();
    let port = auth.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/".to_string(), |p| p.as_str().to_string());
    Ok(Target { https, host, port, path: if path.is_empty() { "/".into() } else { path } })
}

/// Resolves `host:port` and keeps the first address `allow` accepts.
pub async fn resolve(host: &str, port: u16, allow: Option<&AddrFilter>) -> Result<SocketAddr, HttpError> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port))
        .await
        .map_err(|e| HttpError::Resolve { host: host.to_string(), reason: e.to_string() })?
        .collect();
    let first = addrs.first().copied().ok_or_else(|| HttpError::Resolve { host: host.to_string(), reason: "no address".into() })?;
    match allow {
        None => Ok(first),
        Some(f) => addrs
            .iter()
            .find(|a| f(a))
            .copied()
            .ok_or_else(|| HttpError::NotAllowed { host: host.to_string(), addr: first.ip().to_string() }),
    }
}

async fn send(method: http::Method, url: &str, headers: &[(String, String)], body: Vec<u8>, opts: &Options) -> Result<Response, HttpError> {
    let t = parse_url(url)?;
    let started = Instant::now();
    let addr = resolve(&t.host, t.port, opts.allow.as_ref()).await?;
    let tcp =
        tokio::net::TcpStream::connect(addr).await.map_err(|e| HttpError::Connect { addr: addr.to_string(), reason: e.to_string() })?;
    let _ = tcp.set_nodelay(true);
    let host_header =
        if (t.https && t.port == 443) || (!t.https && t.port == 80) { t.host.clone() } else { format!("{}:{}", t.host, t.port) };
    let mut req = http::Request::builder()
        .method(method)
        .uri(t.path.as_str())
        .header(http::header::HOST, host_header)
        .header(http::header::USER_AGENT, concat!("medic/", env!("CARGO_PKG_VERSION")))
        .header(http::header::CONNECTION, "close");
    for (k, v) in headers {
        req = req.header(k.as_str(), v.as_str());
    }
    let req = req.body(Full::new(Bytes::from(body))).map_err(|e| HttpError::Url { url: url.to_string(), reason: e.to_string() })?;
    if t.https {
        let (tls, leaf) = tls::connect(tcp, &t.host, &opts.tls, &[b"http/1.1"]).await?;
        let mut r = exchange(tls, req, opts, started).await?;
        r.peer_cert = leaf;
        Ok(r)
    } else {
        exchange(tcp, req, opts, started).await
    }
}

async fn exchange<S>(io: S, req: http::Request<Full<Bytes>>, opts: &Options, started: Instant) -> Result<Response, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let proto = |e: hyper::Error| HttpError::Protocol { reason: e.to_string() };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(opts.max_header_bytes.max(8192))
        .handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(io))
        .await
        .map_err(proto)?;
    let _driver = AbortOnDrop(tokio::spawn(conn).abort_handle());
    let resp = sender.send_request(req).await.map_err(proto)?;
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut kept = Vec::new();
    let mut truncated = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(proto)?;
        let Ok(data) = frame.into_data() else { continue };
        let room = opts.max_body.saturating_sub(kept.len());
        if data.len() > room {
            kept.extend_from_slice(&data[..room]);
            truncated = true;
            break;
        }
        kept.extend_from_slice(&data);
    }
    Ok(Response { status, body: kept, truncated, latency: started.elapsed(), peer_cert: None })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves one connection with `answer` (after reading the request), then `forever` bytes
    /// of 'x' while the peer reads.
    async fn serve(answer: &'static [u8], forever: bool) -> u16 {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut c, _) = l.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf).await;
            let _ = c.write_all(answer).await;
            while forever && c.write_all(&[b'x'; 8192]).await.is_ok() {}
        });
        port
    }

    #[test]
    fn a_body_is_read_to_its_bound_and_endless_headers_are_refused() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let opts = Options { timeout: Duration::from_secs(5), max_body: 1000, ..Default::default() };
            let port = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\n\r\n", true).await;
            let r = request(http::Method::GET, &format!("http://127.0.0.1:{port}/"), &[], Vec::new(), &opts).await.unwrap();
            assert_eq!((r.status, r.body.len(), r.truncated), (200, 1000, true));
            let port = serve(b"HTTP/1.1 200 OK\r\nX-A: ", true).await;
            let e = request(http::Method::GET, &format!("http://127.0.0.1:{port}/"), &[], Vec::new(), &opts).await.unwrap_err();
            assert_eq!(e.code(), "http_protocol", "{e}");
            let port = serve(b"", false).await;
            let quick = Options { timeout: Duration::from_millis(300), ..opts.clone() };
            let e = request(http::Method::GET, &format!("http://127.0.0.1:{port}/"), &[], Vec::new(), &quick).await.unwrap_err();
            assert!(matches!(e.code(), "http_timeout" | "http_protocol"), "{e}");
            let deny: AddrFilter = Arc::new(|_| false);
            let e = request(http::Method::GET, "http://127.0.0.1:1/", &[], Vec::new(), &Options { allow: Some(deny), ..opts })
                .await
                .unwrap_err();
            assert_eq!(e.code(), "http_not_allowed");
        });
    }
}
