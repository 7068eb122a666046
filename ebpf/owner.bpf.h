/* Socket ownership, for attributing socket events that fire outside the owner's context
 * (retransmits in timers and softirqs, state changes on packet arrival: on loopback the peer's
 * process is `current` then, so `current` is never used there).
 *
 * The owner lives with the socket, in socket local storage (`owners`, BPF_MAP_TYPE_SK_STORAGE):
 * it dies with the socket, so a new socket at a freed socket's address never finds an old owner
 * (the bug this replaced: an LRU hash keyed by the `struct sock *` address, whose entries were
 * re-created by a receive after TCP_CLOSE, or outlived a close the program missed, and were
 * then read for the next socket the kernel put there), needs no size limit and no eviction.
 *
 * How the owner is found: the process in whose context the socket was seen in process
 * context: connect() (the SYN_SENT transition) and listen() (LISTEN) make the calling process
 * the owner; a send or receive (sock_send_length / sock_recv_length) by another process than
 * the owner makes that process the owner (socket activation, where systemd made the listener;
 * fds passed to a worker). An accepted socket inherits its listener's storage when the kernel
 * clones it (BPF_F_CLONE, in sk_clone_lock, before the child's first transition), so it starts
 * with the listener's owner. A socket whose owner is not known (it existed before medic
 * loaded, or its listener did) has storage with tgid 0 until it sends or receives.
 *
 * The storage also records the state the socket is counted under, so that each socket is
 * counted exactly once, under (owner, state), by whoever counts (sock.bpf.c): every change of
 * (owner, state) is decided under the storage's spin lock and handed back as an owner_move
 * (one less under `from`, one more under `to`). `sk` records which socket the storage was
 * written for: a clone's copy names the listener, so the child starts counted nowhere.
 *
 * Programs: tp_btf (5.5; no tracefs needed, and the kernel's recursion guard is per program,
 * where a classic tracepoint program is skipped whenever any other kprobe or tracepoint
 * program is running on that CPU, which lost transitions); bpf_sk_storage_get in tracing
 * programs 5.11; sock_send_length / sock_recv_length 6.3; bpf_spin_lock in tracing programs.
 *
 * Included by each family object that needs it (tcp, sock): each has its own `owners` map,
 * so that either family loads, fails or is left out on its own. */
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
#define SOCK_STREAM 1

/* A socket's owner and the state it is counted under. Kernel-only: user space never reads it. */
struct medic_sk_owner {
	struct bpf_spin_lock lock;
	__u32 tgid;   /* 0: owner not known */
	__u64 cgroup; /* the owner's cgroup v2 id when it became the owner */
	__u64 sk;     /* the socket this was written for; another: copied from the listener */
	__u32 state;  /* the socket's state as last seen here; 0: not seen yet */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_CLONE);
	__type(key, int);
	__type(value, struct medic_sk_owner);
} owners SEC(".maps");

/* One socket's change of what it is counted under: one less under (from_tgid, from_state),
 * one more under (to_tgid, to_state); a tgid of 0 means none. */
struct owner_move {
	__u32 from_tgid;
	__u32 from_state;
	__u64 from_cgroup;
	__u32 to_tgid;
	__u32 to_state;
	__u64 to_cgroup;
};

/* A socket is counted while its owner is known and it is open. */
static __always_inline bool counted(__u32 tgid, __u32 state)
{
	return tgid && state && state != TCP_CLOSE;
}

static __always_inline bool is_tcp(const struct sock *sk)
{
	return sk->sk_protocol == IPPROTO_TCP && sk->sk_type == SOCK_STREAM;
}

/* The owner record of `sk`, created zeroed if absent. Two CPUs may create it at once: the
 * loser's create fails (-EEXIST), and a second lookup finds the winner's. */
static __always_inline struct medic_sk_owner *owner_storage(const struct sock *sk)
{
	struct medic_sk_owner *s = bpf_sk_storage_get(&owners, (void *)sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!s)
		s = bpf_sk_storage_get(&owners, (void *)sk, 0, 0);
	return s;
}

/* Under the lock: a record copied from a listener at clone time keeps the owner and forgets
 * the listener's state (the child is counted nowhere yet); then what the socket counts under. */
static __always_inline void move_begin(struct medic_sk_owner *s, const struct sock *sk, struct owner_move *mv)
{
	if (s->sk != (__u64)sk) {
		s->sk = (__u64)sk;
		s->state = 0;
	}
	mv->from_tgid = counted(s->tgid, s->state) ? s->tgid : 0;
	mv->from_state = s->state;
	mv->from_cgroup = s->cgroup;
}

/* Under the lock: what the socket counts under now; nothing moves if that did not change. */
static __always_inline void move_end(struct medic_sk_owner *s, struct owner_move *mv)
{
	mv->to_tgid = counted(s->tgid, s->state) ? s->tgid : 0;
	mv->to_state = s->state;
	mv->to_cgroup = s->cgroup;
	if (mv->from_tgid == mv->to_tgid && mv->from_state == mv->to_state && mv->from_cgroup == mv->to_cgroup) {
		mv->from_tgid = 0;
		mv->to_tgid = 0;
	}
}

/* A TCP state change of `sk` to `newstate` (under the socket's lock, in any context). The
 * record is created even for a socket of unknown owner, so that its state is known here
 * before a first send or receive claims it (the tracepoint fires before the kernel stores the
 * new state: a claim that read the socket's state instead could count the old one). */
static __always_inline bool owner_on_state(const struct sock *sk, int newstate, struct owner_move *mv)
{
	struct medic_sk_owner *s = owner_storage(sk);
	if (!s)
		return false;
	__u32 tgid = 0;
	__u64 cgroup = 0;
	/* connect() and listen(): the calling process's own syscall, the socket was closed. */
	if (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN) {
		tgid = bpf_get_current_pid_tgid() >> 32;
		cgroup = bpf_get_current_cgroup_id();
	}
	bpf_spin_lock(&s->lock);
	move_begin(s, sk, mv);
	if (tgid) {
		s->tgid = tgid;
		s->cgroup = cgroup;
	}
	s->state = newstate;
	move_end(s, mv);
	bpf_spin_unlock(&s->lock);
	return true;
}

/* A send or receive on `sk` by the current process (process context, not under the socket's
 * lock: a state change may run on another CPU at the same time, hence the spin lock). */
static __always_inline bool owner_on_msg(struct sock *sk, struct owner_move *mv)
{
	if (!sk || !is_tcp(sk))
		return false;
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct medic_sk_owner *s = owner_storage(sk);
	if (!s)
		return false;
	/* The common case, read without the lock: already this process's, and counted as it is. */
	if (s->tgid == tgid && s->sk == (__u64)sk && s->state)
		return false;
	__u64 cgroup = bpf_get_current_cgroup_id();
	bpf_spin_lock(&s->lock);
	move_begin(s, sk, mv);
	/* Not seen changing state since medic loaded: its state now. A change in flight on another
	 * CPU stores its new state only after its program, which waits for this lock, has run. */
	if (!s->state)
		s->state = sk->__sk_common.skc_state;
	if (s->tgid != tgid) {
		s->tgid = tgid;
		s->cgroup = cgroup;
	}
	move_end(s, mv);
	bpf_spin_unlock(&s->lock);
	return true;
}

/* The owner of `sk` (tgid 0 when not known), read consistently. */
static __always_inline struct medic_owner owner_of(const struct sock *sk)
{
	struct medic_owner o = {};
	struct medic_sk_owner *s = bpf_sk_storage_get(&owners, (void *)sk, 0, 0);
	if (!s)
		return o;
	bpf_spin_lock(&s->lock);
	o.tgid = s->tgid;
	o.cgroup = s->cgroup;
	bpf_spin_unlock(&s->lock);
	return o;
}

/* The send and receive hooks of a family; `apply` takes each owner_move. */
#define OWNER_PROGRAMS(prefix, apply)                                                  \
	SEC("tp_btf/sock_send_length")                                                 \
	int BPF_PROG(prefix##_send_length, struct sock *sk)                            \
	{                                                                              \
		struct owner_move mv = {};                                             \
		if (owner_on_msg(sk, &mv))                                             \
			apply(&mv);                                                    \
		return 0;                                                              \
	}                                                                              \
	SEC("tp_btf/sock_recv_length")                                                 \
	int BPF_PROG(prefix##_recv_length, struct sock *sk)                            \
	{                                                                              \
		struct owner_move mv = {};                                             \
		if (owner_on_msg(sk, &mv))                                             \
			apply(&mv);                                                    \
		return 0;                                                              \
	}

#endif
