//! What a probe is: its declaration as written (in a playbook's META, [`MetaProbe`], or the
//! config's `[[probes.check]]`, [`ConfigProbe`]), resolved and bounded into a [`ProbeSpec`];
//! and [`Reach`], which addresses a probe may connect to (local ones only unless `[probes]`
//! allows more).

use crate::http::tls::TlsOptions;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::PathBuf;

/// The shortest interval between two runs of a probe.
pub const MIN_INTERVAL_MS: u64 = 1_000;
/// The longest interval (a day).
pub const MAX_INTERVAL_MS: u64 = 86_400_000;
/// The longest timeout (and never longer than the interval).
pub const MAX_TIMEOUT_MS: u64 = 30_000;
/// The shortest timeout.
pub const MIN_TIMEOUT_MS: u64 = 10;
/// Default interval and timeout.
pub const DEFAULT_INTERVAL_MS: u64 = 10_000;
pub const DEFAULT_TIMEOUT_MS: u64 = 2_000;
/// Longest name and body pattern.
pub const MAX_NAME: usize = 64;
pub const MAX_PATTERN: usize = 1024;
/// Compiled size of a body pattern (the regex crate's own bound).
pub const MAX_PATTERN_BYTES: usize = 1 << 20;

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A TCP connect to `host:port`.
    Tcp { addr: String },
    /// A connect to a unix stream socket.
    Unix { path: PathBuf },
    /// A GET of `url`: ok when the status is `status` and the body (its first 64 KiB) matches `body`.
    Http {
        url: String,
        status: u16,
        body: Option<String>,
        #[serde(skip_serializing_if = "is_default")]
        tls: TlsSpec,
    },
    /// A TLS handshake with `host:port`: ok when it verifies; the leaf's days left either way.
    Tls { addr: String, tls: TlsSpec },
}

/// TLS options as declared.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TlsSpec {
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub server_name: Option<String>,
}

fn is_default(t: &TlsSpec) -> bool {
    *t == TlsSpec::default()
}

impl TlsSpec {
    pub fn options(&self) -> TlsOptions {
        TlsOptions { insecure: self.insecure, ca_file: self.ca_file.clone(), server_name: self.server_name.clone() }
    }
}

/// A resolved, bounded probe.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeSpec {
    pub name: String,
    pub target: Target,
    pub interval_ms: u64,
    pub timeout_ms: u64,
}

/// A probe in a playbook's META: `#{ name: "web", http: "http://127.0.0.1:8080/health",
/// status: 200, body: "ok", interval: "10s", timeout: "2s" }`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetaProbe {
    pub name: String,
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub unix: Option<String>,
    pub tls: Option<String>,
    pub status: Option<i64>,
    pub body: Option<String>,
    pub server_name: Option<String>,
    #[serde(default)]
    pub insecure: bool,
    pub ca_file: Option<String>,
    pub interval: Option<String>,
    pub timeout: Option<String>,
}

/// A probe in the config: `[[probes.check]]`, the same keys with `interval_secs` and
/// `timeout_ms`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigProbe {
    pub name: String,
    pub http: Option<String>,
    pub tcp: Option<String>,
    pub unix: Option<String>,
    pub tls: Option<String>,
    pub status: Option<i64>,
    pub body: Option<String>,
    pub server_name: Option<String>,
    #[serde(default)]
    pub insecure: bool,
    pub ca_file: Option<PathBuf>,
    pub interval_secs: Option<u64>,
    pub timeout_ms: Option<u64>,
}

/// The fields both forms share, for [`resolve`].
struct Decl<'a> {
    name: &'a str,
    http: Option<&'a str>,
    tcp: Option<&'a str>,
    unix: Option<&'a str>,
    tls: Option<&'a str>,
    status: Option<i64>,
    body: Option<&'a str>,
    server_name: Option<&'a str>,
    insecure: bool,
    ca_file: Option<PathBuf>,
    interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
}

impl MetaProbe {
    /// Resolves it; an error names the field (`META.probes[0].timeout: ...`).
    pub fn resolve(&self, at: &str) -> Result<ProbeSpec, String> {
        let dur = |field: &str, v: &Option<String>| -> Result<Option<u64>, String> {
            v.as_deref()
                .map(|s| crate::playbooks::api::duration_ms(s).map(|ms| ms.max(0) as u64).map_err(|e| format!("{at}.{field}: {e}")))
                .transpose()
        };
        resolve(
            at,
            Decl {
                name: &self.name,
                http: self.http.as_deref(),
                tcp: self.tcp.as_deref(),
                unix: self.unix.as_deref(),
                tls: self.tls.as_deref(),
                status: self.status,
                body: self.body.as_deref(),
                server_name: self.server_name.as_deref(),
                insecure: self.insecure,
                ca_file: self.ca_file.as_ref().map(PathBuf::from),
                interval_ms: dur("interval", &self.interval)?,
                timeout_ms: dur("timeout", &self.timeout)?,
            },
        )
    }
}

impl ConfigProbe {
    /// Resolves it; an error names the field (`probes.check[0].timeout_ms: ...`).
    pub fn resolve(&self, at: &str) -> Result<ProbeSpec, String> {
        resolve(
            at,
            Decl {
                name: &self.name,
                http: self.http.as_deref(),
                tcp: self.tcp.as_deref(),
                unix: self.unix.as_deref(),
                tls: self.tls.as_deref(),
                status: self.status,
                body: self.body.as_deref(),
                server_name: self.server_name.as_deref(),
                insecure: self.insecure,
                ca_file: self.ca_file.clone(),
                interval_ms: self.interval_secs.map(|s| s.saturating_mul(1000)),
                timeout_ms: self.timeout_ms,
            },
        )
    }
}

/// A name usable in a metric key: letters, digits, `-` and `_`, at most [`MAX_NAME`] bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn resolve(at: &str, d: Decl<'_>) -> Result<ProbeSpec, String> {
    if !valid_name(d.name) {
        return Err(format!("{at}.name: {:?} must be 1 to {MAX_NAME} letters, digits, '-' or '_'", d.name));
    }
    let interval_ms = d.interval_ms.unwrap_or(DEFAULT_INTERVAL_MS);
    if !(MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval_ms) {
        return Err(format!("{at}.interval: {interval_ms} ms is out of range: must be 1s to 1 day"));
    }
    let max_timeout = interval_ms.min(MAX_TIMEOUT_MS);
    let timeout_ms = d.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS.min(max_timeout));
    if !(MIN_TIMEOUT_MS..=max_timeout).contains(&timeout_ms) {
        return Err(format!(
            "{at}.timeout: {timeout_ms} ms is out of range: must be {MIN_TIMEOUT_MS} ms to {max_timeout} ms (the interval, at most 30 s)"
        ));
    }
    let kinds = [d.http.is_some(), d.tcp.is_some(), d.unix.is_some(), d.tls.is_some()].iter().filter(|k| **k).count();
    if kinds != 1 {
        return Err(format!("{at}: give exactly one of `http`, `tcp`, `unix` or `tls`"));
    }
    if let Some(f) = &d.ca_file {
        if !f.is_absolute() {
            return Err(format!("{at}.ca_file: {f:?} must be absolute"));
        }
    }
    if let Some(n) = d.server_name {
        if n.is_empty() || n.len() > 253 {
            return Err(format!("{at}.server_name: {n:?} must be a host name"));
        }
    }
    let tls = TlsSpec { insecure: d.insecure, ca_file: d.ca_file.clone(), server_name: d.server_name.map(str::to_string) };
    let tls_given = tls != TlsSpec::default();
    let only_http = |field: &str, given: bool| if given { Err(format!("{at}.{field}: only for `http` probes")) } else { Ok(()) };
    let target = if let Some(url) = d.http {
        let t = crate::http::client::parse_url(url).map_err(|e| format!("{at}.http: {e}"))?;
        if !t.https && tls_given {
            return Err(format!("{at}: `insecure`, `ca_file` and `server_name` are for https:// URLs"));
        }
        let status = d.status.unwrap_or(200);
        if !(100..=599).contains(&status) {
            return Err(format!("{at}.status: {status} must be 100 to 599"));
        }
        if let Some(p) = d.body {
            if p.len() > MAX_PATTERN {
                return Err(format!("{at}.body: the pattern is longer than {MAX_PATTERN} bytes"));
            }
            body_regex(p).map_err(|e| format!("{at}.body: {e}"))?;
        }
        Target::Http { url: url.to_string(), status: status as u16, body: d.body.map(str::to_string), tls }
    } else {
        only_http("status", d.status.is_some())?;
        only_http("body", d.body.is_some())?;
        if let Some(a) = d.tcp {
            split_host_port(a).map_err(|e| format!("{at}.tcp: {e}"))?;
            if tls_given {
                return Err(format!("{at}: `insecure`, `ca_file` and `server_name` are for `tls` and https probes"));
            }
            Target::Tcp { addr: a.to_string() }
        } else if let Some(p) = d.unix {
            if !p.starts_with('/') || p.len() > 107 {
                return Err(format!("{at}.unix: {p:?} must be an absolute socket path (at most 107 bytes)"));
            }
            if tls_given {
                return Err(format!("{at}: `insecure`, `ca_file` and `server_name` are for `tls` and https probes"));
            }
            Target::Unix { path: PathBuf::from(p) }
        } else {
            let a = d.tls.unwrap_or_default();
            split_host_port(a).map_err(|e| format!("{at}.tls: {e}"))?;
            Target::Tls { addr: a.to_string(), tls }
        }
    };
    Ok(ProbeSpec { name: d.name.to_string(), target, interval_ms, timeout_ms })
}

/// Compiles a body pattern within the size bound (linear-time matching: the regex crate).
pub fn body_regex(p: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(p).size_limit(MAX_PATTERN_BYTES).dfa_size_limit(MAX_PATTERN_BYTES).build()
}

/// `host:port` or `[v6]:port` into its parts.
pub fn split_host_port(a: &str) -> Result<(String, u16), String> {
    let (host, port) = a.rsplit_once(':').ok_or_else(|| format!("{a:?} must be host:port"))?;
    let port: u16 = port.parse().ok().filter(|p| *p > 0).ok_or_else(|| format!("{a:?}: the port must be 1 to 65535"))?;
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() || host.contains(['/', ' ', '@']) || (host.contains(':') && host.parse::<IpAddr>().is_err()) {
        return Err(format!("{a:?} must be host:port ([addr]:port for IPv6)"));
    }
    Ok((host.to_string(), port))
}

/// A probe's host and port (none for unix sockets).
pub fn host_port(t: &Target) -> Option<(String, u16)> {
    match t {
        Target::Tcp { addr } | Target::Tls { addr, .. } => split_host_port(addr).ok(),
        Target::Http { url, .. } => {
            crate::http::client::parse_url(url).ok().map(|u| (u.host.trim_start_matches('[').trim_end_matches(']').to_string(), u.port))
        }
        Target::Unix { .. } => None,
    }
}

/// Which hosts probes may reach: loopback (127.0.0.0/8, ::1, `localhost`) and unix sockets
/// always; more when `[probes] allow_remote`, or hosts and CIDRs listed in `[probes] allow`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reach {
    pub allow_remote: bool,
    pub names: Vec<String>,
    pub nets: Vec<(IpAddr, u8)>,
}

impl Reach {
    /// From `[probes]`; an entry that is neither a host name nor a CIDR is an error naming it.
    pub fn new(allow_remote: bool, allow: &[String]) -> Result<Self, String> {
        let mut r = Reach { allow_remote, ..Default::default() };
        for a in allow {
            if let Some((ip, len)) = a.split_once('/') {
                let ip: IpAddr = ip.parse().map_err(|_| format!("probes.allow: {a:?} is not a CIDR"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let len: u8 = len.parse().ok().filter(|l| *l <= max).ok_or_else(|| format!("probes.allow: {a:?}: bad prefix length"))?;
                r.nets.push((ip, len));
            } else if let Ok(ip) = a.parse::<IpAddr>() {
                r.nets.push((ip, if ip.is_ipv4() { 32 } else { 128 }));
            } else if !a.is_empty() && a.len() <= 253 && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.') {
                r.names.push(a.to_ascii_lowercase());
            } else {
                return Err(format!("probes.allow: {a:?} is neither a host name, an address nor a CIDR"));
            }
        }
        Ok(r)
    }

    /// Whether an address may be connected to (for a host not allowed by name).
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        self.allow_remote
            || ip.is_loopback()
            || ip.to_canonical().is_loopback()
            || self.nets.iter().any(|(net, len)| in_net(ip, *net, *len))
    }

    /// Whether a host is allowed by name (all its addresses then are).
    pub fn allows_name(&self, host: &str) -> bool {
        self.allow_remote || self.names.iter().any(|n| n.eq_ignore_ascii_case(host))
    }

    /// Checked at load: a literal address must be allowed; a name must be `localhost`, listed,
    /// or resolvable into allowed CIDRs (checked again at each run, on what it resolves to).
    pub fn check(&self, spec: &ProbeSpec) -> Result<(), String> {
        let Some((host, _)) = host_port(&spec.target) else { return Ok(()) };
        let ok = match host.parse::<IpAddr>() {
            Ok(ip) => self.allows_ip(ip),
            Err(_) => host.eq_ignore_ascii_case("localhost") || self.allows_name(&host) || !self.nets.is_empty(),
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "probe {:?}: {host} is not a local address; probes reach 127.0.0.0/8, ::1 and unix sockets unless `[probes] allow_remote` or `allow` says more",
                spec.name
            ))
        }
    }

    /// The address filter of one run for `host` (`None`: every address is allowed).
    pub fn filter(&self, host: &str) -> Option<crate::http::client::AddrFilter> {
        if self.allows_name(host) {
            return None;
        }
        let me = self.clone();
        Some(std::sync::Arc::new(move |a: &std::net::SocketAddr| me.allows_ip(a.ip())))
    }
}

fn in_net(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    match (ip.to_canonical(), net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(f: impl FnOnce(&mut MetaProbe)) -> Result<ProbeSpec, String> {
        let mut p = MetaProbe { name: "web".into(), ..Default::default() };
        f(&mut p);
        p.resolve("META.probes[0]")
    }

    #[test]
    fn a_probe_is_bounded_in_interval_timeout_and_kind() {
        let s = meta(|p| p.http = Some("http://127.0.0.1:8080/health".into())).unwrap();
        assert_eq!((s.interval_ms, s.timeout_ms), (10_000, 2_000));
        assert!(meta(|p| {
            p.tcp = Some("127.0.0.1:1".into());
            p.interval = Some("500ms".into());
        })
        .unwrap_err()
        .contains("META.probes[0].interval"));
        let e = meta(|p| {
            p.tcp = Some("127.0.0.1:1".into());
            p.interval = Some("5s".into());
            p.timeout = Some("6s".into());
        })
        .unwrap_err();
        assert!(e.contains("META.probes[0].timeout"), "{e}");
        assert!(meta(|p| {
            p.tcp = Some("127.0.0.1:1".into());
            p.interval = Some("1m".into());
            p.timeout = Some("31s".into());
        })
        .is_err());
        assert!(meta(|_| {}).unwrap_err().contains("exactly one"));
        assert!(meta(|p| {
            p.tcp = Some("127.0.0.1:1".into());
            p.unix = Some("/run/x.sock".into());
        })
        .is_err());
        assert!(meta(|p| p.tcp = Some("127.0.0.1".into())).unwrap_err().contains("host:port"));
        assert!(meta(|p| {
            p.http = Some("http://127.0.0.1/".into());
            p.body = Some("(".into());
        })
        .unwrap_err()
        .contains("META.probes[0].body"));
        assert!(meta(|p| p.name = "a b".into()).unwrap_err().contains("name"));
    }

    #[test]
    fn only_local_targets_unless_the_config_allows_more() {
        let local = Reach::new(false, &[]).unwrap();
        for ok in ["http://127.0.0.1:8080/", "http://localhost/", "http://[::1]:80/", "https://127.0.0.2/"] {
            let s = meta(|p| p.http = Some(ok.into())).unwrap();
            assert!(local.check(&s).is_ok(), "{ok}");
        }
        let remote = meta(|p| p.tcp = Some("10.1.2.3:5432".into())).unwrap();
        assert!(local.check(&remote).unwrap_err().contains("not a local address"));
        assert!(Reach::new(false, &["10.0.0.0/8".into()]).unwrap().check(&remote).is_ok());
        assert!(Reach::new(false, &["10.1.2.4/32".into()]).unwrap().check(&remote).is_err());
        assert!(Reach::new(true, &[]).unwrap().check(&remote).is_ok());
        let named = meta(|p| p.http = Some("https://db.example/".into())).unwrap();
        assert!(local.check(&named).is_err());
        assert!(Reach::new(false, &["db.example".into()]).unwrap().check(&named).is_ok());
        assert!(Reach::new(false, &["not a host".into()]).is_err());
        let unix = meta(|p| p.unix = Some("/run/x.sock".into())).unwrap();
        assert!(local.check(&unix).is_ok());
    }
}
