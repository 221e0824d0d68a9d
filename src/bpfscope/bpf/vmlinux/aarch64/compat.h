/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Types the sources use that this architecture's vmlinux.h lacks, because
 * it was dumped from an older kernel (6.12) than the x86_64 one (6.18).
 * The Makefile force-includes this file (-include) for this architecture
 * only, so the sources and the x86_64 objects stay as they are.
 */
#include "vmlinux.h"

#ifndef __BPFSCOPE_VMLINUX_COMPAT_H__
#define __BPFSCOPE_VMLINUX_COMPAT_H__

/*
 * tcp:tcp_retransmit_skb's record: the shared tcp_event_sk_skb class up to
 * 6.12, its own struct in 6.18. The fields flows.bpf.c reads, under the
 * 6.18 name, so that its CO-RE relocation is the same on both
 * architectures.
 */
struct trace_event_raw_tcp_retransmit_skb {
	struct trace_entry ent;
	const void *skbaddr;
	const void *skaddr;
} __attribute__((preserve_access_index));

#endif
