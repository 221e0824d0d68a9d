// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Self-test tool: each getpid() of the target process becomes one ring
 * buffer event and bumps a per-CPU counter, through whichever rung of the
 * attach ladder works here. Used by `bpfscope doctor --check` and the
 * kernel tests to prove loading, attachment and delivery end to end.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "common.h"
#include "selftest.h"

const volatile __u32 target_tgid = 0;
const volatile __s64 getpid_nr = -1;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
} selftest_events SEC(".maps");

BPFSCOPE_DROP_COUNTER(selftest_events_dropped);

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} selftest_calls SEC(".maps");

/* Filled from userspace; proves batch and per-key reads agree. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct selftest_key);
	__type(value, struct selftest_value);
} selftest_flows SEC(".maps");

__u64 selftest_seq = 0;

/* Emit the event type into BTF so userspace can check its mirror struct. */
const struct selftest_event *unused_selftest_event __attribute__((unused));

/* One body for every rung: the ladder picks which program carries it. */
static __always_inline int on_getpid(void)
{
	struct selftest_event *e;
	__u32 zero = 0;
	__u64 *calls;

	if (bpfscope_current_tgid() != target_tgid)
		return 0;

	calls = bpf_map_lookup_elem(&selftest_calls, &zero);
	if (calls)
		*calls += 1;

	e = bpf_ringbuf_reserve(&selftest_events, sizeof(*e), 0);
	if (!e) {
		bpfscope_count_drop(&selftest_events_dropped);
		return 0;
	}
	/*
	 * Plain increment: the self-test has one producer thread, and using the
	 * result of an atomic fetch-add needs BPF_FETCH (Linux 5.12).
	 */
	e->seq = selftest_seq++;
	e->ktime_ns = bpf_ktime_get_ns();
	e->tgid = target_tgid;
	e->cpu = bpf_get_smp_processor_id();
	bpf_get_current_comm(e->comm, sizeof(e->comm));
	e->flags = 1;
	__builtin_memset(e->pad, 0, sizeof(e->pad));
	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* Attach targets of fentry and kprobe are set by userspace per kernel. */
SEC("fentry/__do_sys_getpid")
int BPF_PROG(selftest_fentry)
{
	return on_getpid();
}

SEC("tp_btf/sys_enter")
int BPF_PROG(selftest_tp_btf, struct pt_regs *regs, long id)
{
	if (id != getpid_nr)
		return 0;
	return on_getpid();
}

SEC("raw_tp/sys_enter")
int selftest_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1] != getpid_nr)
		return 0;
	return on_getpid();
}

SEC("tracepoint/syscalls/sys_enter_getpid")
int selftest_tracepoint(void *ctx)
{
	return on_getpid();
}

SEC("kprobe")
int selftest_kprobe(void *ctx)
{
	return on_getpid();
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
