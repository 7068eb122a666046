// SPDX-License-Identifier: GPL-2.0
/* sched family: run-queue latency (wakeup or preemption → running again) as log2 histograms
 * in microseconds, node-wide and per cgroup.
 *
 * Cost: every context switch runs this, so the common path is kept to two loads and a
 * compare. Tasks are sampled: a task is followed only while (tid + epoch) % sample_every == 0;
 * user space moves `epoch` every second, so every task is followed 1/sample_every of the
 * time. The histograms therefore hold about 1/sample_every of all waits (percentiles are
 * unbiased; counts are scaled back by user space). sample_every = 1 follows everything.
 * Programs: tp_btf/sched_wakeup, tp_btf/sched_wakeup_new, tp_btf/sched_switch (5.5). */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 sample_mask = 7; /* sample_every - 1, a power of two minus one */

#define TASK_RUNNING 0

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} epoch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, __u64);
} queued_at SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, MEDIC_HIST_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} runq_node SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct medic_hist);
} runq_cgroup SEC(".maps");

static __always_inline bool sampled(__u32 tid)
{
	__u32 zero = 0, *e = bpf_map_lookup_elem(&epoch, &zero);
	__u32 ep = e ? *e : 0;
	return ((tid + ep) & sample_mask) == 0;
}

static __always_inline void enqueue(__u32 tid)
{
	if (!tid || !sampled(tid))
		return;
	__u64 ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&queued_at, &tid, &ts, BPF_ANY);
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(runq_wakeup, struct task_struct *p)
{
	enqueue(p->pid);
	return 0;
}

SEC("tp_btf/sched_wakeup_new")
int BPF_PROG(runq_wakeup_new, struct task_struct *p)
{
	enqueue(p->pid);
	return 0;
}

SEC("tp_btf/sched_switch")
int BPF_PROG(runq_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	/* A preempted task goes straight back on the run queue. */
	if (prev->__state == TASK_RUNNING)
		enqueue(prev->pid);
	__u32 tid = next->pid;
	if (!tid || !sampled(tid))
		return 0;
	__u64 *ts = bpf_map_lookup_elem(&queued_at, &tid);
	if (!ts)
		return 0;
	__u64 delta_us = (bpf_ktime_get_ns() - *ts) / 1000;
	bpf_map_delete_elem(&queued_at, &tid);
	__u32 slot = log2_slot(delta_us);
	__u64 *n = bpf_map_lookup_elem(&runq_node, &slot);
	if (n)
		*n += 1;
	__u64 cg = task_cgroup(next);
	struct medic_hist *h = bpf_map_lookup_elem(&runq_cgroup, &cg);
	if (!h) {
		struct medic_hist zero = {};
		bpf_map_update_elem(&runq_cgroup, &cg, &zero, BPF_NOEXIST);
		h = bpf_map_lookup_elem(&runq_cgroup, &cg);
		if (!h)
			return 0;
	}
	if (slot < MEDIC_HIST_SLOTS)
		__sync_fetch_and_add(&h->slots[slot], 1);
	return 0;
}
