"""The syscall tracer: per-process counts, errors and latency.

Syscall names and numbers live in :mod:`bpfscope.sysnames` (a foundation
module the probes and the lab share); this package is the tracer.
"""

from __future__ import annotations

from typing import Final

__all__ = ["COST_NS"]

# What each mode adds per syscall, host-wide, in ns: the best runs of
# `bpfscope syscalls --bench --bench-rounds 7` on the project's 2-CPU VM
# (docs/syscalls.md has the run). Quoted by --help texts; a guide, not a
# promise: rerun the bench on your machine.
COST_NS: Final = {"counts": 36, "latency": 110}
