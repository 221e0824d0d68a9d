/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Test object for `bpfscope progs|maps|links`: known programs and maps with
 * a struct value whose decoding through BTF the tests check field by field.
 */
#ifndef BPFSCOPE_PROGSTEST_H
#define BPFSCOPE_PROGSTEST_H

#define PROGSTEST_COMM_LEN 16

enum progstest_state {
	PROGSTEST_IDLE = 0,
	PROGSTEST_BUSY = 1,
	PROGSTEST_DONE = 2,
};

struct progstest_inner {
	__u32 lo;
	__u32 hi;
};

struct progstest_key {
	__u32 id;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

/* One value exercising every decoder path: ints of each width and sign,
 * an IPv4 and an IPv6 address, a C string, an enum, an array, a nested
 * struct and bitfields. */
struct progstest_value {
	__u64 count;
	__s32 delta;
	__be32 saddr;
	__u8 daddr[16];
	char comm[PROGSTEST_COMM_LEN];
	__u16 sport;
	__be16 dport;
	enum progstest_state state;
	__u32 hist[4];
	struct progstest_inner inner;
	__u8 flag_a : 3;
	__u8 flag_b : 5;
	__u8 pad[7];
};

#endif /* BPFSCOPE_PROGSTEST_H */
