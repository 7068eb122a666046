//! The kernel's TCP socket table over netlink `sock_diag` (INET_DIAG), the way `ss` reads it:
//! one dump per address family gives every socket's state, retransmit count, remote end and
//! inode as fixed-layout binary records. Unlike `/proc/net/tcp{,6}` there is no text to build
//! and parse and no second walk of the hash table for the final empty read, and the table is
//! never cut short (a seq_file read returns only its first buffer: about 26 sockets).
//!
//! This module owns the wire format only (request, multipart reply, `inet_diag_msg`); what the
//! sockets mean is [`super::sockets`]'s. Everything is read with `rustix` (no `unsafe`).
//! Layouts: `include/uapi/linux/inet_diag.h`, `include/uapi/linux/netlink.h`.

use rustix::fd::OwnedFd;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};
use std::fmt;

/// `SOCK_DIAG_BY_FAMILY`: the request and reply message type.
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCPDIAG_GETSOCK`: the original INET_DIAG request (`struct inet_diag_req`), which unlike
/// `inet_diag_req_v2` takes `AF_UNSPEC`: IPv4 and IPv6 sockets in one walk of the hash.
const TCPDIAG_GETSOCK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_req` (the original request).
const REQ_V1_LEN: usize = 60;
/// `struct inet_diag_msg` (without its attributes).
const MSG_LEN: usize = 72;
/// Every TCP state bit (`1 << state` for states 1..=12; request sockets are reported as
/// SYN_RECV, as `ss` and `/proc/net/tcp` show them).
const ALL_STATES: u32 = 0x1ffe;
/// Receive buffer: the kernel fills each dump batch up to what the reader offers, within its
/// own cap (32 KiB), so one batch always fits.
const BUF_LEN: usize = 64 * 1024;

/// Why a dump failed. The caller falls back to the procfs tables and says so.
#[derive(Debug)]
pub enum DiagError {
    /// The netlink socket could not be opened or used (no `NETLINK_SOCK_DIAG` in this kernel or
    /// sandbox).
    Socket(rustix::io::Errno),
    /// The kernel answered the dump with an error (`NLMSG_ERROR`), e.g. ENOENT when the
    /// `tcp_diag` module is missing.
    Kernel(i32),
    /// A reply that does not have the documented layout.
    Malformed(&'static str),
}

impl fmt::Display for DiagError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Socket(e) => write!(f, "netlink sock_diag: {e}"),
            Self::Kernel(e) => write!(f, "netlink sock_diag: the kernel answered error {e} ({})", rustix::io::Errno::from_raw_os_error(-e)),
            Self::Malformed(what) => write!(f, "netlink sock_diag: malformed reply: {what}"),
        }
    }
}

impl std::error::Error for DiagError {}

/// One socket of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u8,
    /// TCP state in the kernel's numbering (see [`super::sockets::STATES`]).
    pub state: u8,
    /// Unrecovered retransmit timeouts (the `retrnsmt` column of /proc/net/tcp).
    pub retrans: u8,
    /// Remote address: 4 bytes for IPv4, 16 for IPv6.
    pub dst: [u8; 16],
    pub dport: u16,
    pub sport: u16,
    pub uid: u32,
    /// 0 for sockets no file refers to (TIME_WAIT, request and orphaned sockets).
    pub inode: u32,
}

impl DiagSocket {
    /// The remote end as `ss` prints it: `a.b.c.d:port`, `[v6]:port`, IPv4-mapped as IPv4.
    pub fn peer(&self) -> String {
        if self.family == 2 {
            let [a, b, c, d] = [self.dst[0], self.dst[1], self.dst[2], self.dst[3]];
            return format!("{a}.{b}.{c}.{d}:{}", self.dport);
        }
        let ip = std::net::Ipv6Addr::from(self.dst);
        match ip.to_ipv4_mapped() {
            Some(v4) => format!("{v4}:{}", self.dport),
            None => format!("[{ip}]:{}", self.dport),
        }
    }
}

/// A netlink socket for dumping the TCP table, kept open between samples.
pub struct SockDiag {
    fd: OwnedFd,
    buf: Vec<u8>,
    seq: u32,
}

impl SockDiag {
    pub fn open() -> Result<Self, DiagError> {
        let fd = rustix::net::socket_with(AddressFamily::NETLINK, SocketType::RAW, SocketFlags::CLOEXEC, Some(netlink::SOCK_DIAG))
            .map_err(DiagError::Socket)?;
        Ok(Self { fd, buf: vec![0; BUF_LEN], seq: 0 })
    }

    /// Dumps every TCP socket, IPv4 and IPv6, of this network namespace, calling `each` for
    /// each one. Each dump walks the kernel's whole established hash (a fixed ~3–5 ms here,
    /// whatever the socket count), so both families come from one walk; a kernel that refuses
    /// the original request gets one `inet_diag_req_v2` dump per family.
    pub fn dump_tcp(&mut self, mut each: impl FnMut(&DiagSocket)) -> Result<(), DiagError> {
        match self.dump(&request_v1_all(self.seq.wrapping_add(1)), &mut each) {
            Err(DiagError::Kernel(_)) => {
                self.dump(&request_v2(AF_INET, self.seq.wrapping_add(1)), &mut each)?;
                self.dump(&request_v2(AF_INET6, self.seq.wrapping_add(1)), &mut each)
            }
            other => other,
        }
    }

    /// Sends one dump request (its sequence number is `self.seq + 1`) and reads the reply.
    fn dump(&mut self, req: &[u8], each: &mut impl FnMut(&DiagSocket)) -> Result<(), DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        rustix::net::sendto(&self.fd, req, SendFlags::empty(), &SocketAddrNetlink::new(0, 0)).map_err(DiagError::Socket)?;
        loop {
            let (_, n) = rustix::net::recv(&self.fd, &mut self.buf[..], RecvFlags::empty()).map_err(DiagError::Socket)?;
            if n > self.buf.len() {
                return Err(DiagError::Malformed("a batch larger than the receive buffer"));
            }
            if n == 0 {
                return Err(DiagError::Malformed("the dump ended without NLMSG_DONE"));
            }
            if parse_batch(&self.buf[..n], seq, each)? {
                return Ok(());
            }
        }
    }
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// A dump request's `nlmsghdr` (pid 0: to the kernel).
fn header<const N: usize>(kind: u16, seq: u32) -> [u8; N] {
    let mut r = [0u8; N];
    r[0..4].copy_from_slice(&(N as u32).to_ne_bytes());
    r[4..6].copy_from_slice(&kind.to_ne_bytes());
    r[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    r[8..12].copy_from_slice(&seq.to_ne_bytes());
    r
}

/// `inet_diag_req_v2` for every TCP socket of `family`: sdiag_family, sdiag_protocol,
/// idiag_ext (none), pad, idiag_states, then the socket id left zero (no filter).
fn request_v2(family: u8, seq: u32) -> [u8; NLMSG_HDRLEN + REQ_LEN] {
    let mut r = header(SOCK_DIAG_BY_FAMILY, seq);
    r[16] = family;
    r[17] = 6; // IPPROTO_TCP
    r[20..24].copy_from_slice(&ALL_STATES.to_ne_bytes());
    r
}

/// `inet_diag_req` (TCPDIAG_GETSOCK: the protocol is in the message type) for every TCP
/// socket of both families: idiag_family AF_UNSPEC, src/dst lengths, idiag_ext (none), the
/// socket id left zero, idiag_states, idiag_dbs.
fn request_v1_all(seq: u32) -> [u8; NLMSG_HDRLEN + REQ_V1_LEN] {
    let mut r = header(TCPDIAG_GETSOCK, seq);
    r[16 + 52..16 + 56].copy_from_slice(&ALL_STATES.to_ne_bytes());
    r
}

fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses one `recv` worth of netlink messages. `Ok(true)` at the end of the dump.
pub fn parse_batch(mut b: &[u8], seq: u32, each: &mut impl FnMut(&DiagSocket)) -> Result<bool, DiagError> {
    while b.len() >= NLMSG_HDRLEN {
        let len = u32_ne(b, 0) as usize;
        let kind = u16_ne(b, 4);
        if len < NLMSG_HDRLEN || len > b.len() {
            return Err(DiagError::Malformed("message length outside the batch"));
        }
        let body = &b[NLMSG_HDRLEN..len];
        // Messages of an earlier, abandoned dump (a previous call that failed half-way).
        let ours = u32_ne(b, 8) == seq;
        match kind {
            NLMSG_DONE if ours => return Ok(true),
            NLMSG_ERROR if ours => {
                let code = if body.len() >= 4 { u32_ne(body, 0) as i32 } else { -1 };
                return Err(DiagError::Kernel(code));
            }
            // Replies to the original request carry its message type.
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK if ours => {
                if body.len() < MSG_LEN {
                    return Err(DiagError::Malformed("inet_diag_msg shorter than 72 bytes"));
                }
                let mut dst = [0u8; 16];
                dst.copy_from_slice(&body[24..40]);
                each(&DiagSocket {
                    family: body[0],
                    state: body[1],
                    retrans: body[3],
                    // Ports are big-endian on the wire.
                    sport: u16::from_be_bytes([body[4], body[5]]),
                    dport: u16::from_be_bytes([body[6], body[7]]),
                    dst,
                    uid: u32_ne(body, 64),
                    inode: u32_ne(body, 68),
                });
            }
            _ => {}
        }
        // Messages are 4-byte aligned.
        let next = (len + 3) & !3;
        b = &b[next.min(b.len())..];
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&[0; 4]);
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn diag(state: u8, inode: u32) -> Vec<u8> {
        let mut b = vec![0u8; MSG_LEN + 8]; // with a trailing attribute
        b[0] = 2;
        b[1] = state;
        b[4..6].copy_from_slice(&8080u16.to_be_bytes());
        b[6..8].copy_from_slice(&443u16.to_be_bytes());
        b[24..28].copy_from_slice(&[127, 0, 0, 1]);
        b[68..72].copy_from_slice(&inode.to_ne_bytes());
        b
    }

    #[test]
    fn requests_have_the_documented_layout() {
        let r = request_v1_all(9);
        assert_eq!((r.len(), u32_ne(&r, 0), u16_ne(&r, 4), u32_ne(&r, 8)), (76, 76, TCPDIAG_GETSOCK, 9));
        assert_eq!((r[16], u32_ne(&r, 68)), (0, ALL_STATES));
        let r = request_v2(AF_INET6, 3);
        assert_eq!((r.len(), u16_ne(&r, 4), r[16], r[17], u32_ne(&r, 20)), (72, SOCK_DIAG_BY_FAMILY, AF_INET6, 6, ALL_STATES));
    }

    #[test]
    fn parses_a_batch_and_its_end() {
        let mut batch = msg(SOCK_DIAG_BY_FAMILY, 7, &diag(8, 99));
        batch.extend(msg(SOCK_DIAG_BY_FAMILY, 6, &diag(1, 5))); // an older dump's: ignored
        batch.extend(msg(SOCK_DIAG_BY_FAMILY, 7, &diag(10, 100)));
        let mut seen = Vec::new();
        assert!(!parse_batch(&batch, 7, &mut |s: &DiagSocket| seen.push(*s)).unwrap());
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].state, seen[0].inode, seen[0].sport), (8, 99, 8080));
        assert_eq!(seen[0].peer(), "127.0.0.1:443");
        assert!(parse_batch(&msg(NLMSG_DONE, 7, &[0; 4]), 7, &mut |_: &DiagSocket| {}).unwrap());
    }

    #[test]
    fn errors_and_garbage_are_errors_not_panics() {
        let e = parse_batch(&msg(NLMSG_ERROR, 1, &(-2i32).to_ne_bytes()), 1, &mut |_: &DiagSocket| {}).unwrap_err();
        assert!(matches!(e, DiagError::Kernel(-2)), "{e}");
        assert!(e.to_string().contains("error -2"), "{e}");
        assert!(parse_batch(&msg(SOCK_DIAG_BY_FAMILY, 1, &[0; 10]), 1, &mut |_: &DiagSocket| {}).is_err());
        // Every cut and every garbled byte of a good batch: no panic.
        let good = [msg(SOCK_DIAG_BY_FAMILY, 3, &diag(1, 1)), msg(NLMSG_DONE, 3, &[0; 4])].concat();
        for cut in 0..good.len() {
            let _ = parse_batch(&good[..cut], 3, &mut |_: &DiagSocket| {});
            let mut bad = good.clone();
            bad[cut] ^= 0xff;
            let _ = parse_batch(&bad, 3, &mut |_: &DiagSocket| {});
        }
    }

    #[test]
    fn v6_and_mapped_peers() {
        let mut s = DiagSocket { family: 10, state: 1, retrans: 0, dst: [0; 16], dport: 22, sport: 1, uid: 0, inode: 1 };
        s.dst[15] = 1;
        assert_eq!(s.peer(), "[::1]:22");
        s.dst = std::net::Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped().octets();
        assert_eq!(s.peer(), "10.0.0.1:22");
    }
}
