// SPDX-License-Identifier: GPL-2.0
/* block family: request latency (issue → complete) as a log2 histogram in microseconds per
 * device, with I/O errors and bytes per device.
 * Tracepoints: block/block_rq_issue, block/block_rq_complete (stable since 2.6; the
 * field layout is relocated with CO-RE). Requests are matched by (device, sector). */
#include "common.bpf.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct medic_blk_key);
	__type(value, __u64);
} issued SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, struct medic_blk_stats);
} blk_stats SEC(".maps");

SEC("tracepoint/block/block_rq_issue")
int blk_issue(struct trace_event_raw_block_rq *ctx)
{
	struct medic_blk_key k = {};
	k.dev = BPF_CORE_READ(ctx, dev);
	k.sector = BPF_CORE_READ(ctx, sector);
	__u64 ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&issued, &k, &ts, BPF_ANY);
	return 0;
}

SEC("tracepoint/block/block_rq_complete")
int blk_complete(struct trace_event_raw_block_rq_completion *ctx)
{
	struct medic_blk_key k = {};
	k.dev = BPF_CORE_READ(ctx, dev);
	k.sector = BPF_CORE_READ(ctx, sector);
	__u64 *ts = bpf_map_lookup_elem(&issued, &k);
	if (!ts)
		return 0;
	__u64 delta_us = (bpf_ktime_get_ns() - *ts) / 1000;
	bpf_map_delete_elem(&issued, &k);
	__u32 dev = k.dev;
	struct medic_blk_stats *s = LOOKUP_OR_ZERO(&blk_stats, &dev, struct medic_blk_stats);
	if (!s)
		return 0;
	__u32 slot = log2_slot(delta_us);
	if (slot < MEDIC_HIST_SLOTS)
		__sync_fetch_and_add(&s->lat_us.slots[slot], 1);
	if (BPF_CORE_READ(ctx, error))
		__sync_fetch_and_add(&s->errors, 1);
	__sync_fetch_and_add(&s->bytes, (__u64)BPF_CORE_READ(ctx, nr_sector) * 512);
	return 0;
}
