"""The overhead lab: what tracing costs on this kernel.

Commands (``bpfscope bench ...``): ``syscalls`` (every attach mechanism,
program body and program count per syscall, next to bpftrace and the
published study), ``tracer`` (what ``bpfscope syscalls`` costs; alias
``syscalls --bench``), ``flows`` (what the flow monitor costs; alias
``flows --bench``), ``agent`` (``bpfscope serve`` under load).

Shared pieces: :mod:`.driver` (the one build cache for compiled workloads),
:mod:`.peer` (the one bpftrace runner), :mod:`.pinning` (CPU pinning and
round-by-round interleaving), :mod:`.references` (the reference programs:
empty programs, the clock floor), :mod:`.verdict` (the one rule for a
verdict: per-round ratios, an interval, meets/misses/inconclusive).
"""

from __future__ import annotations

__all__: list[str] = []
