// SPDX-License-Identifier: GPL-2.0
/* tcp family: retransmits per (remote address, remote port, local port, owner), counts of
 * resets sent and received, and a ring-buffer event when the node's retransmits cross
 * `burst_threshold` within `burst_window_ns` (so the agent evaluates at once). Node-wide, not
 * per CPU: a storm's retransmit timers fire on every CPU, and a per-CPU count crossed its
 * threshold only a round of timers later (an RTO or more, 200 ms at least).
 * Programs: tp_btf/tcp_retransmit_skb, tp_btf/tcp_send_reset, tp_btf/tcp_receive_reset (5.5),
 * and the ownership hooks of owner.bpf.h with this object's own `owners` map (the retransmit
 * reads the owner from it, the state changes are not counted here). Kernel floor of the
 * family: 6.3 (sock_send_length / sock_recv_length); ring buffer 5.8, sk storage 5.11. */
#include "owner.bpf.h"
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

const volatile __u64 burst_threshold = 50;
const volatile __u64 burst_window_ns = 1000000000ULL;

/* Sparse (a healthy node retransmits to few peers): entries are allocated when first used.
 * Full: a new key's retransmits count in MEDIC_TCP_RETRANS_UNTRACKED (and the totals). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 4096);
	__type(key, struct medic_retrans_key);
	__type(value, __u64);
} retrans SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MEDIC_TCP_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} tcp_counters SEC(".maps");

struct burst {
	__u64 window_start;
	__u64 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct burst);
} bursts SEC(".maps");

/* At most one burst event per burst window (32 bytes each): 16 KiB holds 512. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024);
} tcp_events SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&tcp_counters, &idx);
	if (v)
		*v += 1;
}

static __always_inline void emit(__u32 kind, __u32 tgid, __u64 value, __u64 cgroup)
{
	struct medic_event *e = bpf_ringbuf_reserve(&tcp_events, sizeof(*e), 0);
	if (!e) {
		count(MEDIC_TCP_EVENTS_DROPPED);
		return;
	}
	e->kind = kind;
	e->tgid = tgid;
	e->value = value;
	e->cgroup = cgroup;
	bpf_ringbuf_submit(e, 0);
}

#define AF_INET 2

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tcp_retransmit, const struct sock *sk)
{
	if (!sk)
		return 0;
	struct medic_retrans_key k = {};
	k.family = sk->__sk_common.skc_family;
	k.sport = sk->__sk_common.skc_num;
	k.dport = bpf_ntohs(sk->__sk_common.skc_dport);
	if (k.family == AF_INET) {
		__be32 a = sk->__sk_common.skc_daddr;
		__builtin_memcpy(k.daddr, &a, 4);
	} else {
		bpf_core_read(k.daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	struct medic_owner o = owner_of(sk);
	if (o.tgid) {
		k.tgid = o.tgid;
		k.cgroup = o.cgroup;
	} else {
		count(MEDIC_TCP_UNOWNED);
	}
	__u64 one = 1, *v = bpf_map_lookup_elem(&retrans, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	else if (bpf_map_update_elem(&retrans, &k, &one, BPF_NOEXIST) != 0) {
		if ((v = bpf_map_lookup_elem(&retrans, &k)))
			__sync_fetch_and_add(v, 1); /* another CPU inserted it first */
		else
			count(MEDIC_TCP_RETRANS_UNTRACKED); /* the map is full */
	}
	count(MEDIC_TCP_RETRANS);

	__u32 zero = 0;
	struct burst *b = bpf_map_lookup_elem(&bursts, &zero);
	if (b) {
		__u64 now = bpf_ktime_get_ns();
		/* CPUs race only at a window's turn: a few retransmits may count in either window. */
		if (now - b->window_start > burst_window_ns) {
			b->window_start = now;
			b->count = 0;
		}
		__u64 n = __sync_fetch_and_add(&b->count, 1) + 1;
		if (n == burst_threshold)
			emit(MEDIC_EV_RETRANS_BURST, k.tgid, n, k.cgroup);
	}
	return 0;
}

SEC("tp_btf/tcp_send_reset")
int tcp_send_reset(void *ctx)
{
	count(MEDIC_TCP_SEND_RESET);
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int tcp_receive_reset(void *ctx)
{
	count(MEDIC_TCP_RECV_RESET);
	return 0;
}

/* Only the owner is kept here: the sock family counts states. */
static __always_inline void owner_only(struct owner_move *mv)
{
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tcp_owner_state, const struct sock *sk, const int oldstate, const int newstate)
{
	struct owner_move mv = {};
	if (sk && is_tcp(sk))
		owner_on_state(sk, newstate, &mv);
	return 0;
}

OWNER_PROGRAMS(tcp, owner_only)

/* Test hook: emits `test_events` events per getppid() (system call number `test_syscall`)
 * from `test_tgid`, to fill the ring buffer on purpose (the drop-count test). Does nothing
 * unless test_tgid is set; attached only then. */
const volatile __u32 test_tgid = 0;
const volatile __u32 test_events = 0;
const volatile __s64 test_syscall = -1;

SEC("tp_btf/sys_enter")
int BPF_PROG(tcp_test_flood, struct pt_regs *regs, long id)
{
	if (!test_tgid || id != test_syscall || (bpf_get_current_pid_tgid() >> 32) != test_tgid)
		return 0;
	for (__u32 i = 0; i < 4096 && i < test_events; i++)
		emit(MEDIC_EV_TEST, test_tgid, i, 0);
	return 0;
}
