"""Flow monitor tool: its BPF object and attach ladder (for doctor and the collector).

Every traffic hook has rungs fexit (the protocol's sendmsg/recvmsg) ->
tp_btf -> raw_tp -> tracepoint (``sock:sock_send_length`` /
``sock:sock_recv_length``) -> kprobe. Lifecycle hooks have tp_btf -> raw_tp
-> tracepoint. ``udp_dest``/``udp6_dest`` (route lookups) only matter when
UDP sends stand on a tracepoint rung, which cannot see a send's destination.
"""

from __future__ import annotations

from typing import Final

from ..features import Mechanism
from ..ladder import Hook, Rung

__all__ = ["CORE", "DESCRIPTION", "NAME", "TOOL", "hooks", "lifecycle_hooks", "traffic_hooks"]

TOOL: Final = "flows"
NAME: Final = "flows"
DESCRIPTION: Final = "per-flow TCP/UDP traffic, connection lifecycle, retransmits, resets"
CORE: Final = True

# hook name -> (fexit function, tracepoint, kprobe function)
_TRAFFIC: Final = (
    ("tcp_send", "tcp_sendmsg", "sock_send_length", "tcp_sendmsg"),
    ("tcp_recv", "tcp_recvmsg", "sock_recv_length", "tcp_cleanup_rbuf"),
    ("udp_send", "udp_sendmsg", "sock_send_length", "udp_sendmsg"),
    ("udp_recv", "udp_recvmsg", "sock_recv_length", "skb_consume_udp"),
    ("udp6_send", "udpv6_sendmsg", "sock_send_length", "udpv6_sendmsg"),
    ("udp6_recv", "udpv6_recvmsg", "sock_recv_length", "skb_consume_udp"),
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


def traffic_hooks() -> list[Hook]:
    out = []
    for name, func, tp, kfunc in _TRAFFIC:
        out.append(
            Hook(
                name,
                (
                    Rung(Mechanism.FEXIT, f"{name}_fexit", func),
                    Rung(Mechanism.TP_BTF, f"{name}_tp_btf", tp),
                    Rung(Mechanism.RAW_TP, f"{name}_raw_tp", tp),
                    Rung(Mechanism.TRACEPOINT, f"{name}_tracepoint", f"sock:{tp}"),
                    Rung(Mechanism.KPROBE, f"{name}_kprobe", kfunc),
                ),
                # IPv6 may be a module or absent: its hooks are optional
                required=not name.startswith("udp6"),
            )
        )
    return out


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
