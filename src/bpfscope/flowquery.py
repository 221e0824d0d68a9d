"""Filtering, sorting and paging of flow records: one definition shared by
the CLI views, the HTTP API and the history's SQL, so ``--port 443``,
``?port=443`` on any endpoint and a history query mean the same thing."""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Protocol

__all__ = [
    "FILTER_NAMES",
    "MAX_PID",
    "SORT_KEYS",
    "BadQuery",
    "FlowFilter",
    "addr_in",
    "decode_cursor",
    "encode_cursor",
    "page",
    "parse_cidr",
    "register_sql",
    "sort_flows",
]


class BadQuery(ValueError):
    """A filter, sort key or cursor the user gave is not valid."""


class FlowLike(Protocol):
    """A flow record or a connection event: what a filter looks at."""

    @property
    def pid(self) -> int: ...
    @property
    def comm(self) -> str: ...
    @property
    def family(self) -> str: ...
    @property
    def proto(self) -> str: ...
    @property
    def laddr(self) -> str: ...
    @property
    def lport(self) -> int: ...
    @property
    def raddr(self) -> str | None: ...
    @property
    def rport(self) -> int | None: ...
    @property
    def container(self) -> str | None: ...


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Linux's PID_MAX_LIMIT: no pid (or tgid) is larger.
MAX_PID: Final = 4 * 1024 * 1024


def parse_cidr(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise BadQuery(
            f"invalid CIDR {text!r}: expected an address or network such as "
            "10.0.0.0/8, 192.168.1.5 or fd00::/8"
        ) from None


@functools.lru_cache(maxsize=64)
def _network(text: str) -> IPNetwork:
    return parse_cidr(text)


@dataclass(frozen=True)
class FlowFilter:
    """Which flows (or connection events) to keep. Every field is optional;
    given ones must all match:

    pid        exact process id
    comm       exact command name
    port       local or remote port
    cidr       local or remote address in the network (IPv4-mapped IPv6
               addresses count as IPv4)
    container  container id prefix
    family     ipv4 | ipv6 (the socket's family)
    proto      tcp | udp (``protocol`` in the API and the CLI's --tcp/--udp)
    """

    pid: int | None = None
    comm: str | None = None
    port: int | None = None
    cidr: str | None = None
    container: str | None = None
    family: str | None = None  # ipv4 | ipv6
    proto: str | None = None  # tcp | udp

    def __post_init__(self) -> None:
        if self.pid is not None and not 0 < self.pid <= MAX_PID:
            raise BadQuery(f"pid must be 1-{MAX_PID}, not {self.pid}")
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
        network = _network(self.cidr) if self.cidr else None

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

    def sql(self) -> tuple[str, list[Any]]:
        """The same test as :meth:`predicate` as an SQL condition over the
        history's ``flow_buckets`` columns (family stored as 4/6, a missing
        remote as '' and 0). CIDR needs :func:`register_sql` on the
        connection. Returns ("", []) when nothing is filtered."""
        terms: list[str] = []
        args: list[Any] = []
        if self.pid is not None:
            terms.append("pid = ?")
            args.append(self.pid)
        if self.comm is not None:
            terms.append("comm = ?")
            args.append(self.comm)
        if self.port is not None:
            terms.append("(lport = ? OR rport = ?)")
            args += [self.port, self.port]
        if self.family is not None:
            terms.append("family = ?")
            args.append(4 if self.family == "ipv4" else 6)
        if self.proto is not None:
            terms.append("proto = ?")
            args.append(self.proto)
        if self.container is not None:
            # a prefix test without LIKE's wildcards and case folding
            terms.append("substr(container, 1, ?) = ?")
            args += [len(self.container), self.container]
        if self.cidr is not None:
            terms.append("bpfscope_addr_in(?, laddr, raddr)")
            args.append(self.cidr)
        return " AND ".join(terms), args

    def is_empty(self) -> bool:
        return all(getattr(self, f.name) is None for f in fields(self))


# The API's query parameter for each FlowFilter field.
FILTER_NAMES: Final = ("pid", "comm", "port", "cidr", "container", "family", "protocol")


def _sql_addr_in(cidr: str, *addrs: str | None) -> int:
    return int(addr_in(_network(cidr), *addrs))


def register_sql(conn: Any) -> None:
    """Give an sqlite3 connection the functions :meth:`FlowFilter.sql` uses."""
    conn.create_function("bpfscope_addr_in", 3, _sql_addr_in, deterministic=True)


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
    # TCP health (counters accounting; flows without it sort last)
    "rtt": lambda r: getattr(r, "rtt_us", None) or 0,
    "retrans_bytes": lambda r: getattr(r, "retrans_bytes", None) or 0,
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
        if not 0 <= offset < 2**62:  # SQLite's OFFSET is a 64-bit integer
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
