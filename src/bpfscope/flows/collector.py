"""The flow collector: load the flows tool, drain its table, join events.

A plain object: ``start()``, ``poll()`` returning typed records
(``FlowRecord`` for every flow that changed since the previous poll, with
deltas and rates, and ``ConnEvent`` for every lifecycle event), ``close()``;
plus ``snapshot()`` (every flow currently tracked) and ``stats()``.

TCP volume comes, where the kernel allows (``iter/tcp``, 5.9+), from each
socket's own counters: every poll first runs an iterator that credits what
the counters of each owned socket moved since the last poll to its flow
(the lifecycle hook does the same at CLOSE), so TCP runs no bpfscope
program per message. UDP (``udp=True``) keeps per-event hooks. Elsewhere
the traffic hooks count TCP per event too ("table" accounting).

The kernel keeps cumulative counters per flow in an LRU hash; each poll
reads the whole table with one batch lookup (per-key iteration where the
kernel lacks batch ops), compares each value with the previous one and
decodes only what changed. Flows that closed (and did not change since) or
stayed idle for ``idle_timeout`` are deleted from both; short connections
can be folded per group (``fold_closed``, flows/fold.py). Entries the kernel
evicted are counted (inserts - removed - present), never hidden.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from .. import libbpf as bpf
from ..features import Mechanism
from ..ladder import AttachedObject, Choice, Hook, choose, load_object
from . import health, programs
from .attribution import Attribution
from .counters import CountersPass
from .events import CallbackEvents, ConnTally, EventBatch, EventPump, Ring, tallies_of
from .fold import PROTO_AT, TCP, VALUE, fold_closed
from .layout import KernelFilter
from .records import (
    DIRECTIONS,
    STAT_ADOPTED,
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
    "FOLD_AT",
    "FlowCollector",
    "KernelFilter",
    "Record",
]

log = logging.getLogger("bpfscope.flows")

DEFAULT_MAX_ENTRIES: Final = 262144
# Ring bytes: ~0.7 s of events at 20,000 connections/s (80,000 events/s),
# read every 10 ms by the event thread; each byte is resident twice (the
# data pages are mapped twice), so the ring is ~16 MB of the agent's RSS
DEFAULT_EVENTS_SIZE: Final = 8 << 20
# The agent folds short connections in polls that find this many (churn)
FOLD_AT: Final = 100
FLOW_MAP: Final = "flows"
HEALTH_MAP: Final = "flow_health"  # counters path: TCP health per flow

# "objects": every lifecycle event as a ConnEvent (the CLI's conns view);
# "batches": one EventBatch per poll (decoded when read) and exact ConnTally
# counts per group: what the agent uses at any connection rate
Record = FlowRecord | ConnEvent | EventBatch | ConnTally
EVENT_MODES: Final = ("objects", "batches")

_VALUE: Final = VALUE  # struct flow_value


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
        events_size: int | None = DEFAULT_EVENTS_SIZE,
        udp: bool = True,
        tcp_counters: bool = True,
        loader: Callable[[], AttachedObject] | None = None,
        ring: Callable[[Any, Callable[[bytes], None]], Ring] | None = None,
        events: str = "objects",
        event_buffer_bytes: int = 32 << 20,
        fold_closed: bool = False,
        fold_at: int = 1,
    ) -> None:
        """``loader`` (the attached tool) and ``ring`` (the ring buffer over
        its map, one callback per record) exist for tests; by default the
        ring is drained in bulk on a thread of its own. ``events``: see
        ``EVENT_MODES``; ``event_buffer_bytes`` bounds raw events between polls.
        ``fold_closed``: TCP connections that opened and closed between two
        polls become one record per group and poll (``FlowRecord.folded``),
        not a flow each (what the agent uses: churn then costs per group),
        in polls that find at least ``fold_at`` of them (fewer stay flows of
        their own, with their client port)."""
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        if events not in EVENT_MODES:
            raise ValueError(f"events must be one of {', '.join(EVENT_MODES)}")
        self.events, self.event_buffer_bytes = events, event_buffer_bytes
        self.fold_closed, self.fold_at = fold_closed, max(1, fold_at)
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
        self.udp = udp
        self.tcp_counters = tcp_counters  # False: the table path even where counters work
        self._counters_mode = False
        self._loader = loader or self._load_auto
        self._open_ring = ring or bpf.RingBuffer
        self._bulk = ring is None and bpf.bulk_supported()
        self._events: EventPump | CallbackEvents | None = None
        self._tool: AttachedObject | None = None
        self._counters: CountersPass | None = None  # TCP volume from socket counters
        self._flows: dict[bytes, _Tracked] = {}
        # TCP health: each socket's last reading (also before its flow has a record)
        self._health_raw: dict[bytes, bytes] = {}
        self._removed = 0
        self._evicted_seen = 0
        self._last_poll = 0.0
        self._wall_offset = time.time() - time.monotonic()
        self._stats = CollectorStats(map_capacity=max_entries, drain=drain)

    def hooks(self, counters: bool | None = None) -> list[Hook]:
        """The hooks to load: on the counters path lifecycle and accept hooks
        plus UDP's traffic hooks (if UDP is accounted), else TCP's and UDP's
        traffic hooks with the lifecycle; route-lookup hooks only where UDP
        sends stand on a tracepoint rung (the function rungs see UDP
        destinations themselves)."""
        if counters is None:
            counters = self._counters_mode
        if counters:
            base = programs.counters_hooks(udp=self.udp)
        else:
            base = programs.traffic_hooks() + programs.lifecycle_hooks()
        if not self.udp:
            return base
        chosen = {c.hook.name: c.mechanism for c in choose(base, force=self.force)}
        if chosen.get("send") in programs.TRACEPOINT_RUNGS:
            return base + programs.dest_hooks()
        return base

    def _load_auto(self) -> AttachedObject:
        """The counters path where the kernel runs it, else the table path."""
        if self.tcp_counters:
            tool = self._load(counters=True)
            if programs.COUNTERS_ITER in tool.extras.programs:
                return tool
            # iter/tcp refused: TCP needs its per-event hooks after all
            log.info("TCP counters iterator refused; counting TCP per event")
            tool.close()
        return self._load(counters=False)

    def _load(self, counters: bool) -> AttachedObject:
        sizes = {FLOW_MAP: self.max_entries, HEALTH_MAP: min(self.max_entries, 65536)}
        if self.events_size is not None:
            sizes["flow_events"] = self.events_size  # ring buffer bytes: power of 2 pages
        rodata = self.kernel_filter.rodata()
        if not self.udp:
            rodata["skip_udp"] = 1
        return load_object(
            programs.OBJECT,
            self.hooks(counters),
            rodata=rodata,
            max_entries=sizes,
            force=self.force,
            btf_path=self.btf_path,
            extras=programs.tcp_counters if counters else None,
        )

    def start(self) -> FlowCollector:
        if self._tool is not None:
            return self
        self._tool = self._loader()
        self._counters_mode = programs.COUNTERS_ITER in self._tool.extras.programs
        try:
            obj = self._tool.obj
            if self._counters_mode:
                self._counters = CountersPass(obj, self._stats)
                self._stats.tcp_accounting = "counters"
                # sockets older than the collector: owners now, counted from now
                self._counters.sweep(time.monotonic())
            ring = obj.map("flow_events")
            tallies = self.events == "batches"
            if self._bulk:
                self._events = EventPump(
                    bpf.BulkRing(ring),
                    max_bytes=self.event_buffer_bytes,
                    tallies=tallies,
                    on_drain=self._count_drops,
                ).start()
            else:
                self._events = CallbackEvents(lambda cb: self._open_ring(ring, cb), tallies=tallies)
        except BaseException:
            self._tool.close()
            self._tool = None
            if self._counters is not None:
                self._counters.close()
                self._counters = None
            raise
        self._last_poll = time.monotonic()
        self._stats.rungs = self.rungs()
        self._stats.udp = self.udp
        self._stats.udp_shares_tcp_hooks = self.udp and self._udp_on_shared_hooks()
        return self

    def _udp_on_shared_hooks(self) -> bool:
        """UDP's traffic programs stand on the tracepoints every TCP message
        fires too (sock_send_length/sock_recv_length): TCP pays for them."""
        rungs = self.rungs()
        return any(
            rungs.get(h) in {m.value for m in programs.TRACEPOINT_RUNGS} for h in ("send", "recv")
        )

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
        if self._counters is not None:  # its links: destroyed with the object
            self._counters.close()
            self._counters = None
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

    def _count_drops(self) -> None:
        """After each drain (event thread): the kernel's cumulative drop count,
        so health tells it even while a poll runs long."""
        if self._tool is not None:
            self._stats.events_dropped = self._tool.obj.map("flow_events_dropped").sum_percpu_u64(
                bytes(4)
            )

    def _take_events(self) -> list[Record]:
        """The lifecycle events since the last poll, as this collector's
        ``events`` mode wants them."""
        assert self._events is not None, "collector is not started"
        blob, groups = self._events.take()
        batch = EventBatch(blob, self._wall_offset, self._counters_mode, self._enrich_event)
        if self.events == "objects":
            return list(batch.decode())
        out: list[Record] = [batch]
        for t in tallies_of(groups):
            if self.resolve:
                cg = self.attribution.cgroup(t.cgroup_id, t.pid)
                t.container, t.cgroup = cg.short_container, cg.path
            out.append(t)
        return out

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
        assert self._events is not None, "collector is not started"
        self._events.wait(timeout)

    def poll(self, timeout: float = 0.0) -> list[Record]:
        """Wait up to ``timeout`` seconds for events, then read the table.

        Returns the flows that changed since the previous poll and the
        lifecycle events that arrived, in that order.
        """
        if timeout > 0:
            self.wait_events(timeout)
        t0 = time.monotonic()
        if self._counters is not None:
            self._counters.read(t0)
            t1 = time.monotonic()
            self._stats.counters_seconds = t1 - t0
            t0 = t1
        items = self._read_table()
        now = time.monotonic()
        self._stats.drain_seconds = now - t0
        dt = max(now - self._last_poll, 1e-6)
        self._last_poll = now
        changed: list[FlowRecord] = []
        present: set[bytes] = set()
        flows = self._flows
        short: list[tuple[bytes, bytes]] = []  # closed before this poll first saw them
        fold = self.fold_closed
        for key, raw in items:
            present.add(key)
            tracked = flows.get(key)
            if tracked is not None and tracked.raw == raw:
                rec = tracked.record
                rec.tx_delta = rec.rx_delta = 0
                rec.tx_segs_delta = rec.rx_segs_delta = rec.retrans_bytes_delta = 0
                rec.tx_rate = rec.rx_rate = 0.0
                continue
            if tracked is None:
                if fold and key[PROTO_AT] == TCP and _VALUE.unpack_from(raw)[7]:
                    short.append((key, raw))
                    continue
                meta = decode_key(key)
                tracked = _Tracked(meta, b"", self._new_record(meta, raw), now)
                flows[key] = tracked
            self._update(tracked, raw, dt, now)
            changed.append(tracked.record)
        # entries that vanished without us deleting them: LRU evictions
        for key in [k for k in flows if k not in present]:
            del flows[key]
            self._evicted_seen += 1
        folded: list[FlowRecord] = []
        taken = 0
        if len(short) >= self.fold_at:
            folded, taken = self._fold_short(short, dt)
        else:  # a few: kept one by one as any flow (deleted at the next poll)
            for key, raw in short:
                meta = decode_key(key)
                tracked = flows[key] = _Tracked(meta, b"", self._new_record(meta, raw), now)
                self._update(tracked, raw, dt, now)
                folded.append(tracked.record)
        changed.extend(folded)
        if self._counters is not None:
            self._read_health()
        removed, moved = self._expire(now, dt)
        changed.extend(moved)
        events = self._take_events()
        self._refresh_stats(len(items) - removed - taken)
        out: list[Record] = list(changed)
        out.extend(events)
        return out

    def _fold_short(
        self, short: list[tuple[bytes, bytes]], dt: float
    ) -> tuple[list[FlowRecord], int]:
        """Short connections folded per group (``fold.fold_closed``), then
        deleted from the kernel table and health in one batch: their values
        as read are final (the close credited the last counters). Returns
        the records and how many keys were deleted (not the evicted)."""
        obj = self.attached.obj
        keys = [k for k, _ in short]
        taken = obj.map(FLOW_MAP).delete_batch(keys)
        if self._counters_mode:
            obj.map(HEALTH_MAP).delete_batch(keys)
        records = fold_closed(
            short, self._new_record, self._wall, counters=self._counters_mode, dt=dt
        )
        self._removed += taken
        self._stats.flows_folded += len(short)
        return records, taken

    def _read_health(self) -> None:
        """Each TCP flow's latest health (its socket's tcp_info, read by the
        counters pass or at CLOSE), with time fractions since the previous
        reading. Updates records in place: health alone is not a change."""
        readings = self.attached.obj.map(HEALTH_MAP).lookup_batch()
        flows = self._flows
        health.apply_readings(
            lambda key: t.record if (t := flows.get(key)) is not None else None,
            self._health_raw,
            readings,
        )
        self._health_raw = dict(readings)

    def _new_record(self, meta: FlowMeta, raw: bytes) -> FlowRecord:
        comm = _VALUE.unpack_from(raw)[14].rstrip(b"\0").decode(errors="replace")
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
        if meta.proto == "tcp" and self._counters_mode:
            # segments, not calls: the counters path sees no send/recv call
            rec.tx_calls = rec.rx_calls = None
            rec.tx_segs = rec.rx_segs = rec.retrans_bytes = 0
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
            retrans_bytes,
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
        rec.tx_bytes, rec.rx_bytes = tx, rx
        if rec.proto == "tcp" and self._counters_mode:
            rec.tx_segs_delta = _growth(txc, rec.tx_segs or 0)
            rec.rx_segs_delta = _growth(rxc, rec.rx_segs or 0)
            rec.retrans_bytes_delta = _growth(retrans_bytes, rec.retrans_bytes or 0)
            rec.tx_segs, rec.rx_segs, rec.retrans_bytes = txc, rxc, retrans_bytes
        else:
            rec.tx_calls, rec.rx_calls = txc, rxc
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
        health_map = self.attached.obj.map(HEALTH_MAP) if self._counters_mode else None
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
            if health_map is not None:
                health_map.delete(key)
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
        s.adopted = slot(STAT_ADOPTED)
        s.flows_evicted = max(0, s.flows_inserted - self._removed - present)
        s.events_dropped = obj.map("flow_events_dropped").sum_percpu_u64(bytes(4))
        s.events_skipped = self.attached.skipped_runs()
        if self._events is not None:
            s.events_received = self._events.received
            s.events_unbuffered = self._events.unbuffered
            s.event_drains = self._events.drains
            s.event_drain_seconds_max = self._events.longest_drain

    def snapshot(self) -> list[FlowRecord]:
        """Every flow the collector currently tracks (as of the last poll)."""
        return [t.record for t in self._flows.values()]

    def stats(self) -> CollectorStats:
        return dataclasses.replace(self._stats, rungs=dict(self._stats.rungs))

    def event_counts(self) -> dict[str, int]:
        """Cumulative event counters as of now (the event thread keeps them
        current while a poll runs): received, dropped by the kernel,
        unbuffered (read but not kept for per-connection views)."""
        src = self._events
        return {
            "events_received": src.received if src else 0,
            "events_dropped": self._stats.events_dropped,
            "events_unbuffered": src.unbuffered if src else 0,
        }


def _growth(now: int, before: int) -> int:
    return now - before if now >= before else now  # a wrap or a reused socket


def flows_of(records: Iterable[Record]) -> list[FlowRecord]:
    return [r for r in records if isinstance(r, FlowRecord)]


def events_of(records: Iterable[Record]) -> list[ConnEvent]:
    return [r for r in records if isinstance(r, ConnEvent)]
