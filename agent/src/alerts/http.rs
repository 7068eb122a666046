//! The one HTTP call alert delivery makes: [`post_json`], a POST of JSON through the agent's
//! shared client ([`crate::http::request`]: one connection per request, the whole exchange under
//! one timeout, TLS with the system's roots or the sink's `ca_file`), reading at most
//! [`MAX_RESPONSE_BYTES`] of the answer. A receiver that is slow, never answers, or answers with
//! gigabytes costs one timeout and a few KiB, never a stalled agent. A sink may post anywhere
//! its operator configured: no address filter.

use std::time::Duration;

/// Bytes of a response body read (for the error text of a refusal); the rest is never read.
pub const MAX_RESPONSE_BYTES: usize = 4096;

/// Why a POST did not get a 2xx answer.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The request failed before an answer (URL, connection, TLS, timeout, a malformed answer).
    #[error(transparent)]
    Request(#[from] crate::http::HttpError),
    /// The receiver answered, but not with 2xx.
    #[error("HTTP status {status}: {body}")]
    Status { status: u16, body: String },
}

impl HttpError {
    /// The receiver refuses this request for good (a 4xx other than 408 and 429): sending it
    /// again cannot help.
    pub fn rejected(&self) -> bool {
        matches!(self, Self::Status { status, .. } if (400..500).contains(status) && *status != 408 && *status != 429)
    }

    /// Stable code for logs and metrics: the shared client's, or `alert_http_status`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Request(e) => e.code(),
            Self::Status { .. } => "alert_http_status",
        }
    }
}

/// Where a sink posts: checked once from its configured URL.
#[derive(Debug, Clone)]
pub struct Endpoint {
    url: String,
    tls: crate::http::tls::TlsOptions,
}

impl Endpoint {
    /// Checks `url` (http or https); for https, trusts `ca_file` when given, else the system's
    /// roots.
    pub fn parse(url: &str, ca_file: Option<&std::path::Path>) -> Result<Self, String> {
        crate::http::client::parse_url(url).map_err(|e| e.to_string())?;
        Ok(Self { url: url.to_string(), tls: crate::http::tls::TlsOptions { ca_file: ca_file.map(Into::into), ..Default::default() } })
    }

    /// The same endpoint with `path` under its base path (Alertmanager's `/api/v2/alerts`).
    pub fn with_path(&self, path: &str) -> Result<Self, String> {
        let uri: http::Uri = self.url.parse().map_err(|e| format!("{:?}: {e}", self.url))?;
        let base = uri.path().trim_end_matches('/').to_string();
        let mut parts = uri.into_parts();
        parts.path_and_query = Some(format!("{base}{path}").parse().map_err(|e| format!("path {path:?}: {e}"))?);
        let uri = http::Uri::from_parts(parts).map_err(|e| e.to_string())?;
        Ok(Self { url: uri.to_string(), ..self.clone() })
    }
}

/// POSTs `body` (JSON) to `to` with `headers`; Ok(status) for a 2xx answer. Connecting, TLS,
/// request and response head and the first [`MAX_RESPONSE_BYTES`] of the body all fit in
/// `timeout`; the connection is then dropped.
pub async fn post_json(to: &Endpoint, headers: &[(String, String)], body: Vec<u8>, timeout: Duration) -> Result<u16, HttpError> {
    let opts = crate::http::Options { timeout, max_body: MAX_RESPONSE_BYTES, tls: to.tls.clone(), ..Default::default() };
    let mut all = Vec::with_capacity(headers.len() + 1);
    all.push(("content-type".to_string(), "application/json".to_string()));
    all.extend(headers.iter().cloned());
    let r = crate::http::request(crate::http::Method::POST, &to.url, &all, body, &opts).await?;
    if (200..300).contains(&r.status) {
        return Ok(r.status);
    }
    let text = String::from_utf8_lossy(&r.body).trim().to_string();
    Err(HttpError::Status { status: r.status, body: crate::signals::parse::bounded(text, 512) })
}
