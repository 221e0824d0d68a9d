"""The lifecycle-event path of the flow collector, in bulk.

Connection churn makes tens of thousands of events per second; a Python
object per event cannot keep up (``docs/agent.md``: where the time went).
Here events stay raw bytes until someone reads them:

- :class:`EventPump` drains the ring buffer on its own thread (so the flow
  table's poll keeps its interval and the ring never waits for it) with
  :class:`~bpfscope.libbpf.BulkRing`, and holds what it read until the next
  poll, bounded in bytes; what the bound turns away is counted, never hidden.
- :func:`tally` counts events per group (type, process, cgroup, remote
  address, service port, direction) with duration buckets: exact counts for
  the metrics at the cost of a tuple per event.
- :class:`EventBatch` keeps one poll's raw records and decodes
  :class:`ConnEvent` objects only for the entries a reader asks for.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from .records import DIRECTIONS, EV, EVENT, EVENT_TYPES, ConnEvent, family_name, format_addr

__all__ = [
    "DURATION_BUCKETS",
    "CallbackEvents",
    "ConnTally",
    "EventBatch",
    "EventPump",
    "Ring",
    "tally",
]

log = logging.getLogger("bpfscope.flows")

# TCP connection lifetimes: from loopback RPCs to long-lived streams (seconds).
DURATION_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 60.0, 300.0, 1800.0, 3600.0,
)  # fmt: skip
_BOUNDS_NS: Final = tuple(int(b * 1e9) for b in DURATION_BUCKETS)
_OPEN, _CLOSE = 1, 2
_PASSIVE = 2


@dataclass
class ConnTally:
    """Lifecycle events of one group in one poll: exact counts, no ports of
    the client side (``port`` is the service port: the remote port of a
    connection we made, the local port of one we accepted)."""

    type: str  # open, close, retransmit, reset_sent, reset_received
    pid: int
    comm: str
    cgroup_id: int
    family: str
    raddr: str
    port: int
    direction: str | None
    count: int = 0
    laddr: str = ""
    duration_sum: float = 0.0  # close: seconds summed over ``duration_count``
    duration_count: int = 0
    # close: connections per DURATION_BUCKETS slot (last: above every bound)
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    container: str | None = None
    cgroup: str | None = None


# group key: (type, tgid, comm, cgroup_id, family, raddr, service port,
# direction, laddr)
GroupKey = tuple[int, int, bytes, int, int, bytes, int, int, bytes]


def tally(blob: bytes | bytearray, into: dict[GroupKey, list[Any]]) -> int:
    """Count the events in ``blob`` (whole ``struct flow_event`` records) per
    group into ``into``: key -> [count, duration_ns sum, duration count,
    bucket counts]. Returns how many events there were."""
    n = 0
    t, tg, cm, cg, fam, ra, lp, rp, dr, dur, la = (
        EV.type, EV.tgid, EV.comm, EV.cgroup_id, EV.family,
        EV.raddr, EV.lport, EV.rport, EV.direction, EV.duration_ns, EV.laddr,
    )  # fmt: skip
    bounds = _BOUNDS_NS
    for e in EVENT.iter_unpack(blob):
        n += 1
        kind = e[t]
        direction = e[dr]
        key = (
            kind, e[tg], e[cm], e[cg], e[fam], e[ra],
            e[lp] if direction == _PASSIVE else e[rp], direction, e[la],
        )  # fmt: skip
        slot = into.get(key)
        if slot is None:
            slot = into[key] = [0, 0, 0, None]
        slot[0] += 1
        if kind == _CLOSE and e[dur] > 0:
            d = e[dur]
            slot[1] += d
            slot[2] += 1
            if slot[3] is None:
                slot[3] = [0] * (len(bounds) + 1)
            slot[3][bisect.bisect_left(bounds, d)] += 1
    return n


def tallies_of(groups: dict[GroupKey, list[Any]]) -> list[ConnTally]:
    out = []
    for key, slot in groups.items():
        kind, tgid, comm, cgroup_id, family, raddr, port, direction, laddr = key
        count, dur_sum, dur_count, buckets = slot
        end = comm.find(b"\0")
        out.append(
            ConnTally(
                type=EVENT_TYPES.get(kind, str(kind)),
                pid=tgid,
                comm=comm[: end if end >= 0 else len(comm)].decode(errors="replace"),
                cgroup_id=cgroup_id,
                family=family_name(family),
                raddr=format_addr(family, raddr),
                port=port,
                direction=DIRECTIONS.get(direction),
                count=count,
                laddr=format_addr(family, laddr),
                duration_sum=dur_sum / 1e9,
                duration_count=dur_count,
                buckets=buckets or [0] * (len(DURATION_BUCKETS) + 1),
            )
        )
    return out


class EventBatch:
    """One poll's lifecycle events, raw: decoded only when read."""

    def __init__(
        self,
        blob: bytes | bytearray,
        wall_offset: float,
        counters: bool,
        enrich: Callable[[ConnEvent], ConnEvent] | None = None,
    ) -> None:
        self.blob = blob
        self.wall_offset = wall_offset
        self.counters = counters
        self.enrich = enrich

    def __len__(self) -> int:
        return len(self.blob) // EVENT.size

    @property
    def nbytes(self) -> int:
        return len(self.blob)

    def decode(self, start: int = 0, stop: int | None = None) -> list[ConnEvent]:
        """The events ``[start:stop]`` as objects."""
        n = len(self)
        stop = n if stop is None else min(stop, n)
        size = EVENT.size
        out = []
        for i in range(max(0, start), stop):
            e = ConnEvent.from_fields(
                EVENT.unpack_from(self.blob, i * size), self.wall_offset, self.counters
            )
            out.append(self.enrich(e) if self.enrich else e)
        return out

    def __iter__(self) -> Iterator[ConnEvent]:
        return iter(self.decode())

    def tail(self, start: int) -> EventBatch:
        """The events from ``start`` on, in a buffer of their own (the rest
        of this batch's memory is freed once it is dropped)."""
        blob = bytes(memoryview(self.blob)[start * EVENT.size :])
        return EventBatch(blob, self.wall_offset, self.counters, self.enrich)


class Ring(Protocol):
    """libbpf's callback consumer (or a test's stand-in)."""

    def poll(self, timeout_ms: int = ...) -> int: ...
    def consume(self) -> int: ...
    def close(self) -> None: ...


class CallbackEvents:
    """The event path where bulk reading is not safe (or a test hands a
    ring): libbpf calls back per record, in the caller's thread; same
    interface as :class:`EventPump`."""

    def __init__(
        self, open_ring: Callable[[Callable[[bytes], None]], Ring], *, tallies: bool
    ) -> None:
        self.tallies = tallies
        self.received = 0
        self.unbuffered = 0
        self.drains = 0
        self.longest_drain = 0.0
        self._raw: list[bytes] = []
        self.ring = open_ring(self._on_event)

    def _on_event(self, raw: bytes) -> None:
        self.received += 1
        self._raw.append(raw)

    def wait(self, timeout: float) -> None:
        self.ring.poll(max(0, int(timeout * 1000)))

    def take(self) -> tuple[bytes | bytearray, dict[GroupKey, list[Any]]]:
        self.ring.consume()
        self.drains += 1
        blob = b"".join(self._raw)
        self._raw.clear()
        groups: dict[GroupKey, list[Any]] = {}
        if self.tallies:
            tally(blob, groups)
        return blob, groups

    def close(self) -> None:
        self.ring.close()


class _Reader(Protocol):
    def read(self, max_bytes: int | None = None) -> tuple[bytes, int]: ...
    def wait(self, timeout: float) -> bool: ...
    def close(self) -> None: ...


class EventPump:
    """Drain a ring buffer on a thread of its own; keep what it read, bounded
    in bytes, for the collector's next poll; count every event per group.

    ``max_bytes``: raw events held between two polls (a stalled poll loop
    costs this much memory at most); what does not fit is counted in
    ``unbuffered`` and still counted in the tallies, so metrics stay exact.
    """

    def __init__(
        self,
        reader: _Reader,
        *,
        max_bytes: int = 32 << 20,
        tallies: bool = True,
        settle: float = 0.01,
        on_drain: Callable[[], None] | None = None,
    ) -> None:
        self.reader = reader
        self.max_bytes = max_bytes
        self.tallies = tallies
        self.settle = settle  # after a drain, let records gather this long
        self.on_drain = on_drain
        self.received = 0
        self.unbuffered = 0
        self.drains = 0
        self.longest_drain = 0.0
        self._last_hook = 0.0
        # raw events since the last take, appended in place: taking them
        # hands this buffer over (no joined copy of a poll's events)
        self._pending = bytearray()
        self._groups: dict[GroupKey, list[Any]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def wait(self, timeout: float) -> None:
        time.sleep(max(0.0, timeout))  # the thread drains meanwhile

    def start(self) -> EventPump:
        self._thread = threading.Thread(target=self._run, name="bpfscope-events", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.reader.wait(0.1)
                self.drain()
                self._stop.wait(self.settle)
        except BaseException as exc:  # reported by take(): the collector fails loudly
            log.exception("event drain failed")
            self.error = exc

    def drain(self) -> int:
        """Read what the ring holds now; returns the events read."""
        t0 = time.monotonic()
        blob, _ = self.reader.read()
        n = len(blob) // EVENT.size
        if n:
            with self._lock:
                self.received += n
                if self.tallies:
                    tally(blob, self._groups)
                if len(self._pending) + len(blob) <= self.max_bytes:
                    self._pending += blob
                else:
                    self.unbuffered += n
        if self.on_drain is not None and t0 - self._last_hook >= 0.1:
            self._last_hook = t0  # at most ten times a second: it reads a map
            self.on_drain()
        self.drains += 1
        self.longest_drain = max(self.longest_drain, time.monotonic() - t0)
        return n

    def take(self) -> tuple[bytes | bytearray, dict[GroupKey, list[Any]]]:
        """What arrived since the last take: raw events and group counts."""
        if self.error is not None:
            raise RuntimeError(f"event drain failed: {self.error}") from self.error
        with self._lock:
            blob = self._pending
            groups = self._groups
            self._pending = bytearray()
            self._groups = {}
        return blob, groups

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self.reader.close()
