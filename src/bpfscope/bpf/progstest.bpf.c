// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Test object for the introspection commands (`bpfscope progs|maps|links`).
 * Not a tool: the kernel tests load it, attach what they need and look for it.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "common.h"
#include "progstest.h"

/* Hash with BTF-described key and value: `maps dump` decodes it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 128);
	__type(key, struct progstest_key);
	__type(value, struct progstest_value);
} progstest_hash SEC(".maps");

/* Per-CPU counters: 0 uprobe hits, 1 and 2 task renames, 3 egress packets. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} progstest_counts SEC(".maps");

static __always_inline void bump(__u32 slot)
{
	__u64 *count = bpf_map_lookup_elem(&progstest_counts, &slot);

	if (count)
		*count += 1; /* per-CPU slot: no atomic needed */
}

/* Attached by userspace to a libc function, for one pid only, so that its
 * run count is exactly the number of calls that process made. */
SEC("uprobe")
int progstest_uprobe(void *ctx)
{
	bump(0);
	return 0;
}

/* Fires on prctl(PR_SET_NAME): rare, and easy to trigger from a test. */
SEC("raw_tp/task_rename")
int progstest_rename(struct bpf_raw_tracepoint_args *ctx)
{
	bump(1);
	return 0;
}

/* The same tracepoint with BTF-typed arguments: a tracing program whose
 * attach target is a BTF id (btf_trace_task_rename). */
SEC("tp_btf/task_rename")
int BPF_PROG(progstest_rename_btf, struct task_struct *task, const char *comm)
{
	bump(2);
	return 0;
}

/* Attached to a test cgroup: shows cgroup link decoding (attach type, path). */
SEC("cgroup_skb/egress")
int progstest_egress(struct __sk_buff *skb)
{
	bump(3);
	return 1; /* let the packet through */
}

/* Empty program on a cheap syscall, for the introspection tests. */
SEC("tracepoint/syscalls/sys_enter_getpid")
int progstest_getpid(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
