/* Socket ownership, for attributing socket events that fire outside the owner's context
 * (retransmits in timers and softirqs, state changes on packet arrival).
 *
 * How the owner is found: a socket's owner is the process in whose context it was seen in
 * process context: connect() (the SYN_SENT transition), listen() (LISTEN), or any send or
 * receive (sock_send_length / sock_recv_length). A socket accepted from a listener that was
 * never used yet inherits the listener's owner by local port. Sockets that existed before
 * medic started and stayed idle are unattributed (owner 0) until they send or receive.
 *
 * Included by each family object that needs it (tcp, sock): each attaches its own copy. */
#ifndef __MEDIC_OWNER_BPF_H__
#define __MEDIC_OWNER_BPF_H__
#include "common.bpf.h"

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LISTEN 10
#define IPPROTO_TCP 6

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct medic_owner);
} owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct medic_owner);
} listeners SEC(".maps");

static __always_inline void own_current(__u64 sk)
{
	struct medic_owner o = {};
	o.tgid = bpf_get_current_pid_tgid() >> 32;
	o.cgroup = bpf_get_current_cgroup_id();
	bpf_map_update_elem(&owners, &sk, &o, BPF_ANY);
}

/* The owner of `sk`, falling back to the listener on local port `sport`. */
static __always_inline struct medic_owner *owner_of(__u64 sk, __u16 sport)
{
	struct medic_owner *o = bpf_map_lookup_elem(&owners, &sk);
	if (o)
		return o;
	__u32 port = sport;
	o = bpf_map_lookup_elem(&listeners, &port);
	if (o) {
		bpf_map_update_elem(&owners, &sk, o, BPF_NOEXIST);
		return bpf_map_lookup_elem(&owners, &sk);
	}
	return 0;
}

/* Called from inet_sock_set_state. */
static __always_inline void owner_on_state(struct trace_event_raw_inet_sock_set_state *ctx)
{
	__u64 sk = (__u64)BPF_CORE_READ(ctx, skaddr);
	int ns = BPF_CORE_READ(ctx, newstate);
	if (ns == TCP_SYN_SENT) {
		own_current(sk);
	} else if (ns == TCP_LISTEN) {
		own_current(sk);
		struct medic_owner o = {};
		o.tgid = bpf_get_current_pid_tgid() >> 32;
		o.cgroup = bpf_get_current_cgroup_id();
		__u32 port = BPF_CORE_READ(ctx, sport);
		bpf_map_update_elem(&listeners, &port, &o, BPF_ANY);
	}
}

static __always_inline int owner_on_msg(struct trace_event_raw_sock_msg_length *ctx)
{
	if (BPF_CORE_READ(ctx, protocol) != IPPROTO_TCP)
		return 0;
	__u64 sk = (__u64)BPF_CORE_READ(ctx, sk);
	if (!bpf_map_lookup_elem(&owners, &sk))
		own_current(sk);
	return 0;
}

#define OWNER_PROGRAMS(prefix)                                                         \
	SEC("tracepoint/sock/sock_send_length")                                        \
	int prefix##_send_length(struct trace_event_raw_sock_msg_length *ctx)          \
	{                                                                              \
		return owner_on_msg(ctx);                                              \
	}                                                                              \
	SEC("tracepoint/sock/sock_recv_length")                                        \
	int prefix##_recv_length(struct trace_event_raw_sock_msg_length *ctx)          \
	{                                                                              \
		return owner_on_msg(ctx);                                              \
	}

#endif
