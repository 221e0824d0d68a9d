"""The flow collector: load the flows tool, drain its table, join events.

A plain object: ``start()``, ``poll()`` returning typed records
(``FlowRecord`` for every flow that changed since the previous poll, with
deltas and rates, and ``ConnEvent`` for every lifecycle event), ``close()``;
plus ``snapshot()`` (every flow currently tracked) and ``stats()``.

The kernel keeps cumulative counters per flow in an LRU hash; each poll
reads the whole table with one batch lookup (per-key iteration where the
kernel lacks batch ops), compares each value with the previous one and
decodes only what changed. Flows that closed (and did not change since) or
stayed idle for ``idle_timeout`` are deleted from the kernel table and from
the collector, so memory stays bounded by the table size however many flows
come and go. Entries the kernel evicted because the table was full are
counted (inserts - removed - present), never hidden.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from .. import libbpf as bpf
from ..features import Mechanism
from ..ladder import AttachedObject, Choice, Hook, choose, load_object
from . import programs
from .attribution import Attribution
from .records import (
    AF_INET,
    AF_INET6,
    DIRECTIONS,
    STAT_INSERTS,
    STAT_NO_OWNER,
    STAT_SK_UPDATE_FAILED,
    STAT_UDP_DEST_HIT,
    STAT_UDP_DEST_MISS,
    STAT_UPDATE_FAILED,
    TCP_STATES,
    CollectorStats,
    ConnEvent,
    FlowMeta,
    FlowRecord,
    decode_key,
)

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "FlowCollector",
    "KernelFilter",
    "Record",
]

log = logging.getLogger("bpfscope.flows")

DEFAULT_MAX_ENTRIES: Final = 262144
FLOW_MAP: Final = "flows"

Record = FlowRecord | ConnEvent

# struct flow_value, little-endian (BPF is host-endian; x86_64/arm64 here)
_VALUE: Final = struct.Struct("<8Q3IBB2x16s")
assert _VALUE.size == 96


@dataclass(frozen=True)
class KernelFilter:
    """Filters applied in the kernel (``const volatile``, set before load)."""

    pid: int | None = None
    cgroup_id: int | None = None
    port: int | None = None
    family: int | None = None  # socket.AF_INET / AF_INET6

    def rodata(self) -> dict[str, int]:
        if self.family not in (None, AF_INET, AF_INET6):
            raise ValueError(f"family must be AF_INET or AF_INET6, not {self.family}")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, not {self.port}")
        return {
            "filter_tgid": self.pid or 0,
            "filter_cgroup": self.cgroup_id or 0,
            "filter_port": self.port or 0,
            "filter_family": self.family or 0,
        }


class _Ring(Protocol):
    """The ring buffer of lifecycle events, as the collector drains it."""

    def poll(self, timeout_ms: int = ...) -> int: ...
    def consume(self) -> int: ...
    def close(self) -> None: ...


@dataclass
class _Tracked:
    meta: FlowMeta
    raw: bytes
    record: FlowRecord
    changed_at: float  # monotonic seconds of the last change


class FlowCollector:
    """Per-flow traffic and TCP lifecycle from the flows BPF tool."""

    def __init__(
        self,
        *,
        kernel_filter: KernelFilter | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        idle_timeout: float = 120.0,
        attribution: Attribution | None = None,
        resolve: bool = True,
        force: Mechanism | None = None,
        btf_path: str | None = None,
        drain: str = "batch",
        events_size: int | None = None,
        loader: Callable[[], AttachedObject] | None = None,
        ring: Callable[[Any, Callable[[bytes], None]], _Ring] | None = None,
    ) -> None:
        """``loader`` (the attached tool) and ``ring`` (the event ring buffer
        over its map) exist for tests; by default the real BPF object is
        loaded and its ring buffer opened."""
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        if drain not in ("batch", "per-key"):
            raise ValueError("drain must be 'batch' or 'per-key'")
        self.kernel_filter = kernel_filter or KernelFilter()
        self.max_entries = max_entries
        self.idle_timeout = idle_timeout
        self.attribution = attribution if attribution is not None else Attribution()
        self.resolve = resolve
        self.force = force
        self.btf_path = btf_path
        self.drain = drain
        self.events_size = events_size
        self._loader = loader or self._load
        self._open_ring = ring or bpf.RingBuffer
        self._tool: AttachedObject | None = None
        self._fold: bpf.Link | None = None  # iterator folding per-socket TCP counts
        self._ring: _Ring | None = None
        self._flows: dict[bytes, _Tracked] = {}
        self._events: list[ConnEvent] = []
        self._removed = 0
        self._evicted_seen = 0
        self._events_received = 0
        self._last_poll = 0.0
        self._wall_offset = time.time() - time.monotonic()
        self._stats = CollectorStats(map_capacity=max_entries, drain=drain)

    # lifecycle -------------------------------------------------------------

    def hooks(self) -> list[Hook]:
        """The hooks to load: route-lookup hooks only where sends stand on a
        tracepoint rung (the function rungs see UDP destinations themselves)."""
        base = programs.traffic_hooks() + programs.lifecycle_hooks()
        chosen = {c.hook.name: c.mechanism for c in choose(base, force=self.force)}
        if chosen.get("send") in programs.TRACEPOINT_RUNGS:
            return base + programs.dest_hooks()
        return base

    def _load(self) -> AttachedObject:
        sizes = {FLOW_MAP: self.max_entries}
        if self.events_size is not None:
            sizes["flow_events"] = self.events_size  # ring buffer bytes: power of 2 pages
        return load_object(
            programs.OBJECT,
            self.hooks(),
            rodata=self.kernel_filter.rodata(),
            max_entries=sizes,
            force=self.force,
            btf_path=self.btf_path,
            extras=programs.socket_accounting,
        )

    def start(self) -> FlowCollector:
        if self._tool is not None:
            return self
        self._tool = self._loader()
        try:
            obj = self._tool.obj
            if programs.FOLD_PROGRAM in self._tool.extras.programs:
                prog = obj.program(programs.FOLD_PROGRAM)
                self._fold = prog.attach_map_iter(obj.map(programs.SK_ACCT_MAP))
                self._stats.tcp_accounting = "socket"
            self._ring = self._open_ring(obj.map("flow_events"), self._on_event)
        except BaseException:
            self._tool.close()
            self._tool = None
            self._fold = None
            raise
        self._last_poll = time.monotonic()
        self._stats.rungs = self.rungs()
        return self

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._fold = None  # a link of the object: destroyed with it
        if self._tool is not None:
            self._tool.close()
            self._tool = None

    def __enter__(self) -> FlowCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def attached(self) -> AttachedObject:
        if self._tool is None:
            raise RuntimeError("collector is not started")
        return self._tool

    @property
    def choices(self) -> list[Choice]:
        return self.attached.choices

    def rungs(self) -> dict[str, str | None]:
        return self.attached.rungs()

    # events ----------------------------------------------------------------

    def _on_event(self, raw: bytes) -> None:
        self._events_received += 1
        self._events.append(ConnEvent.decode(raw, self._wall_offset))

    def _enrich_event(self, e: ConnEvent) -> ConnEvent:
        if not self.resolve:
            return e
        cg = self.attribution.cgroup(e.cgroup_id, e.pid)
        return dataclasses.replace(
            e, container=cg.short_container, pod_uid=cg.pod_uid, cgroup=cg.path
        )

    # polling ---------------------------------------------------------------

    def _read_table(self) -> list[tuple[bytes, bytes]]:
        m = self.attached.obj.map(FLOW_MAP)
        if self.drain == "per-key":
            return m.items_per_key()
        items = m.lookup_batch()
        if m.batch_supported is False:
            self._stats.drain = "per-key (no batch ops)"
        return items

    def wait_events(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for lifecycle events (kept for the
        next ``poll``), without reading the flow table."""
        assert self._ring is not None, "collector is not started"
        self._ring.poll(max(0, int(timeout * 1000)))

    def poll(self, timeout: float = 0.0) -> list[Record]:
        """Wait up to ``timeout`` seconds for events, then read the table.

        Returns the flows that changed since the previous poll and the
        lifecycle events that arrived, in that order.
        """
        assert self._ring is not None, "collector is not started"
        if timeout > 0:
            self._ring.poll(int(timeout * 1000))
        self._ring.consume()
        t0 = time.monotonic()
        if self._fold is not None:
            try:
                self._fold.run_iter()
            except OSError as exc:
                # the table is still right up to the last fold, and pending
                # traffic is folded by the next poll (or at CLOSE)
                self._stats.fold_failures += 1
                log.warning("folding per-socket TCP counts failed: %s", exc)
            t1 = time.monotonic()
            self._stats.fold_seconds = t1 - t0
            t0 = t1
        items = self._read_table()
        now = time.monotonic()
        self._stats.drain_seconds = now - t0
        dt = max(now - self._last_poll, 1e-6)
        self._last_poll = now
        changed: list[FlowRecord] = []
        present: set[bytes] = set()
        flows = self._flows
        for key, raw in items:
            present.add(key)
            tracked = flows.get(key)
            if tracked is not None and tracked.raw == raw:
                rec = tracked.record
                rec.tx_delta = rec.rx_delta = 0
                rec.tx_rate = rec.rx_rate = 0.0
                continue
            if tracked is None:
                meta = decode_key(key)
                tracked = _Tracked(meta, b"", self._new_record(meta, raw), now)
                flows[key] = tracked
            self._update(tracked, raw, dt, now)
            changed.append(tracked.record)
        # entries that vanished without us deleting them: LRU evictions
        for key in [k for k in flows if k not in present]:
            del flows[key]
            self._evicted_seen += 1
        removed, moved = self._expire(now, dt)
        changed.extend(moved)
        events = [self._enrich_event(e) for e in self._events]
        self._events.clear()
        self._refresh_stats(len(items) - removed)
        out: list[Record] = list(changed)
        out.extend(events)
        return out

    def _new_record(self, meta: FlowMeta, raw: bytes) -> FlowRecord:
        comm = _VALUE.unpack_from(raw)[13].rstrip(b"\0").decode(errors="replace")
        rec = FlowRecord(
            pid=meta.pid,
            comm=comm,
            cgroup_id=meta.cgroup_id,
            netns=meta.netns,
            family=meta.family,
            proto=meta.proto,
            laddr=meta.laddr,
            lport=meta.lport,
            raddr=meta.raddr,
            rport=meta.rport,
        )
        if self.resolve:
            proc = self.attribution.process(meta.pid, comm)
            rec.cmdline = proc.cmdline
            cg = self.attribution.cgroup(meta.cgroup_id, meta.pid)
            rec.cgroup = cg.path
            rec.container = cg.short_container
            rec.runtime = cg.runtime
            rec.pod_uid = cg.pod_uid
            rec.unit = cg.unit
        return rec

    def _wall(self, ns: int) -> float:
        return ns / 1e9 + self._wall_offset

    def _update(self, tracked: _Tracked, raw: bytes, dt: float, now: float) -> None:
        (
            tx,
            rx,
            txc,
            rxc,
            first_ns,
            last_ns,
            open_ns,
            close_ns,
            retrans,
            rst_sent,
            rst_recv,
            state,
            direction,
            _comm,
        ) = _VALUE.unpack(raw)
        rec = tracked.record
        dtx = tx - rec.tx_bytes if tx >= rec.tx_bytes else tx
        drx = rx - rec.rx_bytes if rx >= rec.rx_bytes else rx
        rec.tx_bytes, rec.rx_bytes, rec.tx_calls, rec.rx_calls = tx, rx, txc, rxc
        rec.tx_delta, rec.rx_delta = dtx, drx
        rec.tx_rate, rec.rx_rate = dtx / dt, drx / dt
        rec.retransmits, rec.resets_sent, rec.resets_received = retrans, rst_sent, rst_recv
        rec.state = TCP_STATES.get(state) if state else None
        rec.direction = DIRECTIONS.get(direction)
        rec.first_seen = self._wall(first_ns) if first_ns else rec.first_seen
        rec.last_seen = self._wall(last_ns) if last_ns else rec.last_seen
        rec.opened = self._wall(open_ns) if open_ns else None
        rec.closed = self._wall(close_ns) if close_ns else None
        tracked.raw = raw
        tracked.changed_at = now

    def _expire(self, now: float, dt: float) -> tuple[int, list[FlowRecord]]:
        """Delete closed flows once reported, and idle flows, from both tables.

        Each leaves the kernel table in one step where the kernel can
        (lookup-and-delete): traffic that landed since this poll's read is
        in the value taken, and reported now, not lost. Returns how many
        were deleted from the kernel table and the records of those that
        had moved meanwhile.
        """
        m = self.attached.obj.map(FLOW_MAP)
        doomed = [
            key
            for key, t in self._flows.items()
            if t.changed_at < now
            and (t.record.closed is not None or now - t.changed_at >= self.idle_timeout)
        ]
        deleted = 0
        moved: list[FlowRecord] = []
        for key in doomed:
            tracked = self._flows.pop(key)
            value = m.take(key)
            if value is None:
                continue  # the kernel evicted it meanwhile: counted as evicted
            deleted += 1
            if value != tracked.raw:
                self._update(tracked, value, dt, now)
                moved.append(tracked.record)
        self._removed += deleted
        return deleted, moved

    def _refresh_stats(self, present: int) -> None:
        obj = self.attached.obj
        stats_map = obj.map("flows_stats")

        def slot(i: int) -> int:
            return stats_map.sum_percpu_u64(struct.pack("=I", i))

        s = self._stats
        s.polls += 1
        s.flows_in_map = present
        s.flows_tracked = len(self._flows)
        s.flows_removed = self._removed
        s.flows_inserted = slot(STAT_INSERTS)
        s.update_failures = slot(STAT_UPDATE_FAILED)
        s.socket_update_failures = slot(STAT_SK_UPDATE_FAILED)
        s.no_owner = slot(STAT_NO_OWNER)
        s.udp_remote_seen = slot(STAT_UDP_DEST_HIT)
        s.udp_remote_unknown = slot(STAT_UDP_DEST_MISS)
        s.flows_evicted = max(0, s.flows_inserted - self._removed - present)
        s.events_dropped = obj.map("flow_events_dropped").sum_percpu_u64(bytes(4))
        s.events_skipped = self.attached.skipped_runs()
        s.events_received = self._events_received

    # snapshot access ---------------------------------------------------------

    def snapshot(self) -> list[FlowRecord]:
        """Every flow the collector currently tracks (as of the last poll)."""
        return [t.record for t in self._flows.values()]

    def stats(self) -> CollectorStats:
        return dataclasses.replace(self._stats, rungs=dict(self._stats.rungs))


def flows_of(records: Iterable[Record]) -> list[FlowRecord]:
    return [r for r in records if isinstance(r, FlowRecord)]


def events_of(records: Iterable[Record]) -> list[ConnEvent]:
    return [r for r in records if isinstance(r, ConnEvent)]
