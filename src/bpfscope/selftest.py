"""Self-test tool: prove load, attach and ring buffer delivery end to end.

Each getpid() of this process becomes one ring buffer event through
whichever rung of the ladder works here (fentry -> tp_btf -> raw_tp ->
tracepoint -> kprobe). ``bpfscope doctor --check`` runs it.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass

from . import features, targets
from . import libbpf as bpf
from .features import Mechanism
from .ladder import AttachedObject, Hook, Rung, load_object

__all__ = ["SelftestEvent", "SelftestResult", "hooks", "load", "run"]

OBJECT = "selftest"
DESCRIPTION = "end-to-end check: load, attach, ring buffer delivery"
CORE = True


class SelftestEvent(ctypes.Structure):
    """Mirror of ``struct selftest_event`` (selftest.h); checked against BTF."""

    _fields_ = [
        ("seq", ctypes.c_uint64),
        ("ktime_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 7),
    ]


class SelftestKey(ctypes.Structure):
    _fields_ = [
        ("tgid", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class SelftestValue(ctypes.Structure):
    _fields_ = [("packets", ctypes.c_uint64), ("bytes", ctypes.c_uint64)]


# The mechanisms the self-test's ladder has, so `doctor --check --attach`
# offers only those.
MECHANISMS = (
    Mechanism.FENTRY,
    Mechanism.TP_BTF,
    Mechanism.RAW_TP,
    Mechanism.TRACEPOINT,
    Mechanism.KPROBE,
)


def hooks() -> list[Hook]:
    entry = targets.syscall_entry_function("getpid") or "__do_sys_getpid"
    return [
        Hook(
            "getpid",
            (
                Rung(Mechanism.FENTRY, "selftest_fentry", entry),
                Rung(Mechanism.TP_BTF, "selftest_tp_btf", "sys_enter"),
                Rung(Mechanism.RAW_TP, "selftest_raw_tp", "sys_enter"),
                Rung(Mechanism.TRACEPOINT, "selftest_tracepoint", "syscalls:sys_enter_getpid"),
                Rung(Mechanism.KPROBE, "selftest_kprobe", entry),
            ),
        )
    ]


def load(
    *,
    tgid: int | None = None,
    force: Mechanism | None = None,
    btf_path: str | None = None,
) -> AttachedObject:
    return load_object(
        OBJECT,
        hooks(),
        rodata={
            "target_tgid": os.getpid() if tgid is None else tgid,
            "getpid_nr": features.getpid_nr(),
        },
        force=force,
        btf_path=btf_path,
    )


@dataclass(frozen=True)
class SelftestResult:
    mechanism: str
    events_sent: int
    events_received: int
    calls_counted: int
    dropped: int
    in_order: bool
    seconds: float

    @property
    def ok(self) -> bool:
        return (
            self.events_received + self.dropped == self.events_sent
            and self.calls_counted == self.events_sent
            and self.in_order
        )


def run(
    events: int = 1000, *, force: Mechanism | None = None, btf_path: str | None = None
) -> SelftestResult:
    """Make ``events`` raw getpid() calls and count what comes back."""
    t0 = time.monotonic()
    with load(force=force, btf_path=btf_path) as tool:
        received: list[int] = []

        def on_event(raw: bytes) -> None:
            received.append(SelftestEvent.from_buffer_copy(raw).seq)

        with bpf.RingBuffer(tool.obj.map("selftest_events"), on_event) as ring:
            features._raw_getpid(events)
            ring.consume()
        calls = tool.obj.map("selftest_calls").sum_percpu_u64(bytes(4))
        dropped = tool.obj.map("selftest_events_dropped").sum_percpu_u64(bytes(4))
        rung = tool.rung("getpid")
    return SelftestResult(
        mechanism=str(rung.mechanism) if rung else "off",
        events_sent=events,
        events_received=len(received),
        calls_counted=calls,
        dropped=dropped,
        in_order=received == sorted(received),
        seconds=time.monotonic() - t0,
    )
