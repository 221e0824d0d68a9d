// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Packet drops: skb:kfree_skb with the kernel's drop reason, counted in the
 * kernel per (netns, interface, location, reason, packet tuple, owner). It
 * costs per drop, not per packet: a packet that is delivered or sent never
 * runs this program (consumed skbs go to skb:consume_skb; a kernel that
 * still reports SKB_CONSUMED here has it skipped).
 *
 * Attribution: the skb's socket (skb->sk, or the tracepoint's rx_sk on
 * 6.11+) gives the flow's tuple and cgroup; its owner (process) is what was
 * seen in process context: the owner hook records who connects a TCP
 * socket, and the sweep (iter/task_file, run by the collector when drops
 * wait for an owner) finds the process holding any other socket (accepted
 * TCP, UDP, sockets older than the collector) by its inode. The task
 * running kfree_skb is never used: on receive (softirq) it is whoever was
 * interrupted. Without a socket the drop belongs to the network namespace,
 * interface and the packet's own headers.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "drops.h"

#define AF_INET 2
#define AF_INET6 10
#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define TCP_SYN_SENT 2
#define TCP_CLOSE 7
#define TCP_TIME_WAIT 6
#define TCP_NEW_SYN_RECV 12
#define NO_HEADER 0xffff

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct drop_key);
	__type(value, struct drop_value);
} packet_drops SEC(".maps");

/* Owners of connecting TCP sockets, keyed by the struct sock address. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct drop_owner);
} drop_owners SEC(".maps");

/*
 * Owners by socket inode, for sockets the owner hook did not see. A drop of
 * such a socket adds its inode with tgid 0 (wanted); the sweep fills in the
 * process holding it; later drops read it here.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct drop_owner);
} drop_ino_owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} drops_stats SEC(".maps");

static __always_inline void stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&drops_stats, &slot);

	if (v)
		*v += 1;
}

#define NEXTHDR_HOP 0
#define NEXTHDR_ROUTING 43
#define NEXTHDR_FRAGMENT 44
#define NEXTHDR_AUTH 51
#define NEXTHDR_DEST 60
#define IPV6_MAX_EXT 6

/*
 * IPv6 extension headers before the transport header (hop-by-hop, routing,
 * destination options, fragment, AH), at most IPV6_MAX_EXT of them: the
 * upper protocol, with *off moved to its header; *off = NO_HEADER when the
 * ports are not in this packet (a fragment other than the first) or a
 * header could not be read.
 */
static __always_inline __u8 ipv6_skip_ext(unsigned char *head, __u8 proto, __u16 *off)
{
	__u8 eh[2];
	__u16 frag;
	int i;

#pragma clang loop unroll(full)
	for (i = 0; i < IPV6_MAX_EXT; i++) {
		if (proto != NEXTHDR_HOP && proto != NEXTHDR_ROUTING && proto != NEXTHDR_DEST &&
		    proto != NEXTHDR_FRAGMENT && proto != NEXTHDR_AUTH)
			return proto;
		if (bpf_probe_read_kernel(eh, sizeof(eh), head + *off)) {
			*off = NO_HEADER;
			return proto;
		}
		if (proto == NEXTHDR_FRAGMENT) {
			if (bpf_probe_read_kernel(&frag, sizeof(frag), head + *off + 2)) {
				*off = NO_HEADER;
				return proto;
			}
			*off += 8;
			if (bpf_ntohs(frag) & 0xfff8) {
				*off = NO_HEADER; /* offset > 0: the transport header is elsewhere */
				return eh[0];
			}
		} else if (proto == NEXTHDR_AUTH) {
			*off += (eh[1] + 2) * 4;
		} else {
			*off += (eh[1] + 1) * 8;
		}
		proto = eh[0];
	}
	if (proto == NEXTHDR_HOP || proto == NEXTHDR_ROUTING || proto == NEXTHDR_DEST ||
	    proto == NEXTHDR_FRAGMENT || proto == NEXTHDR_AUTH)
		*off = NO_HEADER; /* more headers than walked: no ports */
	return proto;
}

/* The packet's addresses and ports from its headers, where they are set. */
static __always_inline void parse_headers(struct sk_buff *skb, struct drop_key *k)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u16 nh = BPF_CORE_READ(skb, network_header);
	__u16 th = BPF_CORE_READ(skb, transport_header);
	__u16 l3 = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	__u8 first = 0;
	__u16 l4off = 0;
	__u16 ports[2];

	k->l3proto = l3;
	if (!head || nh == NO_HEADER || nh == 0)
		return;
	if (bpf_probe_read_kernel(&first, 1, head + nh))
		return;
	/* locally made packets have no ethertype before the output path sets
	 * it: then the IP version decides, if it agrees with the socket */
	if ((first >> 4) == 4 && (l3 == ETH_P_IP || (l3 == 0 && k->family != AF_INET6))) {
		struct iphdr ip;

		if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) || ip.ihl < 5)
			return;
		k->l3proto = ETH_P_IP;
		k->family = AF_INET;
		k->proto = ip.protocol;
		__builtin_memset(k->saddr, 0, 32);
		__builtin_memcpy(k->saddr, &ip.saddr, 4);
		__builtin_memcpy(k->daddr, &ip.daddr, 4);
		k->flags |= DROP_F_HEADERS;
		if (bpf_ntohs(ip.frag_off) & 0x1fff)
			return; /* not the first fragment: no ports */
		l4off = nh + ip.ihl * 4;
	} else if ((first >> 4) == 6 && (l3 == ETH_P_IPV6 || (l3 == 0 && k->family != AF_INET))) {
		struct ipv6hdr ip6;

		if (bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return;
		k->l3proto = ETH_P_IPV6;
		k->family = AF_INET6;
		__builtin_memcpy(k->saddr, &ip6.saddr, 16);
		__builtin_memcpy(k->daddr, &ip6.daddr, 16);
		k->flags |= DROP_F_HEADERS;
		l4off = nh + sizeof(ip6);
		k->proto = ipv6_skip_ext(head, ip6.nexthdr, &l4off);
		if (l4off == NO_HEADER)
			return; /* not the first fragment, or unreadable: no ports */
	} else {
		return;
	}
	if (k->proto != IPPROTO_TCP && k->proto != IPPROTO_UDP)
		return;
	if (th != NO_HEADER && th > nh)
		l4off = th;
	if (bpf_probe_read_kernel(ports, sizeof(ports), head + l4off))
		return;
	k->sport = bpf_ntohs(ports[0]);
	k->dport = bpf_ntohs(ports[1]);
}

/* The socket's tuple (local as source) when the headers gave none. */
static __always_inline void sock_tuple(struct sock *sk, struct drop_key *k, int family)
{
	if (family == AF_INET) {
		__u32 l = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__u32 r = BPF_CORE_READ(sk, __sk_common.skc_daddr);

		__builtin_memcpy(k->saddr, &l, 4);
		__builtin_memcpy(k->daddr, &r, 4);
	} else {
		BPF_CORE_READ_INTO(&k->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&k->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	k->sport = BPF_CORE_READ(sk, __sk_common.skc_num);
	k->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	k->family = family;
}

/* Attribution to an inet socket: its netns, cgroup, inode and its owner
 * where one is known. */
static __always_inline struct drop_owner *from_socket(struct sock *sk, struct drop_key *k)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__u8 state = BPF_CORE_READ(sk, __sk_common.skc_state);
	__u64 skp = (__u64)sk;
	struct drop_owner *o, wanted = {};

	if (family != AF_INET && family != AF_INET6)
		return NULL;
	k->flags |= DROP_F_SOCK;
	k->netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (!(k->flags & DROP_F_HEADERS)) {
		sock_tuple(sk, k, family);
		k->flags |= DROP_F_LOCAL_SRC;
		if (state == TCP_NEW_SYN_RECV || state == TCP_TIME_WAIT)
			k->proto = IPPROTO_TCP;
		else
			k->proto = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
	} else if (k->sport == BPF_CORE_READ(sk, __sk_common.skc_num)) {
		k->flags |= DROP_F_LOCAL_SRC;
	}
	/* request and time-wait socks end at sock_common: no cgroup, no inode */
	if (state == TCP_NEW_SYN_RECV || state == TCP_TIME_WAIT)
		return NULL;
	if (bpf_core_field_exists(struct sock_cgroup_data, cgroup))
		k->cgroup_id = BPF_CORE_READ(sk, sk_cgrp_data.cgroup, kn, id);
	/* an orphaned socket (closed by its process) has no file, no inode */
	k->sock_ino = BPF_CORE_READ(sk, sk_socket, file, f_inode, i_ino);
	o = bpf_map_lookup_elem(&drop_owners, &skp);
	if (o)
		return o;
	if (!k->sock_ino)
		return NULL;
	o = bpf_map_lookup_elem(&drop_ino_owners, &k->sock_ino);
	if (o && o->tgid)
		return o;
	if (!o)
		bpf_map_update_elem(&drop_ino_owners, &k->sock_ino, &wanted, BPF_NOEXIST);
	stat_inc(DROP_STAT_OWNER_WANTED);
	return NULL;
}

static __always_inline int on_drop(struct sk_buff *skb, void *location, __u32 reason,
				   bool has_reason, struct sock *rx_sk)
{
	struct drop_key k = {};
	struct drop_value fresh = {}, *v;
	struct net_device *dev;
	struct sock *sk;
	struct drop_owner *owner;
	__u64 now;
	long err;

	if (!skb)
		return 0;
	if (has_reason && bpf_core_enum_value_exists(enum skb_drop_reason, SKB_CONSUMED) &&
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_CONSUMED)) {
		stat_inc(DROP_STAT_CONSUMED);
		return 0;
	}
	/* Closing a TCP socket whose FIN the application never read (it closed
	 * without a read returning 0) purges that FIN's empty skb: no data is
	 * lost, and at connection-churn rates it is one "drop" per connection */
	if (has_reason &&
	    bpf_core_enum_value_exists(enum skb_drop_reason, SKB_DROP_REASON_QUEUE_PURGE) &&
	    reason == bpf_core_enum_value(enum skb_drop_reason, SKB_DROP_REASON_QUEUE_PURGE) &&
	    BPF_CORE_READ(skb, len) == 0) {
		stat_inc(DROP_STAT_EMPTY_PURGED);
		return 0;
	}
	stat_inc(DROP_STAT_SEEN);
	k.location = (__u64)location;
	if (has_reason) {
		k.reason = reason;
		k.flags |= DROP_F_REASON;
	}
	sk = BPF_CORE_READ(skb, sk);
	if (!sk)
		sk = rx_sk;
	if (sk)
		k.family = BPF_CORE_READ(sk, __sk_common.skc_family);
	parse_headers(skb, &k);
	dev = BPF_CORE_READ(skb, dev);
	if (dev) {
		k.ifindex = BPF_CORE_READ(dev, ifindex);
		k.netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	}
	owner = sk ? from_socket(sk, &k) : NULL;
	if (!(k.flags & DROP_F_SOCK) && !(k.flags & DROP_F_HEADERS))
		k.family = 0; /* neither socket nor headers said */

	now = bpf_ktime_get_ns();
	v = bpf_map_lookup_elem(&packet_drops, &k);
	if (!v) {
		fresh.first_ns = now;
		if (owner) {
			fresh.tgid = owner->tgid;
			__builtin_memcpy(fresh.comm, owner->comm, sizeof(fresh.comm));
		}
		if (dev)
			BPF_CORE_READ_INTO(&fresh.ifname, dev, name);
		err = bpf_map_update_elem(&packet_drops, &k, &fresh, BPF_NOEXIST);
		if (err == 0)
			stat_inc(DROP_STAT_INSERTS);
		else if (err != -17 /* EEXIST: another CPU made it */)
			stat_inc(DROP_STAT_UPDATE_FAILED);
		v = bpf_map_lookup_elem(&packet_drops, &k);
		if (!v)
			return 0;
	}
	if (owner && !v->tgid) { /* learnt after this key's first drop */
		__builtin_memcpy(v->comm, owner->comm, sizeof(v->comm));
		v->tgid = owner->tgid;
	}
	__sync_fetch_and_add(&v->count, 1);
	__sync_fetch_and_add(&v->bytes, BPF_CORE_READ(skb, len));
	v->last_ns = now;
	return 0;
}

/*
 * The tracepoint's arguments: (skb, location) before 5.17, then reason,
 * then rx_sk (6.11+). A BTF rung reads only the arguments this kernel's
 * tracepoint has (a CO-RE field-existence check; the other reads are dead
 * code the verifier never sees).
 */
static __always_inline int on_drop_args(__u64 *ctx)
{
	struct sock *rx_sk = NULL;
	__u32 reason = 0;
	bool has_reason = bpf_core_field_exists(struct trace_event_raw_kfree_skb, reason);

	if (has_reason)
		reason = (__u32)ctx[2];
	if (bpf_core_field_exists(struct trace_event_raw_kfree_skb, rx_sk))
		rx_sk = (struct sock *)ctx[3];
	return on_drop((struct sk_buff *)ctx[0], (void *)ctx[1], reason, has_reason, rx_sk);
}

SEC("tp_btf/kfree_skb")
int drop_tp_btf(__u64 *ctx)
{
	return on_drop_args(ctx);
}

SEC("raw_tp/kfree_skb")
int drop_raw_tp(__u64 *ctx)
{
	return on_drop_args(ctx);
}

SEC("tracepoint/skb/kfree_skb")
int drop_tracepoint(struct trace_event_raw_kfree_skb *ctx)
{
	struct sock *rx_sk = NULL;
	__u32 reason = 0;
	bool has_reason = bpf_core_field_exists(ctx->reason);

	if (has_reason)
		reason = BPF_CORE_READ(ctx, reason);
	if (bpf_core_field_exists(ctx->rx_sk))
		rx_sk = BPF_CORE_READ(ctx, rx_sk);
	return on_drop((struct sk_buff *)ctx->skbaddr, ctx->location, reason, has_reason, rx_sk);
}

/*
 * Owners: connect() moves a TCP socket to SYN_SENT in the caller's
 * context, so the current task owns it. Forgotten at CLOSE, before the
 * socket's memory can be reused by another.
 */
static __always_inline int on_state(struct sock *sk, int newstate)
{
	struct drop_owner o = {};
	__u64 skp = (__u64)sk;

	if (!sk)
		return 0;
	if (newstate == TCP_SYN_SENT) {
		o.tgid = bpfscope_current_tgid();
		o.cgroup_id = bpf_get_current_cgroup_id();
		bpf_get_current_comm(o.comm, sizeof(o.comm));
		bpf_map_update_elem(&drop_owners, &skp, &o, BPF_ANY);
	} else if (newstate == TCP_CLOSE) {
		bpf_map_delete_elem(&drop_owners, &skp);
	}
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(owner_tp_btf, struct sock *sk, int oldstate, int newstate)
{
	return on_state(sk, newstate);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(owner_raw_tp, struct sock *sk, int oldstate, int newstate)
{
	return on_state(sk, newstate);
}

SEC("tracepoint/sock/inet_sock_set_state")
int owner_tracepoint(struct trace_event_raw_inet_sock_set_state *ctx)
{
	return on_state((struct sock *)ctx->skaddr, ctx->newstate);
}

/*
 * The sweep (iter/task_file, run by the collector when drops wait for an
 * owner, rate-limited): every socket file whose inode a drop asked about
 * gets the process holding it. A socket shared by several processes (fork,
 * SCM_RIGHTS) goes to the first one visited. Threads of one process share
 * the file table: the iterator visits it once per process.
 */
SEC("iter/task_file")
int drops_sweep(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct drop_owner *o;
	struct socket *so;
	__u32 ino;

	if (!task || !file)
		return 0;
	so = bpf_sock_from_file(file);
	if (!so)
		return 0;
	ino = BPF_CORE_READ(file, f_inode, i_ino);
	o = bpf_map_lookup_elem(&drop_ino_owners, &ino);
	if (!o || o->tgid)
		return 0;
	o->cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	BPF_CORE_READ_INTO(&o->comm, task, comm);
	o->tgid = BPF_CORE_READ(task, tgid);
	stat_inc(DROP_STAT_SWEPT);
	return 0;
}

/* Keeps the structs in the object's BTF for the layout test. */
const struct drop_owner *unused_drop_owner __attribute__((unused));

char LICENSE[] SEC("license") = "Dual BSD/GPL";
