"""Packet-drop tool: its BPF object and attach ladder (doctor, the collector).

``drop`` hooks ``skb:kfree_skb`` (tp_btf -> raw_tp -> tracepoint); the
drop reason is read where the kernel's tracepoint has it (5.17+, a CO-RE
field check in the program). ``owner`` (optional) hooks
``sock:inet_sock_set_state`` to record who connects each TCP socket, in
process context, so that a drop seen later in softirq is attributed to the
socket's owner and not to whichever task was interrupted.
"""

from __future__ import annotations

import os
from typing import Final

from ..features import Mechanism
from ..ladder import AttachedObject, Hook, Rung, load_object

__all__ = ["CORE", "DESCRIPTION", "NAME", "OBJECT", "hooks", "load"]

OBJECT: Final = "drops"
NAME: Final = "drops"
DESCRIPTION: Final = "packet drops with the kernel's drop reason (skb:kfree_skb)"
CORE: Final = False

DROPS_MAP: Final = "packet_drops"
OWNERS_MAP: Final = "drop_owners"
STATS_MAP: Final = "drops_stats"


def _tracepoint_rungs(hook: str, category: str, tp: str) -> tuple[Rung, ...]:
    return (
        Rung(Mechanism.TP_BTF, f"{hook}_tp_btf", tp),
        Rung(Mechanism.RAW_TP, f"{hook}_raw_tp", tp),
        Rung(Mechanism.TRACEPOINT, f"{hook}_tracepoint", f"{category}:{tp}"),
    )


def hooks(owners: bool = True) -> list[Hook]:
    out = [Hook("drop", _tracepoint_rungs("drop", "skb", "kfree_skb"))]
    if owners:
        out.append(
            Hook("owner", _tracepoint_rungs("owner", "sock", "inet_sock_set_state"), required=False)
        )
    return out


def load(
    *,
    force: Mechanism | None = None,
    btf_path: str | os.PathLike[str] | None = None,
    max_entries: int | None = None,
) -> AttachedObject:
    """Load and attach; nothing stays attached if this fails."""
    sizes = {DROPS_MAP: max_entries} if max_entries else None
    return load_object(OBJECT, hooks(), force=force, btf_path=btf_path, max_entries=sizes)
