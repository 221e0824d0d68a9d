"""The seams of the data path: collectors feed the agent, the agent feeds sinks.

kernel -> :class:`Collector` -> agent -> :class:`Sink` (history, metrics,
exporters, event buffers). A collector's ``poll()`` returns what changed
since the previous poll; the agent hands each sink what changed, once per
poll, and publishes a snapshot the HTTP views read. This module only names
the shapes; it imports no feature package.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar, runtime_checkable

__all__ = ["Collector", "Sink", "Stats"]

Changes_co = TypeVar("Changes_co", covariant=True)
Changes_contra = TypeVar("Changes_contra", contravariant=True)


@runtime_checkable
class Stats(Protocol):
    """A collector's counters (cost, drops, map fill) as JSON."""

    def to_json(self) -> dict[str, Any]: ...


class Collector(Protocol[Changes_co]):
    """Loads its programs at ``start()``; ``poll()`` drains the kernel's maps
    into what changed since the previous poll; ``close()`` detaches."""

    def start(self) -> object: ...
    def poll(self) -> Changes_co: ...
    def stats(self) -> Stats: ...
    def close(self) -> None: ...


class Sink(Protocol[Changes_contra]):
    """Receives what changed at each poll, once, on the agent's thread."""

    def consume(self, changes: Changes_contra) -> None: ...
