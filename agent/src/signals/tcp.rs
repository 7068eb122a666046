//! TCP counters from `/proc/net/snmp` (the `Tcp:` section) and `/proc/net/netstat` (the
//! `TcpExt:` section): retransmits, resets, listen overflows and drops; with a previous sample,
//! per-second rates and the retransmitted share of sent segments.
//!
//! Metric keys: `tcp.retrans_segs`, `tcp.out_segs`, `tcp.in_segs`, `tcp.in_errs`,
//! `tcp.out_rsts`, `tcp.attempt_fails`, `tcp.estab_resets`, `tcp.listen_overflows`,
//! `tcp.listen_drops`, `tcp.lost_retransmit`, `tcp.timeouts`, `tcp.syn_retrans`,
//! `tcp.fast_retrans`, `tcp.slow_start_retrans`; each counter also as `<key>_per_s`, and
//! `tcp.retrans_pct` (the retransmitted share of the segments sent over the interval:
//! `RetransSegs / (OutSegs + RetransSegs)`, since the kernel's `OutSegs` leaves out segments
//! that carry only retransmitted bytes; 100 when only retransmits went out).

use super::parse::{num, ParseError};
use std::collections::BTreeMap;
use std::path::Path;

const SNMP_FIELDS: &[(&str, &str)] = &[
    ("RetransSegs", "tcp.retrans_segs"),
    ("OutSegs", "tcp.out_segs"),
    ("InSegs", "tcp.in_segs"),
    ("InErrs", "tcp.in_errs"),
    ("OutRsts", "tcp.out_rsts"),
    ("AttemptFails", "tcp.attempt_fails"),
    ("EstabResets", "tcp.estab_resets"),
];
const NETSTAT_FIELDS: &[(&str, &str)] = &[
    ("ListenOverflows", "tcp.listen_overflows"),
    ("ListenDrops", "tcp.listen_drops"),
    ("TCPLostRetransmit", "tcp.lost_retransmit"),
    ("TCPTimeouts", "tcp.timeouts"),
    ("TCPSynRetrans", "tcp.syn_retrans"),
    ("TCPFastRetrans", "tcp.fast_retrans"),
    ("TCPSlowStartRetrans", "tcp.slow_start_retrans"),
];

/// Both files use pairs of lines: `Prefix: Name1 Name2 ...` then `Prefix: v1 v2 ...`.
/// Collects the wanted fields of section `prefix` into `out` under their metric keys.
pub fn parse_pairs(
    file: &Path,
    text: &str,
    prefix: &str,
    fields: &[(&str, &str)],
    out: &mut BTreeMap<String, f64>,
) -> Result<(), ParseError> {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = false;
    let mut i = 0;
    while i < lines.len() {
        let Some(names) = lines[i].strip_prefix(prefix) else {
            i += 1;
            continue;
        };
        let Some(values) = lines.get(i + 1).and_then(|l| l.strip_prefix(prefix)) else {
            return Err(ParseError::new(file, i + 2, prefix, "header line without its values line"));
        };
        let names: Vec<&str> = names.split_ascii_whitespace().collect();
        let values: Vec<&str> = values.split_ascii_whitespace().collect();
        if names.len() != values.len() {
            return Err(ParseError::new(file, i + 2, prefix, format!("{} names but {} values (truncated?)", names.len(), values.len())));
        }
        for (name, value) in names.iter().zip(&values) {
            if let Some((_, key)) = fields.iter().find(|(n, _)| n == name) {
                // Some counters (MaxConn) are signed; all the ones we keep are not.
                let v: f64 = num(file, i + 2, name, Some(value))?;
                out.insert((*key).to_string(), v);
            }
        }
        found = true;
        i += 2;
    }
    if !found {
        return Err(ParseError::new(file, 0, prefix, "section not found"));
    }
    Ok(())
}

pub fn parse_snmp(file: &Path, text: &str, out: &mut BTreeMap<String, f64>) -> Result<(), ParseError> {
    parse_pairs(file, text, "Tcp:", SNMP_FIELDS, out)
}

pub fn parse_netstat(file: &Path, text: &str, out: &mut BTreeMap<String, f64>) -> Result<(), ParseError> {
    parse_pairs(file, text, "TcpExt:", NETSTAT_FIELDS, out)
}

/// Adds `<key>_per_s` for every TCP counter present in both samples, and `tcp.retrans_pct`.
pub fn rates_into(prev: &BTreeMap<String, f64>, secs: f64, out: &mut BTreeMap<String, f64>) {
    if secs <= 0.0 {
        return;
    }
    let mut add = Vec::new();
    for (_, key) in SNMP_FIELDS.iter().chain(NETSTAT_FIELDS) {
        if let (Some(a), Some(b)) = (prev.get(*key), out.get(*key)) {
            add.push((format!("{key}_per_s"), (b - a).max(0.0) / secs));
        }
    }
    let delta = |k: &str| Some((out.get(k)? - prev.get(k)?).max(0.0));
    if let (Some(re), Some(sent)) = (delta("tcp.retrans_segs"), delta("tcp.out_segs")) {
        // OutSegs counts no segment made only of retransmitted bytes: what went out is both.
        let total = sent + re;
        add.push(("tcp.retrans_pct".into(), if total > 0.0 { re * 100.0 / total } else { 0.0 }));
    }
    out.extend(add);
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    fn counters(out: f64, re: f64) -> BTreeMap<String, f64> {
        BTreeMap::from([("tcp.out_segs".to_string(), out), ("tcp.retrans_segs".to_string(), re)])
    }

    #[test]
    fn the_retransmitted_share_counts_segments_outsegs_leaves_out() {
        let prev = counters(1000.0, 10.0);
        // Only retransmits went out (the peer is unreachable): all of what was sent.
        let mut now = counters(1000.0, 74.0);
        rates_into(&prev, 0.5, &mut now);
        assert_eq!((now["tcp.retrans_pct"], now["tcp.retrans_segs_per_s"]), (100.0, 128.0));
        // 300 new segments and 100 retransmits: a quarter of the 400 sent.
        let mut now = counters(1300.0, 110.0);
        rates_into(&prev, 1.0, &mut now);
        assert_eq!(now["tcp.retrans_pct"], 25.0);
        // Nothing sent at all: 0, not a division by zero.
        let mut now = counters(1000.0, 10.0);
        rates_into(&prev, 1.0, &mut now);
        assert_eq!(now["tcp.retrans_pct"], 0.0);
    }
}
