// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Overhead lab: programs whose only purpose is to cost something measurable.
 *
 * One program per (mechanism, work body, copy). Userspace loads the ones a
 * run needs and attaches K copies to the same hook for the --probes sweep.
 *
 *   mechanism: tracepoint syscalls:sys_enter_<name> (target given at attach
 *              time), raw_tp and tp_btf sys_enter (filtered by syscall id),
 *              fentry and kprobe on the syscall's kernel entry function,
 *              uprobe on the libc wrapper;
 *   work:      empty (hook cost only), count (per-CPU array slot per copy),
 *              hash (u64 per process in a hash keyed by pid).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "common.h"
#include "bench.h"

/* Syscall id the raw_tp/tp_btf programs keep; set before load. */
const volatile __s64 target_nr = -1;

/* count: copy c bumps slot c, so userspace sees that K copies really ran. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BENCH_MAX_COPIES);
	__type(key, __u32);
	__type(value, __u64);
} bench_counts SEC(".maps");

/* hash: events per process (tgid), shared by every copy. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BENCH_MAX_PIDS);
	__type(key, __u32);
	__type(value, __u64);
} bench_pids SEC(".maps");

static __always_inline int work_empty(__u32 copy)
{
	return 0;
}

static __always_inline int work_count(__u32 copy)
{
	__u64 *slot = bpf_map_lookup_elem(&bench_counts, &copy);

	if (slot)
		*slot += 1; /* per-CPU slot: no atomic needed */
	return 0;
}

static __always_inline int work_hash(__u32 copy)
{
	__u32 tgid = bpfscope_current_tgid();
	__u64 one = 1, *value;

	value = bpf_map_lookup_elem(&bench_pids, &tgid);
	if (value) {
		__sync_fetch_and_add(value, 1);
		return 0;
	}
	/* First event of this process; another CPU may have raced us to it. */
	if (bpf_map_update_elem(&bench_pids, &tgid, &one, BPF_NOEXIST) == 0)
		return 0;
	value = bpf_map_lookup_elem(&bench_pids, &tgid);
	if (value)
		__sync_fetch_and_add(value, 1);
	return 0;
}

/* tracepoint: the target (syscalls:sys_enter_<name>) is chosen at attach. */
#define BENCH_TRACEPOINT(work, c)                                          \
	SEC("tracepoint")                                                  \
	int tp_##work##_##c(void *ctx)                                     \
	{                                                                  \
		return work_##work(c);                                     \
	}

/* raw_tp sys_enter fires for every syscall: keep only target_nr. */
#define BENCH_RAW_TP(work, c)                                              \
	SEC("raw_tp/sys_enter")                                            \
	int rawtp_##work##_##c(struct bpf_raw_tracepoint_args *ctx)        \
	{                                                                  \
		if (ctx->args[1] != target_nr)                             \
			return 0;                                          \
		return work_##work(c);                                     \
	}

#define BENCH_TP_BTF(work, c)                                              \
	SEC("tp_btf/sys_enter")                                            \
	int BPF_PROG(tpbtf_##work##_##c, struct pt_regs *regs, long id)    \
	{                                                                  \
		if (id != target_nr)                                       \
			return 0;                                          \
		return work_##work(c);                                     \
	}

/* fentry: userspace retargets to the syscall's entry function before load. */
#define BENCH_FENTRY(work, c)                                              \
	SEC("fentry/__x64_sys_getpid")                                     \
	int BPF_PROG(fentry_##work##_##c)                                  \
	{                                                                  \
		return work_##work(c);                                     \
	}

#define BENCH_KPROBE(work, c)                                              \
	SEC("kprobe")                                                      \
	int kprobe_##work##_##c(void *ctx)                                 \
	{                                                                  \
		return work_##work(c);                                     \
	}

#define BENCH_UPROBE(work, c)                                              \
	SEC("uprobe")                                                      \
	int uprobe_##work##_##c(void *ctx)                                 \
	{                                                                  \
		return work_##work(c);                                     \
	}

#define BENCH_WORKS(mech, c) mech(empty, c) mech(count, c) mech(hash, c)

#define BENCH_COPIES(mech)                                                 \
	BENCH_WORKS(mech, 0) BENCH_WORKS(mech, 1) BENCH_WORKS(mech, 2)     \
	BENCH_WORKS(mech, 3) BENCH_WORKS(mech, 4) BENCH_WORKS(mech, 5)     \
	BENCH_WORKS(mech, 6) BENCH_WORKS(mech, 7)

BENCH_COPIES(BENCH_TRACEPOINT)
BENCH_COPIES(BENCH_RAW_TP)
BENCH_COPIES(BENCH_TP_BTF)
BENCH_COPIES(BENCH_FENTRY)
BENCH_COPIES(BENCH_KPROBE)
BENCH_COPIES(BENCH_UPROBE)

char LICENSE[] SEC("license") = "Dual BSD/GPL";
