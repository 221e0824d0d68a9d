"""What the agent hands its sinks at each poll, and its own sinks: the
recent-events buffer and the history writer.

The metrics (:class:`bpfscope.metrics.FlowMetrics`) and the OTLP exporter
(:class:`bpfscope.otlp.FlowExporter`) are sinks too; each implements
``consume(changes)`` (:class:`bpfscope.pipeline.Sink`).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Final

from .flows.records import ConnEvent, FlowRecord
from .ipprofile import IpProfiler
from .store import FlowSample, Store
from .syscalls.records import Snapshot

__all__ = ["EventBuffer", "EventEntry", "HistorySink", "PollChanges", "Published", "flow_sample"]


@dataclass(frozen=True)
class Published:
    """The agent's own state, read once per poll: what the views show
    without touching the kernel or the database."""

    programs: list[dict[str, Any]] = field(default_factory=list)  # with run stats
    flow_stats: dict[str, Any] = field(default_factory=dict)
    syscall_stats: dict[str, Any] | None = None  # None: no syscall collector
    store_stats: dict[str, Any] | None = None  # None: no history

    def self_metrics(self, flows_alive: bool, syscalls_alive: bool | None) -> dict[str, Any]:
        """bpfscope's own cost and health, as /metrics shows it."""
        stats = self.flow_stats
        dropped = {"flows": stats.get("events_dropped", 0) + stats.get("events_skipped", 0)}
        collectors = {"flows": flows_alive}
        if self.syscall_stats is not None and syscalls_alive is not None:
            dropped["syscalls"] = self.syscall_stats.get("events_dropped", 0)
            collectors["syscalls"] = syscalls_alive
        return {
            "programs": self.programs,
            "events_dropped": dropped,
            "map_entries": {"flows": stats.get("flows_in_map", 0)},
            "collectors": collectors,
        }


@dataclass(frozen=True)
class PollChanges:
    """What one poll found; each sink receives it once."""

    time: float  # wall clock of the poll
    flows: list[FlowRecord]  # flows that changed since the previous poll
    events: list[ConnEvent]  # lifecycle events that arrived
    syscalls: Snapshot | None  # the syscall interval (None: collector off or failed)
    self_metrics: dict[str, Any]  # bpfscope's own programs, drops and collectors


@dataclass(frozen=True)
class EventEntry:
    seq: int
    event: ConnEvent


class EventBuffer:
    """The most recent lifecycle events, numbered for clients that follow them."""

    def __init__(self, max_events: int = 10_000) -> None:
        self._events: deque[EventEntry] = deque(maxlen=max_events)
        self._seq = 0
        self._lock = threading.Lock()

    def consume(self, changes: PollChanges) -> None:
        with self._lock:
            for e in changes.events:
                self._seq += 1
                self._events.append(EventEntry(self._seq, e))

    def since(self, seq: int = 0, limit: int | None = None) -> list[EventEntry]:
        with self._lock:
            out = [e for e in self._events if e.seq > seq]
        return out[-limit:] if limit else out

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._seq


def _ephemeral_range(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The ports the kernel picks for clients (Linux's default if unreadable)."""
    try:
        with open(path) as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


EPHEMERAL: Final = _ephemeral_range()


def service_direction(rec: FlowRecord, ephemeral: tuple[int, int] = EPHEMERAL) -> str:
    """Which side offers the service: "active" (this process connected: the
    remote port is the service), "passive" (it accepted: the local port is),
    or "" (unknown). TCP knows from connect/accept; otherwise the side whose
    port is in the kernel's ephemeral range is the client, if only one is."""
    if rec.direction in ("active", "passive"):
        return rec.direction
    if not rec.raddr or not rec.rport:
        return ""
    lo, hi = ephemeral
    local_eph, remote_eph = lo <= rec.lport <= hi, lo <= rec.rport <= hi
    if local_eph and not remote_eph:
        return "active"
    if remote_eph and not local_eph:
        return "passive"
    return ""


def flow_sample(
    rec: FlowRecord, profiler: IpProfiler | None, *, new: bool = True, closed: bool = False
) -> FlowSample:
    """The store's view of one interval of one flow, keyed without the
    client's ephemeral port: (process, local address, remote address,
    service port, direction)."""
    prof = profiler.profile(rec.raddr) if profiler else None
    direction = service_direction(rec)
    lport, rport = rec.lport, rec.rport or 0
    if direction == "active":
        lport = 0
    elif direction == "passive":
        rport = 0
    duration = None
    if closed and rec.closed is not None and rec.opened is not None:
        duration = max(0, round((rec.closed - rec.opened) * 1000))
    return FlowSample(
        proto=rec.proto,
        family=4 if rec.family == "ipv4" else 6,
        laddr=rec.laddr,
        lport=lport,
        raddr=rec.raddr or "",
        rport=rport,
        pid=rec.pid,
        comm=rec.comm,
        container=rec.container or "",
        tx_bytes=rec.tx_delta,
        rx_bytes=rec.rx_delta,
        tx_segs=rec.tx_segs_delta,
        rx_segs=rec.rx_segs_delta,
        retrans_bytes=rec.retrans_bytes_delta,
        remote_class=str(prof.remote_class) if prof else "",
        remote_name=(prof.name or "") if prof else "",
        direction=direction,
        conn=hash(_conn_id(rec)),
        new=new,
        closed=closed,
        duration_ms=duration,
        rtt_us=rec.rtt_us,
    )


def _conn_id(rec: FlowRecord) -> tuple[object, ...]:
    return (rec.proto, rec.netns, rec.laddr, rec.lport, rec.raddr, rec.rport, rec.pid)


# A connection not seen for this long counts as new when it shows again.
FORGET_SECONDS: Final = 3600.0


class HistorySink:
    """Writes each interval's changed flows to the history store, and tells
    it which connections are new and which closed (each counted once: the
    collector may report a closed flow in two polls)."""

    def __init__(self, store: Store, profiler: IpProfiler | None = None) -> None:
        self.store = store
        self.profiler = profiler
        self._seen: dict[tuple[object, ...], float] = {}  # open connections: last seen
        self._closed: set[tuple[object, ...]] = set()  # closed in the previous poll
        self._last_prune = 0.0

    def consume(self, changes: PollChanges) -> None:
        now = changes.time
        samples = []
        closed_now: set[tuple[object, ...]] = set()
        for r in changes.flows:
            cid = _conn_id(r)
            if cid in self._closed:  # its close was counted in the previous poll
                closed_now.add(cid)
                samples.append(flow_sample(r, self.profiler, new=False))
                continue
            new = cid not in self._seen
            if r.closed is not None:
                self._seen.pop(cid, None)
                closed_now.add(cid)
            else:
                self._seen[cid] = now
            samples.append(flow_sample(r, self.profiler, new=new, closed=r.closed is not None))
        self._closed = closed_now
        if now - self._last_prune >= 60:
            # connections that vanished without a close (UDP, evictions)
            self._seen = {c: t for c, t in self._seen.items() if now - t < FORGET_SECONDS}
            self._last_prune = now
        self.store.add(samples, now=now)
