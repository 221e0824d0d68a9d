"""Typed records of the flow monitor, and ctypes mirrors of ``flows.h``.

The ctypes structures mirror the kernel/user structs byte for byte (a test
checks every size and offset against the object's BTF). Everything above the
collector consumes the dataclasses: ``FlowRecord`` (one flow, cumulative
counters plus the delta and rate of the last interval), ``ConnEvent`` (one
TCP lifecycle event) and ``CollectorStats``.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
from dataclasses import asdict, dataclass, field
from typing import Any, Final

__all__ = [
    "AF_INET",
    "AF_INET6",
    "EVENT_TYPES",
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
]

AF_INET: Final = socket.AF_INET.value
AF_INET6: Final = socket.AF_INET6.value
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17

FLOW_F_REMOTE_UNKNOWN: Final = 0x1

DIRECTIONS: Final = {0: None, 1: "active", 2: "passive"}
EVENT_TYPES: Final = {
    1: "open",
    2: "close",
    3: "retransmit",
    4: "reset_sent",
    5: "reset_received",
}
TCP_STATES: Final = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}

# stats slots of the per-CPU array flows_stats (FLOW_STAT_* in flows.h)
STAT_INSERTS: Final = 0
STAT_UPDATE_FAILED: Final = 1
STAT_SK_UPDATE_FAILED: Final = 2
STAT_NO_OWNER: Final = 3
STAT_UDP_DEST_HIT: Final = 4
STAT_UDP_DEST_MISS: Final = 5
STAT_ADOPTED: Final = 6
STAT_SLOTS: Final = 7


class FlowKeyC(ctypes.Structure):
    """Mirror of ``struct flow_key``."""

    _fields_ = [
        ("cgroup_id", ctypes.c_uint64),
        ("netns", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("laddr", ctypes.c_uint8 * 16),
        ("raddr", ctypes.c_uint8 * 16),
        ("lport", ctypes.c_uint16),
        ("rport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class FlowValueC(ctypes.Structure):
    """Mirror of ``struct flow_value``."""

    _fields_ = [
        ("tx_bytes", ctypes.c_uint64),
        ("rx_bytes", ctypes.c_uint64),
        ("tx_calls", ctypes.c_uint64),
        ("rx_calls", ctypes.c_uint64),
        ("first_ns", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("open_ns", ctypes.c_uint64),
        ("close_ns", ctypes.c_uint64),
        ("retrans_bytes", ctypes.c_uint64),
        ("retrans", ctypes.c_uint32),
        ("resets_sent", ctypes.c_uint32),
        ("resets_recv", ctypes.c_uint32),
        ("state", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
        ("comm", ctypes.c_char * 16),
    ]


class SkOwnerC(ctypes.Structure):
    """Mirror of ``struct sk_owner``."""

    _fields_ = [
        ("cgroup_id", ctypes.c_uint64),
        ("open_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("netns", ctypes.c_uint32),
        ("laddr", ctypes.c_uint8 * 16),
        ("raddr", ctypes.c_uint8 * 16),
        ("lport", ctypes.c_uint16),
        ("rport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("established", ctypes.c_uint8),
        ("has_tuple", ctypes.c_uint8),
        ("comm", ctypes.c_char * 16),
        ("closed", ctypes.c_uint8),
        ("pending_accept", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 6),
        ("est_ns", ctypes.c_uint64),
        ("c_tx", ctypes.c_uint64),
        ("c_retrans", ctypes.c_uint64),
        ("c_rx", ctypes.c_uint64),
        ("c_segs_out", ctypes.c_uint32),
        ("c_segs_in", ctypes.c_uint32),
    ]


class ListenKeyC(ctypes.Structure):
    """Mirror of ``struct listen_key``."""

    _fields_ = [
        ("netns", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class UdpDestC(ctypes.Structure):
    """Mirror of ``struct udp_dest``."""

    _fields_ = [
        ("raddr", ctypes.c_uint8 * 16),
        ("lport", ctypes.c_uint16),
        ("rport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class FlowEventC(ctypes.Structure):
    """Mirror of ``struct flow_event`` (ring buffer record)."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("duration_ns", ctypes.c_uint64),
        ("tx_bytes", ctypes.c_uint64),
        ("rx_bytes", ctypes.c_uint64),
        ("netns", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("laddr", ctypes.c_uint8 * 16),
        ("raddr", ctypes.c_uint8 * 16),
        ("lport", ctypes.c_uint16),
        ("rport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("type", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("oldstate", ctypes.c_uint8),
        ("newstate", ctypes.c_uint8),
        ("established", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("retrans", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("retrans_bytes", ctypes.c_uint64),
        ("tx_segs", ctypes.c_uint64),
        ("rx_segs", ctypes.c_uint64),
    ]


MIRRORS: Final[dict[str, type[ctypes.Structure]]] = {
    "flow_key": FlowKeyC,
    "flow_value": FlowValueC,
    "sk_owner": SkOwnerC,
    "listen_key": ListenKeyC,
    "udp_dest": UdpDestC,
    "flow_event": FlowEventC,
}


def format_addr(family: int, raw: bytes) -> str:
    """Text form of an address stored in 16 bytes (IPv4 in the first 4)."""
    if family == AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    return str(ipaddress.IPv6Address(raw[:16]))


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
        e = FlowEventC.from_buffer_copy(raw)
        is_counted = counters and EVENT_TYPES.get(e.type) == "close"
        kind = EVENT_TYPES.get(e.type, str(e.type))
        is_close = kind == "close"
        has_duration = e.duration_ns > 0 and kind in ("open", "close")
        return cls(
            time=e.ts_ns / 1e9 + wall_offset,
            type=kind,
            pid=e.tgid,
            comm=e.comm.decode(errors="replace"),
            cgroup_id=e.cgroup_id,
            netns=e.netns,
            family=family_name(e.family),
            laddr=format_addr(e.family, bytes(e.laddr)),
            lport=e.lport,
            raddr=format_addr(e.family, bytes(e.raddr)),
            rport=e.rport,
            direction=DIRECTIONS.get(e.direction),
            oldstate=TCP_STATES.get(e.oldstate) if e.oldstate else None,
            newstate=TCP_STATES.get(e.newstate) if e.newstate else None,
            established=bool(e.established),
            duration=e.duration_ns / 1e9 if has_duration else None,
            tx_bytes=e.tx_bytes if is_close else None,
            rx_bytes=e.rx_bytes if is_close else None,
            retransmits=e.retrans if is_close else None,
            tx_segs=e.tx_segs if is_counted else None,
            rx_segs=e.rx_segs if is_counted else None,
            retrans_bytes=e.retrans_bytes if is_counted else None,
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
    flows_inserted: int = 0
    events_received: int = 0
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
