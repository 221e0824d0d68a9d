// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Feature probes. Userspace loads this object once per mechanism with only
 * that program autoloaded, attaches it, makes one getpid() and checks that
 * the hit counter moved: a verdict by trying, not by version guessing.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "common.h"
#include "probe.h"

/* Set before load: only the probing process counts, and getpid's number. */
const volatile __u32 target_tgid = 0;
const volatile __s64 getpid_nr = -1;

__u64 probe_hits[PROBE_MECHANISM_COUNT] = {};

static __always_inline void hit(enum probe_mechanism m)
{
	if (bpfscope_current_tgid() != target_tgid)
		return;
	__sync_fetch_and_add(&probe_hits[m], 1);
}

SEC("tracepoint/syscalls/sys_enter_getpid")
int probe_tracepoint(void *ctx)
{
	hit(PROBE_TRACEPOINT);
	return 0;
}

SEC("raw_tp/sys_enter")
int probe_raw_tp(struct bpf_raw_tracepoint_args *ctx)
{
	if (ctx->args[1] == getpid_nr)
		hit(PROBE_RAW_TP);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(probe_tp_btf, struct pt_regs *regs, long id)
{
	if (id == getpid_nr)
		hit(PROBE_TP_BTF);
	return 0;
}

/* Kernel function names are per architecture; userspace retargets these. */
SEC("fentry/__x64_sys_getpid")
int BPF_PROG(probe_fentry)
{
	hit(PROBE_FENTRY);
	return 0;
}

SEC("fexit/__x64_sys_getpid")
int BPF_PROG(probe_fexit)
{
	hit(PROBE_FEXIT);
	return 0;
}

SEC("kprobe")
int probe_kprobe(void *ctx)
{
	hit(PROBE_KPROBE);
	return 0;
}

SEC("kretprobe")
int probe_kretprobe(void *ctx)
{
	hit(PROBE_KRETPROBE);
	return 0;
}

SEC("uprobe")
int probe_uprobe(void *ctx)
{
	hit(PROBE_UPROBE);
	return 0;
}

SEC("uretprobe")
int probe_uretprobe(void *ctx)
{
	hit(PROBE_URETPROBE);
	return 0;
}

SEC("cgroup_skb/egress")
int probe_cgroup_skb(struct __sk_buff *skb)
{
	__sync_fetch_and_add(&probe_hits[PROBE_CGROUP_SKB], 1);
	return 1; /* allow: the probe must never drop traffic */
}

/* Empty program on a cheap syscall: `progs --stats-cost` times getpid with
 * and without kernel.bpf_stats to learn what statistics add per run. */
SEC("tracepoint/syscalls/sys_enter_getpid")
int stats_cost_getpid(void *ctx)
{
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
