"""The counters path's two iterators, run on the collector's polling thread.

``iter/tcp`` credits every owned TCP socket's counter growth to its flow
(and reads its health), one pass per network namespace with sockets. The
sweep (``iter/task_file``) gives sockets that wait for an owner the process
holding them: sockets older than the collector, and accepted ones where no
accept hook loads (their own close adopts the short-lived ones).
"""

from __future__ import annotations

import logging
import struct
import time
from typing import Any, Final

from . import programs
from .netns import NetnsRunner
from .records import CollectorStats

__all__ = ["SWEEP_COST_FACTOR", "CountersPass"]

log = logging.getLogger("bpfscope.flows")

# The sweep walks every task's file table (40 us for 400 files here): at
# most once per poll and SWEEP_COST_FACTOR times its own last duration
# apart, so under 2 % of a core however many files the host has.
SWEEP_COST_FACTOR: Final = 50.0


class CountersPass:
    """The iterators of a loaded flows object (links destroyed with it)."""

    def __init__(self, obj: Any, stats: CollectorStats) -> None:
        self._counters = obj.program(programs.COUNTERS_ITER).attach()
        self._sweep = obj.program(programs.SWEEP_ITER).attach()
        self._ns_map = obj.map("flow_netns")
        self._netns = NetnsRunner()
        self._stats = stats
        self._last_sweep = 0.0

    def close(self) -> None:
        self._netns.close()

    def sweep(self, now: float) -> bool:
        """Whether the sweep ran (it writes owners; it outputs nothing)."""
        t0 = time.monotonic()
        ok = True
        try:
            self._sweep.run_iter()
        except OSError as exc:
            ok = False
            log.warning("sweeping for socket owners failed: %s", exc)
        self._last_sweep = now
        self._stats.sweeps += 1
        self._stats.sweep_seconds = time.monotonic() - t0
        return ok

    def read(self, now: float) -> None:
        """Credit counter growth; sweep (rate-limited) when some sockets wait
        for an owner, and credit the ones it adopted in this same poll."""
        namespaces = [
            (struct.unpack("=I", k)[0], struct.unpack("=I", v)[0])
            for k, v in self._ns_map.lookup_batch()
        ]
        passed = self._pass(namespaces)
        if passed is None:
            return
        waiting, gone = passed
        for inode in gone:
            self._ns_map.delete(struct.pack("=I", inode))
        self._stats.netns_visited = 1 + self._netns.entered
        if (waiting or gone) and self._sweep_due(now) and self.sweep(now) and waiting:
            again = self._pass(namespaces)
            if again is not None:
                waiting = again[0]
        self._stats.unattributed = len(waiting)  # one byte per socket without an owner

    def _pass(self, namespaces: list[tuple[int, int]]) -> tuple[bytes, list[int]] | None:
        try:
            # iter/tcp sees the namespace it is created in: one pass per namespace
            return self._netns.run(self._counters.run_iter, namespaces)
        except OSError as exc:
            # the sockets' counters keep their growth: the next pass credits it
            self._stats.counters_failures += 1
            log.warning("reading TCP socket counters failed: %s", exc)
            return None

    def _sweep_due(self, now: float) -> bool:
        return now - self._last_sweep >= SWEEP_COST_FACTOR * self._stats.sweep_seconds
