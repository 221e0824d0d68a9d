// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * Flow monitor: per-flow TCP/UDP bytes and calls each way, keyed by
 * (cgroup, netns, process, 5-tuple), plus TCP lifecycle (open, close,
 * retransmits, resets) over a ring buffer, folded into the same table.
 *
 * Traffic has two hooks, send and recv, and one body (on_traffic). On the
 * tracepoint rungs (tp_btf -> raw_tp -> tracepoint on
 * sock:sock_{send,recv}_length) one program sees every socket and
 * dispatches on its family and protocol; the function rungs (fexit on the
 * protocols' sendmsg/recvmsg, kprobe) need one program per kernel function,
 * loaded together as one rung. So every send or receive runs exactly one
 * program. Traffic hooks run in process context and record the owner of
 * every TCP socket; softirq events (state changes, retransmits, resets) use
 * that recorded owner, never the task that happens to be running.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "common.h"
#include "flows.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define SOCK_STREAM 1
#define SOCK_DGRAM 2
#define MSG_PEEK 0x2
#define MSG_ERRQUEUE 0x2000

/* TCP states (include/net/tcp_states.h) */
#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_SYN_RECV 3
#define TCP_CLOSE 7
#define TCP_LISTEN 10

#define SK_SHUTDOWN_BOTH 3 /* SHUTDOWN_MASK: RCV_SHUTDOWN | SEND_SHUTDOWN */
#define DIR_TX 0
#define DIR_RX 1

/* Filters, set before load (0 = everything). */
const volatile __u32 filter_tgid = 0;
const volatile __u64 filter_cgroup = 0;
const volatile __u16 filter_port = 0;
const volatile __u8 filter_family = 0;
/* Set by the collector where iter/tcp runs: TCP volume is read from each
 * socket's tcp_sock counters (iterator each poll, CLOSE, destroy) and the
 * traffic hooks, if loaded at all, skip TCP. */
const volatile __u8 tcp_counters = 0;
/* --no-udp where TCP still needs the traffic hooks (the table path). */
const volatile __u8 skip_udp = 0;

/*
 * The flow table and the owner table hold one entry per live flow / TCP
 * socket: not preallocated, so their memory follows the load (a bucket
 * array of 16 bytes per slot at start, then per entry) instead of the full
 * capacity at start (~81 MiB as preallocated LRUs). Nothing is evicted:
 * the collector deletes closed and idle flows, tcp_destroy_sock the owner
 * records; an insert into a full table is refused and counted.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 262144);
	__type(key, struct flow_key);
	__type(value, struct flow_value);
} flows SEC(".maps");

/* Owner of each TCP socket, keyed by the struct sock address. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(max_entries, 131072);
	__type(key, __u64);
	__type(value, struct sk_owner);
} flow_socks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, struct listen_key);
	__type(value, struct sk_owner);
} flow_listeners SEC(".maps");

/*
 * Network namespaces with TCP sockets -> a process in each (counters path):
 * iter/tcp walks the sockets of the namespace it is created in, so the
 * collector creates one iterator per namespace, entering it through
 * /proc/PID/ns/net. Written by connect, listen, accept and the sweep.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u32);
} flow_netns SEC(".maps");

static __always_inline void note_netns(__u32 netns, __u32 tgid)
{
	__u32 *seen;

	if (!tcp_counters || !tgid)
		return;
	seen = bpf_map_lookup_elem(&flow_netns, &netns);
	if (!seen || *seen != tgid)
		bpf_map_update_elem(&flow_netns, &netns, &tgid, BPF_ANY);
}

/* Last UDP route lookup per thread (tracepoint rungs: unconnected sends). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct udp_dest);
} flow_udp_dests SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1024 * 1024);
} flow_events SEC(".maps");

BPFSCOPE_DROP_COUNTER(flow_events_dropped);

/* Keeps struct flow_event in the object's BTF for the layout test. */
const struct flow_event *unused_flow_event __attribute__((unused));

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, FLOW_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} flows_stats SEC(".maps");

/*
 * Traffic timestamps (first/last seen) at tick resolution: reading the
 * clock costs more than the rest of an event's accounting in a VM, so each
 * CPU reads it once per jiffy and reuses it within that tick (at most one
 * tick early, same clock as bpf_ktime_get_ns). Lifecycle events keep exact
 * times.
 */
struct tick_clock {
	__u64 jiffies;
	__u64 ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tick_clock);
} flow_clock SEC(".maps");

static __always_inline __u64 tick_now(void)
{
	struct tick_clock *c;
	__u32 zero = 0;
	__u64 j;

	if (!bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_jiffies64))
		return bpf_ktime_get_ns(); /* before 5.5 */
	c = bpf_map_lookup_elem(&flow_clock, &zero);
	if (!c)
		return bpf_ktime_get_ns();
	j = bpf_jiffies64();
	if (c->jiffies != j) {
		c->jiffies = j;
		c->ns = bpf_ktime_get_ns();
	}
	return c->ns;
}

static __always_inline void stat_inc(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&flows_stats, &slot);

	if (v)
		*v += 1;
}

/*
 * Socket reads. tp_btf and fexit programs get a BTF-typed sk and load its
 * fields directly (CO-RE relocated loads, no helper call); raw_tp,
 * tracepoint and kprobe programs go through bpf_probe_read_kernel.
 * `direct` is a constant in every program, so each keeps one form only.
 */
#define SK_READ(direct, sk, field) ((direct) ? (sk)->field : BPF_CORE_READ(sk, field))

static __always_inline __u32 sk_netns(struct sock *sk, bool direct)
{
	if (direct)
		return sk->__sk_common.skc_net.net->ns.inum;
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

/* Protocol of a TCP (SOCK_STREAM) or UDP (SOCK_DGRAM) socket, else 0
 * (raw sockets carry IPPROTO_TCP/UDP too). Bitfields on older kernels. */
static __always_inline int sk_proto(struct sock *sk, bool direct)
{
	int proto, type;

	if (direct) {
		proto = BPF_CORE_READ_BITFIELD(sk, sk_protocol);
		type = BPF_CORE_READ_BITFIELD(sk, sk_type);
	} else {
		proto = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
		type = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_type);
	}
	if (proto == IPPROTO_TCP && type == SOCK_STREAM)
		return IPPROTO_TCP;
	if (proto == IPPROTO_UDP && type == SOCK_DGRAM)
		return IPPROTO_UDP;
	return 0;
}

/* Fill the tuple part of a key from a socket of a known family. */
static __always_inline void sk_tuple_of(struct sock *sk, struct flow_key *k, int family,
					bool direct)
{
	if (family == AF_INET) {
		__u32 l = SK_READ(direct, sk, __sk_common.skc_rcv_saddr);
		__u32 r = SK_READ(direct, sk, __sk_common.skc_daddr);

		__builtin_memcpy(k->laddr, &l, 4);
		__builtin_memcpy(k->raddr, &r, 4);
	} else if (direct) {
		__builtin_memcpy(k->laddr, sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8, 16);
		__builtin_memcpy(k->raddr, sk->__sk_common.skc_v6_daddr.in6_u.u6_addr8, 16);
	} else {
		BPF_CORE_READ_INTO(&k->laddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&k->raddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
	k->family = family;
	k->lport = SK_READ(direct, sk, __sk_common.skc_num);
	k->rport = bpf_ntohs(SK_READ(direct, sk, __sk_common.skc_dport));
	k->netns = sk_netns(sk, direct);
}

/* Fill the tuple part of a key from the socket; returns the family or 0. */
static __always_inline int sk_tuple(struct sock *sk, struct flow_key *k, bool direct)
{
	__u16 family = SK_READ(direct, sk, __sk_common.skc_family);

	if (family != AF_INET && family != AF_INET6)
		return 0;
	sk_tuple_of(sk, k, family, direct);
	return family;
}

static __always_inline bool filtered_tuple(const struct flow_key *k)
{
	if (filter_family && k->family != filter_family)
		return true;
	if (filter_port && k->lport != filter_port && k->rport != filter_port)
		return true;
	return false;
}

static __always_inline bool filtered_owner(__u32 tgid, __u64 cgroup_id)
{
	if (filter_tgid && tgid != filter_tgid)
		return true;
	if (filter_cgroup && cgroup_id != filter_cgroup)
		return true;
	return false;
}

static __always_inline bool is_zero16(const __u8 *a)
{
	__u64 x0, x1;

	__builtin_memcpy(&x0, a, 8);
	__builtin_memcpy(&x1, a + 8, 8);
	return (x0 | x1) == 0;
}

static struct flow_value zero_value = {};

/*
 * Find a flow, creating it (counted) if it is new. comm: the owner's
 * command name, or NULL for the current task's (read only when the flow is
 * created, not on every event).
 */
static __always_inline struct flow_value *flow_get(const struct flow_key *k, const char *comm,
						   __u64 now)
{
	struct flow_value *v = bpf_map_lookup_elem(&flows, k);
	long err;

	if (v)
		return v;
	err = bpf_map_update_elem(&flows, k, &zero_value, BPF_NOEXIST);
	if (err == 0)
		stat_inc(FLOW_STAT_INSERTS);
	else if (err != -17 /* EEXIST: another CPU won the race */)
		stat_inc(FLOW_STAT_UPDATE_FAILED);
	v = bpf_map_lookup_elem(&flows, k);
	if (v && v->first_ns == 0) {
		v->first_ns = now;
		if (comm)
			__builtin_memcpy(v->comm, comm, FLOWS_COMM_LEN);
		else
			bpf_get_current_comm(v->comm, sizeof(v->comm));
	}
	return v;
}

/* Tuple fields between a flow_key and an sk_owner. */
#define COPY_TUPLE(dst, src)                                                    \
	do {                                                                    \
		__builtin_memcpy((dst)->laddr, (src)->laddr, 16);               \
		__builtin_memcpy((dst)->raddr, (src)->raddr, 16);               \
		(dst)->lport = (src)->lport;                                    \
		(dst)->rport = (src)->rport;                                    \
		(dst)->netns = (src)->netns;                                    \
		(dst)->family = (src)->family;                                  \
	} while (0)

/* A socket's complete tuple, for events after the kernel cleared its port. */
static __always_inline void remember_tuple(struct sk_owner *o, const struct flow_key *k)
{
	COPY_TUPLE(o, k);
	o->has_tuple = 1;
}

/*
 * Record (or refresh) the owner of a TCP socket seen in process context,
 * and remember its tuple once complete. A socket already in CLOSE (data
 * still read after a reset) has lost its local port: use the remembered one.
 */
static __always_inline void own_socket(struct sock *sk, struct flow_key *k, __u32 tgid,
				       __u64 cgroup_id)
{
	__u64 skp = (__u64)sk;
	struct sk_owner *o = bpf_map_lookup_elem(&flow_socks, &skp);
	struct sk_owner fresh = {};

	if (o && o->has_tuple && k->lport == 0) {
		COPY_TUPLE(k, o);
		return;
	}
	if (o && !o->closed) {
		if (!o->has_tuple && k->lport && k->rport)
			remember_tuple(o, k);
		if (o->tgid != tgid || o->cgroup_id != cgroup_id) {
			if (o->tgid == 0 && o->direction == FLOW_DIR_PASSIVE) {
				/* accepted from a listener that predates us: now
				 * we know who serves that port */
				struct listen_key lk = {};
				struct sk_owner lo = {};

				lk.netns = k->netns;
				lk.port = k->lport;
				lk.family = k->family;
				lo.tgid = tgid;
				lo.cgroup_id = cgroup_id;
				bpf_get_current_comm(lo.comm, sizeof(lo.comm));
				bpf_map_update_elem(&flow_listeners, &lk, &lo, BPF_NOEXIST);
			}
			o->tgid = tgid;
			o->cgroup_id = cgroup_id;
			bpf_get_current_comm(o->comm, sizeof(o->comm));
		}
		return;
	}
	fresh.tgid = tgid;
	fresh.cgroup_id = cgroup_id;
	bpf_get_current_comm(fresh.comm, sizeof(fresh.comm));
	if (k->lport && k->rport)
		remember_tuple(&fresh, k);
	/* new socket, or a freed one's address reused: start over */
	if (bpf_map_update_elem(&flow_socks, &skp, &fresh, BPF_ANY))
		stat_inc(FLOW_STAT_SK_UPDATE_FAILED);
}

/* Remote of an unconnected send, from a kernel sockaddr (msg->msg_name). */
static __always_inline bool dest_from_sockaddr(struct flow_key *k, const void *name)
{
	__u16 family = 0;

	if (!name)
		return false;
	bpf_probe_read_kernel(&family, sizeof(family), name);
	if (family == AF_INET) {
		struct sockaddr_in sin = {};

		bpf_probe_read_kernel(&sin, sizeof(sin), name);
		__builtin_memset(k->raddr, 0, sizeof(k->raddr));
		if (k->family == AF_INET6) {
			/* v4 destination from a dual-stack socket: ::ffff:a.b.c.d */
			k->raddr[10] = 0xff;
			k->raddr[11] = 0xff;
			__builtin_memcpy(&k->raddr[12], &sin.sin_addr.s_addr, 4);
		} else {
			__builtin_memcpy(k->raddr, &sin.sin_addr.s_addr, 4);
		}
		k->rport = bpf_ntohs(sin.sin_port);
		return true;
	}
	if (family == AF_INET6) {
		struct sockaddr_in6 sin6 = {};

		bpf_probe_read_kernel(&sin6, sizeof(sin6), name);
		__builtin_memcpy(k->raddr, sin6.sin6_addr.in6_u.u6_addr8, 16);
		k->rport = bpf_ntohs(sin6.sin6_port);
		return true;
	}
	return false;
}

/*
 * The one traffic body. bytes: what the call moved (<= 0: nothing).
 * want_proto: the protocol a function rung's program is for, or 0 on the
 * tracepoint rungs (every socket: dispatch on family and protocol).
 * direct: sk is BTF-typed (tp_btf, fexit). msg: the msghdr when the rung
 * sees it (fexit, kprobe), else NULL; use_route_stash: tracepoint rungs,
 * where an unconnected UDP send takes its remote from the route lookup this
 * thread just made, if any.
 */
static __always_inline int on_traffic_n(struct sock *sk, long bytes, int flags, int dir,
					int want_proto, bool direct, struct msghdr *msg,
					bool use_route_stash, int calls)
{
	struct flow_key k = {};
	struct flow_value *v;
	__u64 pid_tgid, cgroup_id, now;
	__u32 tgid;
	int family, proto;

	if (bytes <= 0 || !sk)
		return 0;
	if (dir == DIR_RX && (flags & (MSG_PEEK | MSG_ERRQUEUE)))
		return 0;
	/* cheapest rejections first: other families (unix, netlink, ...),
	 * then the in-kernel filters that need no socket reads */
	family = SK_READ(direct, sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	if (filter_family && family != filter_family)
		return 0;
	pid_tgid = bpf_get_current_pid_tgid();
	tgid = pid_tgid >> 32;
	if (filter_tgid && tgid != filter_tgid)
		return 0;
	proto = sk_proto(sk, direct);
	if (!proto || (want_proto && proto != want_proto))
		return 0;
	if (tcp_counters && proto == IPPROTO_TCP)
		return 0; /* TCP volume comes from the kernel's own counters */
	if (skip_udp && proto == IPPROTO_UDP)
		return 0;
	cgroup_id = bpf_get_current_cgroup_id();
	if (filter_cgroup && cgroup_id != filter_cgroup)
		return 0;
	sk_tuple_of(sk, &k, family, direct);
	k.proto = proto;
	k.tgid = tgid;
	k.cgroup_id = cgroup_id;
	now = tick_now();

	if (proto == IPPROTO_TCP) {
		/*
		 * Fast path: this process already has a flow for this tuple,
		 * so the socket's owner was recorded when that flow was made.
		 * Else record the owner (which also restores the tuple of a
		 * socket that already went to CLOSE) and create the flow.
		 * (A socket used by two processes in turn keeps the owner of
		 * whichever created its flow last; one lookup per event instead
		 * of two is worth that.)
		 */
		v = bpf_map_lookup_elem(&flows, &k);
		if (!v) {
			own_socket(sk, &k, tgid, cgroup_id);
			if (filtered_tuple(&k))
				return 0;
			v = flow_get(&k, NULL, now);
		}
	} else {
		if (dir == DIR_TX) {
			bool known = false;

			if (msg)
				known = dest_from_sockaddr(&k, BPF_CORE_READ(msg, msg_name));
			if (use_route_stash) {
				struct udp_dest *d = bpf_map_lookup_elem(&flow_udp_dests, &pid_tgid);

				if (d && d->lport == k.lport && d->family == family) {
					__builtin_memcpy(k.raddr, d->raddr, 16);
					k.rport = d->rport;
					known = true;
				}
				if (d)
					bpf_map_delete_elem(&flow_udp_dests, &pid_tgid);
			}
			if (k.rport == 0 || is_zero16(k.raddr)) {
				k.flags |= FLOW_F_REMOTE_UNKNOWN;
				__builtin_memset(k.raddr, 0, sizeof(k.raddr));
				k.rport = 0;
				stat_inc(FLOW_STAT_UDP_DEST_MISS);
			} else if (known) {
				stat_inc(FLOW_STAT_UDP_DEST_HIT);
			}
		} else if (k.rport == 0) {
			/* unconnected receive: the sender is not visible here */
			k.flags |= FLOW_F_REMOTE_UNKNOWN;
			__builtin_memset(k.raddr, 0, sizeof(k.raddr));
		}
		if (filtered_tuple(&k))
			return 0;
		v = flow_get(&k, NULL, now);
	}
	if (!v)
		return 0;
	if (dir == DIR_TX) {
		__sync_fetch_and_add(&v->tx_bytes, bytes);
		__sync_fetch_and_add(&v->tx_calls, calls);
	} else {
		__sync_fetch_and_add(&v->rx_bytes, bytes);
		__sync_fetch_and_add(&v->rx_calls, calls);
	}
	v->last_ns = now;
	return 0;
}

/* One call that moved `bytes`. */
static __always_inline int on_traffic(struct sock *sk, long bytes, int flags, int dir,
				      int want_proto, bool direct, struct msghdr *msg,
				      bool use_route_stash)
{
	return on_traffic_n(sk, bytes, flags, dir, want_proto, direct, msg, use_route_stash, 1);
}

/* ---------------------------------------------------------------------- */
/* UDP destinations seen on route lookups (for tracepoint rungs)           */

#define LOOPBACK_IFINDEX 1

/*
 * Only output lookups made for a send: they carry both ports and iif ==
 * LOOPBACK_IFINDEX. Input lookups (packets received in softirq, possibly on
 * this very thread between its route lookup and sock_send_length) have no
 * ports unless policy routing dissects them, and the receiving device's
 * iif, so they never overwrite the sender's entry.
 */
static __always_inline void stash_dest(struct udp_dest *d, int iif)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	if ((__u32)pid_tgid == 0 || iif != LOOPBACK_IFINDEX || !d->lport || !d->rport)
		return;
	bpf_map_update_elem(&flow_udp_dests, &pid_tgid, d, BPF_ANY);
}

static __always_inline int on_fib4(const struct flowi4 *flp)
{
	struct udp_dest d = {};
	__u32 daddr;

	if (BPF_CORE_READ(flp, __fl_common.flowic_proto) != IPPROTO_UDP)
		return 0;
	daddr = BPF_CORE_READ(flp, daddr);
	__builtin_memcpy(d.raddr, &daddr, 4);
	d.lport = bpf_ntohs(BPF_CORE_READ(flp, uli.ports.sport));
	d.rport = bpf_ntohs(BPF_CORE_READ(flp, uli.ports.dport));
	d.family = AF_INET;
	stash_dest(&d, BPF_CORE_READ(flp, __fl_common.flowic_iif));
	return 0;
}

static __always_inline int on_fib6(const struct flowi6 *flp)
{
	struct udp_dest d = {};

	if (BPF_CORE_READ(flp, __fl_common.flowic_proto) != IPPROTO_UDP)
		return 0;
	BPF_CORE_READ_INTO(&d.raddr, flp, daddr.in6_u.u6_addr8);
	d.lport = bpf_ntohs(BPF_CORE_READ(flp, uli.ports.sport));
	d.rport = bpf_ntohs(BPF_CORE_READ(flp, uli.ports.dport));
	d.family = AF_INET6;
	stash_dest(&d, BPF_CORE_READ(flp, __fl_common.flowic_iif));
	return 0;
}

SEC("tp_btf/fib_table_lookup")
int BPF_PROG(udp_dest_tp_btf, u32 tb_id, const struct flowi4 *flp)
{
	return on_fib4(flp);
}

SEC("raw_tp/fib_table_lookup")
int BPF_PROG(udp_dest_raw_tp, u32 tb_id, const struct flowi4 *flp)
{
	return on_fib4(flp);
}

SEC("tp_btf/fib6_table_lookup")
int BPF_PROG(udp6_dest_tp_btf, const struct net *net, const void *res, void *table,
	     const struct flowi6 *flp)
{
	return on_fib6(flp);
}

SEC("raw_tp/fib6_table_lookup")
int BPF_PROG(udp6_dest_raw_tp, const struct net *net, const void *res, void *table,
	     const struct flowi6 *flp)
{
	return on_fib6(flp);
}

/* ---------------------------------------------------------------------- */
/* Traffic programs                                                        */

/* Tracepoint rungs: one program per direction sees TCP, UDP and UDPv6. */
SEC("tp_btf/sock_send_length")
int BPF_PROG(send_tp_btf, struct sock *sk, int ret, int flags)
{
	return on_traffic(sk, ret, flags, DIR_TX, 0, true, NULL, true);
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(recv_tp_btf, struct sock *sk, int ret, int flags)
{
	return on_traffic(sk, ret, flags, DIR_RX, 0, true, NULL, false);
}

SEC("raw_tp/sock_send_length")
int BPF_PROG(send_raw_tp, struct sock *sk, int ret, int flags)
{
	return on_traffic(sk, ret, flags, DIR_TX, 0, false, NULL, true);
}

SEC("raw_tp/sock_recv_length")
int BPF_PROG(recv_raw_tp, struct sock *sk, int ret, int flags)
{
	return on_traffic(sk, ret, flags, DIR_RX, 0, false, NULL, false);
}

SEC("tracepoint/sock/sock_send_length")
int send_tracepoint(struct trace_event_raw_sock_msg_length *ctx)
{
	return on_traffic((struct sock *)ctx->sk, ctx->ret, ctx->flags, DIR_TX, 0, false, NULL,
			  true);
}

SEC("tracepoint/sock/sock_recv_length")
int recv_tracepoint(struct trace_event_raw_sock_msg_length *ctx)
{
	return on_traffic((struct sock *)ctx->sk, ctx->ret, ctx->flags, DIR_RX, 0, false, NULL,
			  false);
}

/*
 * Function rungs: one program per kernel function, loaded together.
 * fexit: the return value is what moved. The sendmsg functions keep
 * (sk, msg, len), so their return value follows those three arguments.
 * recvmsg lost its `nonblock` argument in 5.19: where the kernel has
 * bpf_get_func_arg_cnt/bpf_get_func_ret (5.17+) ask it, else (5.5-5.16)
 * the layout is (sk, msg, len, nonblock, flags, addr_len) + return value.
 */
static __always_inline long recv_ret(void *ctx)
{
	__u64 ret = 0;

	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_func_ret))
		bpf_get_func_ret(ctx, &ret);
	else /* one load at ctx + 48: the verifier refuses a moved ctx pointer */
		asm volatile("%0 = *(u64 *)(%1 + 48)" : "=r"(ret) : "r"(ctx));
	return (long)(int)ret;
}

static __always_inline int recv_flags(void *ctx)
{
	__u64 flags = 0;

	if (bpf_core_enum_value_exists(enum bpf_func_id, BPF_FUNC_get_func_arg_cnt))
		bpf_get_func_arg(ctx, bpf_get_func_arg_cnt(ctx) == 6 ? 4 : 3, &flags);
	else
		asm volatile("%0 = *(u64 *)(%1 + 32)" : "=r"(flags) : "r"(ctx));
	return (int)flags;
}

SEC("fexit/tcp_sendmsg")
int BPF_PROG(tcp_send_fexit, struct sock *sk, struct msghdr *msg, size_t size, int ret)
{
	return on_traffic(sk, ret, 0, DIR_TX, IPPROTO_TCP, true, NULL, false);
}

SEC("fexit/udp_sendmsg")
int BPF_PROG(udp_send_fexit, struct sock *sk, struct msghdr *msg, size_t len, int ret)
{
	return on_traffic(sk, ret, 0, DIR_TX, IPPROTO_UDP, true, msg, false);
}

SEC("fexit/udpv6_sendmsg")
int BPF_PROG(udp6_send_fexit, struct sock *sk, struct msghdr *msg, size_t len, int ret)
{
	return on_traffic(sk, ret, 0, DIR_TX, IPPROTO_UDP, true, msg, false);
}

SEC("fexit/tcp_recvmsg")
int BPF_PROG(tcp_recv_fexit, struct sock *sk)
{
	return on_traffic(sk, recv_ret(ctx), recv_flags(ctx), DIR_RX, IPPROTO_TCP, true, NULL,
			  false);
}

SEC("fexit/udp_recvmsg")
int BPF_PROG(udp_recv_fexit, struct sock *sk)
{
	return on_traffic(sk, recv_ret(ctx), recv_flags(ctx), DIR_RX, IPPROTO_UDP, true, NULL,
			  false);
}

SEC("fexit/udpv6_recvmsg")
int BPF_PROG(udp6_recv_fexit, struct sock *sk)
{
	return on_traffic(sk, recv_ret(ctx), recv_flags(ctx), DIR_RX, IPPROTO_UDP, true, NULL,
			  false);
}

/*
 * kprobe rungs (oldest kernels): sendmsg's requested size, and what
 * tcp_cleanup_rbuf / skb_consume_udp (both UDP families) say was copied.
 */
SEC("kprobe/tcp_sendmsg")
int BPF_KPROBE(tcp_send_kprobe, struct sock *sk, struct msghdr *msg, size_t size)
{
	return on_traffic(sk, size, 0, DIR_TX, IPPROTO_TCP, false, NULL, false);
}

SEC("kprobe/udp_sendmsg")
int BPF_KPROBE(udp_send_kprobe, struct sock *sk, struct msghdr *msg, size_t len)
{
	return on_traffic(sk, len, 0, DIR_TX, IPPROTO_UDP, false, msg, false);
}

SEC("kprobe/udpv6_sendmsg")
int BPF_KPROBE(udp6_send_kprobe, struct sock *sk, struct msghdr *msg, size_t len)
{
	return on_traffic(sk, len, 0, DIR_TX, IPPROTO_UDP, false, msg, false);
}

/*
 * tcp_recvmsg calls tcp_cleanup_rbuf(sk, copied) with the running total
 * each time it waits for more data, and once more at the end: a kprobe on
 * tcp_recvmsg's entry starts a per-thread count, so that only the growth
 * is added and the call is counted once. Without an entry (tcp_read_sock:
 * splice, kTLS) the whole `copied` counts.
 */
struct recv_call {
	__u64 sk;
	__s64 counted;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 8192);
	__type(key, __u64);
	__type(value, struct recv_call);
} flow_recv_calls SEC(".maps");

SEC("kprobe/tcp_recvmsg")
int BPF_KPROBE(tcp_recv_start_kprobe, struct sock *sk)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct recv_call c = { .sk = (__u64)sk };

	bpf_map_update_elem(&flow_recv_calls, &id, &c, BPF_ANY);
	return 0;
}

SEC("kprobe/tcp_cleanup_rbuf")
int BPF_KPROBE(tcp_recv_kprobe, struct sock *sk, int copied)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct recv_call *c = bpf_map_lookup_elem(&flow_recv_calls, &id);
	long bytes = copied;
	int calls = 1;

	if (c && c->sk == (__u64)sk) {
		bytes = copied - c->counted;
		if (bytes <= 0)
			return 0;
		calls = c->counted == 0;
		c->counted = copied;
	}
	return on_traffic_n(sk, bytes, 0, DIR_RX, IPPROTO_TCP, false, NULL, false, calls);
}

SEC("kprobe/skb_consume_udp")
int BPF_KPROBE(udp_recv_kprobe, struct sock *sk, struct sk_buff *skb, int len)
{
	return on_traffic(sk, len, 0, DIR_RX, IPPROTO_UDP, false, NULL, false);
}

/* ---------------------------------------------------------------------- */
/* TCP health (counters path): read with the counters, no per-packet cost  */

#define TCP_INFINITE_SSTHRESH 0x7fffffff
#define TCP_CHRONO_BUSY 1
#define TCP_CHRONO_SNDBUF_LIMITED 3

/* Latest health of each TCP flow (the iterator each poll, CLOSE last). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct flow_key);
	__type(value, struct tcp_health);
} flow_health SEC(".maps");

/*
 * What tcp_info reports (tcp_get_info): RTT, windows, delivery rate, and
 * the chrono times with the running period added as
 * tcp_get_info_chrono_stats does. Probe reads: chrono_type is a bitfield on
 * older kernels, and the close hook's sk is not a BTF pointer on every rung.
 */
static __always_inline void read_health(struct tcp_sock *tp, const struct sk_owner *o,
					struct tcp_health *h)
{
	__u32 now = (__u32)bpf_jiffies64();
	__u32 type = BPF_CORE_READ_BITFIELD_PROBED(tp, chrono_type);
	__u32 start = BPF_CORE_READ(tp, chrono_start);
	__u32 rate = BPF_CORE_READ(tp, rate_delivered);
	__u32 intv = BPF_CORE_READ(tp, rate_interval_us);
	__u32 i;

	h->mss = BPF_CORE_READ(tp, mss_cache);
	h->delivery_rate = rate && intv ? (__u64)rate * h->mss * 1000000ULL / intv : 0;
	h->jiffies = now;
	if (o->has_est_jiffies) {
		h->start_jiffies = o->est_jiffies;
		h->flags |= HEALTH_F_START;
	}
	for (i = 0; i < 3; i++) {
		h->chrono[i] = BPF_CORE_READ(tp, chrono_stat[i]);
		if (type == i + TCP_CHRONO_BUSY)
			h->chrono[i] += now - start;
	}
	h->srtt_us = BPF_CORE_READ(tp, srtt_us) >> 3;
	h->rttvar_us = BPF_CORE_READ(tp, mdev_us) >> 2;
	h->min_rtt_us = BPF_CORE_READ(tp, rtt_min.s[0].v);
	h->cwnd = BPF_CORE_READ(tp, snd_cwnd);
	h->ssthresh = BPF_CORE_READ(tp, snd_ssthresh);
	h->lost = BPF_CORE_READ(tp, lost);
	h->rcv_wnd = BPF_CORE_READ(tp, rcv_wnd);
	h->snd_wnd = BPF_CORE_READ(tp, snd_wnd);
	h->flags |= HEALTH_F_READ;
}

/* ---------------------------------------------------------------------- */
/* TCP lifecycle                                                           */

/*
 * Flow key of a TCP socket from its recorded owner: the tuple remembered
 * once complete, else read now (and remembered if complete).
 */
static __always_inline bool owned_key(struct sock *sk, struct sk_owner *o, struct flow_key *k,
				      bool direct)
{
	if (o->has_tuple) {
		COPY_TUPLE(k, o);
	} else {
		if (!sk_tuple(sk, k, direct))
			return false;
		if (k->lport && k->rport)
			remember_tuple(o, k);
	}
	k->proto = IPPROTO_TCP;
	k->tgid = o->tgid;
	k->cgroup_id = o->cgroup_id;
	return !(filtered_tuple(k) || filtered_owner(o->tgid, o->cgroup_id));
}

static __always_inline void emit(struct sock *sk, const struct flow_key *k,
				 const struct sk_owner *o, const struct flow_value *v, __u8 type,
				 __u64 now, int oldstate, int newstate, bool direct)
{
	struct flow_event *e = bpf_ringbuf_reserve(&flow_events, sizeof(*e), 0);
	struct tcp_sock *tp = (struct tcp_sock *)sk;

	if (!e) {
		bpfscope_count_drop(&flow_events_dropped);
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->ts_ns = now;
	e->cgroup_id = k->cgroup_id;
	e->netns = k->netns;
	e->tgid = k->tgid;
	__builtin_memcpy(e->laddr, k->laddr, 16);
	__builtin_memcpy(e->raddr, k->raddr, 16);
	e->lport = k->lport;
	e->rport = k->rport;
	e->family = k->family;
	e->proto = IPPROTO_TCP;
	e->type = type;
	e->direction = o->direction;
	e->oldstate = oldstate;
	e->newstate = newstate;
	e->established = o->established;
	__builtin_memcpy(e->comm, o->comm, FLOWS_COMM_LEN);
	if (o->open_ns)
		e->duration_ns = now - o->open_ns;
	if (type == FLOW_EV_CLOSE) {
		/* payload bytes as this tool counted them (the flow's; on the
		 * counters path just folded from the socket) */
		if (v) {
			e->tx_bytes = v->tx_bytes;
			e->rx_bytes = v->rx_bytes;
			if (tcp_counters) {
				e->tx_segs = v->tx_calls;
				e->rx_segs = v->rx_calls;
				e->retrans_bytes = v->retrans_bytes;
			}
		}
		/* probe read: to the verifier sk is a sock, not a tcp_sock */
		e->retrans = BPF_CORE_READ(tp, total_retrans);
		if (tcp_counters) {
			/* final health; the flow's entry too, so its last poll agrees
			 * (from the stack: before 6.x a map value may not come from
			 * ring buffer memory) */
			struct tcp_health h = {};

			read_health(tp, o, &h);
			e->health = h;
			bpf_map_update_elem(&flow_health, k, &h, BPF_ANY);
		}
	}
	bpf_ringbuf_submit(e, 0);
}


/* ---------------------------------------------------------------------- */
/* TCP volume from the kernel's own counters (counters path)               */

struct tcp_counts {
	__u64 tx;      /* payload bytes first transmitted */
	__u64 retrans; /* payload bytes retransmitted */
	__u64 rx;      /* payload bytes received (in order) */
	__u32 segs_out;
	__u32 segs_in;
};

/*
 * The socket's counters as RFC 4898 defines them: bytes_sent counts the
 * payload of every transmission (SYN and FIN carry none), bytes_retrans the
 * retransmitted part; bytes_received advances with rcv_nxt and so counts the
 * peer's FIN as one byte, which tcp_fin marks with SOCK_DONE. `direct`: tp
 * is a BTF pointer the program may load from (the iterator).
 */
static __always_inline void read_counts(struct tcp_sock *tp, struct tcp_counts *c, bool direct)
{
	__u64 sent = SK_READ(direct, tp, bytes_sent);
	__u64 flags = SK_READ(direct, tp, inet_conn.icsk_inet.sk.__sk_common.skc_flags);

	c->retrans = SK_READ(direct, tp, bytes_retrans);
	c->tx = sent >= c->retrans ? sent - c->retrans : 0;
	c->rx = SK_READ(direct, tp, bytes_received);
	if ((flags & (1ULL << SOCK_DONE)) && c->rx)
		c->rx -= 1;
	c->segs_out = SK_READ(direct, tp, data_segs_out);
	c->segs_in = SK_READ(direct, tp, data_segs_in);
}

/* Growth of a counter since the last fold (a disconnect restarts it). */
#define GROWTH(now, seen) ((now) >= (seen) ? (now) - (seen) : (now))

/*
 * Credit what the socket's counters moved since the last fold to the flow
 * of its owner and tuple. Callers hold the socket (the iterator locks it;
 * state changes and destroy run under its lock), so the snapshot in the
 * owner record needs no atomics; the flow's counters may be shared.
 */
static __always_inline void fold_counts(struct sock *sk, struct tcp_sock *tp, struct sk_owner *o,
					bool direct)
{
	struct tcp_counts c;
	struct flow_key k = {};
	struct flow_value *v;

	read_counts(tp, &c, direct);
	if (c.tx == o->c_tx && c.rx == o->c_rx && c.retrans == o->c_retrans &&
	    c.segs_out == o->c_segs_out && c.segs_in == o->c_segs_in)
		return;
	if (owned_key(sk, o, &k, direct)) {
		v = flow_get(&k, o->comm, tick_now());
		if (!v)
			return; /* counted by flow_get; the next fold retries */
		__sync_fetch_and_add(&v->tx_bytes, GROWTH(c.tx, o->c_tx));
		__sync_fetch_and_add(&v->rx_bytes, GROWTH(c.rx, o->c_rx));
		__sync_fetch_and_add(&v->retrans_bytes, GROWTH(c.retrans, o->c_retrans));
		__sync_fetch_and_add(&v->tx_calls, GROWTH(c.segs_out, o->c_segs_out));
		__sync_fetch_and_add(&v->rx_calls, GROWTH(c.segs_in, o->c_segs_in));
		v->last_ns = tick_now(); /* as precise as the folds */
		if (!v->state) /* a socket older than the collector: no transition seen */
			v->state = SK_READ(direct, sk, __sk_common.skc_state);
	}
	o->c_tx = c.tx;
	o->c_rx = c.rx;
	o->c_retrans = c.retrans;
	o->c_segs_out = c.segs_out;
	o->c_segs_in = c.segs_in;
}

/* Start counting a socket from its counters now (older than the collector). */
static __always_inline void baseline_counts(struct tcp_sock *tp, struct sk_owner *o, bool direct)
{
	struct tcp_counts c;

	read_counts(tp, &c, direct);
	o->c_tx = c.tx;
	o->c_rx = c.rx;
	o->c_retrans = c.retrans;
	o->c_segs_out = c.segs_out;
	o->c_segs_in = c.segs_in;
}

/* A sock at the address of its tcp_sock: one pointer, two views. */
static __always_inline struct sock *tcp_sk_of(struct tcp_sock *tp)
{
	return (struct sock *)tp;
}

/* The socket's health into its flow's entry (every owned socket, each pass:
 * a stalled flow's counters stand still while its chrono runs). */
static __always_inline void note_health(struct sock *sk, struct tcp_sock *tp, struct sk_owner *o)
{
	struct tcp_health h = {};
	struct flow_key k = {};

	if (!o->established || !owned_key(sk, o, &k, true))
		return;
	read_health(tp, o, &h);
	bpf_map_update_elem(&flow_health, &k, &h, BPF_ANY);
	/* data waiting (unsent or unacknowledged) with counters standing still
	 * is a stalled flow, not an idle one: list it with what it moved so far */
	if (tp->write_seq != tp->snd_una)
		flow_get(&k, o->comm, tick_now());
}

/*
 * Run by the collector before each drain. One byte of output per TCP
 * socket that has no owner yet (older than the collector and not swept
 * yet, accepted by a path the accept hooks miss, or waiting in an accept
 * queue): the collector counts them as unattributed and sweeps.
 */
SEC("iter/tcp")
int tcp_counters_iter(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_sock *tp;
	struct sk_owner *o;
	__u64 skp;
	int state;
	char none = 0;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0; /* request and time-wait socks: no counters */
	state = tp->inet_conn.icsk_inet.sk.__sk_common.skc_state;
	if (state == TCP_LISTEN)
		return 0;
	skp = (__u64)tp;
	o = bpf_map_lookup_elem(&flow_socks, &skp);
	if (!o || !o->tgid || o->pending_accept) {
		if (state != TCP_CLOSE && state != TCP_SYN_SENT)
			bpf_seq_write(ctx->meta->seq, &none, 1);
		return 0;
	}
	fold_counts(tcp_sk_of(tp), tp, o, true);
	note_health(tcp_sk_of(tp), tp, o);
	return 0;
}

static __always_inline void fresh_owner(struct sk_owner *o, __u8 direction, __u64 now)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	o->tgid = pid_tgid >> 32;
	o->cgroup_id = bpf_get_current_cgroup_id();
	o->direction = direction;
	o->open_ns = now;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

/*
 * A passive socket's owner is the process that takes it from its listener
 * (pre-fork servers: the worker that accepts, not the listener's creator).
 * Its open event, held since ESTABLISHED, goes out now with the
 * handshake's time and duration. comm NULL: the current task's.
 */
static __always_inline void adopt_pending(struct sock *sk, struct sk_owner *o, __u32 tgid,
					  __u64 cgroup_id, const char *comm, bool direct)
{
	struct flow_key k = {};
	struct flow_value *v;

	o->tgid = tgid;
	o->cgroup_id = cgroup_id;
	if (comm)
		__builtin_memcpy(o->comm, comm, FLOWS_COMM_LEN);
	else
		bpf_get_current_comm(o->comm, sizeof(o->comm));
	o->pending_accept = 0;
	if (!o->established || o->closed || !owned_key(sk, o, &k, direct))
		return;
	v = flow_get(&k, o->comm, o->est_ns);
	emit(sk, &k, o, v, FLOW_EV_OPEN, o->est_ns, TCP_SYN_RECV, TCP_ESTABLISHED, direct);
	if (v) {
		v->state = SK_READ(direct, sk, __sk_common.skc_state);
		v->direction = FLOW_DIR_PASSIVE;
		if (!v->open_ns)
			v->open_ns = o->open_ns;
		v->close_ns = 0;
		v->last_ns = o->est_ns;
	}
}

/*
 * Transitions only the holder's close() or shutdown() makes, in its own
 * context: tcp_close_state's, and __tcp_close's abort (unread data, or
 * SO_LINGER 0), which marks the socket shut both ways before CLOSE; a reset
 * from the peer (softirq, any task current) marks it only after CLOSE.
 */
static __always_inline bool closed_by_current(struct sock *sk, int oldstate, int newstate,
					      bool direct)
{
	if (oldstate == TCP_ESTABLISHED && newstate == TCP_FIN_WAIT1)
		return true;
	if (oldstate == TCP_CLOSE_WAIT && newstate == TCP_LAST_ACK)
		return true;
	if (newstate != TCP_CLOSE || (oldstate != TCP_ESTABLISHED && oldstate != TCP_CLOSE_WAIT))
		return false;
	return BPF_CORE_READ_BITFIELD_PROBED(sk, sk_shutdown) == SK_SHUTDOWN_BOTH;
}

static __always_inline int on_state(struct sock *sk, int oldstate, int newstate, bool direct)
{
	struct flow_key k = {};
	struct listen_key lk = {};
	struct sk_owner fresh = {};
	struct sk_owner *o, *lo;
	struct flow_value *v;
	__u64 skp = (__u64)sk;
	__u64 now;
	int family;

	if (!sk || sk_proto(sk, direct) != IPPROTO_TCP)
		return 0;
	family = SK_READ(direct, sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	now = bpf_ktime_get_ns();

	if (newstate == TCP_LISTEN || (oldstate == TCP_LISTEN && newstate == TCP_CLOSE)) {
		lk.netns = sk_netns(sk, direct);
		lk.port = SK_READ(direct, sk, __sk_common.skc_num);
		lk.family = family;
		if (newstate == TCP_LISTEN) {
			fresh_owner(&fresh, FLOW_DIR_PASSIVE, 0);
			bpf_map_update_elem(&flow_listeners, &lk, &fresh, BPF_ANY);
			note_netns(lk.netns, fresh.tgid);
		} else {
			bpf_map_delete_elem(&flow_listeners, &lk);
		}
		return 0;
	}
	if (newstate == TCP_SYN_SENT) {
		/* connect(): process context, the caller owns the socket */
		fresh_owner(&fresh, FLOW_DIR_ACTIVE, now);
		if (bpf_map_update_elem(&flow_socks, &skp, &fresh, BPF_ANY))
			stat_inc(FLOW_STAT_SK_UPDATE_FAILED);
		note_netns(sk_netns(sk, direct), fresh.tgid);
		return 0;
	}
	if (newstate == TCP_SYN_RECV) {
		/* child of a listener, created in softirq: inherit the listener's owner */
		lk.netns = sk_netns(sk, direct);
		lk.port = SK_READ(direct, sk, __sk_common.skc_num);
		lk.family = family;
		lo = bpf_map_lookup_elem(&flow_listeners, &lk);
		if (lo)
			__builtin_memcpy(&fresh, lo, sizeof(fresh));
		/* else: owner unknown (tgid 0) until the socket is used in
		 * process context (or accepted, or swept); events meanwhile are
		 * counted as no_owner. On the counters path the owner is the
		 * process that takes the socket: the accept hook where one loads,
		 * else the sweep or the taker's close (adopt_pending) */
		fresh.direction = FLOW_DIR_PASSIVE;
		fresh.open_ns = now;
		fresh.pending_accept = tcp_counters;
		if (bpf_map_update_elem(&flow_socks, &skp, &fresh, BPF_ANY))
			stat_inc(FLOW_STAT_SK_UPDATE_FAILED);
		return 0;
	}

	o = bpf_map_lookup_elem(&flow_socks, &skp);
	if (!o || o->closed) {
		if (newstate == TCP_CLOSE)
			stat_inc(FLOW_STAT_NO_OWNER);
		return 0;
	}
	if (o->pending_accept && closed_by_current(sk, oldstate, newstate, direct))
		adopt_pending(sk, o, bpf_get_current_pid_tgid() >> 32, bpf_get_current_cgroup_id(),
			      NULL, direct);
	if (newstate == TCP_ESTABLISHED) {
		o->est_ns = now;
		if (tcp_counters) { /* iter/tcp kernels (5.9+) have bpf_jiffies64 */
			o->est_jiffies = (__u32)bpf_jiffies64();
			o->has_est_jiffies = 1;
		}
	}
	if (o->pending_accept && newstate == TCP_ESTABLISHED) {
		/* the accepting process is not known yet: its adoption emits open.
		 * Remember the tuple now: an abort's CLOSE comes without the port */
		o->established = 1;
		if (!o->has_tuple && sk_tuple(sk, &k, direct) && k.lport && k.rport)
			remember_tuple(o, &k);
		return 0;
	}
	if (o->tgid == 0) {
		if (newstate == TCP_ESTABLISHED)
			o->established = 1;
		stat_inc(FLOW_STAT_NO_OWNER);
		if (newstate == TCP_CLOSE)
			o->closed = 1;
		return 0;
	}
	if (!owned_key(sk, o, &k, direct)) {
		if (newstate == TCP_CLOSE)
			o->closed = 1;
		return 0;
	}
	if (newstate == TCP_CLOSE && tcp_counters) /* the close event carries final counts */
		fold_counts(sk, (struct tcp_sock *)sk, o, false);
	v = flow_get(&k, o->comm, now);
	if (newstate == TCP_ESTABLISHED) {
		o->established = 1;
		emit(sk, &k, o, v, FLOW_EV_OPEN, now, oldstate, newstate, direct);
	} else if (newstate == TCP_CLOSE) {
		emit(sk, &k, o, v, FLOW_EV_CLOSE, now, oldstate, newstate, direct);
	}
	if (v) {
		v->state = newstate;
		if (o->direction)
			v->direction = o->direction;
		if (o->open_ns && !v->open_ns)
			v->open_ns = o->open_ns;
		if (newstate == TCP_CLOSE)
			v->close_ns = now;
		else if (newstate == TCP_ESTABLISHED)
			v->close_ns = 0;
		v->last_ns = now;
	}
	/* a reset may still follow (SO_LINGER 0 sends it after CLOSE): keep the
	 * owner until tcp_destroy_sock (4.15+: wherever this hook, 4.16+, is) */
	if (newstate == TCP_CLOSE)
		o->closed = 1;
	return 0;
}

static __always_inline int on_destroy(struct sock *sk, bool direct)
{
	__u64 skp = (__u64)sk;
	struct sk_owner *o;

	if (tcp_counters) {
		/* anything the counters moved after CLOSE (a late ACK) */
		o = bpf_map_lookup_elem(&flow_socks, &skp);
		if (o && o->tgid)
			fold_counts(sk, (struct tcp_sock *)sk, o, false);
	}
	bpf_map_delete_elem(&flow_socks, &skp);
	return 0;
}

SEC("tp_btf/tcp_destroy_sock")
int BPF_PROG(destroy_tp_btf, struct sock *sk)
{
	return on_destroy(sk, true);
}

SEC("raw_tp/tcp_destroy_sock")
int BPF_PROG(destroy_raw_tp, struct sock *sk)
{
	return on_destroy(sk, false);
}

SEC("tracepoint/tcp/tcp_destroy_sock")
int destroy_tracepoint(struct trace_event_raw_tcp_event_sk *ctx)
{
	return on_destroy((struct sock *)ctx->skaddr, false);
}

/* ---------------------------------------------------------------------- */
/* Attribution without per-message hooks (counters path)                   */

/*
 * inet_csk_accept returned a socket to the current process. A function
 * hook, not the accept syscalls' tracepoints: enabling any syscall
 * tracepoint sends every syscall of every task through the kernel's
 * syscall-tracing slow path (~55 ns each here), a cost on the whole host.
 * Where neither rung loads, the sweep and closed_by_current adopt.
 */
static __always_inline int on_accept(struct sock *sk)
{
	struct sk_owner fresh = {};
	struct sk_owner *o;
	__u64 skp = (__u64)sk;

	if (!sk || sk_proto(sk, false) != IPPROTO_TCP)
		return 0;
	o = bpf_map_lookup_elem(&flow_socks, &skp);
	if (!o) {
		/* queued before bpfscope started: count from now */
		fresh_owner(&fresh, FLOW_DIR_PASSIVE, 0);
		fresh.established = 1;
		baseline_counts((struct tcp_sock *)sk, &fresh, false);
		if (bpf_map_update_elem(&flow_socks, &skp, &fresh, BPF_NOEXIST))
			stat_inc(FLOW_STAT_SK_UPDATE_FAILED);
		return 0;
	}
	if (o->pending_accept)
		adopt_pending(sk, o, bpf_get_current_pid_tgid() >> 32, bpf_get_current_cgroup_id(),
			      NULL, false);
	return 0;
}

/* the returned socket: its argument list changed in 6.10, the return did not */
SEC("fexit/inet_csk_accept")
int BPF_PROG(accept_fexit)
{
	__u64 ret = 0;

	bpf_get_func_ret(ctx, &ret);
	return on_accept((struct sock *)ret);
}

SEC("kretprobe/inet_csk_accept")
int BPF_KRETPROBE(accept_kretprobe, struct sock *sk)
{
	return on_accept(sk);
}

/*
 * The bounded sweep (iter/task_file, run by the collector at start and when
 * a counters pass found sockets without an owner, at most every few
 * seconds): a TCP socket in some process's file table with no owner, or
 * with a provisional one (accepted where the accept hooks do not see it:
 * io_uring), gets that process. Sockets older than the collector count
 * from now. Listeners older than the collector are learnt, so that their
 * connections get an owner at once. Sockets shared by several processes
 * (fork, SCM_RIGHTS) go to the first one visited.
 */
SEC("iter/task_file")
int sweep_owners(struct bpf_iter__task_file *ctx)
{
	struct task_struct *task = ctx->task;
	struct file *file = ctx->file;
	struct sk_owner fresh = {};
	struct listen_key lk = {};
	struct tcp_sock *tp;
	struct socket *so;
	struct sk_owner *o;
	__u64 skp;
	int state;

	if (!task || !file)
		return 0;
	so = bpf_sock_from_file(file);
	if (!so)
		return 0;
	tp = bpf_skc_to_tcp_sock(so->sk);
	if (!tp)
		return 0;
	skp = (__u64)tp;
	state = tp->inet_conn.icsk_inet.sk.__sk_common.skc_state;
	fresh.tgid = BPF_CORE_READ(task, tgid);
	fresh.cgroup_id = BPF_CORE_READ(task, cgroups, dfl_cgrp, kn, id);
	BPF_CORE_READ_INTO(&fresh.comm, task, comm);
	note_netns(sk_netns(tcp_sk_of(tp), true), fresh.tgid);
	if (state == TCP_LISTEN) {
		lk.netns = sk_netns(tcp_sk_of(tp), true);
		lk.port = tp->inet_conn.icsk_inet.sk.__sk_common.skc_num;
		lk.family = tp->inet_conn.icsk_inet.sk.__sk_common.skc_family;
		fresh.direction = FLOW_DIR_PASSIVE;
		bpf_map_update_elem(&flow_listeners, &lk, &fresh, BPF_NOEXIST);
		return 0;
	}
	o = bpf_map_lookup_elem(&flow_socks, &skp);
	if (o && o->tgid && !o->pending_accept)
		return 0;
	if (o) {
		adopt_pending(tcp_sk_of(tp), o, fresh.tgid, fresh.cgroup_id, fresh.comm, true);
		stat_inc(FLOW_STAT_ADOPTED);
		return 0;
	}
	fresh.established = state != TCP_SYN_SENT && state != TCP_SYN_RECV;
	baseline_counts(tp, &fresh, true);
	if (bpf_map_update_elem(&flow_socks, &skp, &fresh, BPF_NOEXIST))
		return 0;
	stat_inc(FLOW_STAT_ADOPTED);
	return 0;
}

/* Retransmits and resets: attributed to the socket's recorded owner. */
static __always_inline int on_tcp_event(struct sock *sk, __u8 type, bool direct)
{
	struct flow_key k = {};
	struct flow_value *v;
	struct sk_owner *o;
	__u64 skp = (__u64)sk;
	__u64 now;

	if (!sk)
		return 0;
	o = bpf_map_lookup_elem(&flow_socks, &skp);
	if (!o || o->tgid == 0) {
		stat_inc(FLOW_STAT_NO_OWNER);
		return 0;
	}
	if (!owned_key(sk, o, &k, direct))
		return 0;
	now = bpf_ktime_get_ns();
	v = flow_get(&k, o->comm, now);
	emit(sk, &k, o, v, type, now, 0, 0, direct);
	if (!v)
		return 0;
	if (type == FLOW_EV_RETRANS)
		__sync_fetch_and_add(&v->retrans, 1);
	else if (type == FLOW_EV_RESET_SENT)
		__sync_fetch_and_add(&v->resets_sent, 1);
	else
		__sync_fetch_and_add(&v->resets_recv, 1);
	v->last_ns = now;
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(state_tp_btf, struct sock *sk, int oldstate, int newstate)
{
	return on_state(sk, oldstate, newstate, true);
}

SEC("raw_tp/inet_sock_set_state")
int BPF_PROG(state_raw_tp, struct sock *sk, int oldstate, int newstate)
{
	return on_state(sk, oldstate, newstate, false);
}

SEC("tracepoint/sock/inet_sock_set_state")
int state_tracepoint(struct trace_event_raw_inet_sock_set_state *ctx)
{
	return on_state((struct sock *)ctx->skaddr, ctx->oldstate, ctx->newstate, false);
}

/*
 * tcp:tcp_retransmit_skb's and tcp:tcp_send_reset's records were the shared
 * tcp_event_sk_skb class in older kernels (6.1 for both; 6.12 for the
 * retransmit) and are structs of their own since (6.18 here has both);
 * skbaddr and skaddr lead every one of them. A plain local layout, no
 * CO-RE: a relocation against a struct name fails on the kernels that lack
 * it, and without CAP_SYS_ADMIN libbpf cannot even look for it in module
 * BTF, so the least-privilege rung would break on one side or the other.
 */
struct tcp_skb_sk_record {
	struct trace_entry ent;
	const void *skbaddr;
	const void *skaddr;
};

#define TCP_EVENT_RUNGS(hook, tp, tp_struct, type)                              \
	SEC("tp_btf/" #tp)                                                     \
	int BPF_PROG(hook##_tp_btf, struct sock *sk)                           \
	{                                                                       \
		return on_tcp_event(sk, type, true);                            \
	}                                                                       \
	SEC("raw_tp/" #tp)                                                     \
	int BPF_PROG(hook##_raw_tp, struct sock *sk)                           \
	{                                                                       \
		return on_tcp_event(sk, type, false);                           \
	}                                                                       \
	SEC("tracepoint/tcp/" #tp)                                             \
	int hook##_tracepoint(struct tp_struct *ctx)                           \
	{                                                                       \
		return on_tcp_event((struct sock *)ctx->skaddr, type, false);   \
	}

TCP_EVENT_RUNGS(retransmit, tcp_retransmit_skb, tcp_skb_sk_record, FLOW_EV_RETRANS)
TCP_EVENT_RUNGS(send_reset, tcp_send_reset, tcp_skb_sk_record, FLOW_EV_RESET_SENT)
TCP_EVENT_RUNGS(receive_reset, tcp_receive_reset, trace_event_raw_tcp_event_sk,
		FLOW_EV_RESET_RECV)

/*
 * Empty programs on the traffic tracepoints: the benchmark's floor, what
 * attaching anything to these hooks costs. Never loaded by the collector.
 */
#define NOP_TRAFFIC_RUNGS(dir, tp)                                              \
	SEC("tp_btf/" #tp)                                                     \
	int BPF_PROG(nop_##dir##_tp_btf)                                       \
	{                                                                       \
		return 0;                                                       \
	}                                                                       \
	SEC("raw_tp/" #tp)                                                     \
	int BPF_PROG(nop_##dir##_raw_tp)                                       \
	{                                                                       \
		return 0;                                                       \
	}                                                                       \
	SEC("tracepoint/sock/" #tp)                                            \
	int nop_##dir##_tracepoint(void *ctx)                                  \
	{                                                                       \
		return 0;                                                       \
	}

NOP_TRAFFIC_RUNGS(send, sock_send_length)
NOP_TRAFFIC_RUNGS(recv, sock_recv_length)

char LICENSE[] SEC("license") = "Dual BSD/GPL";
