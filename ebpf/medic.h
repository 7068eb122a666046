/* Structs shared by medic's eBPF programs and the agent (mirrored by #[repr(C)] types in
 * agent/src/signals/ebpf/abi.rs with size asserts). Fixed-width, no bool, no pointers, padding
 * explicit: the layout is the same on both sides by construction. */
#ifndef __MEDIC_H__
#define __MEDIC_H__

#define MEDIC_HIST_SLOTS 32

/* A log2 histogram: slots[i] counts values v with 2^i <= v+1 < 2^(i+1) (unit per map). */
struct medic_hist {
	__u64 slots[MEDIC_HIST_SLOTS];
};

/* Retransmits per (remote address, remote port, local port, owner). */
struct medic_retrans_key {
	__u8 daddr[16];   /* IPv4 in the first 4 bytes when family == 2 */
	__u16 dport;      /* host order */
	__u16 sport;      /* host order */
	__u16 family;
	__u16 _pad0;
	__u32 tgid;       /* 0: owner unknown */
	__u32 _pad1;
	__u64 cgroup;     /* cgroup v2 id, 0: unknown */
};

/* Who owns a socket. */
struct medic_owner {
	__u32 tgid;
	__u32 _pad;
	__u64 cgroup;
};

/* Current sockets per (owner, state). */
struct medic_state_key {
	__u32 tgid;
	__u32 state;
	__u64 cgroup;
};

/* Block I/O per device. */
struct medic_blk_stats {
	struct medic_hist lat_us;
	__u64 errors;
	__u64 bytes;
};

/* One process's CPU time as the scheduler accounts it (sched family, `task_cpu`). */
struct medic_task_cpu {
	__u64 total_ns;     /* since the family loaded (or the entry was made) */
	__u64 window_start; /* bpf_ktime_get_ns() */
	__u64 window_ns;    /* run time within the window so far */
	__u32 hot;          /* reported hot in its last window: not again until a window is not */
	__u32 _pad;
};

/* Something user space should react to at once. */
struct medic_event {
	__u32 kind;       /* MEDIC_EV_* */
	__u32 tgid;
	__u64 value;
	__u64 cgroup;
};

#define MEDIC_EV_RETRANS_BURST 1
#define MEDIC_EV_SOCK_STATE 2
#define MEDIC_EV_CPU_HOT 3  /* tgid used >= hot_permille of a core over a window; value: its share in per mille */
#define MEDIC_EV_TEST 99

/* Indexes of the per-family counters arrays. */
#define MEDIC_TCP_RETRANS 0
#define MEDIC_TCP_SEND_RESET 1
#define MEDIC_TCP_RECV_RESET 2
#define MEDIC_TCP_UNOWNED 3
#define MEDIC_TCP_EVENTS_DROPPED 4
#define MEDIC_TCP_RETRANS_UNTRACKED 5 /* retransmits of a key `retrans` had no room for */
#define MEDIC_TCP_COUNTERS 8
#define MEDIC_SOCK_EVENTS_DROPPED 0
#define MEDIC_SOCK_STATES_FULL 1 /* socket moves `states` had no room for */
#define MEDIC_SOCK_COUNTERS 2
#define MEDIC_BLK_UNMATCHED 0 /* completions without an issue stamp (in flight at load, or evicted from `issued`) */
#define MEDIC_BLK_DEVICES_FULL 1 /* completions of a device `blk_stats` had no room for */
#define MEDIC_BLK_COUNTERS 2

#endif
