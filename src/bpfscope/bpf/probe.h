/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/* Feature probes: one minimal program per attach mechanism. */
#ifndef BPFSCOPE_PROBE_H
#define BPFSCOPE_PROBE_H

/* Index into probe_hits[]: which probe program ran. */
enum probe_mechanism {
	PROBE_TRACEPOINT = 0,
	PROBE_RAW_TP = 1,
	PROBE_TP_BTF = 2,
	PROBE_FENTRY = 3,
	PROBE_FEXIT = 4,
	PROBE_KPROBE = 5,
	PROBE_KRETPROBE = 6,
	PROBE_UPROBE = 7,
	PROBE_URETPROBE = 8,
	PROBE_CGROUP_SKB = 9,
	PROBE_MECHANISM_COUNT = 10,
};

#endif /* BPFSCOPE_PROBE_H */
