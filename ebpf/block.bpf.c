// SPDX-License-Identifier: GPL-2.0
/* block family: request latency (issue → complete) as a log2 histogram in microseconds per
 * device, with I/O errors and bytes per device.
 * Programs: tp_btf/block_rq_issue and tp_btf/block_rq_complete (BTF-enabled raw tracepoints:
 * 5.5; `request_queue.disk` 5.15), which need no tracefs. Requests are matched by the
 * `struct request` itself, from issue to completion (a request is reused only after it
 * completes; a requeued one is issued again, which restamps it). */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

/* Requests in flight: issue time by `struct request`. LRU (preallocated; an LRU map cannot
 * be otherwise): past 4,096 in flight on the node the oldest stamp is evicted, and its
 * completion counts in MEDIC_BLK_UNMATCHED instead of the histogram (as do requests in flight
 * when the family loaded). Deep NVMe queues rarely hold that many at once. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u64);
} issued SEC(".maps");

/* Per device, allocated as devices complete I/O. Full: MEDIC_BLK_DEVICES_FULL. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct medic_blk_stats);
} blk_stats SEC(".maps");

/* MEDIC_BLK_UNMATCHED, MEDIC_BLK_DEVICES_FULL. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MEDIC_BLK_COUNTERS);
	__type(key, __u32);
	__type(value, __u64);
} blk_counters SEC(".maps");

static __always_inline void blk_count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&blk_counters, &idx);
	if (c)
		__sync_fetch_and_add(c, 1);
}

/* The device a request is for, as the classic tracepoint reports it (the disk's dev_t). */
static __always_inline __u32 rq_dev(struct request *rq)
{
	struct gendisk *disk = BPF_CORE_READ(rq, q, disk);
	return disk ? BPF_CORE_READ(disk, part0, bd_dev) : 0;
}

SEC("tp_btf/block_rq_issue")
int BPF_PROG(blk_issue, struct request *rq)
{
	__u64 k = (__u64)rq;
	__u64 ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&issued, &k, &ts, BPF_ANY);
	return 0;
}

SEC("tp_btf/block_rq_complete")
int BPF_PROG(blk_complete, struct request *rq, int error, unsigned int nr_bytes)
{
	__u64 k = (__u64)rq;
	__u64 *ts = bpf_map_lookup_elem(&issued, &k);
	if (!ts) {
		blk_count(MEDIC_BLK_UNMATCHED);
		return 0;
	}
	__u64 delta_us = (bpf_ktime_get_ns() - *ts) / 1000;
	bpf_map_delete_elem(&issued, &k);
	__u32 dev = rq_dev(rq);
	struct medic_blk_stats *s = LOOKUP_OR_ZERO(&blk_stats, &dev, struct medic_blk_stats);
	if (!s) {
		blk_count(MEDIC_BLK_DEVICES_FULL);
		return 0;
	}
	__u32 slot = log2_slot(delta_us);
	if (slot < MEDIC_HIST_SLOTS)
		__sync_fetch_and_add(&s->lat_us.slots[slot], 1);
	if (error)
		__sync_fetch_and_add(&s->errors, 1);
	__sync_fetch_and_add(&s->bytes, (__u64)nr_bytes);
	return 0;
}
