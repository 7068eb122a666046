//! TCP socket signals: counts per state from `/proc/net/tcp` and `/proc/net/tcp6` node-wide,
//! and (by matching socket inodes to `/proc/<pid>/fd`) per process; listen-queue overflows and
//! drops come with the other TCP counters in [`super::tcp`].
//!
//! Metric keys: `sock.tcp.<state>` (e.g. `sock.tcp.close_wait`) and `sock.tcp.total`.

use super::parse::{num, ParseError};
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

/// Decodes the kernel's hex `address:port` (little-endian 32-bit words) into text.
pub fn decode_addr(hex: &str) -> Option<String> {
    let (a, p) = hex.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    let words: Option<Vec<u32>> = (0..a.len() / 8).map(|i| a.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok())).collect();
    let words = words?;
    let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    match bytes.len() {
        4 => Some(format!("{}:{port}", std::net::Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        16 => {
            let arr: [u8; 16] = bytes.try_into().ok()?;
            let ip = std::net::Ipv6Addr::from(arr);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => format!("{v4}:{port}"),
                None => format!("[{ip}]:{port}"),
            })
        }
        _ => None,
    }
}

/// Parses one `/proc/net/tcp{,6}` table, adding each socket's state to `counts`, its inode to
/// `inodes` and its remote end to `peers`.
pub fn parse_tcp_table(
    file: &Path,
    text: &str,
    counts: &mut [u64; 13],
    inodes: &mut InodeStates,
    peers: &mut HashMap<String, PeerInfo>,
) -> Result<(), ParseError> {
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
        let st = if (st as usize) < STATES.len() { st } else { 0 };
        counts[st as usize] += 1;
        let retrnsmt =
            u64::from_str_radix(f[6], 16).map_err(|_| ParseError::new(file, n, "retrnsmt", format!("expected hex, found {:?}", f[6])))?;
        // Listening sockets have no peer.
        if st != 10 {
            let peer = decode_addr(f[2]).ok_or_else(|| ParseError::new(file, n, "rem_address", format!("bad address {:?}", f[2])))?;
            let e = peers.entry(peer).or_default();
            e.sockets += 1;
            if retrnsmt > 0 {
                e.retransmitting += 1;
                e.timeouts += retrnsmt;
            }
        }
        let inode: u64 = num(file, n, "inode", Some(f[9]))?;
        // Inode 0: the socket is orphaned (TIME_WAIT and friends); no process owns it.
        if inode != 0 {
            inodes.insert(inode, st);
        }
    }
    Ok(())
}

/// The peers that have sockets retransmitting right now, most timeouts first.
pub fn top_peers(peers: HashMap<String, PeerInfo>) -> Vec<PeerInfo> {
    let mut v: Vec<PeerInfo> = peers
        .into_iter()
        .filter(|(_, p)| p.retransmitting > 0)
        .map(|(k, mut p)| {
            p.peer = k;
            p
        })
        .collect();
    v.sort_by(|a, b| b.timeouts.cmp(&a.timeouts).then_with(|| a.peer.cmp(&b.peer)));
    v.truncate(MAX_PEERS);
    v
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
