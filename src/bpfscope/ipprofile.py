"""IP profiling: a class and, where knowable, a name for a remote address.

Classes come from the address alone (loopback, link-local, private, public,
multicast...) and are bounded, so they are safe as metric labels. Names come
from, in order: a static mapping file, Kubernetes pods and services (when
running in a cluster), local containers, and reverse DNS. Reverse DNS never
blocks a caller: lookups run on a small thread pool, results are cached in a
bounded LRU with a TTL, and a name appears once its lookup has finished.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

__all__ = [
    "IpProfiler",
    "Profile",
    "RemoteClass",
    "StaticMap",
    "classify",
    "parse_static_map",
]

log = logging.getLogger("bpfscope.ipprofile")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class RemoteClass(StrEnum):
    LOOPBACK = "loopback"
    LINK_LOCAL = "link_local"
    PRIVATE = "private"
    PUBLIC = "public"
    MULTICAST = "multicast"
    UNSPECIFIED = "unspecified"
    CONTAINER = "container"
    POD = "pod"
    SERVICE = "service"
    UNKNOWN = "unknown"


def _unmap(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def classify(ip: str | IPAddress | None) -> RemoteClass:
    """Class of an address from the address alone."""
    if ip is None or ip == "":
        return RemoteClass.UNKNOWN
    try:
        addr = _unmap(ipaddress.ip_address(ip) if isinstance(ip, str) else ip)
    except ValueError:
        return RemoteClass.UNKNOWN
    if addr.is_unspecified:
        return RemoteClass.UNSPECIFIED
    if addr.is_loopback:
        return RemoteClass.LOOPBACK
    if addr.is_link_local:
        return RemoteClass.LINK_LOCAL
    if addr.is_multicast:
        return RemoteClass.MULTICAST
    # 100.64/10 (carrier-grade NAT) is neither private nor global in Python.
    if addr.is_private or (
        isinstance(addr, ipaddress.IPv4Address) and addr in ipaddress.ip_network("100.64.0.0/10")
    ):
        return RemoteClass.PRIVATE
    return RemoteClass.PUBLIC


@dataclass(frozen=True)
class Profile:
    ip: str
    remote_class: RemoteClass
    name: str | None = None
    source: str | None = None  # static | kubernetes | container | dns

    def to_json(self) -> dict[str, str | None]:
        return {
            "class": str(self.remote_class),
            "name": self.name,
            "source": self.source,
        }


@dataclass(frozen=True)
class StaticEntry:
    network: IPNetwork
    name: str
    remote_class: RemoteClass | None


class StaticMap:
    """Longest-prefix match over ``address-or-CIDR name [class]`` lines."""

    def __init__(self, entries: Iterable[StaticEntry]) -> None:
        self._entries = sorted(entries, key=lambda e: e.network.prefixlen, reverse=True)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, addr: IPAddress) -> StaticEntry | None:
        for e in self._entries:
            if addr.version == e.network.version and addr in e.network:
                return e
        return None


def parse_static_map(text: str, source: str = "<mapping>") -> StaticMap:
    """Parse a mapping file; a bad line is an error naming the line."""
    entries = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) not in (2, 3):
            raise ValueError(f"{source}:{lineno}: expected 'ADDRESS-OR-CIDR NAME [CLASS]'")
        try:
            network = ipaddress.ip_network(parts[0], strict=False)
        except ValueError as exc:
            raise ValueError(f"{source}:{lineno}: {exc}") from None
        cls = None
        if len(parts) == 3:
            try:
                cls = RemoteClass(parts[2])
            except ValueError:
                choices = ", ".join(c.value for c in RemoteClass)
                raise ValueError(
                    f"{source}:{lineno}: unknown class {parts[2]!r} (one of: {choices})"
                ) from None
        entries.append(StaticEntry(network, parts[1], cls))
    return StaticMap(entries)


class _DnsCache:
    """Bounded LRU of reverse lookups, filled in the background."""

    def __init__(
        self,
        size: int,
        ttl: float,
        workers: int,
        resolver: Callable[[str], str | None],
    ) -> None:
        self._size = size
        self._ttl = ttl
        self._resolver = resolver
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        self._pending: set[str] = set()
        # Daemon threads, not an executor: a lookup stuck on an unreachable
        # resolver must never hold up the process's exit.
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._workers = [
            threading.Thread(target=self._work, name=f"bpfscope-dns-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._workers:
            t.start()
        self._max_pending = workers * 16

    def get(self, ip: str) -> str | None:
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(ip)
            if hit is not None and now - hit[0] < self._ttl:
                self._entries.move_to_end(ip)
                return hit[1]
            if ip in self._pending or len(self._pending) >= self._max_pending:
                return hit[1] if hit else None
            self._pending.add(ip)
        self._queue.put(ip)
        return hit[1] if hit else None

    def _work(self) -> None:
        while (ip := self._queue.get()) is not None:
            self._resolve(ip)

    def _resolve(self, ip: str) -> None:
        try:
            name = self._resolver(ip)
        except Exception:  # a failed lookup is cached as "no name"
            name = None
        with self._lock:
            self._pending.discard(ip)
            self._entries[ip] = (time.monotonic(), name)
            self._entries.move_to_end(ip)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.01)
        return False

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def close(self) -> None:
        for _ in self._workers:
            self._queue.put(None)


def _reverse_dns(ip: str) -> str | None:
    try:
        return socket.gethostbyaddr(ip)[0]
    except (OSError, UnicodeError):
        return None


class IpProfiler:
    """Class and name of remote addresses, from cheap to expensive sources.

    ``names_from`` are extra lookups (Kubernetes, local containers) called
    with the address; each returns ``(name, class)`` or None.
    """

    def __init__(
        self,
        *,
        static: StaticMap | None = None,
        names_from: Iterable[tuple[str, Callable[[str], tuple[str, RemoteClass] | None]]] = (),
        dns: bool = True,
        dns_cache_size: int = 4096,
        dns_ttl: float = 300.0,
        dns_workers: int = 2,
        resolver: Callable[[str], str | None] = _reverse_dns,
    ) -> None:
        self._static = static
        self._names_from = list(names_from)
        self._dns = _DnsCache(dns_cache_size, dns_ttl, dns_workers, resolver) if dns else None

    @classmethod
    def from_file(cls, path: str | Path | None, **kwargs: object) -> IpProfiler:
        static = None
        if path is not None:
            p = Path(path)
            try:
                text = p.read_text()
            except OSError as exc:
                raise ValueError(f"cannot read IP mapping file {p}: {exc.strerror}") from None
            static = parse_static_map(text, str(p))
        return cls(static=static, **kwargs)  # type: ignore[arg-type]

    def profile(self, ip: str | None) -> Profile:
        cls = classify(ip)
        if ip is None or cls is RemoteClass.UNKNOWN:
            return Profile(ip or "", RemoteClass.UNKNOWN)
        addr = _unmap(ipaddress.ip_address(ip))
        if self._static is not None:
            entry = self._static.lookup(addr)
            if entry is not None:
                return Profile(ip, entry.remote_class or cls, entry.name, "static")
        for source, lookup in self._names_from:
            found = lookup(str(addr))
            if found is not None:
                return Profile(ip, found[1], found[0], source)
        if self._dns is not None and cls is not RemoteClass.UNSPECIFIED:
            name = self._dns.get(str(addr))
            if name is not None:
                return Profile(ip, cls, name, "dns")
        return Profile(ip, cls)

    def dns_wait_idle(self, timeout: float = 5.0) -> bool:
        return self._dns.wait_idle(timeout) if self._dns is not None else True

    @property
    def dns_cache_entries(self) -> int:
        return len(self._dns) if self._dns is not None else 0

    def close(self) -> None:
        if self._dns is not None:
            self._dns.close()
