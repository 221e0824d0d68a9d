/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Packet drops: the structs that cross the kernel/user boundary. The Python
 * mirrors in bpfscope/drops/records.py are checked against this file's BTF.
 */
#ifndef BPFSCOPE_DROPS_H
#define BPFSCOPE_DROPS_H

#define DROPS_COMM_LEN 16
#define DROPS_IFNAME_LEN 16

/* drop_key.flags */
#define DROP_F_REASON 0x1    /* the kernel gave a reason (5.17+) */
#define DROP_F_SOCK 0x2      /* the skb had an inet socket (tuple from it) */
#define DROP_F_LOCAL_SRC 0x4 /* the packet's source is that socket's local end */
#define DROP_F_HEADERS 0x8   /* addresses and ports parsed from the packet */
#define DROP_F_OWNER 0x10    /* unused since the owner is in the value */

/* stats slots (per-CPU array drops_stats) */
#define DROP_STAT_SEEN 0          /* kfree_skb runs counted as drops */
#define DROP_STAT_CONSUMED 1      /* reason SKB_CONSUMED: not a drop, skipped */
#define DROP_STAT_UPDATE_FAILED 2 /* bpf_map_update_elem refused */
#define DROP_STAT_INSERTS 3       /* new keys created */
#define DROP_STAT_OWNER_WANTED 4 /* drops of a socket with no owner yet */
#define DROP_STAT_SWEPT 5        /* owners the sweep filled in */
#define DROP_STAT_EMPTY_PURGED 6 /* QUEUE_PURGE of a 0-byte skb (an unread FIN): skipped */
#define DROP_STAT_MAX 7

/*
 * One kind of drop: where (netns, interface, kernel location), why (reason)
 * and what (the packet's family, protocol, addresses in network byte order
 * with IPv4 in the first 4 bytes, ports in host order), and whose (the
 * socket, by inode: one socket's drops are one key whoever owns it, and the
 * collector can find the owner later for drops the kernel saw first).
 */
struct drop_key {
	__u64 location;  /* kernel address that freed the skb */
	__u64 cgroup_id; /* the socket's cgroup (0: no full socket) */
	__u32 netns;
	__u32 ifindex;
	__u32 reason;   /* enum skb_drop_reason (valid with DROP_F_REASON) */
	__u32 sock_ino; /* the socket's inode (0: no full socket, or orphaned) */
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
	__u16 l3proto; /* ethertype, host order (0: not known) */
	__u8 family;   /* AF_INET / AF_INET6 / 0 */
	__u8 proto;    /* IPPROTO_* (0: not parsed) */
	__u8 flags;    /* DROP_F_* */
	__u8 pad[7];
};

/* Cumulative per key; the collector computes deltas. */
struct drop_value {
	__u64 count;
	__u64 bytes; /* skb->len summed */
	__u64 first_ns;
	__u64 last_ns;
	char comm[DROPS_COMM_LEN];     /* the owner's, when known */
	char ifname[DROPS_IFNAME_LEN]; /* skb->dev's name, read in its netns */
	__u32 tgid;                    /* the socket's owner (0: not known yet) */
	__u32 pad;
};

/* Owner of a socket: recorded at TCP connect() (process context), or by
 * the sweep (iter/task_file) for a socket inode a drop asked about. */
struct drop_owner {
	__u64 cgroup_id;
	__u32 tgid;
	__u32 pad;
	char comm[DROPS_COMM_LEN];
};

#endif /* BPFSCOPE_DROPS_H */
