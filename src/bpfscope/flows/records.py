"""Typed records of the flow monitor (the byte layouts they are decoded
from are in layout.py). Everything above the collector consumes the
dataclasses: ``FlowRecord`` (one flow, cumulative
counters plus the delta and rate of the last interval), ``ConnEvent`` (one
TCP lifecycle event) and ``CollectorStats``.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

from . import health
from .layout import (
    AF_INET,
    AF_INET6,
    DIRECTIONS,
    EV,
    EVENT,
    EVENT_TYPES,
    FLOW_F_REMOTE_UNKNOWN,
    IPPROTO_TCP,
    IPPROTO_UDP,
    MIRRORS,
    STAT_ADOPTED,
    STAT_INSERTS,
    STAT_NO_OWNER,
    STAT_SK_UPDATE_FAILED,
    STAT_SLOTS,
    STAT_UDP_DEST_HIT,
    STAT_UDP_DEST_MISS,
    STAT_UPDATE_FAILED,
    TCP_STATES,
    FlowEventC,
    FlowKeyC,
    FlowValueC,
    ListenKeyC,
    SkOwnerC,
    UdpDestC,
    struct_of,
)

__all__ = [
    "AF_INET",
    "AF_INET6",
    "DIRECTIONS",
    "EV",
    "EVENT",
    "EVENT_TYPES",
    "FLOW_F_REMOTE_UNKNOWN",
    "IPPROTO_TCP",
    "IPPROTO_UDP",
    "MIRRORS",
    "STAT_ADOPTED",
    "STAT_INSERTS",
    "STAT_NO_OWNER",
    "STAT_SK_UPDATE_FAILED",
    "STAT_SLOTS",
    "STAT_UDP_DEST_HIT",
    "STAT_UDP_DEST_MISS",
    "STAT_UPDATE_FAILED",
    "TCP_STATES",
    "CollectorStats",
    "ConnEvent",
    "FlowEventC",
    "FlowKeyC",
    "FlowMeta",
    "FlowRecord",
    "FlowValueC",
    "ListenKeyC",
    "SkOwnerC",
    "UdpDestC",
    "decode_key",
    "format_addr",
    "struct_of",
]


def format_addr(family: int, raw: bytes) -> str:
    """Text form of an address stored in 16 bytes (IPv4 in the first 4)."""
    if family == AF_INET:
        # inet_ntop: ten times quicker than ipaddress, the same text
        return socket.inet_ntop(socket.AF_INET, bytes(raw[:4]))
    return str(ipaddress.IPv6Address(bytes(raw[:16])))


def family_name(family: int) -> str:
    return "ipv4" if family == AF_INET else "ipv6" if family == AF_INET6 else str(family)


def proto_name(proto: int) -> str:
    return "tcp" if proto == IPPROTO_TCP else "udp" if proto == IPPROTO_UDP else str(proto)


@dataclass(frozen=True)
class FlowMeta:
    """The decoded, immutable part of a flow: its key."""

    cgroup_id: int
    netns: int
    pid: int
    family: str
    proto: str
    laddr: str
    lport: int
    raddr: str | None  # None: remote not visible to the rung (never invented)
    rport: int | None

    @property
    def local(self) -> str:
        return _endpoint(self.laddr, self.lport)

    @property
    def remote(self) -> str:
        if self.raddr is None:
            return "?"
        return _endpoint(self.raddr, self.rport or 0)


def _endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def decode_key(raw: bytes) -> FlowMeta:
    k = FlowKeyC.from_buffer_copy(raw)
    unknown = bool(k.flags & FLOW_F_REMOTE_UNKNOWN)
    return FlowMeta(
        cgroup_id=k.cgroup_id,
        netns=k.netns,
        pid=k.tgid,
        family=family_name(k.family),
        proto=proto_name(k.proto),
        laddr=format_addr(k.family, bytes(k.laddr)),
        lport=k.lport,
        raddr=None if unknown else format_addr(k.family, bytes(k.raddr)),
        rport=None if unknown else k.rport,
    )


@dataclass
class FlowRecord:
    """One flow as the collector sees it after a poll.

    ``tx_bytes``/``rx_bytes`` and friends are cumulative since the flow was
    first seen; ``tx_delta``/``rx_delta`` and the rates cover the last
    interval. Times are Unix seconds. Bytes are payload bytes. TCP where the
    collector reads the kernel's socket counters ("counters" accounting):
    ``tx_bytes`` = first transmissions (``bytes_sent - bytes_retrans``),
    ``rx_bytes`` = bytes received in order (``bytes_received`` without the
    peer's FIN), ``retrans_bytes`` apart, ``tx_segs``/``rx_segs`` = data
    segments (``data_segs_out``/``in``, retransmissions included), and no
    calls (``None``). UDP, and TCP on the per-event "table" path: calls
    (datagrams for UDP) and no segments (``None``).
    """

    pid: int
    comm: str
    cgroup_id: int
    netns: int
    family: str
    proto: str
    laddr: str
    lport: int
    raddr: str | None
    rport: int | None
    tx_bytes: int = 0
    rx_bytes: int = 0
    tx_calls: int | None = 0
    rx_calls: int | None = 0
    tx_segs: int | None = None
    rx_segs: int | None = None
    retrans_bytes: int | None = None
    tx_delta: int = 0
    rx_delta: int = 0
    tx_segs_delta: int = 0  # counters path: segments in the last interval
    rx_segs_delta: int = 0
    retrans_bytes_delta: int = 0
    tx_rate: float = 0.0
    rx_rate: float = 0.0
    retransmits: int = 0
    resets_sent: int = 0
    resets_received: int = 0
    state: str | None = None
    direction: str | None = None
    first_seen: float = 0.0
    last_seen: float = 0.0
    opened: float | None = None
    closed: float | None = None
    cmdline: str | None = None
    cgroup: str | None = None
    container: str | None = None
    runtime: str | None = None
    pod_uid: str | None = None
    unit: str | None = None
    # TCP health (counters accounting; None elsewhere, and for UDP): see
    # flows/health.py. Fractions cover the last interval (close events: the
    # lifetime); limited_by is the verdict over them.
    rtt_us: int | None = None
    rtt_var_us: int | None = None
    min_rtt_us: int | None = None
    cwnd: int | None = None
    ssthresh: int | None = None  # None also while in slow start (infinite)
    lost: int | None = None
    delivery_rate: int | None = None  # bytes/s
    rcv_wnd: int | None = None
    snd_wnd: int | None = None
    rwnd_limited_frac: float | None = None
    sndbuf_limited_frac: float | None = None
    network_limited_frac: float | None = None
    app_limited_frac: float | None = None
    limited_by: str | None = None
    # TCP connections folded into this record (0: the record is one flow).
    # At churn rates a connection that opened and closed between two polls
    # is not kept as a flow of its own: each poll folds them into one record
    # per (process, cgroup, addresses, service port, direction), the
    # client's ephemeral port 0, with their bytes summed (``*_delta``) and
    # their lifetimes (``folded_durations`` of them, in milliseconds).
    folded: int = 0
    folded_durations: int = 0
    folded_duration_ms_sum: int = 0
    folded_duration_ms_max: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def local(self) -> str:
        return _endpoint(self.laddr, self.lport)

    @property
    def remote(self) -> str:
        if self.raddr is None:
            return "?"
        return _endpoint(self.raddr, self.rport or 0)

    @property
    def resets(self) -> int:
        return self.resets_sent + self.resets_received

    def age(self, now: float) -> float:
        start = self.opened or self.first_seen
        end = self.closed or now
        return max(0.0, end - start)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("extra")
        data.update(self.extra)
        return data


@dataclass(frozen=True)
class ConnEvent:
    """One TCP lifecycle event (open, close, retransmit, reset)."""

    time: float
    type: str
    pid: int
    comm: str
    cgroup_id: int
    netns: int
    family: str
    laddr: str
    lport: int
    raddr: str
    rport: int
    direction: str | None
    oldstate: str | None
    newstate: str | None
    established: bool
    duration: float | None  # close: lifetime; open: handshake time
    tx_bytes: int | None  # close: payload bytes sent (as the flow counts them)
    rx_bytes: int | None  # close: payload bytes received
    retransmits: int | None  # close: total retransmits of the socket
    container: str | None = None
    pod_uid: str | None = None
    cgroup: str | None = None
    proto: str = "tcp"
    # close, counters accounting: the flow's data segments and retransmitted bytes
    tx_segs: int | None = None
    rx_segs: int | None = None
    retrans_bytes: int | None = None
    # TCP health (counters accounting; None elsewhere, and for UDP): see
    # flows/health.py. Fractions cover the lifetime (ESTABLISHED to CLOSE);
    # limited_by is the verdict over them.
    rtt_us: int | None = None
    rtt_var_us: int | None = None
    min_rtt_us: int | None = None
    cwnd: int | None = None
    ssthresh: int | None = None  # None also while in slow start (infinite)
    lost: int | None = None
    delivery_rate: int | None = None  # bytes/s
    rcv_wnd: int | None = None
    snd_wnd: int | None = None
    rwnd_limited_frac: float | None = None
    sndbuf_limited_frac: float | None = None
    network_limited_frac: float | None = None
    app_limited_frac: float | None = None
    limited_by: str | None = None

    @property
    def local(self) -> str:
        return _endpoint(self.laddr, self.lport)

    @property
    def remote(self) -> str:
        return _endpoint(self.raddr, self.rport)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def decode(cls, raw: bytes, wall_offset: float, counters: bool = False) -> ConnEvent:
        return cls.from_fields(EVENT.unpack(raw), wall_offset, counters)

    @classmethod
    def from_fields(
        cls, e: tuple[Any, ...], wall_offset: float, counters: bool = False
    ) -> ConnEvent:
        """One event from its ``EVENT.unpack`` tuple (the bulk decoder's unit)."""
        f = EV
        kind = EVENT_TYPES.get(e[f.type], str(e[f.type]))
        is_close = kind == "close"
        is_counted = counters and is_close
        duration_ns = e[f.duration_ns]
        has_duration = duration_ns > 0 and kind in ("open", "close")
        family = e[f.family]
        comm = e[f.comm]
        final = health.decode_raw(e[f.health], None) if is_counted else health.empty()
        return cls(
            time=e[f.ts_ns] / 1e9 + wall_offset,
            type=kind,
            pid=e[f.tgid],
            comm=comm[: comm.find(b"\0") if b"\0" in comm else 16].decode(errors="replace"),
            cgroup_id=e[f.cgroup_id],
            netns=e[f.netns],
            family=family_name(family),
            laddr=format_addr(family, e[f.laddr]),
            lport=e[f.lport],
            raddr=format_addr(family, e[f.raddr]),
            rport=e[f.rport],
            direction=DIRECTIONS.get(e[f.direction]),
            oldstate=TCP_STATES.get(e[f.oldstate]) if e[f.oldstate] else None,
            newstate=TCP_STATES.get(e[f.newstate]) if e[f.newstate] else None,
            established=bool(e[f.established]),
            duration=duration_ns / 1e9 if has_duration else None,
            tx_bytes=e[f.tx_bytes] if is_close else None,
            rx_bytes=e[f.rx_bytes] if is_close else None,
            retransmits=e[f.retrans] if is_close else None,
            tx_segs=e[f.tx_segs] if is_counted else None,
            rx_segs=e[f.rx_segs] if is_counted else None,
            retrans_bytes=e[f.retrans_bytes] if is_counted else None,
            **final,
        )


@dataclass
class CollectorStats:
    """Health of the collector: nothing dropped is hidden."""

    rungs: dict[str, str | None] = field(default_factory=dict)
    events_dropped: int = 0  # ring buffer reservations that failed
    events_skipped: int = 0  # program runs the kernel skipped (recursion guard)
    flows_evicted: int = 0  # entries gone without the collector (0 on a non-LRU table)
    update_failures: int = 0  # flow inserts the kernel refused (table full)
    socket_update_failures: int = 0
    no_owner: int = 0  # softirq events on sockets with no recorded owner
    udp_remote_seen: int = 0
    udp_remote_unknown: int = 0
    flows_in_map: int = 0
    map_capacity: int = 0
    flows_tracked: int = 0  # in the collector's table
    flows_removed: int = 0  # closed/idle flows the collector deleted
    flows_folded: int = 0  # short TCP connections folded into group records
    flows_inserted: int = 0
    events_received: int = 0
    # read from the ring but not kept for per-connection views (the bound on
    # raw events between two polls); counted in the tallies all the same
    events_unbuffered: int = 0
    event_drains: int = 0  # passes of the event thread over the ring
    event_drain_seconds_max: float = 0.0
    drain: str = "batch"
    drain_seconds: float = 0.0
    # "counters": TCP volume from the kernel's socket counters (iter/tcp each
    # poll, CLOSE); "table": every TCP send/receive updates the flow table
    tcp_accounting: str = "table"
    counters_seconds: float = 0.0  # the last counters pass
    counters_failures: int = 0  # passes that failed: the next one credits their growth
    unattributed: int = 0  # TCP sockets without an owner in the last counters pass
    netns_visited: int = 0  # network namespaces the last counters pass walked
    adopted: int = 0  # sockets given an owner by the sweep
    sweeps: int = 0
    sweep_seconds: float = 0.0
    udp: bool = True  # UDP accounted (--udp)
    # UDP's traffic programs stand on tracepoints every TCP message fires too
    udp_shares_tcp_hooks: bool = False
    polls: int = 0

    @property
    def map_fill(self) -> float:
        return self.flows_in_map / self.map_capacity if self.map_capacity else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["map_fill"] = round(self.map_fill, 4)
        return data

    def summary(self) -> str:
        rungs = ", ".join(f"{h}={m or 'off'}" for h, m in self.rungs.items())
        return (
            f"flows {self.flows_in_map}/{self.map_capacity} ({self.map_fill:.1%}) · "
            f"events dropped {self.events_dropped} · skipped {self.events_skipped} · "
            f"not kept {self.events_unbuffered} · "
            f"evicted {self.flows_evicted} · "
            f"update failures {self.update_failures} · udp remote unknown "
            f"{self.udp_remote_unknown} · drain {self.drain} {self.drain_seconds * 1e3:.1f} ms"
            f" · tcp accounting: {self.tcp_accounting} · unattributed {self.unattributed}"
            f" · udp {self.udp_note()} · rungs: {rungs}"
        )

    def udp_note(self) -> str:
        """What UDP accounting is and costs here, in one phrase."""
        if not self.udp:
            return "off"
        if self.udp_shares_tcp_hooks:
            return "on (UDP accounting shares the TCP send/receive hooks on this kernel)"
        return "on"
