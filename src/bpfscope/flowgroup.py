"""Grouping of flows: one row per process, container, remote address,
remote or local port, or peer, with connection counts, bytes and rates each
way. Shared by top/flows, /api/v1/flows and (as SQL) the history, so
``--group-by remote`` and ``?group_by=remote`` give the same rows."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

from .flowquery import BadQuery

__all__ = ["GROUP_KEYS", "GROUP_SORT_KEYS", "FlowGroup", "group_flows", "group_sql", "sort_groups"]

# key -> what one group is; PEER is the remote's profiled name, else its class
GROUP_KEYS: Final = ("process", "container", "remote", "remote_port", "local_port", "peer")

PeerNamer = Callable[[str | None], str]


def check_group_key(key: str) -> str:
    if key not in GROUP_KEYS:
        raise BadQuery(f"unknown group_by {key!r} (one of: {', '.join(GROUP_KEYS)})")
    return key


def _key_of(key: str, peer: PeerNamer | None) -> Callable[[Any], str]:
    if key == "process":
        return lambda r: f"{r.comm}[{r.pid}]"
    if key == "container":
        return lambda r: r.container or "-"
    if key == "remote":
        return lambda r: r.raddr or "-"
    if key == "remote_port":
        return lambda r: str(r.rport or "-")
    if key == "local_port":
        return lambda r: str(r.lport)
    name = peer or (lambda ip: ip or "-")
    return lambda r: name(r.raddr)


@dataclass
class FlowGroup:
    by: str
    key: str
    connections: int = 0
    tx_bytes: int = 0
    rx_bytes: int = 0
    tx_rate: float = 0.0
    rx_rate: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "group_by": self.by,
            "key": self.key,
            "connections": self.connections,
            "tx_bytes": self.tx_bytes,
            "rx_bytes": self.rx_bytes,
            "tx_rate": round(self.tx_rate, 3),
            "rx_rate": round(self.rx_rate, 3),
        }


def group_flows(records: Iterable[Any], by: str, peer: PeerNamer | None = None) -> list[FlowGroup]:
    """One FlowGroup per distinct key; a connection is one flow record (a
    record of folded short connections counts each of them)."""
    key_of = _key_of(check_group_key(by), peer)
    groups: dict[str, FlowGroup] = {}
    for r in records:
        k = key_of(r)
        g = groups.get(k)
        if g is None:
            g = groups[k] = FlowGroup(by, k)
        g.connections += getattr(r, "folded", 0) or 1
        g.tx_bytes += r.tx_bytes
        g.rx_bytes += r.rx_bytes
        g.tx_rate += r.tx_rate
        g.rx_rate += r.rx_rate
    return list(groups.values())


# flow sort key -> group sort key (the ones that make sense for a sum)
GROUP_SORT_KEYS: Final[dict[str, Callable[[FlowGroup], Any]]] = {
    "rate": lambda g: g.tx_rate + g.rx_rate,
    "tx_rate": lambda g: g.tx_rate,
    "rx_rate": lambda g: g.rx_rate,
    "bytes": lambda g: g.tx_bytes + g.rx_bytes,
    "tx": lambda g: g.tx_bytes,
    "rx": lambda g: g.rx_bytes,
    "connections": lambda g: g.connections,
}


def sort_groups(groups: list[FlowGroup], key: str = "bytes", descending: bool = True) -> list[Any]:
    try:
        getter = GROUP_SORT_KEYS[key]
    except KeyError:
        raise BadQuery(
            f"sort {key!r} does not apply to groups (one of: {', '.join(GROUP_SORT_KEYS)})"
        ) from None
    return sorted(groups, key=lambda g: (getter(g), g.key), reverse=descending)


# The same keys over the history's columns. "peer" is the name stored with
# the row, else its class (what the agent's profiler said when it wrote it).
_SQL_KEYS: Final = {
    "process": "comm || '[' || pid || ']'",
    "container": "CASE container WHEN '' THEN '-' ELSE container END",
    "remote": "CASE raddr WHEN '' THEN '-' ELSE raddr END",
    "remote_port": "CASE rport WHEN 0 THEN '-' ELSE CAST(rport AS TEXT) END",
    "local_port": "CAST(lport AS TEXT)",
    "peer": "CASE remote_name WHEN '' THEN remote_class ELSE remote_name END",
}


def group_sql(by: str) -> str:
    """The SQL expression of a group key over ``flow_buckets``."""
    return _SQL_KEYS[check_group_key(by)]
