"""The overhead lab's BPF object as seen by ``bpfscope doctor``.

The bench does not climb a ladder (it measures every mechanism that works);
this ladder only lets doctor check that the object loads and attaches here,
with the counting body on getpid.
"""

from __future__ import annotations

from .. import system, targets
from ..features import Mechanism
from ..ladder import Hook, Rung
from .programs import program_name

__all__ = ["CORE", "DESCRIPTION", "NAME", "OBJECT", "hooks"]

OBJECT = "bench"
NAME = "bench syscalls"
DESCRIPTION = "overhead lab: cost of each attach mechanism per syscall"
CORE = False


def hooks() -> list[Hook]:
    # the arch wrapper's name (__x64_sys_/__arm64_sys_) when BTF has no entry
    entry = targets.syscall_entry_function("getpid") or system.syscall_function_prefix() + "getpid"
    return [
        Hook(
            "getpid",
            (
                Rung(Mechanism.FENTRY, program_name(Mechanism.FENTRY, "count", 0), entry),
                Rung(Mechanism.TP_BTF, program_name(Mechanism.TP_BTF, "count", 0), "sys_enter"),
                Rung(Mechanism.RAW_TP, program_name(Mechanism.RAW_TP, "count", 0), "sys_enter"),
                Rung(
                    Mechanism.TRACEPOINT,
                    program_name(Mechanism.TRACEPOINT, "count", 0),
                    "syscalls:sys_enter_getpid",
                ),
                Rung(Mechanism.KPROBE, program_name(Mechanism.KPROBE, "count", 0), entry),
            ),
        )
    ]
