"""Overhead lab: ``bpfscope bench syscalls`` measures what tracing a system
call costs on this kernel, per attach mechanism, program body and program
count, next to bpftrace and the published study it reproduces."""

from __future__ import annotations

__all__: list[str] = []
