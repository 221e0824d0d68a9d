/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Overhead lab (bpfscope bench syscalls): constants shared with userspace. */
#ifndef BPFSCOPE_BENCH_H
#define BPFSCOPE_BENCH_H

/* Copies of every program, for the --probes K sweep (K <= BENCH_MAX_COPIES). */
#define BENCH_MAX_COPIES 8

/* Processes the "hash" work body can key at once. */
#define BENCH_MAX_PIDS 10240

#endif /* BPFSCOPE_BENCH_H */
