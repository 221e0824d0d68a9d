/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Syscall tracer: the structs shared by syscalls.bpf.c and bpfscope.syscalls. */
#ifndef BPFSCOPE_SYSCALLS_H
#define BPFSCOPE_SYSCALLS_H

/*
 * Latency histogram: slot i counts calls that took [2^i, 2^(i+1)) ns
 * (slot 0 also takes 0 and 1 ns); the last slot takes everything from
 * 2^(SLOTS-1) ns (about 550 s) up.
 */
#define SYSCALLS_HIST_SLOTS 40

/* Syscall numbers below this can be selected by the in-kernel filter. */
#define SYSCALLS_MASK_BITS 512
#define SYSCALLS_MASK_WORDS (SYSCALLS_MASK_BITS / 64)

#define SYSCALLS_COMM_LEN 16

/* Slots of the per-CPU syscalls_drops counter array. */
enum syscalls_drop {
	SYSCALLS_DROP_INFLIGHT = 0, /* no task storage (ENOMEM): call not seen */
	SYSCALLS_DROP_STATS = 1,    /* counts/stats map full: call not counted */
	SYSCALLS_DROP_ERRNOS = 2,   /* errno map full: error not broken down */
	SYSCALLS_DROP_SLOTS = 4,
};

/*
 * Key of syscalls_counts and syscalls_stats: one entry per (process,
 * syscall, CPU the calls ran on). Only that CPU writes the entry (the
 * programs run with migration disabled and sys_exit does not nest), so
 * plain adds, no atomics; userspace sums a (process, syscall)'s CPU rows.
 */
struct syscalls_key {
	__u32 tgid;
	__u32 nr;
	__u32 cpu;
};

/* Value of syscalls_counts (counts mode, the default): 32 bytes. */
struct syscalls_counts {
	__u64 count;  /* completed calls */
	__u64 errors; /* calls that returned -4095..-1 */
	/* command of the first call on this row (and of each successful
	 * exec): names processes that are gone before userspace reads /proc */
	char comm[SYSCALLS_COMM_LEN];
};

/* Value of syscalls_stats (latency mode, -L): 360 bytes. */
struct syscalls_stats {
	__u64 count;    /* completed calls (exit/exit_group: entered calls) */
	__u64 errors;   /* calls that returned -4095..-1 */
	__u64 total_ns; /* sum of enter->exit latency */
	__u64 hist[SYSCALLS_HIST_SLOTS];
	/* as in struct syscalls_counts */
	char comm[SYSCALLS_COMM_LEN];
};

/* Key of syscalls_errnos (u64 count of failed calls), per CPU like syscalls_key. */
struct syscalls_errno_key {
	__u32 tgid;
	__u32 nr;
	__u32 err; /* positive errno */
	__u32 cpu;
};

/* Task-local value of syscalls_inflight: the call the thread is in. */
struct syscalls_inflight {
	__u64 start_ns;
	__u32 nr;
	__u32 pad;
};

#endif /* BPFSCOPE_SYSCALLS_H */
