//! The `/metrics` responder: a small HTTP/1.1 server on the agent's runtime, one request per
//! connection, built to face anything on the network.
//!
//! - A request (line and headers) is at most [`MAX_REQUEST_BYTES`]; more is answered 431.
//! - A connection has [`CONNECTION_DEADLINE`] from accept to the last byte of its answer; a
//!   client too slow to send or to read is dropped, never waited on.
//! - At most [`MAX_CONNECTIONS`] are served at once, so a client holding connections costs a
//!   bounded number of sockets and tasks. When all are taken, the oldest connection that has not
//!   yet sent its whole request is dropped for the new one (a scraper sends its request at
//!   once, a slowloris never does: one that keeps every slot filled with idle connections
//!   cannot lock Prometheus out); only when every slot is past its request is the new one
//!   answered 503 and closed.
//! - `GET /metrics` (a query string is ignored) is answered 200; other paths 404, other
//!   methods 405, anything that is not an HTTP/1.x request line 400.
//!
//! Each connection is a task; none holds a lock across an await, and the encoding (tens of
//! µs, see docs/BENCHMARKS.md) is the only work done on the loop's thread.

use super::{Metrics, MetricsConfig, MetricsError};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Bytes of a request's line and headers.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// From accept to the answer's last byte.
pub const CONNECTION_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;

/// Binds `metrics.listen` (non-blocking, for the runtime to take over); `Ok(None)` when it is off.
pub fn bind(cfg: &MetricsConfig) -> Result<Option<std::net::TcpListener>, MetricsError> {
    let Some(addr) = cfg.address().map_err(MetricsError::Address)? else { return Ok(None) };
    let l = std::net::TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
    l.set_nonblocking(true).map_err(|source| MetricsError::Bind { addr, source })?;
    Ok(Some(l))
}

/// Binds and serves `metrics.listen` on the current runtime (call inside it). A failure is
/// logged with its `error_code` and the agent goes on without metrics. Returns the task and
/// the address bound (the port chosen when 0 was asked for).
pub fn start(cfg: &MetricsConfig, metrics: Arc<Metrics>) -> Option<(tokio::task::JoinHandle<()>, std::net::SocketAddr)> {
    let listener = match bind(cfg).and_then(|l| {
        l.map(|l| {
            let addr = l.local_addr().map_err(|source| MetricsError::Bind { addr: ([0, 0, 0, 0], 0).into(), source })?;
            tokio::net::TcpListener::from_std(l).map(|t| (t, addr)).map_err(|source| MetricsError::Bind { addr, source })
        })
        .transpose()
    }) {
        Ok(Some(l)) => l,
        Ok(None) => {
            tracing::info!(message = "Metrics endpoint off (metrics.listen = \"\").");
            return None;
        }
        Err(e) => {
            tracing::error!(message = "Metrics endpoint not started; the agent runs without it.", error_code = e.code(), listen = %cfg.listen, error = %e);
            return None;
        }
    };
    let (listener, addr) = listener;
    tracing::info!(message = "Metrics endpoint listening.", listen = %addr);
    Some((tokio::spawn(accept(listener, metrics)), addr))
}

/// The connections still reading their request, oldest first: each with the sender that
/// drops it (see the module's header).
type Waiting = std::sync::Mutex<std::collections::VecDeque<(u64, tokio::sync::oneshot::Sender<()>)>>;

async fn accept(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let waiting: Arc<Waiting> = Arc::default();
    let mut next_id = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of fds, most likely: wait rather than spin.
                tracing::warn!(message = "Metrics accept failed.", error = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                // Drop the oldest idle one; its task ends at its next poll and frees its slot.
                let oldest = waiting.lock().ok().and_then(|mut w| w.pop_front());
                match oldest {
                    Some((_, drop_it)) => {
                        metrics.http_refused.inc();
                        let _ = drop_it.send(());
                        tokio::time::timeout(Duration::from_millis(100), slots.clone().acquire_owned()).await.ok().and_then(Result::ok)
                    }
                    None => None,
                }
            }
        };
        let Some(permit) = permit else {
            metrics.http_refused.inc();
            let _ = stream.try_write(&response(503, "text/plain", "too many connections\n"));
            continue;
        };
        next_id = next_id.wrapping_add(1);
        let (id, (tx, rx)) = (next_id, tokio::sync::oneshot::channel());
        if let Ok(mut w) = waiting.lock() {
            w.push_back((id, tx));
        }
        let (metrics, waiting) = (metrics.clone(), waiting.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_DEADLINE, serve(stream, &metrics, rx, id, &waiting)).await;
            if let Ok(mut w) = waiting.lock() {
                w.retain(|(i, _)| *i != id);
            }
            drop(permit);
        });
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics`; true when the client accepts OpenMetrics.
    Metrics { openmetrics: bool },
    /// An HTTP status to answer with.
    Error(u16),
}

/// Reads a request's head (line and headers) as far as `\r\n\r\n`, within the byte bound.
/// `Err(status)`: 431 for a head too big, 400 when the client closed before its end.
async fn read_head(stream: &mut tokio::net::TcpStream) -> Result<Vec<u8>, u16> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.map_err(|_| 400u16)?;
        if n == 0 {
            return Err(400);
        }
        let scan_from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if buf[scan_from..].windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(buf);
        }
        if buf.len() >= MAX_REQUEST_BYTES {
            return Err(431);
        }
    }
}

/// Routes a request head. Pure, so that every byte sequence can be tested.
pub fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else { return Route::Error(400) };
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Route::Error(400);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Route::Error(400);
    }
    let path = target.split('?').next().unwrap_or(target);
    if path != "/metrics" {
        return Route::Error(404);
    }
    if method != "GET" {
        return Route::Error(405);
    }
    let openmetrics = lines
        .filter_map(|h| h.split_once(':'))
        .any(|(k, v)| k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text"));
    Route::Metrics { openmetrics }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn response(status: u16, content_type: &str, body: &str) -> Vec<u8> {
    let allow = if status == 405 { "Allow: GET\r\n" } else { "" };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

async fn serve(
    mut stream: tokio::net::TcpStream,
    metrics: &Metrics,
    dropped: tokio::sync::oneshot::Receiver<()>,
    id: u64,
    waiting: &Waiting,
) {
    let head = tokio::select! {
        head = read_head(&mut stream) => head,
        Ok(()) = dropped => return,
    };
    // The request is in: no longer one to drop for a newcomer.
    if let Ok(mut w) = waiting.lock() {
        w.retain(|(i, _)| *i != id);
    }
    let route = match head {
        Ok(head) => route(&head),
        Err(status) => Route::Error(status),
    };
    let out = match route {
        Route::Metrics { openmetrics } => {
            let ct = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE
            };
            response(200, ct, &metrics.encode(openmetrics))
        }
        Route::Error(status) => {
            metrics.http_errors.get_or_create(&[("status", status.to_string())]).inc();
            response(status, "text/plain", &format!("{}\n", reason(status)))
        }
    };
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"), Route::Metrics { openmetrics: false });
        assert_eq!(route(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"), Route::Metrics { openmetrics: false });
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text; version=1.0.0\r\n\r\n"),
            Route::Metrics { openmetrics: true }
        );
        assert_eq!(route(b"GET / HTTP/1.1\r\n\r\n"), Route::Error(404));
        assert_eq!(route(b"POST /metrics HTTP/1.1\r\n\r\n"), Route::Error(405));
        assert_eq!(route(b"GET /metrics\r\n\r\n"), Route::Error(400));
        assert_eq!(route(b"\xff\xfe GET"), Route::Error(400));
        assert_eq!(route(b"GET  /metrics HTTP/1.1\r\n\r\n"), Route::Error(400));
    }

    #[test]
    fn any_bytes_route_without_panicking() {
        use proptest::prelude::*;
        proptest!(|(bytes in prop::collection::vec(any::<u8>(), 0..256))| {
            let _ = route(&bytes);
        });
    }
}
