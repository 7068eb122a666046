//! The structs shared with the eBPF programs (ebpf/medic.h), mirrored field for field. Sizes are
//! asserted at compile time; the C side uses fixed-width fields with explicit padding.

#![allow(unsafe_code)] // aya::Pod is an unsafe marker: these types are plain old data.

pub const HIST_SLOTS: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Hist {
    pub slots: [u64; HIST_SLOTS],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RetransKey {
    pub daddr: [u8; 16],
    pub dport: u16,
    pub sport: u16,
    pub family: u16,
    pub _pad0: u16,
    pub tgid: u32,
    pub _pad1: u32,
    pub cgroup: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct StateKey {
    pub tgid: u32,
    pub state: u32,
    pub cgroup: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlkStats {
    pub lat_us: Hist,
    pub errors: u64,
    pub bytes: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Event {
    pub kind: u32,
    pub tgid: u32,
    pub value: u64,
    pub cgroup: u64,
}

pub const EV_RETRANS_BURST: u32 = 1;
pub const EV_SOCK_STATE: u32 = 2;
/// A process ran for at least `hot_permille` of a core over the sched family's window; `value`:
/// its share in per mille.
pub const EV_CPU_HOT: u32 = 3;

pub const TCP_RETRANS: u32 = 0;
pub const TCP_SEND_RESET: u32 = 1;
pub const TCP_RECV_RESET: u32 = 2;
pub const TCP_UNOWNED: u32 = 3;
pub const TCP_EVENTS_DROPPED: u32 = 4;
/// Retransmits of a (peer, ports, owner) the `retrans` map had no room for.
pub const TCP_RETRANS_UNTRACKED: u32 = 5;
/// Indexes of `sock_dropped`: ring-buffer events lost, socket moves `states` had no room for.
pub const SOCK_EVENTS_DROPPED: u32 = 0;
pub const SOCK_STATES_FULL: u32 = 1;
/// Indexes of `blk_counters`: completions without an issue stamp, completions of a device
/// `blk_stats` had no room for.
pub const BLK_UNMATCHED: u32 = 0;
pub const BLK_DEVICES_FULL: u32 = 1;

const _: () = assert!(std::mem::size_of::<Hist>() == 256);
const _: () = assert!(std::mem::size_of::<RetransKey>() == 40);
const _: () = assert!(std::mem::size_of::<StateKey>() == 16);
const _: () = assert!(std::mem::size_of::<BlkStats>() == 272);
const _: () = assert!(std::mem::size_of::<Event>() == 24);

// SAFETY: each type is repr(C), Copy, made only of integers and arrays of integers, with
// explicit padding fields, so every bit pattern is valid and none has uninitialised padding.
unsafe impl aya::Pod for Hist {}
unsafe impl aya::Pod for RetransKey {}
unsafe impl aya::Pod for StateKey {}
unsafe impl aya::Pod for BlkStats {}

impl Hist {
    pub fn total(&self) -> u64 {
        self.slots.iter().sum()
    }

    pub fn minus(&self, old: &Hist) -> Hist {
        let mut h = Hist::default();
        for i in 0..HIST_SLOTS {
            h.slots[i] = self.slots[i].saturating_sub(old.slots[i]);
        }
        h
    }

    /// The upper bound of the slot holding percentile `q` (0–100), in the map's unit.
    pub fn percentile(&self, q: f64) -> Option<f64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        let rank = ((q / 100.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.slots.iter().enumerate() {
            seen += n;
            if seen >= rank {
                // slot i holds v with 2^i <= v+1 < 2^(i+1)
                return Some(((1u64 << (i + 1)) - 2) as f64);
            }
        }
        None
    }
}
