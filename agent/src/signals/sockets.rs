//! TCP socket signals: counts per state node-wide, from the kernel's socket table (read over
//! netlink by [`super::sock_diag`], or from the text of `/proc/net/tcp{,6}` where netlink is
//! not available or the proc root is a fixture tree), and per process by matching socket inodes
//! to `/proc/<pid>/fd` (as `ss -p` does); the peers with sockets retransmitting now.
//! Listen-queue overflows and drops come with the other TCP counters in [`super::tcp`].
//!
//! Metric keys: `sock.tcp.<state>` (e.g. `sock.tcp.close_wait`) and `sock.tcp.total`.

use super::parse::{num, read_seq, ParseError};
use super::sock_diag::{DiagError, SockDiag};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// TCP states in the kernel's numbering (include/net/tcp_states.h), index = state number.
pub const STATES: [&str; 13] = [
    "unknown",
    "established",
    "syn_sent",
    "syn_recv",
    "fin_wait1",
    "fin_wait2",
    "time_wait",
    "close",
    "close_wait",
    "last_ack",
    "listen",
    "closing",
    "new_syn_recv",
];

/// Socket inode → TCP state index, for every socket in the table.
pub type InodeStates = HashMap<u64, u8>;

/// Sockets to one remote address, for finding the peers behind a retransmit storm. procfs only
/// shows the *current* retransmit state of each socket (the `retrnsmt` column: unrecovered RTO
/// timeouts); counts per peer over time come with the eBPF signals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerInfo {
    /// `address:port` of the remote end.
    pub peer: String,
    pub sockets: u64,
    /// Sockets to this peer with at least one unrecovered retransmit timeout right now.
    pub retransmitting: u64,
    /// Sum of those timeouts.
    pub timeouts: u64,
}

/// Peers kept per snapshot (the ones with the most timeouts).
pub const MAX_PEERS: usize = 32;

/// A remote end in a form cheap to hash: IPv6 bytes (IPv4 as IPv4-mapped) and the port. Peers
/// are only formatted as text for the few that are kept.
pub type PeerKey = ([u8; 16], u16);

/// `a.b.c.d:port`, `[v6]:port`; IPv4-mapped addresses print as IPv4.
pub fn format_peer((addr, port): PeerKey) -> String {
    let ip = std::net::Ipv6Addr::from(addr);
    match ip.to_ipv4_mapped() {
        Some(v4) => format!("{v4}:{port}"),
        None => format!("[{ip}]:{port}"),
    }
}

/// Decodes the kernel's hex `address:port` (little-endian 32-bit words) of /proc/net/tcp{,6}.
pub fn decode_peer(hex: &str) -> Option<PeerKey> {
    let (a, p) = hex.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let mut bytes = [0u8; 16];
    let words = a.len() / 8;
    if a.len() % 8 != 0 || !(words == 1 || words == 4) {
        return None;
    }
    for i in 0..words {
        let w = u32::from_str_radix(a.get(i * 8..i * 8 + 8)?, 16).ok()?;
        bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    if words == 1 {
        let v4 = std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
        bytes = v4.to_ipv6_mapped().octets();
    }
    Some((bytes, port))
}

/// Decodes the kernel's hex `address:port` into text.
pub fn decode_addr(hex: &str) -> Option<String> {
    decode_peer(hex).map(format_peer)
}

/// One read of the TCP tables, whatever it came from (netlink sock_diag or the text tables):
/// counts per state, socket inode → state (for matching processes' fds), and sockets per peer.
#[derive(Debug, Default)]
pub struct SocketTable {
    pub counts: [u64; 13],
    pub inodes: InodeStates,
    peers: HashMap<PeerKey, PeerInfo>,
}

impl SocketTable {
    /// Adds one socket. `retrans`: its unrecovered retransmit timeouts now.
    pub fn add(&mut self, state: u8, inode: u64, peer: PeerKey, retrans: u64) {
        let st = if (state as usize) < STATES.len() { state } else { 0 };
        self.counts[st as usize] += 1;
        // Listening sockets have no peer.
        if st != LISTEN {
            let e = self.peers.entry(peer).or_default();
            e.sockets += 1;
            if retrans > 0 {
                e.retransmitting += 1;
                e.timeouts += retrans;
            }
        }
        // Inode 0: no file refers to the socket (TIME_WAIT, request and orphaned sockets).
        if inode != 0 {
            self.inodes.insert(inode, st);
        }
    }

    /// The peers that have sockets retransmitting now, most timeouts first.
    pub fn top_peers(&self) -> Vec<PeerInfo> {
        let mut v: Vec<(&PeerKey, &PeerInfo)> = self.peers.iter().filter(|(_, p)| p.retransmitting > 0).collect();
        v.sort_by(|a, b| b.1.timeouts.cmp(&a.1.timeouts).then_with(|| a.0.cmp(b.0)));
        v.into_iter().take(MAX_PEERS).map(|(k, p)| PeerInfo { peer: format_peer(*k), ..p.clone() }).collect()
    }
}

/// The state number of LISTEN.
const LISTEN: u8 = 10;

/// Parses one `/proc/net/tcp{,6}` table into `table`.
pub fn parse_tcp_table(file: &Path, text: &str, table: &mut SocketTable) -> Result<(), ParseError> {
    for (i, line) in text.lines().enumerate().skip(1) {
        let n = i + 1;
        let f: Vec<&str> = line.split_ascii_whitespace().take(10).collect();
        if f.is_empty() {
            continue;
        }
        if f.len() < 10 {
            return Err(ParseError::new(file, n, "socket entry", format!("expected at least 10 columns, found {}", f.len())));
        }
        let st =
            u8::from_str_radix(f[3], 16).map_err(|_| ParseError::new(file, n, "st", format!("expected a hex state, found {:?}", f[3])))?;
        let retrnsmt =
            u64::from_str_radix(f[6], 16).map_err(|_| ParseError::new(file, n, "retrnsmt", format!("expected hex, found {:?}", f[6])))?;
        let peer = decode_peer(f[2]).ok_or_else(|| ParseError::new(file, n, "rem_address", format!("bad address {:?}", f[2])))?;
        let inode: u64 = num(file, n, "inode", Some(f[9]))?;
        table.add(st, inode, peer, retrnsmt);
    }
    Ok(())
}

/// The whole TCP table of this network namespace, over netlink sock_diag.
pub fn from_netlink(diag: &mut SockDiag) -> Result<SocketTable, DiagError> {
    let mut table = SocketTable::default();
    diag.dump_tcp(|d| table.add(d.state, d.inode.into(), d.peer, d.retrans.into()))?;
    Ok(table)
}

/// The whole TCP table from `<proc>/net/tcp` and `tcp6`, each read to its end; parse errors go
/// to `errors`. The flag is false when no table could be read at all.
pub fn from_text(proc: &Path, errors: &mut Vec<String>) -> (SocketTable, bool) {
    let mut table = SocketTable::default();
    let mut ok = false;
    for name in ["tcp", "tcp6"] {
        let f = proc.join("net").join(name);
        match read_seq(&f) {
            Ok(t) => match parse_tcp_table(&f, &t, &mut table) {
                Ok(()) => ok = true,
                Err(e) => errors.push(e.to_string()),
            },
            // tcp6 is absent where IPv6 is off; that alone is not an error.
            Err(e) if name == "tcp" => errors.push(e.to_string()),
            Err(_) => {}
        }
    }
    (table, ok)
}

/// Writes node-wide per-state counts.
pub fn counts_into(counts: &[u64; 13], out: &mut BTreeMap<String, f64>) {
    for (i, name) in STATES.iter().enumerate().skip(1) {
        out.insert(format!("sock.tcp.{name}"), counts[i] as f64);
    }
    out.insert("sock.tcp.total".into(), counts.iter().sum::<u64>() as f64);
}

/// Parses the target of a `/proc/<pid>/fd/<n>` link: `socket:[12345]` → 12345.
pub fn socket_inode(link: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(link).ok()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}
