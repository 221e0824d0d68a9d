/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Helpers shared by every bpfscope BPF tool. */
#ifndef BPFSCOPE_COMMON_H
#define BPFSCOPE_COMMON_H

/*
 * Every ring buffer comes with a per-CPU drop counter: a reservation that
 * fails (buffer full) is counted, never silently lost. Userspace sums the
 * per-CPU slots and reports the total. Per-CPU so that counting a drop under
 * load does not add cache-line contention on top of the overload.
 */
#define BPFSCOPE_DROP_COUNTER(name)                                        \
	struct {                                                           \
		__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);                   \
		__uint(max_entries, 1);                                    \
		__type(key, __u32);                                        \
		__type(value, __u64);                                      \
	} name SEC(".maps")

static __always_inline void bpfscope_count_drop(void *counter_map)
{
	__u32 zero = 0;
	__u64 *slot = bpf_map_lookup_elem(counter_map, &zero);

	if (slot)
		*slot += 1; /* per-CPU slot: no atomic needed */
}

static __always_inline __u32 bpfscope_current_tgid(void)
{
	return bpf_get_current_pid_tgid() >> 32;
}

#endif /* BPFSCOPE_COMMON_H */
