"""Flow monitor: per-flow TCP/UDP traffic with process and container
attribution, TCP connection lifecycle, retransmits and resets."""

from __future__ import annotations

from .collector import DEFAULT_MAX_ENTRIES, FlowCollector, KernelFilter, Record
from .records import CollectorStats, ConnEvent, FlowRecord

__all__ = [
    "DEFAULT_MAX_ENTRIES",
    "CollectorStats",
    "ConnEvent",
    "FlowCollector",
    "FlowRecord",
    "KernelFilter",
    "Record",
]
