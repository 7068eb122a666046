//! Wake-ups: what made the agent evaluate before a playbook's interval came round, as a set of
//! signal classes ([`Wake`]), and which classes a playbook reads ([`Wake::of_playbook`]), so an
//! early evaluation runs only the playbooks that read what changed.
//!
//! The classes are the signals that can wake the agent: a mount's usage moving (the fast disk
//! watch, `daemon/fast.rs`), a process the scheduler saw hot (eBPF sched), a socket-state
//! threshold (eBPF sock) and a retransmit burst (eBPF tcp). What a playbook reads is known
//! from its source: the history keys it names (`Playbook::reads`, interpolations as `*`) and the
//! node functions it calls. A playbook whose reads cannot be told from its source (no key and no
//! such call) is woken by every class; one that reads none of them is evaluated at its interval
//! only. Either way its requests go through the same gate as any other evaluation.

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};

/// Where wake-ups from threads outside the loop (the fast watch) are rung: the classes pile up
/// until the loop takes them.
#[derive(Debug, Default)]
pub struct Doorbell {
    bits: AtomicU8,
    notify: tokio::sync::Notify,
}

impl Doorbell {
    pub fn ring(&self, w: Wake) {
        self.bits.fetch_or(w.0, Ordering::SeqCst);
        self.notify.notify_one();
    }

    /// The classes rung since the last call, once there are any.
    pub async fn rung(&self) -> Wake {
        loop {
            let b = self.bits.swap(0, Ordering::SeqCst);
            if b != 0 {
                return Wake(b);
            }
            self.notify.notified().await;
        }
    }
}

/// A set of wake classes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wake(u8);

impl Wake {
    pub const NONE: Wake = Wake(0);
    /// A mount's usage (space or inodes) moved by at least the fast watch's step.
    pub const DISK: Wake = Wake(1);
    /// A process ran hot (eBPF sched: at least `cpu_hot_pct` of a core over 100 ms).
    pub const PROC: Wake = Wake(2);
    /// A process's socket-state count crossed its threshold (eBPF sock: CLOSE_WAIT).
    pub const SOCK: Wake = Wake(4);
    /// A retransmit burst (eBPF tcp).
    pub const TCP: Wake = Wake(8);
    pub const ALL: Wake = Wake(15);

    const NAMES: [(Wake, &'static str); 4] = [(Wake::DISK, "disk"), (Wake::PROC, "proc"), (Wake::SOCK, "sock"), (Wake::TCP, "tcp")];

    /// As a recording stores it: 0 none, 1 every class (what version 3's `forced: true` meant),
    /// else `0x80` | the classes.
    pub fn to_byte(self) -> u8 {
        match self {
            Wake::NONE => 0,
            Wake::ALL => 1,
            Wake(b) => 0x80 | b,
        }
    }

    /// The inverse of [`to_byte`](Self::to_byte); a byte it does not know wakes everything.
    pub fn from_byte(b: u8) -> Wake {
        match b {
            0 => Wake::NONE,
            b if b & 0x80 != 0 && b & !0x8f == 0 => Wake(b & 0x0f),
            _ => Wake::ALL,
        }
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersects(self, other: Wake) -> bool {
        self.0 & other.0 != 0
    }

    /// The class of an eBPF event (`abi::EV_*`); none for a kind it does not know.
    pub fn of_event(kind: u32) -> Wake {
        use super::ebpf::abi;
        match kind {
            abi::EV_RETRANS_BURST => Wake::TCP,
            abi::EV_SOCK_STATE => Wake::SOCK,
            abi::EV_CPU_HOT => Wake::PROC,
            _ => Wake::NONE,
        }
    }

    /// The classes a history key (or key pattern, `*` for an interpolation) belongs to.
    pub fn of_key(key: &str) -> Wake {
        const PREFIXES: [(&str, Wake); 10] = [
            ("disk.", Wake::DISK),
            ("proc.", Wake::PROC),
            ("unit.", Wake(Wake::PROC.0 | Wake::SOCK.0)),
            ("ebpf.unit.", Wake(Wake::SOCK.0 | Wake::TCP.0)),
            ("ebpf.proc.", Wake(Wake::SOCK.0 | Wake::TCP.0)),
            ("ebpf.sock.", Wake::SOCK),
            ("sock.", Wake::SOCK),
            ("ebpf.tcp.", Wake::TCP),
            ("ebpf.retrans.", Wake::TCP),
            ("tcp.", Wake::TCP),
        ];
        if key.starts_with('*') {
            return Wake::ALL;
        }
        // The literal part before an interpolation: `ebpf.${x}` may be any key under `ebpf.`.
        let lit = key.split('*').next().unwrap_or_default();
        let cut = lit.len() < key.len();
        PREFIXES.iter().filter(|(p, _)| key.starts_with(p) || cut && p.starts_with(lit)).fold(Wake::NONE, |a, (_, w)| a | *w)
    }

    /// The classes of a node function's result (`processes`, `units`, `mounts`, ...).
    pub fn of_call(name: &str) -> Option<Wake> {
        match name {
            "processes" | "processes_in" | "children_of" | "process" => Some(Wake::PROC),
            "units" => Some(Wake(Wake::PROC.0 | Wake::SOCK.0)),
            "mounts" => Some(Wake::DISK),
            "tcp_peers" | "retransmits" => Some(Wake::TCP),
            _ => None,
        }
    }

    /// What wakes a playbook that names `keys` and calls `calls`; every class when neither
    /// tells (its reads cannot be known before it runs).
    pub fn of_playbook<'a>(keys: impl IntoIterator<Item = &'a str>, calls: impl IntoIterator<Item = &'a str>) -> Wake {
        let mut known = false;
        let mut w = Wake::NONE;
        for k in keys {
            known = true;
            w |= Wake::of_key(k);
        }
        for c in calls {
            if let Some(x) = Wake::of_call(c) {
                known = true;
                w |= x;
            }
        }
        if known {
            w
        } else {
            Wake::ALL
        }
    }
}

impl std::ops::BitOr for Wake {
    type Output = Wake;
    fn bitor(self, o: Wake) -> Wake {
        Wake(self.0 | o.0)
    }
}

impl std::ops::BitOrAssign for Wake {
    fn bitor_assign(&mut self, o: Wake) {
        self.0 |= o.0;
    }
}

impl fmt::Display for Wake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Wake::NAMES.iter().filter(|(w, _)| self.intersects(*w)).map(|(_, n)| *n).collect();
        if names.is_empty() {
            f.write_str("none")
        } else {
            f.write_str(&names.join(","))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Wake;

    #[test]
    fn keys_and_calls_map_to_their_classes() {
        assert_eq!(Wake::of_key("disk.*.used_pct"), Wake::DISK);
        assert_eq!(Wake::of_key("proc.*.cpu_pct"), Wake::PROC);
        assert_eq!(Wake::of_key("tcp.retrans_pct"), Wake::TCP);
        assert_eq!(Wake::of_key("ebpf.unit.*.sock.close_wait"), Wake::SOCK | Wake::TCP);
        assert_eq!(Wake::of_key("cpu.util_pct"), Wake::NONE);
        assert_eq!(Wake::of_key("ebpf.blk.*"), Wake::NONE);
        assert_eq!(Wake::of_key("*.used_pct"), Wake::ALL);
        // A prefix cut short by an interpolation (`ebpf.${x}`) may be any of the longer ones.
        assert_eq!(Wake::of_key("ebpf.*"), Wake::SOCK | Wake::TCP);
        assert_eq!(Wake::of_playbook(["cpu.util_pct"], ["value"]), Wake::NONE);
        assert_eq!(Wake::of_playbook([], ["mounts", "value"]), Wake::DISK);
        assert_eq!(Wake::of_playbook([], ["value"]), Wake::ALL, "reads unknown: woken by everything");
        assert_eq!((Wake::DISK | Wake::TCP).to_string(), "disk,tcp");
    }
}
