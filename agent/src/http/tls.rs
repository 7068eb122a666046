//! TLS for the client and for TLS probes: a handshake over a connected stream that verifies
//! against the system's roots (loaded once), a CA file, or not at all (`insecure`), and keeps
//! the server's leaf certificate whichever way verification went, so a probe can report how
//! many days it has left even when it does not verify. [`days_left`] reads its notAfter.

use super::HttpError;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::{
    self,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    client::WebPkiServerVerifier,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// How the server is verified.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsOptions {
    /// Accept any certificate (self-signed, expired, another name). The leaf is still read.
    pub insecure: bool,
    /// Verify against the CA certificates of this PEM file instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// The name to send (SNI) and verify; default: the host of the address.
    pub server_name: Option<String>,
}

/// Most bytes of a CA file read.
const MAX_CA_FILE: u64 = 1 << 20;

fn provider() -> Arc<CryptoProvider> {
    static P: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    P.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

/// The system's roots, loaded once (certificates that do not parse are left out).
fn system_roots() -> Arc<RootCertStore> {
    static R: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    R.get_or_init(|| {
        let mut store = RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        let (added, _ignored) = store.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!(message = "No system CA certificates: HTTPS probes that verify will fail.", errors = found.errors.len());
        }
        Arc::new(store)
    })
    .clone()
}

/// Opens a CA file that cannot block or consume anything: no link followed, non-blocking, and
/// only a regular file outside procfs and sysfs (a META probe may name it, so `/dev/kmsg`, a
/// FIFO or `/proc/kmsg` must not stall the agent's loop or eat the kernel's messages).
fn open_regular(file: &std::path::Path) -> std::io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let fd =
        rustix::fs::open(file, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY, Mode::empty())?;
    let st = rustix::fs::fstat(&fd)?;
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(std::io::Error::other("not a regular file"));
    }
    const PROC_SUPER_MAGIC: i64 = 0x9fa0;
    const SYSFS_MAGIC: i64 = 0x6265_6572;
    let fs = rustix::fs::fstatfs(&fd)?;
    #[allow(clippy::unnecessary_cast)]
    if [PROC_SUPER_MAGIC, SYSFS_MAGIC].contains(&(fs.f_type as i64)) {
        return Err(std::io::Error::other("a file of procfs or sysfs, not a certificate file"));
    }
    Ok(std::fs::File::from(fd))
}

fn ca_roots(file: &std::path::Path) -> Result<Arc<RootCertStore>, HttpError> {
    use rustls::pki_types::pem::PemObject;
    use std::io::Read;
    let err = |reason: String| HttpError::CaFile { file: file.display().to_string(), reason };
    let mut text = Vec::new();
    open_regular(file).and_then(|f| f.take(MAX_CA_FILE).read_to_end(&mut text)).map_err(|e| err(e.to_string()))?;
    let mut store = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&text) {
        let c = c.map_err(|e| err(e.to_string()))?;
        store.add(c).map_err(|e| err(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(err("no certificate in it".into()));
    }
    Ok(Arc::new(store))
}

/// Verifies through webpki (or not at all), keeping the leaf it was shown.
#[derive(Debug)]
struct Keep {
    inner: Option<Arc<WebPkiServerVerifier>>,
    seen: Arc<Mutex<Option<Vec<u8>>>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Keep {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(end_entity.to_vec());
        }
        match &self.inner {
            Some(v) => v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now),
            None => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS session over `io` with `host` (or `opts.server_name`), ALPN `alpn` if any; with the
/// server's leaf certificate (DER). A failed handshake's error carries the leaf too.
pub async fn connect<S>(
    io: S,
    host: &str,
    opts: &TlsOptions,
    alpn: &[&[u8]],
) -> Result<(tokio_rustls::client::TlsStream<S>, Option<Vec<u8>>), HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name_str = opts.server_name.clone().unwrap_or_else(|| host.trim_start_matches('[').trim_end_matches(']').to_string());
    let fail = |reason: String, peer_cert| HttpError::Tls { host: name_str.clone(), reason, peer_cert };
    let name = ServerName::try_from(name_str.clone()).map_err(|e| fail(format!("server name: {e}"), None))?;
    let provider = provider();
    let inner = if opts.insecure {
        None
    } else {
        let roots = match &opts.ca_file {
            Some(f) => ca_roots(f)?,
            None => system_roots(),
        };
        let v = WebPkiServerVerifier::builder_with_provider(roots, provider.clone()).build().map_err(|e| fail(e.to_string(), None))?;
        Some(v)
    };
    let seen = Arc::new(Mutex::new(None));
    let verifier = Arc::new(Keep { inner, seen: seen.clone(), provider: provider.clone() });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string(), None))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let res = connector.connect(name, io).await;
    let leaf = seen.lock().ok().and_then(|mut s| s.take());
    match res {
        Ok(s) => Ok((s, leaf)),
        Err(e) => Err(fail(e.to_string(), leaf)),
    }
}

/// Whole days from `now_secs` (Unix time) to the certificate's notAfter, rounded down
/// (negative once expired); `None` when the DER is not a certificate.
pub fn days_left(der: &[u8], now_secs: i64) -> Option<i64> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let not_after = cert.tbs_certificate.validity.not_after.to_unix_duration().as_secs();
    let not_after = i64::try_from(not_after).ok()?;
    Some((not_after - now_secs).div_euclid(86_400))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// A CA file is whatever a META probe names: a device, a FIFO nobody writes, procfs's
    /// never-ending kmsg or a link are refused at once, never read or waited on.
    #[test]
    fn a_ca_file_that_could_block_or_consume_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(rustix::fs::CWD, &fifo, rustix::fs::FileType::Fifo, rustix::fs::Mode::from_raw_mode(0o600), 0).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink("/etc/hostname", &link).unwrap();
        for f in [Path::new("/dev/kmsg"), Path::new("/proc/kmsg"), Path::new("/proc/self/status"), &fifo, &link] {
            let e = ca_roots(f).unwrap_err();
            assert_eq!(e.code(), "http_ca_file", "{}: {e}", f.display());
        }
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        assert!(ca_roots(&empty).unwrap_err().to_string().contains("no certificate"));
    }
}
