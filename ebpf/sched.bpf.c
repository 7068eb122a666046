// SPDX-License-Identifier: GPL-2.0
/* sched family: run-queue latency (time from being queued runnable to running) as log2
 * histograms in microseconds, node-wide and per cgroup.
 *
 * Source of the truth: the kernel's own sched_info accounting. When a task is queued the
 * scheduler stamps next->sched_info.last_queued with the run queue's clock; sched_switch fires
 * after the clock was updated for this switch and before sched_info_arrive() consumes the
 * stamp. So latency = rq->clock - last_queued, both in the same clock, read with a few loads:
 * no wakeup hook, no per-task map, no clock helper (which costs ~90 ns here). This needs
 * CONFIG_SCHED_INFO (on in every distribution kernel) and CONFIG_FAIR_GROUP_SCHED (for
 * se.cfs_rq->rq); a kernel without them fails the CO-RE relocation and the family reports
 * itself unavailable.
 *
 * The node-wide histogram counts every wait. Per cgroup, to keep the common path short, tasks
 * are sampled: a task's waits go to its cgroup's histogram while (tid + epoch) % sample_every
 * == 0, and user space moves `epoch` every sample, so every task is followed 1/sample_every of
 * the time. Per-cgroup percentiles are then computed from ~1/sample_every of the waits
 * (unbiased; coarser for cgroups with few waits). sample_every = 1 follows everything.
 * Program: tp_btf/sched_switch (5.5). */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 sample_mask = 7; /* sample_every - 1, a power of two minus one */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} epoch SEC(".maps");

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

SEC("tp_btf/sched_switch")
int BPF_PROG(runq_switch, bool preempt, struct task_struct *prev, struct task_struct *next)
{
	__u64 queued = next->sched_info.last_queued;
	if (!queued)
		return 0;
	__u64 now = next->se.cfs_rq->rq->clock;
	if (now <= queued)
		return 0;
	__u32 slot = log2_slot((now - queued) / 1000);
	__u64 *n = bpf_map_lookup_elem(&runq_node, &slot);
	if (n)
		*n += 1;
	__u32 zero = 0, *e = bpf_map_lookup_elem(&epoch, &zero);
	if (((next->pid + (e ? *e : 0)) & sample_mask) != 0)
		return 0;
	__u64 cg = task_cgroup(next);
	struct medic_hist *h = LOOKUP_OR_ZERO(&runq_cgroup, &cg, struct medic_hist);
	if (!h)
		return 0;
	if (slot < MEDIC_HIST_SLOTS)
		__sync_fetch_and_add(&h->slots[slot], 1);
	return 0;
}
