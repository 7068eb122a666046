//! The agent's outgoing HTTP: one small client ([`client::request`]) over hyper 1, one request
//! per connection, bounded in time, header bytes and body bytes, with optional TLS
//! ([`tls`]: system roots, a CA file or no verification, the peer's certificate kept either
//! way). Used by HTTP(S) probes (`signals::probes`) and meant for notification sinks.
//!
//! Nothing here trusts the server: a reply that never comes ends at the timeout, endless
//! headers end at the header bound, a body is read up to its bound and the rest dropped, and
//! garbage is a protocol error.

pub mod client;
pub mod tls;

pub use client::{request, Options, Response};
pub use http::Method;

/// Why a request or a TLS handshake failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HttpError {
    /// The URL does not parse, or its scheme is not http or https.
    #[error("bad URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    /// The host name did not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    /// Every address of the host is outside what the caller allows.
    #[error("{host}: address {addr} is not allowed (local addresses only unless the config allows more)")]
    NotAllowed { host: String, addr: String },
    /// The TCP (or unix) connection failed.
    #[error("connect {addr}: {reason}")]
    Connect { addr: String, reason: String },
    /// The TLS handshake failed (the server's certificate, when it sent one, is kept).
    #[error("TLS with {host}: {reason}")]
    Tls { host: String, reason: String, peer_cert: Option<Vec<u8>> },
    /// A CA file could not be read or holds no certificate.
    #[error("CA file {file}: {reason}")]
    CaFile { file: String, reason: String },
    /// No complete answer within the timeout.
    #[error("no answer within {ms} ms")]
    Timeout { ms: u64 },
    /// The answer is not HTTP/1.x, or its headers exceed the bound.
    #[error("bad answer: {reason}")]
    Protocol { reason: String },
}

impl HttpError {
    /// A stable, low-cardinality code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Url { .. } => "http_url",
            Self::Resolve { .. } => "http_resolve",
            Self::NotAllowed { .. } => "http_not_allowed",
            Self::Connect { .. } => "http_connect",
            Self::Tls { .. } => "http_tls",
            Self::CaFile { .. } => "http_ca_file",
            Self::Timeout { .. } => "http_timeout",
            Self::Protocol { .. } => "http_protocol",
        }
    }
}
