"""IPv6 drops for real: datagrams to a port nobody listens on, datagrams an
nftables rule drops, and datagrams that carry a hop-by-hop or destination
options header (the program walks extension headers to find the ports),
counted exactly, with their addresses and ports."""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from test_drops import CLIENT_PORT, Pair, matching, netns_pair, nft_drop, run

from bpfscope.drops.collector import DropCollector
from bpfscope.drops.records import DropRecord

pytestmark = pytest.mark.kernel

A6 = "fd00:d5::1"
B6 = "fd00:d5::2"
CLOSED_PORT = 39131
FILTERED_PORT = 39132
# A hop-by-hop / destination options header with one PadN option (8 bytes;
# the kernel fills in the next header)
PADN_OPTIONS = bytes([0, 0, 1, 4, 0, 0, 0, 0])


@contextmanager
def v6_pair() -> Iterator[Pair]:
    """The IPv4 test pair with IPv6 addresses too (no DAD, permanent
    neighbour entries: no drop but the ones a test makes)."""
    with netns_pair() as pair:
        for ns, dev, addr in ((pair.a, pair.dev_a, A6), (pair.b, pair.dev_b, B6)):
            run("ip", "-n", ns, "addr", "add", f"{addr}/64", "dev", dev, "nodad")
        for ns, dev, peer, peer_ns, peer_dev in (
            (pair.a, pair.dev_a, B6, pair.b, pair.dev_b),
            (pair.b, pair.dev_b, A6, pair.a, pair.dev_a),
        ):
            mac = run("ip", "-n", peer_ns, "-br", "link", "show", "dev", peer_dev).split()[2]
            run("ip", "-n", ns, "-6", "neigh", "replace", peer, "lladdr", mac, "dev", dev,
                "nud", "permanent")  # fmt: skip
        yield pair


def send_udp6(ns: str, port: int, n: int, option: int | None = None) -> None:
    code = (
        "import socket\n"
        "s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n"
        f"s.bind(('{A6}',{CLIENT_PORT}))\n"
        + (
            f"s.setsockopt(socket.IPPROTO_IPV6,{option},{PADN_OPTIONS!r})\n"
            f"assert len(s.getsockopt(socket.IPPROTO_IPV6,{option},64))==8\n"
            if option is not None
            else ""
        )
        + f"[s.sendto(b'drop-me',('{B6}',{port})) for _ in range({n})]\n"
    )
    run("ip", "netns", "exec", ns, sys.executable, "-c", code)


@pytest.fixture(scope="module")
def collector() -> Iterator[DropCollector]:
    with DropCollector() as c:
        yield c


def counted(collector: DropCollector, pair: Pair, n: int, **want: object) -> list[DropRecord]:
    deadline = time.monotonic() + 5
    while True:
        collector.poll()
        got = matching(collector.snapshot(), netns=pair.inode(pair.b), **want)
        if sum(r.count for r in got) >= n or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    time.sleep(0.3)  # nothing more comes
    collector.poll()
    return matching(collector.snapshot(), netns=pair.inode(pair.b), **want)


def assert_one_udp6(got: list[DropRecord], pair: Pair, n: int, reason: str, port: int) -> None:
    assert sum(r.count for r in got) == n, [r.to_json() for r in got]
    (r,) = got
    assert r.reason == reason
    assert (r.family, r.proto, r.src, r.sport, r.dst, r.dport) == (
        "ipv6", "udp", A6, CLIENT_PORT, B6, port,
    )  # fmt: skip
    assert (r.ifname, r.socket, r.pid) == (pair.dev_b, False, 0)


def test_ipv6_udp_to_a_closed_port(collector: DropCollector) -> None:
    n = 9
    with v6_pair() as pair:
        send_udp6(pair.a, CLOSED_PORT, n)
        got = counted(collector, pair, n, dport=CLOSED_PORT, family="ipv6")
        assert_one_udp6(got, pair, n, "NO_SOCKET", CLOSED_PORT)


def test_ipv6_nftables_drop(collector: DropCollector) -> None:
    n = 6
    with v6_pair() as pair:
        nft_drop(pair.b, "input", f"ip6 daddr {B6} udp dport {FILTERED_PORT}")
        send_udp6(pair.a, FILTERED_PORT, n)
        got = counted(collector, pair, n, dport=FILTERED_PORT, family="ipv6")
        assert_one_udp6(got, pair, n, "NETFILTER_DROP", FILTERED_PORT)


@pytest.mark.parametrize(
    ("option", "name"),
    [(socket.IPV6_HOPOPTS, "hop-by-hop"), (socket.IPV6_DSTOPTS, "destination options")],
)
def test_ports_behind_an_extension_header(collector: DropCollector, option: int, name: str) -> None:
    """Before the walk these were protocol `ipv6` (next header 0 or 60) with
    no ports. The sender reads its option back (the kernel took it)."""
    n = 4
    port = CLOSED_PORT + 10 + option % 7
    with v6_pair() as pair:
        send_udp6(pair.a, port, n, option)
        got = counted(collector, pair, n, dport=port, family="ipv6")
        assert got, f"no udp drop with ports behind the {name} header"
        assert_one_udp6(got, pair, n, "NO_SOCKET", port)
