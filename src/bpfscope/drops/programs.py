"""Packet-drop tool: its BPF object and attach ladder (doctor, the collector).

``drop`` hooks ``skb:kfree_skb`` (tp_btf -> raw_tp -> tracepoint); the
drop reason is read where the kernel's tracepoint has it (5.17+, a CO-RE
field check in the program). ``owner`` (optional) hooks
``sock:inet_sock_set_state`` to record who connects each TCP socket, in
process context, so that a drop seen later in softirq is attributed to the
socket's owner and not to whichever task was interrupted. The sweep
(``iter/task_file``, an extra the collector runs itself) finds the process
holding any other socket a drop asked about, by its inode.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Final

from ..features import Mechanism
from ..ladder import AttachedObject, Choice, Extras, Hook, Rung, load_object

__all__ = ["CORE", "DESCRIPTION", "EXTRAS", "NAME", "OBJECT", "hooks", "load", "sweep_extras"]

OBJECT: Final = "drops"
NAME: Final = "drops"
DESCRIPTION: Final = "packet drops with the kernel's drop reason (skb:kfree_skb)"
CORE: Final = False

DROPS_MAP: Final = "packet_drops"
OWNERS_MAP: Final = "drop_owners"
STATS_MAP: Final = "drops_stats"
INO_OWNERS_MAP: Final = "drop_ino_owners"
SWEEP_ITER: Final = "drops_sweep"


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


def sweep_extras(choices: Sequence[Choice]) -> Extras:
    """The owner sweep (``iter/task_file``, 5.11+ for bpf_sock_from_file):
    a kernel that refuses it gets the same rungs without it, and drops of
    sockets the owner hook did not see keep ``pid: null`` (in the agent, the
    flows collector's owner of the same flow still applies)."""
    return Extras(
        programs=frozenset({SWEEP_ITER}),
        description="owners of dropping sockets from the processes' file tables",
    )


# What doctor --check loads along with the hooks: the collector's own choice.
EXTRAS: Final = sweep_extras


def load(
    *,
    force: Mechanism | None = None,
    btf_path: str | os.PathLike[str] | None = None,
    max_entries: int | None = None,
) -> AttachedObject:
    """Load and attach; nothing stays attached if this fails."""
    sizes = {DROPS_MAP: max_entries} if max_entries else None
    return load_object(
        OBJECT,
        hooks(),
        force=force,
        btf_path=btf_path,
        max_entries=sizes,
        extras=sweep_extras,
    )
