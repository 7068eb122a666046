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
 * Program: tp_btf/sched_switch (5.5).
 *
 * Hot processes: the scheduler's own run-time accounting (tp_btf/sched_stat_runtime, called
 * from update_curr() at every scheduler tick of a running task and when it stops), summed per
 * process (tgid) over windows of `hot_window_ns`. A process whose threads ran for at least
 * `hot_permille` of one core over a window is reported once on `sched_events` (again only after
 * a window below it), so a new runaway wakes the agent within about one window, in ns rather
 * than /proc's 10 ms ticks, with no /proc walk. A kernel thread is never reported. Cost: one
 * LRU hash update per scheduler tick of a running task. */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

const volatile __u32 sample_mask = 7; /* sample_every - 1, a power of two minus one */
const volatile __u64 hot_window_ns = 100000000ULL;
const volatile __u64 hot_permille = 900;

#define PF_KTHREAD 0x00200000

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

/* Per process: 4,096 at 32 B (LRU, preallocated: about 0.4 MiB with the hash's own overhead).
 * Full, the least recently running process is forgotten: only running ones matter here. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct medic_task_cpu);
} task_cpu SEC(".maps");

/* Hot-process events; a full ring counts its drops in `sched_dropped`. At most about one event
 * per core per two windows, so 4 KiB (128 events) is ample. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} sched_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sched_dropped SEC(".maps");

SEC("tp_btf/sched_stat_runtime")
int BPF_PROG(cpu_runtime, struct task_struct *p, __u64 runtime)
{
	if (!p || (p->flags & PF_KTHREAD))
		return 0;
	__u32 tgid = p->tgid;
	if (!tgid)
		return 0;
	__u64 now = bpf_ktime_get_ns();
	struct medic_task_cpu *v = LOOKUP_OR_ZERO(&task_cpu, &tgid, struct medic_task_cpu);
	if (!v)
		return 0;
	__sync_fetch_and_add(&v->total_ns, runtime);
	/* After a pause longer than two windows, a new window starts with this run. Threads on
	 * several CPUs may race here: a window is then a little off, never a count lost. */
	if (now - v->window_start > 2 * hot_window_ns) {
		v->window_start = now - runtime;
		v->window_ns = runtime;
		return 0;
	}
	__sync_fetch_and_add(&v->window_ns, runtime);
	__u64 span = now - v->window_start;
	if (span < hot_window_ns)
		return 0;
	__u64 permille = v->window_ns * 1000 / span;
	v->window_start = now;
	v->window_ns = 0;
	if (permille < hot_permille) {
		v->hot = 0;
		return 0;
	}
	if (v->hot)
		return 0;
	v->hot = 1;
	struct medic_event *e = bpf_ringbuf_reserve(&sched_events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *d = bpf_map_lookup_elem(&sched_dropped, &zero);
		if (d)
			*d += 1;
		v->hot = 0;
		return 0;
	}
	e->kind = MEDIC_EV_CPU_HOT;
	e->tgid = tgid;
	e->value = permille;
	e->cgroup = task_cgroup(p);
	bpf_ringbuf_submit(e, 0);
	return 0;
}
