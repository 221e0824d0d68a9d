"""Flow monitor tool: its BPF object and attach ladder (for doctor and the collector).

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

from collections.abc import Callable, Sequence
from typing import Final

from .. import features
from ..features import Mechanism
from ..ladder import Choice, Extras, Hook, Rung

__all__ = [
    "CORE",
    "DESCRIPTION",
    "EXTRAS",
    "FOLD_PROGRAM",
    "NAME",
    "OBJECT",
    "SK_ACCT_MAP",
    "hooks",
    "lifecycle_hooks",
    "socket_accounting",
    "traffic_hooks",
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
    return traffic_hooks() + lifecycle_hooks() + dest_hooks()


FOLD_PROGRAM: Final = "fold_sk_acct"
SK_ACCT_MAP: Final = "flow_sk_acct"
_BTF_RUNGS: Final = frozenset({Mechanism.TP_BTF, Mechanism.FEXIT})


def _map_iter_available() -> bool:
    return features.probe(Mechanism.MAP_ITER).available


def socket_accounting(
    choices: Sequence[Choice], map_iter: Callable[[], bool] = _map_iter_available
) -> Extras:
    """Per-socket TCP accounting where the rungs allow it.

    TCP traffic then adds to socket-local storage (no hash of the flow key
    per event) and is folded into the flow table by the collector's
    iterator before every read, and by the kernel at CLOSE and destroy. That
    needs BTF-typed sockets on every hook involved and a kernel that runs
    iterators over map elements (the fold); otherwise (raw_tp, tracepoint,
    kprobe rungs, or map iterators refused) each event updates the flow table
    directly.
    """
    mech = {c.hook.name: c.mechanism for c in choices}
    if (
        map_iter()
        and mech.get("send") in _BTF_RUNGS
        and mech.get("recv") in _BTF_RUNGS
        and mech.get("state") is Mechanism.TP_BTF
        and mech.get("destroy") is Mechanism.TP_BTF
    ):
        return Extras(
            rodata={"sk_acct_enabled": 1},
            programs=frozenset({FOLD_PROGRAM}),
            description="TCP accounting per socket",
        )
    return Extras()


# What doctor --check loads along with the hooks: the collector's own choice.
EXTRAS: Final = socket_accounting
