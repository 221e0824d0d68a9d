"""Flow monitor tool: its BPF object and attach ladder (for doctor and the collector).

TCP volume, where the kernel runs ``iter/tcp`` (5.9+), comes from each
socket's own counters (``tcp_sock`` ``bytes_sent``/``bytes_retrans``/
``bytes_received``/``data_segs_out``/``data_segs_in``): an iterator the
collector runs each poll, and the lifecycle hook at CLOSE and destroy. TCP
then needs no program per send or receive: the traffic hooks below are
loaded for UDP only (``udp_traffic_hooks``), or not at all without UDP
accounting. Elsewhere every TCP and UDP message runs one traffic program.

Traffic has two hooks, ``send`` and ``recv``, with rungs fexit -> tp_btf ->
raw_tp -> tracepoint -> kprobe. On the tracepoint rungs
(``sock:sock_send_length`` / ``sock:sock_recv_length``) one program sees
TCP, UDP and UDPv6 sockets; the function rungs need one program per kernel
function (``tcp_sendmsg`` + ``udp_sendmsg`` + ``udpv6_sendmsg``, ...), which
the ladder loads together as companions. Either way every send or receive
runs exactly one program. Lifecycle hooks have tp_btf -> raw_tp ->
tracepoint. ``udp_dest``/``udp6_dest`` (route lookups) only matter when
sends stand on a tracepoint rung, which cannot see a UDP send's destination.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from ..features import Mechanism
from ..ladder import Choice, Extras, Hook, Rung

# The mechanisms a user may force the flows hooks onto (`--attach`).
ATTACH_CHOICES: Final = tuple(
    str(m)
    for m in (
        Mechanism.FEXIT,
        Mechanism.TP_BTF,
        Mechanism.RAW_TP,
        Mechanism.TRACEPOINT,
        Mechanism.KPROBE,
    )
)

__all__ = [
    "CORE",
    "COUNTERS_ITER",
    "DESCRIPTION",
    "EXTRAS",
    "NAME",
    "OBJECT",
    "SWEEP_ITER",
    "accept_hooks",
    "counters_hooks",
    "hooks",
    "lifecycle_hooks",
    "tcp_counters",
    "traffic_hooks",
    "udp_traffic_hooks",
]

OBJECT: Final = "flows"
NAME: Final = "flows"
DESCRIPTION: Final = "per-flow TCP/UDP traffic, connection lifecycle, retransmits, resets"
CORE: Final = True

# hook -> tracepoint, fexit (program, function) pairs, kprobe (program, function) pairs
_TRAFFIC: Final = (
    (
        "send",
        "sock_send_length",
        (
            ("tcp_send_fexit", "tcp_sendmsg"),
            ("udp_send_fexit", "udp_sendmsg"),
            ("udp6_send_fexit", "udpv6_sendmsg"),
        ),
        (
            ("tcp_send_kprobe", "tcp_sendmsg"),
            ("udp_send_kprobe", "udp_sendmsg"),
            ("udp6_send_kprobe", "udpv6_sendmsg"),
        ),
    ),
    (
        "recv",
        "sock_recv_length",
        (
            ("tcp_recv_fexit", "tcp_recvmsg"),
            ("udp_recv_fexit", "udp_recvmsg"),
            ("udp6_recv_fexit", "udpv6_recvmsg"),
        ),
        (
            # tcp_cleanup_rbuf reports running totals: tcp_recvmsg's entry
            # starts each call's count; skb_consume_udp serves both UDP families
            ("tcp_recv_kprobe", "tcp_cleanup_rbuf"),
            ("tcp_recv_start_kprobe", "tcp_recvmsg"),
            ("udp_recv_kprobe", "skb_consume_udp"),
        ),
    ),
)

# hook name -> (category, tracepoint)
_LIFECYCLE: Final = (
    ("state", "sock", "inet_sock_set_state"),
    ("retransmit", "tcp", "tcp_retransmit_skb"),
    ("send_reset", "tcp", "tcp_send_reset"),
    ("receive_reset", "tcp", "tcp_receive_reset"),
    ("destroy", "tcp", "tcp_destroy_sock"),
)

TRACEPOINT_RUNGS: Final = frozenset({Mechanism.TP_BTF, Mechanism.RAW_TP, Mechanism.TRACEPOINT})


def _function_rung(mechanism: Mechanism, parts: tuple[tuple[str, str], ...]) -> Rung:
    (program, target), *companions = parts
    return Rung(mechanism, program, target, companions=tuple(companions))


def traffic_hooks() -> list[Hook]:
    """``send`` and ``recv``. A function rung needs all its functions (a
    kernel without IPv6 has no ``udpv6_sendmsg``): where one is missing, the
    hook stands on a tracepoint rung, which sees every family."""
    return [
        Hook(
            name,
            (
                _function_rung(Mechanism.FEXIT, fexit),
                Rung(Mechanism.TP_BTF, f"{name}_tp_btf", tp),
                Rung(Mechanism.RAW_TP, f"{name}_raw_tp", tp),
                Rung(Mechanism.TRACEPOINT, f"{name}_tracepoint", f"sock:{tp}"),
                _function_rung(Mechanism.KPROBE, kprobe),
            ),
        )
        for name, tp, fexit, kprobe in _TRAFFIC
    ]


def lifecycle_hooks() -> list[Hook]:
    out = []
    for name, category, tp in _LIFECYCLE:
        out.append(
            Hook(
                name,
                (
                    Rung(Mechanism.TP_BTF, f"{name}_tp_btf", tp),
                    Rung(Mechanism.RAW_TP, f"{name}_raw_tp", tp),
                    Rung(Mechanism.TRACEPOINT, f"{name}_tracepoint", f"{category}:{tp}"),
                ),
                required=name == "state",
            )
        )
    return out


def dest_hooks() -> list[Hook]:
    """Route-lookup hooks giving unconnected UDP sends their remote."""
    return [
        Hook(
            "udp_dest",
            (
                Rung(Mechanism.TP_BTF, "udp_dest_tp_btf", "fib_table_lookup"),
                Rung(Mechanism.RAW_TP, "udp_dest_raw_tp", "fib_table_lookup"),
            ),
            required=False,
        ),
        Hook(
            "udp6_dest",
            (
                Rung(Mechanism.TP_BTF, "udp6_dest_tp_btf", "fib6_table_lookup"),
                Rung(Mechanism.RAW_TP, "udp6_dest_raw_tp", "fib6_table_lookup"),
            ),
            required=False,
        ),
    ]


def hooks() -> list[Hook]:
    """Every hook the flow monitor may use (doctor); the collector loads
    ``counters_hooks`` where the counters path works, these otherwise."""
    return traffic_hooks() + lifecycle_hooks() + accept_hooks() + dest_hooks()


COUNTERS_ITER: Final = "tcp_counters_iter"
SWEEP_ITER: Final = "sweep_owners"


def accept_hooks() -> list[Hook]:
    """``inet_csk_accept`` returns: the accepting process owns the socket.
    Function rungs only: a syscall tracepoint (``sys_exit_accept4``) would
    send every syscall of every task through the kernel's syscall-tracing
    slow path. Optional: without it a passive socket is adopted by the sweep
    or by its holder's close, and its open event waits until then."""
    return [
        Hook(
            "accept",
            (
                Rung(Mechanism.FEXIT, "accept_fexit", "inet_csk_accept"),
                Rung(Mechanism.KRETPROBE, "accept_kretprobe", "inet_csk_accept"),
            ),
            required=False,
        )
    ]


def udp_traffic_hooks() -> list[Hook]:
    """``send`` and ``recv`` for UDP only (TCP on the counters path): the
    function rungs drop their TCP programs; the tracepoint rungs are shared
    with TCP by the kernel, and their program returns at once for TCP."""
    return [
        Hook(
            name,
            (
                _function_rung(Mechanism.FEXIT, fexit[1:]),
                Rung(Mechanism.TP_BTF, f"{name}_tp_btf", tp),
                Rung(Mechanism.RAW_TP, f"{name}_raw_tp", tp),
                Rung(Mechanism.TRACEPOINT, f"{name}_tracepoint", f"sock:{tp}"),
                _function_rung(
                    Mechanism.KPROBE, tuple(p for p in kprobe if not p[0].startswith("tcp_"))
                ),
            ),
        )
        for name, tp, fexit, kprobe in _TRAFFIC
    ]


def counters_hooks(udp: bool = True) -> list[Hook]:
    """What the collector loads on the counters path: lifecycle, accept, and
    the UDP traffic hooks only if UDP is accounted."""
    traffic = udp_traffic_hooks() if udp else []
    return traffic + lifecycle_hooks() + accept_hooks()


def tcp_counters(choices: Sequence[Choice]) -> Extras:
    """TCP volume from the kernel's socket counters: the iterator read each
    poll and the sweep that finds owners of sockets older than the collector
    (both ``iter/*`` programs, attached by the collector). A kernel that
    refuses them (before 5.9, or no BTF) gets the same rungs without them,
    and the collector then loads the per-event table path instead."""
    return Extras(
        rodata={"tcp_counters": 1},
        programs=frozenset({COUNTERS_ITER, SWEEP_ITER}),
        # the same iterator reads TCP health (RTT, windows, chrono): no extra hook
        description="TCP volume and health from the kernel's socket counters",
    )


def _doctor_extras(choices: Sequence[Choice]) -> Extras:
    return tcp_counters(choices)


# What doctor --check loads along with the hooks: the collector's own choice.
EXTRAS: Final = _doctor_extras
