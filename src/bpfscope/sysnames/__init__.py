"""Syscall names and numbers for the running architecture.

A ground-floor module: the feature probes, the tracer and the overhead lab
all name syscalls. The numbers come from the generated ``table`` module
(kernel UAPI headers); errno names from ``errnos``.
"""

from __future__ import annotations

import difflib

from ..errors import EXIT_USAGE, BpfscopeError
from ..system import arch
from .table import SYSCALLS

__all__ = ["UnknownSyscall", "syscall_name", "syscall_names", "syscall_nr"]


class UnknownSyscall(BpfscopeError, ValueError):
    """A syscall name this architecture does not have; offers close matches."""

    exit_code = EXIT_USAGE

    def __init__(self, name: str, machine: str, matches: list[str]) -> None:
        self.name = name
        self.matches = matches
        hint = f"; did you mean {', '.join(matches)}?" if matches else ""
        super().__init__(f"unknown syscall {name!r} on {machine}{hint}")


def _table(machine: str | None) -> tuple[str, dict[str, int]]:
    machine = machine or arch()
    try:
        return machine, SYSCALLS[machine]
    except KeyError:
        raise ValueError(
            f"no syscall table for architecture {machine} (have: {', '.join(sorted(SYSCALLS))})"
        ) from None


def syscall_nr(name: str, machine: str | None = None) -> int:
    machine, table = _table(machine)
    key = name.removeprefix("sys_").removeprefix("__NR_")
    try:
        return table[key]
    except KeyError:
        raise UnknownSyscall(name, machine, difflib.get_close_matches(key, table, n=4)) from None


def syscall_name(nr: int, machine: str | None = None) -> str | None:
    _, table = _table(machine)
    for name, value in table.items():
        if value == nr:
            return name
    return None


def syscall_names(machine: str | None = None) -> list[str]:
    return sorted(_table(machine)[1])
