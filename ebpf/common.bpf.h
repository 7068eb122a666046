/* Helpers shared by the family programs. */
#ifndef __MEDIC_COMMON_BPF_H__
#define __MEDIC_COMMON_BPF_H__
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "medic.h"

static __always_inline __u32 log2_slot(__u64 v)
{
	__u32 r = 0;
	v += 1;
	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) { r += 1; }
	return r < MEDIC_HIST_SLOTS ? r : MEDIC_HIST_SLOTS - 1;
}

static __always_inline __u64 task_cgroup(struct task_struct *t)
{
	return BPF_CORE_READ(t, cgroups, dfl_cgrp, kn, id);
}

/* The value of `key` in hash `map`, inserted zeroed first if absent (NULL if the map is full). */
#define LOOKUP_OR_ZERO(map, key, type)                                          \
	({                                                                      \
		type *__v = bpf_map_lookup_elem(map, key);                      \
		if (!__v) {                                                     \
			type __zero = {};                                       \
			bpf_map_update_elem(map, key, &__zero, BPF_NOEXIST);    \
			__v = bpf_map_lookup_elem(map, key);                    \
		}                                                               \
		__v;                                                            \
	})

#endif
