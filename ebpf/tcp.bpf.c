// SPDX-License-Identifier: GPL-2.0
/* tcp family: retransmits per (remote address, remote port, local port, owner), counts of
 * resets sent and received, and a ring-buffer event when retransmits on one CPU cross
 * `burst_threshold` within `burst_window_ns` (so the agent evaluates at once).
 * Tracepoints: tcp/tcp_retransmit_skb, tcp/tcp_send_reset, tcp/tcp_receive_reset, and the
 * ownership hooks of owner.bpf.h. Kernel floor: 5.8 (ring buffer); tcp_receive_reset 4.15. */
#include "owner.bpf.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __u64 burst_threshold = 100;
const volatile __u64 burst_window_ns = 1000000000ULL;

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
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
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct burst);
} bursts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 * 1024);
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

SEC("tracepoint/tcp/tcp_retransmit_skb")
int tcp_retransmit(struct trace_event_raw_tcp_retransmit_skb *ctx)
{
	struct medic_retrans_key k = {};
	__u64 sk = (__u64)BPF_CORE_READ(ctx, skaddr);
	k.family = BPF_CORE_READ(ctx, family);
	k.sport = BPF_CORE_READ(ctx, sport);
	k.dport = BPF_CORE_READ(ctx, dport);
	if (k.family == 2)
		bpf_core_read(k.daddr, 4, &ctx->daddr);
	else
		bpf_core_read(k.daddr, 16, &ctx->daddr_v6);
	struct medic_owner *o = owner_of(sk, k.sport);
	if (o) {
		k.tgid = o->tgid;
		k.cgroup = o->cgroup;
	} else {
		count(MEDIC_TCP_UNOWNED);
	}
	__u64 one = 1, *v = bpf_map_lookup_elem(&retrans, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		bpf_map_update_elem(&retrans, &k, &one, BPF_NOEXIST);
	count(MEDIC_TCP_RETRANS);

	__u32 zero = 0;
	struct burst *b = bpf_map_lookup_elem(&bursts, &zero);
	if (b) {
		__u64 now = bpf_ktime_get_ns();
		if (now - b->window_start > burst_window_ns) {
			b->window_start = now;
			b->count = 0;
		}
		b->count += 1;
		if (b->count == burst_threshold)
			emit(MEDIC_EV_RETRANS_BURST, k.tgid, b->count, k.cgroup);
	}
	return 0;
}

SEC("tracepoint/tcp/tcp_send_reset")
int tcp_send_reset(void *ctx)
{
	count(MEDIC_TCP_SEND_RESET);
	return 0;
}

SEC("tracepoint/tcp/tcp_receive_reset")
int tcp_receive_reset(void *ctx)
{
	count(MEDIC_TCP_RECV_RESET);
	return 0;
}

SEC("tracepoint/sock/inet_sock_set_state")
int tcp_owner_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (BPF_CORE_READ(ctx, protocol) == IPPROTO_TCP)
		owner_on_state(ctx);
	return 0;
}

OWNER_PROGRAMS(tcp)

/* Test hook: emits `test_events` events per call of getpid() from `test_tgid`, to fill the
 * ring buffer on purpose (the drop-count test). Does nothing unless test_tgid is set. */
const volatile __u32 test_tgid = 0;
const volatile __u32 test_events = 0;

SEC("tracepoint/syscalls/sys_enter_getppid")
int tcp_test_flood(void *ctx)
{
	if (!test_tgid || (bpf_get_current_pid_tgid() >> 32) != test_tgid)
		return 0;
	for (__u32 i = 0; i < 4096 && i < test_events; i++)
		emit(MEDIC_EV_TEST, test_tgid, i, 0);
	return 0;
}
