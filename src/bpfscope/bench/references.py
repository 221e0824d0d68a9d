"""The lab's reference programs: what a configuration is compared against.

Declared here, in one place, for every benchmark: empty programs ("what
attaching anything on this hook costs") and the clock floor (programs that
only read bpf_ktime_get_ns()). Their code sits in the feature's BPF object
(``syscalls.bpf.c``'s REFERENCE_PROGRAMS, ``flows.bpf.c``'s nop programs),
so that they are loaded from the same object, on the same hooks and through
the same rung of the ladder as the feature they are compared with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from ..features import Mechanism
from ..ladder import AttachedObject, Hook, Rung, load_object

__all__ = [
    "FLOWS",
    "FLOWS_OBJECT",
    "SYSCALLS",
    "SYSCALLS_OBJECT",
    "load_flows_reference",
    "load_reference",
]

SYSCALLS_OBJECT: Final = "syscalls"
FLOWS_OBJECT: Final = "flows"

# The flow monitor's traffic tracepoints (hook name, sock:<tracepoint>).
_TRAFFIC_TPS: Final = (("send", "sock_send_length"), ("recv", "sock_recv_length"))


def _syscall_hook(kind: str, hook: str) -> Hook:
    """``kind`` programs on raw_syscalls ``sys_<hook>`` via tp_btf, raw_tp
    or tracepoint (the rungs the tracer itself stands on)."""
    tp = f"sys_{hook}"
    return Hook(
        tp,
        (
            Rung(Mechanism.TP_BTF, f"{kind}_{hook}_btf", tp),
            Rung(Mechanism.RAW_TP, f"{kind}_{hook}_raw", tp),
            Rung(Mechanism.TRACEPOINT, f"{kind}_{hook}_tp", f"raw_syscalls:{tp}"),
        ),
    )


def syscall_nop_hooks() -> list[Hook]:
    """Empty programs on sys_enter and sys_exit."""
    return [_syscall_hook("nop", h) for h in ("enter", "exit")]


def syscall_nop_exit_hooks() -> list[Hook]:
    """An empty program on sys_exit alone (the counts mode's own hook)."""
    return [_syscall_hook("nop", "exit")]


def syscall_clock_hooks() -> list[Hook]:
    """bpf_ktime_get_ns() alone on sys_enter and sys_exit: the floor of any
    tracer that times every call."""
    return [_syscall_hook("clock", h) for h in ("enter", "exit")]


def flows_nop_hooks() -> list[Hook]:
    """Empty programs on the traffic tracepoints: the floor any tool on
    those hooks pays."""
    return [
        Hook(
            name,
            (
                Rung(Mechanism.TP_BTF, f"nop_{name}_tp_btf", tp),
                Rung(Mechanism.RAW_TP, f"nop_{name}_raw_tp", tp),
                Rung(Mechanism.TRACEPOINT, f"nop_{name}_tracepoint", f"sock:{tp}"),
            ),
        )
        for name, tp in _TRAFFIC_TPS
    ]


# name -> (description, hooks) per benchmark.
SYSCALLS: Final[dict[str, tuple[str, Callable[[], list[Hook]]]]] = {
    "empty": ("empty programs on sys_enter + sys_exit", syscall_nop_hooks),
    "empty_exit": ("empty program on sys_exit alone", syscall_nop_exit_hooks),
    "clock": ("clock floor: bpf_ktime_get_ns() alone on sys_enter + sys_exit", syscall_clock_hooks),
}
FLOWS: Final[dict[str, tuple[str, Callable[[], list[Hook]]]]] = {
    "empty": ("empty programs on the same traffic hooks and rung", flows_nop_hooks),
}


def load_reference(
    name: str, *, force: Mechanism | None = None, btf_path: str | None = None
) -> AttachedObject:
    """Load one of the syscall tracer's references (:data:`SYSCALLS`)."""
    return load_object(SYSCALLS_OBJECT, SYSCALLS[name][1](), force=force, btf_path=btf_path)


def load_flows_reference(
    name: str, *, force: Mechanism | None = None, btf_path: str | None = None
) -> AttachedObject:
    """Load one of the flow monitor's references (:data:`FLOWS`)."""
    return load_object(FLOWS_OBJECT, FLOWS[name][1](), force=force, btf_path=btf_path)
