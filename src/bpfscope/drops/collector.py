"""Drop collector: read the kernel's per-key drop counters into records.

The kernel counts drops by key (``packet_drops``, an LRU hash); each poll
reads every entry in one batch and turns the growth of each key's count
since the previous poll into ``delta``. Counts are kept cumulative here, so
a key the kernel evicted (LRU) or that this collector deleted (idle for
:data:`IDLE_POLLS` polls) keeps its total and starts again from zero in
the kernel. Python work is per key and poll, never per drop.
"""

from __future__ import annotations

import bisect
import ctypes
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from ..features import Mechanism
from ..flows.attribution import Attribution
from ..ladder import AttachedObject
from . import programs
from .owners import FlowOwners, OwnerSweep, resolve
from .records import STAT_MAX, STAT_SLOTS, DropRecord, ReasonNames, decode, protocol_label

__all__ = ["IDLE_POLLS", "CollectorStats", "DropCollector", "KernelSymbols"]

# Polls in a row a key must be read unchanged before its kernel entry is
# deleted (its next drop recreates it; the total here goes on).
IDLE_POLLS: Final = 30
# Records kept for the views after their last drop (seconds).
KEEP_SECONDS: Final = 600.0


class KernelSymbols:
    """Kernel address -> ``symbol+0xoff`` from /proc/kallsyms (read once)."""

    def __init__(self, path: str = "/proc/kallsyms") -> None:
        addrs: list[int] = []
        names: list[str] = []
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) < 3 or parts[1] not in "tTwW":
                        continue
                    addr = int(parts[0], 16)
                    if addr:
                        addrs.append(addr)
                        names.append(parts[2])
        except OSError:
            pass
        order = sorted(range(len(addrs)), key=addrs.__getitem__)
        self._addrs = [addrs[i] for i in order]
        self._names = [names[i] for i in order]
        self._cache: dict[int, str] = {}

    def __call__(self, address: int) -> str:
        name = self._cache.get(address)
        if name is None:
            i = bisect.bisect_right(self._addrs, address) - 1
            if i < 0 or not address:
                name = f"{address:#x}"
            else:
                name = f"{self._names[i]}+{address - self._addrs[i]:#x}"
            self._cache[address] = name
        return name


@dataclass
class CollectorStats:
    seen: int = 0  # drops counted by the kernel program
    consumed_skipped: int = 0
    empty_purged_skipped: int = 0  # QUEUE_PURGE of an unread FIN's empty skb
    update_failed: int = 0
    keys: int = 0
    keys_created: int = 0
    map_max: int = 0
    rungs: dict[str, str | None] = field(default_factory=dict)
    reasons_known: int = 0  # names read from the kernel's BTF
    owner_wanted: int = 0  # drops of a socket whose owner the kernel did not know
    owners_swept: int = 0  # owners the sweep found
    sweeps: int = 0
    sweep_seconds: float = 0.0  # the last sweep's duration

    def to_json(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "consumed_skipped": self.consumed_skipped,
            "empty_purged_skipped": self.empty_purged_skipped,
            "update_failed": self.update_failed,
            "keys": self.keys,
            "keys_created": self.keys_created,
            "map_fill": round(self.keys / self.map_max, 4) if self.map_max else 0.0,
            "rungs": self.rungs,
            "reasons_known": self.reasons_known,
            "owner_wanted": self.owner_wanted,
            "owners_swept": self.owners_swept,
            "sweeps": self.sweeps,
            "sweep_seconds": round(self.sweep_seconds, 6),
        }


@dataclass
class _Seen:
    count: int  # kernel count and bytes at the last read
    bytes: int
    idle: int = 0


class DropCollector:
    """``start()`` loads and attaches; ``poll()`` returns the records whose
    count grew since the previous poll; ``snapshot()`` every record kept."""

    def __init__(
        self,
        *,
        force: Mechanism | None = None,
        btf_path: str | os.PathLike[str] | None = None,
        max_entries: int | None = None,
        attribution: Attribution | None = None,
    ) -> None:
        self._force = force
        self._btf_path = btf_path
        self._max_entries = max_entries
        self._attribution = attribution
        self.attached: AttachedObject | None = None
        self.reasons = ReasonNames()
        self._symbols: KernelSymbols | None = None
        self._seen: dict[bytes, _Seen] = {}
        self._records: dict[bytes, DropRecord] = {}
        self._stats = CollectorStats()
        # cumulative drops by (reason, protocol label): the metric's series
        self.totals: dict[tuple[str, str], int] = {}
        self._wall_offset = time.time() - time.monotonic()
        self._sweep: OwnerSweep | None = None
        self._flow_owners: FlowOwners | None = None

    # lifecycle ---------------------------------------------------------------

    def start(self) -> DropCollector:
        if self.attached is None:
            self.reasons = ReasonNames.load(self._btf_path)
            self._symbols = KernelSymbols()
            if self._attribution is None:
                self._attribution = Attribution()
            self.attached = programs.load(
                force=self._force, btf_path=self._btf_path, max_entries=self._max_entries
            )
            if programs.SWEEP_ITER in self.attached.extras.programs:
                try:
                    self._sweep = OwnerSweep(self.attached.obj)
                except Exception:
                    self.close()
                    raise
        return self

    def use_flow_owners(self, flows: Iterable[Any]) -> None:
        """Owners of the flows collector's flows (the agent, before each
        poll): a drop of the same flow whose owner the kernel did not know
        gets that flow's."""
        self._flow_owners = FlowOwners(flows)

    def close(self) -> None:
        self._sweep = None  # its link goes with the object
        if self.attached is not None:
            self.attached.close()
            self.attached = None

    def __enter__(self) -> DropCollector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def tool(self) -> AttachedObject:
        if self.attached is None:
            raise RuntimeError("the drop collector is not started")
        return self.attached

    # reading -----------------------------------------------------------------

    def poll(self) -> list[DropRecord]:
        """Records whose count grew since the previous poll (``delta``)."""
        obj = self.tool.obj
        drops = obj.map(programs.DROPS_MAP)
        now = time.time()
        changed: list[DropRecord] = []
        present = set()
        idle: list[bytes] = []
        for raw_key, raw_value in drops.lookup_batch():
            present.add(raw_key)
            rec = decode(raw_key, raw_value, self.reasons, self._symbols, self._wall_offset)
            seen = self._seen.get(raw_key)
            restarted = seen is None or rec.count < seen.count
            grown = rec.count if restarted or seen is None else rec.count - seen.count
            grown_bytes = (
                rec.drop_bytes if restarted or seen is None else rec.drop_bytes - seen.bytes
            )
            if seen is None:
                seen = self._seen[raw_key] = _Seen(rec.count, rec.drop_bytes)
            seen.count, seen.bytes = rec.count, rec.drop_bytes
            kept = self._records.get(raw_key)
            if kept is not None:
                rec.count = kept.count + grown
                rec.drop_bytes = kept.drop_bytes + grown_bytes
                rec.first_seen = kept.first_seen
                rec.container = kept.container
                if not rec.pid and kept.pid:  # resolved here before
                    rec.pid, rec.comm, rec.owner_from = kept.pid, kept.comm, kept.owner_from
            elif self._attribution is not None and rec.cgroup_id:
                rec.container = self._attribution.cgroup(rec.cgroup_id).short_container
            rec.delta = grown
            self._records[raw_key] = rec
            if grown:
                seen.idle = 0
                changed.append(rec)
                label = (rec.reason or "UNKNOWN", protocol_label(rec.proto))
                self.totals[label] = self.totals.get(label, 0) + grown
            else:
                seen.idle += 1
                if seen.idle >= IDLE_POLLS:
                    idle.append(raw_key)
        resolve(self._records.values(), self._flow_owners, self._sweep)
        for raw_key in idle:
            drops.delete(raw_key)
            del self._seen[raw_key]
        for raw_key in [k for k in self._seen if k not in present]:
            del self._seen[raw_key]  # evicted by the kernel's LRU
        for raw_key, rec in list(self._records.items()):
            if raw_key not in present and now - rec.last_seen > KEEP_SECONDS:
                del self._records[raw_key]
        self._read_stats(len(present), drops.max_entries)
        return changed

    def snapshot(self) -> list[DropRecord]:
        """Every record kept (cumulative counts; ``delta`` of the last poll)."""
        return list(self._records.values())

    def _read_stats(self, keys: int, max_entries: int) -> None:
        stats_map = self.tool.obj.map(programs.STATS_MAP)
        values = [stats_map.sum_percpu_u64(ctypes.c_uint32(slot)) for slot in range(STAT_MAX)]
        s = self._stats
        s.seen = values[STAT_SLOTS["seen"]]
        s.consumed_skipped = values[STAT_SLOTS["consumed_skipped"]]
        s.empty_purged_skipped = values[STAT_SLOTS["empty_purged"]]
        s.update_failed = values[STAT_SLOTS["update_failed"]]
        s.keys_created = values[STAT_SLOTS["inserts"]]
        s.owner_wanted = values[STAT_SLOTS["owner_wanted"]]
        s.owners_swept = values[STAT_SLOTS["swept"]]
        if self._sweep is not None:
            s.sweeps, s.sweep_seconds = self._sweep.runs, self._sweep.seconds
        s.keys = keys
        s.map_max = max_entries

    def stats(self) -> CollectorStats:
        if self.attached is not None:
            self._stats.rungs = self.attached.rungs()
        self._stats.reasons_known = len(self.reasons.names)
        return self._stats
