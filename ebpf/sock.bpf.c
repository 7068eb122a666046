// SPDX-License-Identifier: GPL-2.0
/* sock family: TCP state transitions node-wide, and current sockets per (owner, state), so a
 * service's CLOSE_WAIT leak shows as that service's number. An event is emitted when one
 * owner's CLOSE_WAIT count reaches `close_wait_threshold`.
 * Tracepoint: sock/inet_sock_set_state (4.16), plus the ownership hooks of owner.bpf.h. */
#include "owner.bpf.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __s64 close_wait_threshold = 100;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} transitions SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct medic_state_key);
	__type(value, __s64);
} states SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sock_dropped SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024);
} sock_events SEC(".maps");

static __always_inline void add(struct medic_owner *o, __u32 state, __s64 d)
{
	struct medic_state_key k = { .tgid = o->tgid, .state = state, .cgroup = o->cgroup };
	__s64 *v = bpf_map_lookup_elem(&states, &k);
	if (v) {
		__s64 n = __sync_fetch_and_add(v, d) + d;
		if (state == TCP_CLOSE_WAIT && d > 0 && n == close_wait_threshold) {
			struct medic_event *e = bpf_ringbuf_reserve(&sock_events, sizeof(*e), 0);
			if (e) {
				e->kind = MEDIC_EV_SOCK_STATE;
				e->tgid = o->tgid;
				e->value = n;
				e->cgroup = o->cgroup;
				bpf_ringbuf_submit(e, 0);
			} else {
				__u32 zero = 0;
				__u64 *c = bpf_map_lookup_elem(&sock_dropped, &zero);
				if (c)
					__sync_fetch_and_add(c, 1);
			}
		}
	} else if (d > 0) {
		bpf_map_update_elem(&states, &k, &d, BPF_NOEXIST);
	}
}

SEC("tracepoint/sock/inet_sock_set_state")
int sock_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	if (BPF_CORE_READ(ctx, protocol) != IPPROTO_TCP)
		return 0;
	owner_on_state(ctx);
	__u32 os = BPF_CORE_READ(ctx, oldstate), ns = BPF_CORE_READ(ctx, newstate);
	__u32 idx = ns & 15;
	__u64 *t = bpf_map_lookup_elem(&transitions, &idx);
	if (t)
		*t += 1;
	__u64 sk = (__u64)BPF_CORE_READ(ctx, skaddr);
	struct medic_owner *o = owner_of(sk, BPF_CORE_READ(ctx, sport));
	if (!o)
		return 0;
	struct medic_owner copy = *o;
	if (os != TCP_CLOSE)
		add(&copy, os, -1);
	if (ns != TCP_CLOSE)
		add(&copy, ns, 1);
	else
		bpf_map_delete_elem(&owners, &sk);
	return 0;
}

OWNER_PROGRAMS(sock)
