//! The kernel's TCP socket table over netlink `sock_diag` (INET_DIAG), the way `ss` reads it:
//! one dump gives every socket's state, retransmit count, remote end and inode, IPv4 and IPv6,
//! as fixed-layout binary records. Unlike `/proc/net/tcp{,6}` there is no text to build
//! and parse and no second walk of the hash table for the final empty read, and the table is
//! never cut short (a seq_file read returns only its first buffer: about 26 sockets).
//!
//! This module owns the wire format only (request, multipart reply, `inet_diag_msg`); what the
//! sockets mean is [`super::sockets`]'s. Everything is read with `rustix` (no `unsafe`).
//! Layouts: `include/uapi/linux/inet_diag.h`, `include/uapi/linux/netlink.h`.

use rustix::fd::OwnedFd;
use rustix::net::netlink::{self, SocketAddrNetlink};
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// `TCPDIAG_GETSOCK`: the original INET_DIAG request (`struct inet_diag_req`), which unlike
/// `SOCK_DIAG_BY_FAMILY`'s `inet_diag_req_v2` takes `AF_UNSPEC`: IPv4 and IPv6 sockets in one
/// walk of the hash. The kernel registers it with inet_diag itself; its replies carry its type.
const TCPDIAG_GETSOCK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_req` (the original request).
const REQ_LEN: usize = 60;
/// `struct inet_diag_msg` (without its attributes).
const MSG_LEN: usize = 72;
/// Every TCP state bit (`1 << state` for states 1..=12; request sockets are reported as
/// SYN_RECV, as `ss` and `/proc/net/tcp` show them).
const ALL_STATES: u32 = 0x1ffe;
/// Receive buffer: the kernel fills each dump batch up to what the reader offers, within its
/// own cap (32 KiB), so one batch always fits.
const BUF_LEN: usize = 64 * 1024;
/// A dump the kernel has not finished in this long is abandoned (the sample goes on with the
/// text tables): a blocked read must never stop the agent's loop.
const RECV_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// `idiag_timer` while the retransmit timer is pending: only then is `idiag_retrans` the
/// socket's unrecovered retransmit timeouts (for probe and keepalive timers it counts probes).
const TIMER_RETRANSMIT: u8 = 1;

/// Why a dump failed. The caller falls back to the procfs tables and says so.
#[derive(Debug, thiserror::Error)]
pub enum DiagError {
    /// The netlink socket could not be opened or used (no `NETLINK_SOCK_DIAG` in this kernel or
    /// sandbox).
    #[error("netlink sock_diag: {0}")]
    Socket(rustix::io::Errno),
    /// The kernel ended the dump with an error (in `NLMSG_ERROR`, or in the payload of
    /// `NLMSG_DONE`), e.g. ENOENT when the `tcp_diag` module cannot be loaded.
    #[error("netlink sock_diag: the kernel answered error {0} ({errno})", errno = rustix::io::Errno::from_raw_os_error(-.0))]
    Kernel(i32),
    /// A reply that does not have the documented layout.
    #[error("netlink sock_diag: malformed reply: {0}")]
    Malformed(&'static str),
}

impl DiagError {
    /// A stable code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Socket(_) => "sock_diag_socket",
            Self::Kernel(_) => "sock_diag_kernel",
            Self::Malformed(_) => "sock_diag_malformed",
        }
    }
}

/// One socket of a dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiagSocket {
    /// TCP state in the kernel's numbering (see [`super::sockets::STATES`]).
    pub state: u8,
    /// Unrecovered retransmit timeouts now (the `retrnsmt` column of /proc/net/tcp): 0 unless
    /// the retransmit timer is pending.
    pub retrans: u8,
    /// Remote address as IPv6 bytes (IPv4 as IPv4-mapped), and port.
    pub peer: ([u8; 16], u16),
    /// 0 for sockets no file refers to (TIME_WAIT, request and orphaned sockets).
    pub inode: u32,
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
        rustix::net::sockopt::set_socket_timeout(&fd, rustix::net::sockopt::Timeout::Recv, Some(RECV_TIMEOUT))
            .map_err(DiagError::Socket)?;
        Ok(Self { fd, buf: vec![0; BUF_LEN], seq: 0 })
    }

    /// Dumps every TCP socket, IPv4 and IPv6, of this network namespace, calling `each` for
    /// each one. A dump walks the kernel's whole established hash (a fixed ~3.5 ms here,
    /// whatever the socket count), so both families come from one walk. After an error the
    /// socket may hold the rest of the abandoned dump: the caller drops it and opens another.
    pub fn dump_tcp(&mut self, mut each: impl FnMut(&DiagSocket)) -> Result<(), DiagError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        rustix::net::sendto(&self.fd, &request(seq), SendFlags::empty(), &SocketAddrNetlink::new(0, 0)).map_err(DiagError::Socket)?;
        loop {
            // TRUNC: the datagram's real length, so a cut batch is an error, not a short read.
            let (_, n) = rustix::net::recv(&self.fd, &mut self.buf[..], RecvFlags::TRUNC).map_err(DiagError::Socket)?;
            if n > self.buf.len() {
                return Err(DiagError::Malformed("a batch larger than the receive buffer"));
            }
            if n == 0 {
                return Err(DiagError::Malformed("the dump ended without NLMSG_DONE"));
            }
            if parse_batch(&self.buf[..n], seq, &mut each)? {
                return Ok(());
            }
        }
    }
}

pub const AF_INET: u8 = 2;

/// `nlmsghdr` (to the kernel, pid 0) + `inet_diag_req` for every TCP socket of both families:
/// idiag_family AF_UNSPEC, src/dst lengths, idiag_ext (none), the socket id left zero (no
/// filter), idiag_states, idiag_dbs.
fn request(seq: u32) -> [u8; NLMSG_HDRLEN + REQ_LEN] {
    let mut r = [0u8; NLMSG_HDRLEN + REQ_LEN];
    r[0..4].copy_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    r[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    r[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    r[8..12].copy_from_slice(&seq.to_ne_bytes());
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
        // Only this request's messages count (the socket is never reused after an error).
        let ours = u32_ne(b, 8) == seq;
        // The dump's end: an error there is the kernel's (netlink_dump_done puts it in DONE's
        // payload, where NLMSG_ERROR carries a refused request's).
        let code = if body.len() >= 4 { u32_ne(body, 0) as i32 } else { 0 };
        match kind {
            NLMSG_DONE if ours && code < 0 => return Err(DiagError::Kernel(code)),
            NLMSG_DONE if ours => return Ok(true),
            NLMSG_ERROR if ours => return Err(DiagError::Kernel(if code < 0 { code } else { -1 })),
            TCPDIAG_GETSOCK if ours => {
                if body.len() < MSG_LEN {
                    return Err(DiagError::Malformed("inet_diag_msg shorter than 72 bytes"));
                }
                let mut dst = [0u8; 16];
                dst.copy_from_slice(&body[24..40]);
                if body[0] == AF_INET {
                    dst = std::net::Ipv4Addr::new(dst[0], dst[1], dst[2], dst[3]).to_ipv6_mapped().octets();
                }
                each(&DiagSocket {
                    state: body[1],
                    retrans: if body[2] == TIMER_RETRANSMIT { body[3] } else { 0 },
                    // Ports are big-endian on the wire.
                    peer: (dst, u16::from_be_bytes([body[6], body[7]])),
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

    fn diag(family: u8, state: u8, timer: u8, inode: u32) -> Vec<u8> {
        let mut b = vec![0u8; MSG_LEN + 8]; // with a trailing attribute
        (b[0], b[1], b[2], b[3]) = (family, state, timer, 3);
        b[4..6].copy_from_slice(&8080u16.to_be_bytes());
        b[6..8].copy_from_slice(&443u16.to_be_bytes());
        b[24..28].copy_from_slice(&[127, 0, 0, 1]);
        b[68..72].copy_from_slice(&inode.to_ne_bytes());
        b
    }

    #[test]
    fn the_request_has_the_documented_layout() {
        let r = request(9);
        assert_eq!((r.len(), u32_ne(&r, 0), u16_ne(&r, 4), u16_ne(&r, 6), u32_ne(&r, 8)), (76, 76, TCPDIAG_GETSOCK, 0x301, 9));
        assert_eq!((r[16], u32_ne(&r, 68), u32_ne(&r, 72)), (0, ALL_STATES, 0));
    }

    #[test]
    fn parses_a_batch_and_its_end() {
        let mut batch = msg(TCPDIAG_GETSOCK, 7, &diag(AF_INET, 8, 0, 99));
        batch.extend(msg(TCPDIAG_GETSOCK, 6, &diag(AF_INET, 1, 0, 5))); // another request's: ignored
        batch.extend(msg(TCPDIAG_GETSOCK, 7, &diag(10, 1, TIMER_RETRANSMIT, 100)));
        let mut seen = Vec::new();
        assert!(!parse_batch(&batch, 7, &mut |s: &DiagSocket| seen.push(*s)).unwrap());
        assert_eq!(seen.len(), 2);
        assert_eq!((seen[0].state, seen[0].inode, seen[0].retrans), (8, 99, 0), "retrans counts only under the retransmit timer");
        assert_eq!(super::super::sockets::format_peer(seen[0].peer), "127.0.0.1:443");
        assert_eq!((seen[1].retrans, seen[1].peer.0[0]), (3, 127), "IPv6 bytes as they come");
        assert!(parse_batch(&msg(NLMSG_DONE, 7, &[0; 4]), 7, &mut |_: &DiagSocket| {}).unwrap());
    }

    /// Regression: the kernel ends a failed dump (no tcp_diag handler: -ENOENT) with its error
    /// in NLMSG_DONE's payload; read as success, it was an empty table with no error.
    #[test]
    fn an_error_in_done_or_error_is_an_error_not_an_empty_table() {
        for kind in [NLMSG_DONE, NLMSG_ERROR] {
            let e = parse_batch(&msg(kind, 1, &(-2i32).to_ne_bytes()), 1, &mut |_: &DiagSocket| {}).unwrap_err();
            assert!(matches!(e, DiagError::Kernel(-2)), "{e}");
            assert!(e.to_string().contains("error -2"), "{e}");
        }
        assert!(parse_batch(&msg(TCPDIAG_GETSOCK, 1, &[0; 10]), 1, &mut |_: &DiagSocket| {}).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let good = [msg(TCPDIAG_GETSOCK, 3, &diag(AF_INET, 1, 0, 1)), msg(NLMSG_DONE, 3, &[0; 4])].concat();
        for cut in 0..good.len() {
            let _ = parse_batch(&good[..cut], 3, &mut |_: &DiagSocket| {});
            let mut bad = good.clone();
            bad[cut] ^= 0xff;
            let _ = parse_batch(&bad, 3, &mut |_: &DiagSocket| {});
        }
    }
}
