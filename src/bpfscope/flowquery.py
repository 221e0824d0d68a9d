"""Filtering, sorting and paging of flow records: one definition shared by
the CLI views and the HTTP API, so ``--port 443`` and ``?port=443`` mean the
same thing."""

from __future__ import annotations

import base64
import binascii
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

__all__ = [
    "SORT_KEYS",
    "BadQuery",
    "FlowFilter",
    "addr_in",
    "decode_cursor",
    "encode_cursor",
    "page",
    "parse_cidr",
    "sort_flows",
]


class BadQuery(ValueError):
    """A filter, sort key or cursor the user gave is not valid."""


class FlowLike(Protocol):
    pid: int
    comm: str
    family: str
    proto: str
    laddr: str
    lport: int
    raddr: str | None
    rport: int | None
    container: str | None


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise BadQuery(
            f"invalid CIDR {text!r}: expected an address or network such as "
            "10.0.0.0/8, 192.168.1.5 or fd00::/8"
        ) from None


@dataclass(frozen=True)
class FlowFilter:
    pid: int | None = None
    comm: str | None = None
    port: int | None = None
    cidr: str | None = None
    container: str | None = None
    family: str | None = None  # ipv4 | ipv6
    proto: str | None = None  # tcp | udp

    def __post_init__(self) -> None:
        if self.pid is not None and self.pid <= 0:
            raise BadQuery(f"pid must be positive, not {self.pid}")
        if self.port is not None and not 0 < self.port < 65536:
            raise BadQuery(f"port must be 1-65535, not {self.port}")
        if self.family not in (None, "ipv4", "ipv6"):
            raise BadQuery(f"family must be ipv4 or ipv6, not {self.family!r}")
        if self.proto not in (None, "tcp", "udp"):
            raise BadQuery(f"protocol must be tcp or udp, not {self.proto!r}")
        if self.cidr is not None:
            parse_cidr(self.cidr)

    def predicate(self) -> Callable[[FlowLike], bool]:
        """A fast test for one record (the network is parsed once)."""
        network = parse_cidr(self.cidr) if self.cidr else None

        def match(r: FlowLike) -> bool:
            if self.pid is not None and r.pid != self.pid:
                return False
            if self.comm is not None and r.comm != self.comm:
                return False
            if self.port is not None and self.port not in (r.lport, r.rport):
                return False
            if self.family is not None and r.family != self.family:
                return False
            if self.proto is not None and r.proto != self.proto:
                return False
            if self.container is not None and not (r.container or "").startswith(self.container):
                return False
            return network is None or addr_in(network, r.laddr, r.raddr)

        return match

    def apply(self, records: Iterable[FlowLike]) -> list[Any]:
        match = self.predicate()
        return [r for r in records if match(r)]


def addr_in(network: IPNetwork, *addrs: str | None) -> bool:
    """Is any of the addresses (IPv4-mapped ones unmapped) in the network?"""
    for a in addrs:
        if not a:
            continue
        try:
            addr = ipaddress.ip_address(a)
        except ValueError:
            continue
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr.version == network.version and addr in network:
            return True
    return False


# sort key -> attribute getter; larger first unless noted
SORT_KEYS: Final[dict[str, Callable[[Any], Any]]] = {
    "tx_rate": lambda r: r.tx_rate,
    "rx_rate": lambda r: r.rx_rate,
    "rate": lambda r: r.tx_rate + r.rx_rate,
    "tx": lambda r: r.tx_bytes,
    "rx": lambda r: r.rx_bytes,
    "bytes": lambda r: r.tx_bytes + r.rx_bytes,
    "retransmits": lambda r: r.retransmits,
    "resets": lambda r: r.resets_sent + r.resets_received,
    "pid": lambda r: r.pid,
    "comm": lambda r: r.comm,
    "age": lambda r: -(r.opened or r.first_seen),
    "last_seen": lambda r: r.last_seen,
}


def sort_flows(records: list[Any], key: str = "bytes", descending: bool = True) -> list[Any]:
    try:
        getter = SORT_KEYS[key]
    except KeyError:
        raise BadQuery(f"unknown sort key {key!r} (one of: {', '.join(SORT_KEYS)})") from None
    return sorted(records, key=getter, reverse=descending)


def encode_cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("o:"):
            raise ValueError
        offset = int(raw[2:])
        if offset < 0:
            raise ValueError
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadQuery(
            f"invalid cursor {cursor!r}: pass back the next_cursor of a previous page"
        ) from None
    return offset


def page(items: Sequence[Any], cursor: str | None, limit: int) -> tuple[list[Any], str | None]:
    start = decode_cursor(cursor)
    chunk = list(items[start : start + limit])
    nxt = encode_cursor(start + limit) if start + limit < len(items) else None
    return chunk, nxt
