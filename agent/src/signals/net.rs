//! Network interface signals: counters from `<proc>/net/dev` (the sampler's network namespace)
//! and link state from `<sys>/class/net/<if>/{operstate,carrier,flags,speed}`.
//!
//! Metric keys, per interface: `net.<if>.{rx,tx}_{bytes,packets,errors,drops}` (counters since
//! the interface appeared) with `..._per_s` rates between two samples (a counter that went back,
//! an interface re-created, gives no rate that sample); `net.<if>.up` (1 when the operational
//! state is `up`, or `unknown` with the interface administratively up, as loopback reports),
//! `net.<if>.admin_up` (the `IFF_UP` flag: `ip link set up`), `net.<if>.carrier` (1 when the
//! link has a carrier; 0 when it has none or the interface is down); `net.<if>.speed_mbps` and
//! `net.<if>.{rx,tx}_util_pct` (rate over link speed) when the driver reports a speed.
//!
//! Bounded: at most [`MAX_INTERFACES`] interfaces (in the kernel's order; the rest are named in
//! `unavailable["net"]`), names at most 15 bytes without `/` (the kernel's own rule).

use super::parse::{ParseError, TRUNCATED};
use std::collections::BTreeMap;
use std::path::Path;

/// Most interfaces reported (a container host may have thousands of veths).
pub const MAX_INTERFACES: usize = 256;

/// The counters of one interface: rx bytes, packets, errors, drops; tx the same.
pub type Counters = [u64; 8];

const NAMES: [&str; 8] = ["rx_bytes", "rx_packets", "rx_errors", "rx_drops", "tx_bytes", "tx_packets", "tx_errors", "tx_drops"];

/// Parses `/proc/net/dev`; the second value is how many interfaces were left out.
pub fn parse_dev(file: &Path, text: &str) -> Result<(BTreeMap<String, Counters>, usize), ParseError> {
    let mut out = BTreeMap::new();
    let mut left_out = 0;
    for (i, line) in text.lines().enumerate().skip(2) {
        let n = i + 1;
        let Some((name, rest)) = line.split_once(':') else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(ParseError::new(file, n, "interface", "expected `name: counters`"));
        };
        let name = name.trim();
        if name.is_empty() || name.len() > 15 || name.contains('/') || name.contains(TRUNCATED) {
            return Err(ParseError::new(file, n, "interface", format!("{name:?} is not an interface name")));
        }
        let f: Vec<&str> = rest.split_ascii_whitespace().collect();
        if f.len() < 16 {
            return Err(ParseError::new(file, n, "counters", format!("expected 16 columns, found {}", f.len())));
        }
        let mut c = [0u64; 8];
        for (slot, col) in c.iter_mut().zip([0usize, 1, 2, 3, 8, 9, 10, 11]) {
            *slot = f[col]
                .parse()
                .map_err(|_| ParseError::new(file, n, format!("column {}", col + 1), format!("{:?} is not a number", f[col])))?;
        }
        if out.len() >= MAX_INTERFACES {
            left_out += 1;
            continue;
        }
        out.insert(name.to_string(), c);
    }
    Ok((out, left_out))
}

fn read_trim(path: &Path, held: &mut super::held::Held) -> Option<String> {
    let b = held.read(path).ok()?;
    Some(String::from_utf8_lossy(&b).trim().to_string())
}

/// Counters, rates (given the previous counters `secs` ago) and link state from `sys`.
pub fn into(
    prev: Option<&BTreeMap<String, Counters>>,
    cur: &BTreeMap<String, Counters>,
    secs: f64,
    sys: &Path,
    held: &mut super::held::Held,
    out: &mut BTreeMap<String, f64>,
) {
    for (ifname, c) in cur {
        let p = format!("net.{ifname}");
        for (k, v) in NAMES.iter().zip(c) {
            out.insert(format!("{p}.{k}"), *v as f64);
        }
        let dir = sys.join("class/net").join(ifname);
        let flags = read_trim(&dir.join("flags"), held).and_then(|f| u64::from_str_radix(f.trim_start_matches("0x"), 16).ok()).unwrap_or(0);
        let admin_up = flags & 1 == 1;
        let oper = read_trim(&dir.join("operstate"), held).unwrap_or_default();
        let up = oper == "up" || (oper == "unknown" && admin_up);
        // `carrier` cannot be read (EINVAL) while the interface is down: no carrier then.
        let carrier = read_trim(&dir.join("carrier"), held).is_some_and(|c| c == "1");
        out.insert(format!("{p}.up"), f64::from(u8::from(up)));
        out.insert(format!("{p}.admin_up"), f64::from(u8::from(admin_up)));
        out.insert(format!("{p}.carrier"), f64::from(u8::from(carrier)));
        let speed = read_trim(&dir.join("speed"), held).and_then(|s| s.parse::<i64>().ok()).filter(|s| *s > 0);
        if let Some(s) = speed {
            out.insert(format!("{p}.speed_mbps"), s as f64);
        }
        let Some(old) = prev.and_then(|m| m.get(ifname)).filter(|_| secs > 0.0) else { continue };
        if c.iter().zip(old).any(|(a, b)| a < b) {
            continue;
        }
        for ((k, v), o) in NAMES.iter().zip(c).zip(old) {
            out.insert(format!("{p}.{k}_per_s"), (v - o) as f64 / secs);
        }
        if let Some(s) = speed {
            let bits = s as f64 * 1e6;
            out.insert(format!("{p}.rx_util_pct"), ((c[0] - old[0]) as f64 * 8.0 / secs / bits * 100.0).min(100.0));
            out.insert(format!("{p}.tx_util_pct"), ((c[4] - old[4]) as f64 * 8.0 / secs / bits * 100.0).min(100.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEV: &str = "Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0
  eth0: 5000000    4000    1    2    0     0          0         0   300000    2000    3    4    0     0       0          0
";

    #[test]
    fn counters_rates_and_link_state() {
        let f = Path::new("/proc/net/dev");
        let (a, left) = parse_dev(f, DEV).unwrap();
        assert_eq!(left, 0);
        assert_eq!(a["eth0"], [5_000_000, 4000, 1, 2, 300_000, 2000, 3, 4]);
        let sys = tempfile::tempdir().unwrap();
        let d = sys.path().join("class/net/eth0");
        std::fs::create_dir_all(&d).unwrap();
        for (k, v) in [("flags", "0x1003\n"), ("operstate", "up\n"), ("carrier", "1\n"), ("speed", "100\n")] {
            std::fs::write(d.join(k), v).unwrap();
        }
        let mut held = crate::signals::held::Held::with_budget(8);
        let mut b = a.clone();
        b.get_mut("eth0").unwrap()[0] += 12_500_000; // 100 Mb in 2 s: 50% of 100 Mb/s
        let mut out = BTreeMap::new();
        into(Some(&a), &b, 2.0, sys.path(), &mut held, &mut out);
        assert_eq!(out["net.eth0.rx_bytes_per_s"], 6_250_000.0);
        assert_eq!(out["net.eth0.rx_util_pct"], 50.0);
        assert_eq!((out["net.eth0.up"], out["net.eth0.carrier"], out["net.eth0.admin_up"]), (1.0, 1.0, 1.0));
        // lo has no sysfs here: down, no carrier, no speed.
        assert_eq!((out["net.lo.up"], out["net.lo.carrier"]), (0.0, 0.0));
        assert!(!out.contains_key("net.lo.speed_mbps"));
        // A counter that went back gives no rate.
        let mut out = BTreeMap::new();
        into(Some(&b), &a, 2.0, sys.path(), &mut held, &mut out);
        assert!(!out.contains_key("net.eth0.rx_bytes_per_s"));
    }

    #[test]
    fn interfaces_are_bounded_and_garbage_is_an_error() {
        let mut text = String::from("h1\nh2\n");
        for i in 0..300 {
            text.push_str(&format!("veth{i}: 1 1 0 0 0 0 0 0 1 1 0 0 0 0 0 0\n"));
        }
        let (m, left) = parse_dev(Path::new("dev"), &text).unwrap();
        assert_eq!((m.len(), left), (MAX_INTERFACES, 44));
        assert!(parse_dev(Path::new("dev"), "h\nh\nx/y: 1 2\n").is_err());
        assert!(parse_dev(Path::new("dev"), "h\nh\neth0: 1 2\n").is_err());
        assert!(parse_dev(Path::new("dev"), "h\nh\neth0: 1 2 3 4 5 6 7 8 9 a 1 1 1 1 1 1\n").is_err());
    }
}
