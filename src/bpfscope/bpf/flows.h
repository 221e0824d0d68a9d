/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * Flow monitor: the structs that cross the kernel/user boundary. The Python
 * mirrors in bpfscope/flows/records.py are checked against this file's BTF.
 */
#ifndef BPFSCOPE_FLOWS_H
#define BPFSCOPE_FLOWS_H

#define FLOWS_COMM_LEN 16

/* flow_key.flags */
#define FLOW_F_REMOTE_UNKNOWN 0x1 /* unconnected UDP, remote not seen by this rung */

/* flow_value.direction / flow_event.direction */
#define FLOW_DIR_UNKNOWN 0
#define FLOW_DIR_ACTIVE 1  /* we connected (SYN_SENT) */
#define FLOW_DIR_PASSIVE 2 /* we accepted (SYN_RECV) */

/* flow_event.type */
#define FLOW_EV_OPEN 1       /* reached ESTABLISHED */
#define FLOW_EV_CLOSE 2      /* went to CLOSE (duration, final bytes) */
#define FLOW_EV_RETRANS 3    /* tcp_retransmit_skb */
#define FLOW_EV_RESET_SENT 4 /* tcp_send_reset */
#define FLOW_EV_RESET_RECV 5 /* tcp_receive_reset */

/* stats slots (per-CPU array flows_stats) */
#define FLOW_STAT_INSERTS 0       /* new flow entries created */
#define FLOW_STAT_UPDATE_FAILED 1 /* bpf_map_update_elem refused (not an LRU eviction) */
#define FLOW_STAT_SK_UPDATE_FAILED 2
#define FLOW_STAT_NO_OWNER 3      /* softirq event on a socket with no recorded owner */
#define FLOW_STAT_UDP_DEST_HIT 4  /* unconnected UDP send matched a seen destination */
#define FLOW_STAT_UDP_DEST_MISS 5 /* unconnected UDP send with remote unknown */
#define FLOW_STAT_ADOPTED 6       /* sockets given an owner by the sweep (iter/task_file) */
#define FLOW_STAT_MAX 8

/*
 * One flow: who (cgroup, netns, process) talks to whom (addresses are in
 * network byte order, IPv4 in the first 4 bytes; ports in host order).
 */
struct flow_key {
	__u64 cgroup_id;
	__u32 netns;
	__u32 tgid;
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport;
	__u16 rport;
	__u8 family; /* AF_INET / AF_INET6 */
	__u8 proto;  /* IPPROTO_TCP / IPPROTO_UDP */
	__u8 flags;  /* FLOW_F_* */
	__u8 pad;
};

/*
 * Cumulative counters; the collector computes deltas. TCP on the counters
 * path: payload bytes first transmitted (bytes_sent - bytes_retrans) and
 * received (bytes_received less the peer's FIN), data segments each way
 * (data_segs_out/in, retransmissions included). UDP, and TCP on the table
 * path: bytes and calls (datagrams) per event.
 */
struct flow_value {
	__u64 tx_bytes;
	__u64 rx_bytes;
	__u64 tx_calls; /* TCP counters path: data segments sent */
	__u64 rx_calls; /* TCP counters path: data segments received */
	__u64 first_ns; /* bpf_ktime_get_ns() of the first event (tick resolution) */
	__u64 last_ns;  /* of the last event; TCP on BTF rungs: of the fold that found traffic */
	__u64 open_ns;  /* TCP: when the connection started (0: not seen) */
	__u64 close_ns; /* TCP: when it went to CLOSE (0: still open) */
	__u64 retrans_bytes; /* TCP counters path: payload bytes retransmitted */
	__u32 retrans;
	__u32 resets_sent;
	__u32 resets_recv;
	__u8 state;     /* last TCP state seen (0: none) */
	__u8 direction; /* FLOW_DIR_* */
	__u8 pad[2];
	char comm[FLOWS_COMM_LEN];
};

/*
 * Owner of a TCP socket, recorded in process context, and the socket's
 * tuple once it is complete (at CLOSE the kernel may already have cleared
 * the local port, so close events use the tuple remembered here).
 */
struct sk_owner {
	__u64 cgroup_id;
	__u64 open_ns;
	__u32 tgid;
	__u32 netns;
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport;
	__u16 rport;
	__u8 family;
	__u8 direction;
	__u8 established;
	__u8 has_tuple;
	char comm[FLOWS_COMM_LEN];
	__u8 closed; /* went to CLOSE; kept for a reset sent after it, until destroy */
	__u8 pending_accept; /* passive, not accepted yet: owner provisional, not folded */
	__u8 has_est_jiffies;
	__u8 pad;
	__u32 est_jiffies; /* tcp_jiffies32 at ESTABLISHED: the chrono clock */
	__u64 est_ns; /* when it reached ESTABLISHED (a deferred open event's time) */
	/* counters path: the socket's tcp_sock counters already credited to its
	 * flow (zero for sockets bpfscope saw start; the values at adoption for
	 * sockets older than the collector: they count from then) */
	__u64 c_tx;      /* bytes_sent - bytes_retrans */
	__u64 c_retrans; /* bytes_retrans */
	__u64 c_rx;      /* bytes_received, less the peer's FIN */
	__u32 c_segs_out;
	__u32 c_segs_in;
};

/* Listener's owner, so a passively opened child (softirq) gets it. */
struct listen_key {
	__u32 netns;
	__u16 port;
	__u8 family;
	__u8 pad;
};

/* Destination of the last unconnected UDP send seen on a route lookup. */
struct udp_dest {
	__u8 raddr[16];
	__u16 lport; /* host order */
	__u16 rport; /* host order */
	__u8 family;
	__u8 pad[3];
};

/* tcp_health.flags */
#define HEALTH_F_READ 0x1  /* filled from the socket */
#define HEALTH_F_START 0x2 /* start_jiffies known (reached ESTABLISHED while watched) */

/*
 * TCP health of one socket, as tcp_info reports it (counters path): written
 * by the iterator each poll into flow_health, and at CLOSE into the close
 * event. chrono[] is in jiffies, the running period included, so the
 * collector computes time fractions as deltas over `jiffies` without HZ.
 */
struct tcp_health {
	__u64 delivery_rate; /* bytes/s: rate_delivered * mss_cache / rate_interval_us */
	__u32 jiffies;       /* tcp_jiffies32 when read */
	__u32 start_jiffies; /* tcp_jiffies32 at ESTABLISHED (HEALTH_F_START) */
	__u32 chrono[3];     /* jiffies busy, rwnd-limited, sndbuf-limited */
	__u32 srtt_us;       /* smoothed RTT (srtt_us >> 3) */
	__u32 rttvar_us;     /* mdev_us >> 2 */
	__u32 min_rtt_us;
	__u32 cwnd;          /* segments */
	__u32 ssthresh;      /* segments (>= 0x7fffffff: still in slow start) */
	__u32 lost;          /* data segments marked lost, total */
	__u32 rcv_wnd;       /* window we advertise, bytes */
	__u32 snd_wnd;       /* window the peer advertises, bytes */
	__u32 mss;           /* mss_cache */
	__u8 flags;          /* HEALTH_F_* */
	__u8 pad[7];
};

/* Lifecycle event (ring buffer). */
struct flow_event {
	__u64 ts_ns;
	__u64 cgroup_id;
	__u64 duration_ns; /* CLOSE: since open; OPEN: handshake time */
	__u64 tx_bytes;    /* CLOSE: the socket's payload bytes sent (as flow_value) */
	__u64 rx_bytes;    /* CLOSE: and received */
	__u32 netns;
	__u32 tgid;
	__u8 laddr[16];
	__u8 raddr[16];
	__u16 lport;
	__u16 rport;
	__u8 family;
	__u8 proto;
	__u8 type;      /* FLOW_EV_* */
	__u8 direction; /* FLOW_DIR_* */
	__u8 oldstate;
	__u8 newstate;
	__u8 established; /* CLOSE: did it ever reach ESTABLISHED */
	__u8 pad;
	__u32 retrans;  /* CLOSE: tcp_sock total_retrans */
	char comm[FLOWS_COMM_LEN];
	/* CLOSE on the counters path (else 0) */
	__u64 retrans_bytes;
	__u64 tx_segs;
	__u64 rx_segs;
	struct tcp_health health; /* CLOSE on the counters path: final values */
};

#endif /* BPFSCOPE_FLOWS_H */
