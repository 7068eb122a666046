// SPDX-License-Identifier: GPL-2.0
/* sock family: TCP state transitions node-wide, and current sockets per (owner, state), so a
 * service's CLOSE_WAIT leak shows as that service's number. An event is emitted when one
 * owner's CLOSE_WAIT count reaches `close_wait_threshold`.
 *
 * Each socket is counted once, under its owner and the state it is in; owner.bpf.h decides
 * every change of the two under the socket's own storage lock and hands it here as a move.
 * Sockets that existed before medic loaded are counted from their first send or receive.
 * Programs: tp_btf/inet_sock_set_state (5.5), plus the ownership hooks of owner.bpf.h (kernel
 * floor of the family: 6.3, for sock_send_length / sock_recv_length). */
#include "owner.bpf.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __s64 close_wait_threshold = 100;

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u64);
} transitions SEC(".maps");

/* Sockets per (owner, state, cgroup). User space removes the entries of processes that exited
 * and leaves the others, even at 0: removing an entry another CPU is adding to loses the add.
 * Live owners' entries stay, so the map is sized for them (a process that connects and closes
 * passes through about 8 states: 16,384 entries hold 2,000 such processes) and allocated as
 * used, not up front. Full: a move it has no room for counts in MEDIC_SOCK_STATES_FULL. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct medic_state_key);
	__type(value, __s64);
} states SEC(".maps");

/* MEDIC_SOCK_EVENTS_DROPPED, MEDIC_SOCK_STATES_FULL. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MEDIC_SOCK_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} sock_dropped SEC(".maps");

static __always_inline void sock_count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&sock_dropped, &idx);
	if (c)
		__sync_fetch_and_add(c, 1);
}

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 16 * 1024);
} sock_events SEC(".maps");

static __always_inline void close_wait_event(__u32 tgid, __u64 cgroup, __s64 n)
{
	struct medic_event *e = bpf_ringbuf_reserve(&sock_events, sizeof(*e), 0);
	if (e) {
		e->kind = MEDIC_EV_SOCK_STATE;
		e->tgid = tgid;
		e->value = n;
		e->cgroup = cgroup;
		bpf_ringbuf_submit(e, 0);
	} else {
		sock_count(MEDIC_SOCK_EVENTS_DROPPED);
	}
}

/* Adds `d` to the sockets under (tgid, state, cgroup). A missing entry is inserted, for a
 * decrement too: one socket's two moves, decided in order under its lock, may reach here out
 * of order from two CPUs, and the sum must still come out right. When two CPUs insert the same
 * entry at once, the one whose insert fails adds to the other's. */
static __always_inline void add(__u32 tgid, __u64 cgroup, __u32 state, __s64 d)
{
	struct medic_state_key k = { .tgid = tgid, .state = state, .cgroup = cgroup };
	__s64 n = d;
	__s64 *v = bpf_map_lookup_elem(&states, &k);
	if (!v) {
		if (bpf_map_update_elem(&states, &k, &d, BPF_NOEXIST) == 0)
			goto added;
		v = bpf_map_lookup_elem(&states, &k);
		if (!v) {
			sock_count(MEDIC_SOCK_STATES_FULL); /* the map is full */
			return;
		}
	}
	n = __sync_fetch_and_add(v, d) + d;
added:
	/* At the threshold and at each multiple of it on the way up: a playbook that waits for a
	 * higher count is woken when the count passes it, not a tick later. */
	if (state == TCP_CLOSE_WAIT && d > 0 && n > 0 && (__u64)n % (__u64)close_wait_threshold == 0)
		close_wait_event(tgid, cgroup, n);
}

static __always_inline void apply(struct owner_move *mv)
{
	if (mv->from_tgid)
		add(mv->from_tgid, mv->from_cgroup, mv->from_state, -1);
	if (mv->to_tgid)
		add(mv->to_tgid, mv->to_cgroup, mv->to_state, 1);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (!sk || !is_tcp(sk))
		return 0;
	__u32 idx = newstate & 15;
	__u64 *t = bpf_map_lookup_elem(&transitions, &idx);
	if (t)
		*t += 1;
	struct owner_move mv = {};
	if (owner_on_state(sk, newstate, &mv))
		apply(&mv);
	return 0;
}

OWNER_PROGRAMS(sock, apply)
