// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Syscall tracer: per (process, syscall) counts and errors, plus failed calls
 * broken down by errno; with latency on, also total latency and a log2
 * latency histogram.
 *
 * Two sets of programs, each with its own map:
 * - counts (the default): count_exit_* on sys_exit alone, into
 *   syscalls_counts (count, errors, comm: 32 bytes);
 * - latency (-L): sys_enter_* stamps the thread's start time in its
 *   task-local storage, sys_exit_* takes it out and times the call, into
 *   syscalls_stats (also total_ns and the histogram: 360 bytes).
 * Userspace sizes the other mode's map to one entry at load.
 *
 * The maps are plain hashes keyed by (process, syscall[, errno], CPU): each
 * entry is written by its own CPU alone, so plain adds without atomics or
 * cache-line sharing between CPUs (as a per-CPU hash), one copy per CPU a
 * process actually ran that syscall on (not per possible CPU), and cheap to
 * create. They are BPF_F_NO_PREALLOC: memory follows the live entries, not
 * max_entries. Userspace sums the CPU rows. Measured alternatives:
 * docs/syscalls.md.
 *
 * Every table has two copies (syscalls_counts/syscalls_count2, ...):
 * programs write the copy syscalls_gen names, read once per run. A poll
 * flips syscalls_gen, then waits for every program run that may still hold
 * the other copy (an update of syscalls_sync, a map-in-map: the kernel
 * waits for an RCU grace period, so every non-sleepable program that
 * started before has returned), then reads and empties that copy, which no
 * program writes any more: no call is lost or counted twice, and a row
 * holds one interval's counts.
 * Filters (pid, command prefix, cgroup, syscall set, failed only) are
 * const volatile settings: the verifier drops the checks that are off.
 * Both hooks go through the attach ladder tp_btf -> raw_tp -> tracepoint.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include "common.h"
#include "syscalls.h"

#define MAX_ERRNO 4095
#define COMM_LEN SYSCALLS_COMM_LEN

const volatile __u32 target_tgid = 0;     /* 0: every process */
const volatile __u64 target_cgroup = 0;   /* 0: every cgroup (v2 id) */
const volatile __u32 target_comm_len = 0; /* 0: every command */
const volatile char target_comm[COMM_LEN] = {};
const volatile __u8 filter_syscalls = 0;  /* 1: only syscalls in syscall_mask */
const volatile __u64 syscall_mask[SYSCALLS_MASK_WORDS] = {};
const volatile __u8 failed_only = 0;
const volatile __u8 track_errnos = 1;
/* exit and exit_group never reach sys_exit: counted at entry. */
const volatile __s64 exit_nr = -1;
const volatile __s64 exit_group_nr = -1;
/* A successful exec renames the process: its row takes the new command. */
const volatile __s64 execve_nr = -1;
const volatile __s64 execveat_nr = -1;

/* Which copy of the tables programs write (0 or 1); userspace flips it. */
volatile __u32 syscalls_gen = 0;

/* Sizes: the defaults of bpfscope.syscalls.tool (load() sets them). */
struct syscalls_counts_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 65536);
	__type(key, struct syscalls_key);
	__type(value, struct syscalls_counts);
};

struct syscalls_stats_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct syscalls_key);
	__type(value, struct syscalls_stats);
};

struct syscalls_errnos_map {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 16384);
	__type(key, struct syscalls_errno_key);
	__type(value, __u64);
};

struct syscalls_counts_map syscalls_counts SEC(".maps"), syscalls_count2 SEC(".maps");
struct syscalls_stats_map syscalls_stats SEC(".maps"), syscalls_stats2 SEC(".maps");
struct syscalls_errnos_map syscalls_errnos SEC(".maps"), syscalls_errno2 SEC(".maps");

/*
 * Never read by programs: userspace updates its one slot (with the same
 * inner map each time) after flipping syscalls_gen, because the kernel
 * then waits for running BPF programs (maybe_wait_bpf_programs, 4.20+).
 */
struct syscalls_sync_inner {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} syscalls_sync_in SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct syscalls_sync_inner);
} syscalls_sync SEC(".maps") = {
	.values = { [0] = &syscalls_sync_in },
};

/*
 * The call each thread is in, as task-local storage: a lookup is a pointer
 * chase with no hashing, the kernel frees it when the thread exits, and
 * exec keeps it. A tid-keyed hash costs an insert and a delete per call
 * (measured here: about 60 ns more per syscall).
 */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct syscalls_inflight);
} syscalls_inflight SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SYSCALLS_DROP_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} syscalls_drops SEC(".maps");

static const struct syscalls_stats zero_stats;
static const struct syscalls_counts zero_counts;

static __always_inline void count_drop(__u32 slot)
{
	__u64 *n = bpf_map_lookup_elem(&syscalls_drops, &slot);

	if (n)
		*n += 1; /* per-CPU slot */
}

/* floor(log2(v)) for v > 0, 0 for v == 0; branch-free. */
static __always_inline __u32 log2_u64(__u64 v)
{
	__u32 r, shift;

	r = (v > 0xFFFFFFFFULL) << 5;
	v >>= r;
	shift = (v > 0xFFFF) << 4;
	v >>= shift;
	r |= shift;
	shift = (v > 0xFF) << 3;
	v >>= shift;
	r |= shift;
	shift = (v > 0xF) << 2;
	v >>= shift;
	r |= shift;
	shift = (v > 0x3) << 1;
	v >>= shift;
	r |= shift;
	r |= (v >> 1);
	return r;
}

static __always_inline bool syscall_selected(long id)
{
	__u64 nr = id;

	if (nr >= SYSCALLS_MASK_BITS)
		return false;
	return (syscall_mask[nr >> 6] >> (nr & 63)) & 1;
}

static __always_inline bool comm_matches(void)
{
	char comm[COMM_LEN];
	int i;

	bpf_get_current_comm(comm, sizeof(comm));
#pragma unroll
	for (i = 0; i < COMM_LEN; i++) {
		if (i >= target_comm_len)
			break;
		if (comm[i] != target_comm[i])
			return false;
	}
	return true;
}

static __always_inline void errno_add(void *map, struct syscalls_errno_key *key)
{
	__u64 one = 1, *n;

	n = bpf_map_lookup_elem(map, key);
	if (n) {
		*n += 1; /* this CPU's row: no other writer */
		return;
	}
	if (bpf_map_update_elem(map, key, &one, BPF_NOEXIST))
		count_drop(SYSCALLS_DROP_ERRNOS); /* full */
}

/* One call site per copy: each keeps the kernel's inlined map lookup. */
static __always_inline void add_errno(__u32 gen, __u32 tgid, __u32 nr, __u32 err, __u32 cpu)
{
	struct syscalls_errno_key key = { .tgid = tgid, .nr = nr, .err = err, .cpu = cpu };

	if (gen)
		errno_add(&syscalls_errno2, &key);
	else
		errno_add(&syscalls_errnos, &key);
}

/*
 * The value of key (this CPU's row of a (process, syscall)) in map,
 * created zeroed on the first call; NULL (a drop counted) when the map is
 * full. No other CPU writes this key, so the insert cannot race.
 */
static __always_inline void *entry_of(void *map, struct syscalls_key *key, const void *zero)
{
	void *v = bpf_map_lookup_elem(map, key);

	if (v)
		return v;
	bpf_map_update_elem(map, key, zero, BPF_NOEXIST);
	v = bpf_map_lookup_elem(map, key);
	if (!v)
		count_drop(SYSCALLS_DROP_STATS);
	return v;
}

/*
 * A successful execve/execveat: its sys_exit runs in the new program, so
 * the exec row's comm (on this CPU) becomes the process's new command;
 * userspace names a process that exec'd by it (a fork+exec'd child makes
 * its first calls, sometimes most of them, under its parent's name).
 */
static __always_inline bool renamed(__u32 nr, __u32 err)
{
	return !err && (nr == execve_nr || nr == execveat_nr);
}

/* Counts mode: account one call in syscalls_counts. */
static __always_inline void record_count(__u32 tgid, __u32 nr, __u32 err)
{
	struct syscalls_key key = { .tgid = tgid, .nr = nr, .cpu = bpf_get_smp_processor_id() };
	__u32 gen = syscalls_gen;
	struct syscalls_counts *c;

	if (gen)
		c = entry_of(&syscalls_count2, &key, &zero_counts);
	else
		c = entry_of(&syscalls_counts, &key, &zero_counts);
	if (!c)
		return;
	if (!c->comm[0] || renamed(nr, err)) /* once per row, and on exec */
		bpf_get_current_comm(c->comm, sizeof(c->comm));
	c->count += 1;
	if (err) {
		c->errors += 1;
		if (track_errnos)
			add_errno(gen, tgid, nr, err, key.cpu);
	}
}

/*
 * Latency mode: account one call in syscalls_stats; latency_ns < 0 means
 * "not timed" (exit, exit_group).
 */
static __always_inline void record(__u32 tgid, __u32 nr, __s64 latency_ns, __u32 err)
{
	struct syscalls_key key = { .tgid = tgid, .nr = nr, .cpu = bpf_get_smp_processor_id() };
	__u32 gen = syscalls_gen;
	struct syscalls_stats *s;
	__u64 slot; /* u64: 6.1's verifier loses the bound of a re-extended u32 index */

	if (gen)
		s = entry_of(&syscalls_stats2, &key, &zero_stats);
	else
		s = entry_of(&syscalls_stats, &key, &zero_stats);
	if (!s)
		return;
	if (!s->comm[0] || renamed(nr, err)) /* once per row, and on exec */
		bpf_get_current_comm(s->comm, sizeof(s->comm));
	s->count += 1;
	if (latency_ns >= 0) {
		s->total_ns += latency_ns;
		slot = log2_u64(latency_ns);
		if (slot >= SYSCALLS_HIST_SLOTS)
			slot = SYSCALLS_HIST_SLOTS - 1;
		s->hist[slot] += 1;
	}
	if (err) {
		s->errors += 1;
		if (track_errnos)
			add_errno(gen, tgid, nr, err, key.cpu);
	}
}

static __always_inline int on_enter(long id)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct syscalls_inflight *in;

	/* Cheapest filters first. */
	if (target_tgid && tgid != target_tgid)
		return 0;
	if (filter_syscalls && !syscall_selected(id))
		return 0;
	if (target_cgroup && bpf_get_current_cgroup_id() != target_cgroup)
		return 0;
	if (target_comm_len && !comm_matches())
		return 0;

	if (id == exit_nr || id == exit_group_nr) {
		if (!failed_only)
			record(tgid, id, -1, 0);
		return 0;
	}
	in = bpf_task_storage_get(&syscalls_inflight, bpf_get_current_task_btf(), 0,
				  BPF_LOCAL_STORAGE_GET_F_CREATE);
	if (!in) {
		count_drop(SYSCALLS_DROP_INFLIGHT); /* out of memory */
		return 0;
	}
	in->nr = id;
	in->start_ns = bpf_ktime_get_ns();
	return 0;
}

static __always_inline int on_exit(long ret)
{
	struct syscalls_inflight *in;
	__u64 now = bpf_ktime_get_ns();
	__s64 latency;
	__u32 nr, err = 0;

	in = bpf_task_storage_get(&syscalls_inflight, bpf_get_current_task_btf(), 0, 0);
	/* start_ns 0: filtered out, or entered before we attached */
	if (!in || !in->start_ns)
		return 0;
	latency = now - in->start_ns;
	nr = in->nr;
	in->start_ns = 0;

	if (ret < 0 && ret >= -MAX_ERRNO)
		err = -ret;
	if (failed_only && !err)
		return 0;
	record(bpf_get_current_pid_tgid() >> 32, nr, latency, err);
	return 0;
}

/*
 * Counts mode (the default, no latency): sys_exit alone, the syscall number
 * taken from the saved registers. Half the hooks and no clock reads or task
 * storage, like syscount without -L. exit/exit_group never reach sys_exit
 * and are not counted in this mode.
 */
#if defined(__TARGET_ARCH_arm64)
#define SYSCALL_NR_FIELD syscallno
#else
#define SYSCALL_NR_FIELD orig_ax
#endif

static __always_inline int on_exit_count(long id, long ret)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	__u32 err = 0;

	if (target_tgid && tgid != target_tgid)
		return 0;
	if (ret < 0 && ret >= -MAX_ERRNO)
		err = -ret;
	if (failed_only && !err)
		return 0;
	if (filter_syscalls && !syscall_selected(id))
		return 0;
	if (target_cgroup && bpf_get_current_cgroup_id() != target_cgroup)
		return 0;
	if (target_comm_len && !comm_matches())
		return 0;
	record_count(tgid, id, err);
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(count_exit_btf, struct pt_regs *regs, long ret)
{
	return on_exit_count(regs->SYSCALL_NR_FIELD, ret);
}

SEC("raw_tp/sys_exit")
int count_exit_raw(struct bpf_raw_tracepoint_args *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx->args[0];

	return on_exit_count(BPF_CORE_READ(regs, SYSCALL_NR_FIELD), ctx->args[1]);
}

SEC("tracepoint/raw_syscalls/sys_exit")
int count_exit_tp(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit_count(ctx->id, ctx->ret);
}

/* tp_btf: BTF-typed arguments (struct pt_regs *regs, long id / long ret). */
SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter_btf, struct pt_regs *regs, long id)
{
	return on_enter(id);
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit_btf, struct pt_regs *regs, long ret)
{
	return on_exit(ret);
}

/* raw_tp: the same arguments, untyped. */
SEC("raw_tp/sys_enter")
int sys_enter_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return on_enter(ctx->args[1]);
}

SEC("raw_tp/sys_exit")
int sys_exit_raw(struct bpf_raw_tracepoint_args *ctx)
{
	return on_exit(ctx->args[1]);
}

/* tracepoint: the raw_syscalls format (stable since 2.6.x). */
SEC("tracepoint/raw_syscalls/sys_enter")
int sys_enter_tp(struct trace_event_raw_sys_enter *ctx)
{
	return on_enter(ctx->id);
}

SEC("tracepoint/raw_syscalls/sys_exit")
int sys_exit_tp(struct trace_event_raw_sys_exit *ctx)
{
	return on_exit(ctx->ret);
}

/*
 * Benchmark references, one program per hook and rung, never loaded by the
 * tracer: nop_* are empty ("what attaching anything here costs"); clock_*
 * only read the clock, which any tracer timing every call must do at entry
 * and at exit (the clock floor).
 */
#define REFERENCE_PROGRAMS(kind, body)                                         \
	SEC("tp_btf/sys_enter")                                                \
	int BPF_PROG(kind##_enter_btf)                                         \
	{                                                                       \
		body;                                                           \
		return 0;                                                       \
	}                                                                       \
	SEC("tp_btf/sys_exit")                                                 \
	int BPF_PROG(kind##_exit_btf)                                          \
	{                                                                       \
		body;                                                           \
		return 0;                                                       \
	}                                                                       \
	SEC("raw_tp/sys_enter")                                                \
	int kind##_enter_raw(void *ctx)                                        \
	{                                                                       \
		body;                                                           \
		return 0;                                                       \
	}                                                                       \
	SEC("raw_tp/sys_exit")                                                 \
	int kind##_exit_raw(void *ctx)                                         \
	{                                                                       \
		body;                                                           \
		return 0;                                                       \
	}                                                                       \
	SEC("tracepoint/raw_syscalls/sys_enter")                               \
	int kind##_enter_tp(void *ctx)                                         \
	{                                                                       \
		body;                                                           \
		return 0;                                                       \
	}                                                                       \
	SEC("tracepoint/raw_syscalls/sys_exit")                                \
	int kind##_exit_tp(void *ctx)                                          \
	{                                                                       \
		body;                                                           \
		return 0;                                                       \
	}

REFERENCE_PROGRAMS(nop, (void)0)
REFERENCE_PROGRAMS(clock, bpf_ktime_get_ns())

char LICENSE[] SEC("license") = "Dual BSD/GPL";
