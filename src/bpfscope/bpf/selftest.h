/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Self-test tool: exercises ring buffer, maps and struct layout end to end. */
#ifndef BPFSCOPE_SELFTEST_H
#define BPFSCOPE_SELFTEST_H

#define SELFTEST_COMM_LEN 16

/* One ring buffer record per getpid() of the target process. */
struct selftest_event {
	__u64 seq;
	__u64 ktime_ns;
	__u32 tgid;
	__u32 cpu;
	char comm[SELFTEST_COMM_LEN];
	__u8 flags;
	/* explicit tail padding so the layout test sees every byte */
	__u8 pad[7];
};

/* Key/value of the hash used to check batch against per-key lookups. */
struct selftest_key {
	__u32 tgid;
	__u16 port;
	__u8 family;
	__u8 pad;
};

struct selftest_value {
	__u64 packets;
	__u64 bytes;
};

#endif /* BPFSCOPE_SELFTEST_H */
