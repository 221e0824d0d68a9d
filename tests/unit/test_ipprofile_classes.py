"""Address classes, static maps and the non-blocking DNS cache."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpfscope.ipprofile import IpProfiler, RemoteClass, classify, parse_static_map


@pytest.mark.parametrize(
    ("ip", "cls"),
    [
        ("127.0.0.1", RemoteClass.LOOPBACK),
        ("::1", RemoteClass.LOOPBACK),
        ("::ffff:127.0.0.1", RemoteClass.LOOPBACK),
        ("169.254.1.1", RemoteClass.LINK_LOCAL),
        ("fe80::1", RemoteClass.LINK_LOCAL),
        ("10.1.2.3", RemoteClass.PRIVATE),
        ("192.168.1.1", RemoteClass.PRIVATE),
        ("100.64.0.1", RemoteClass.PRIVATE),
        ("fd00::1", RemoteClass.PRIVATE),
        ("8.8.8.8", RemoteClass.PUBLIC),
        ("2001:4860:4860::8888", RemoteClass.PUBLIC),
        ("224.0.0.1", RemoteClass.MULTICAST),
        ("0.0.0.0", RemoteClass.UNSPECIFIED),
        ("not-an-ip", RemoteClass.UNKNOWN),
        (None, RemoteClass.UNKNOWN),
    ],
)
def test_classes(ip: str | None, cls: RemoteClass) -> None:
    assert classify(ip) is cls


@given(st.ip_addresses())
def test_every_address_gets_a_bounded_class(addr: object) -> None:
    assert classify(str(addr)) in set(RemoteClass)


def test_static_map_longest_prefix_and_errors() -> None:
    m = parse_static_map("10.0.0.0/8 corp\n10.1.0.0/16 lab private  # comment\n\n")
    p = IpProfiler(static=m, dns=False)
    assert p.profile("10.1.2.3").name == "lab"
    assert p.profile("10.9.9.9").name == "corp"
    with pytest.raises(ValueError, match=r"<mapping>:1: .*does not appear"):
        parse_static_map("10.0.0.300/8 x\n")
    with pytest.raises(ValueError, match="unknown class 'galaxy'"):
        parse_static_map("10.0.0.0/8 x galaxy\n")


def test_dns_never_blocks_and_is_cached() -> None:
    release = threading.Event()
    calls: list[str] = []

    def slow(ip: str) -> str | None:
        calls.append(ip)
        release.wait(5)
        return "slow.example"

    p = IpProfiler(resolver=slow, dns_workers=1)
    t0 = time.monotonic()
    assert p.profile("192.0.2.7").name is None  # not known yet, and no wait
    assert time.monotonic() - t0 < 0.5
    release.set()
    assert p.dns_wait_idle(5)
    prof = p.profile("192.0.2.7")
    assert (prof.name, prof.source) == ("slow.example", "dns")
    p.profile("192.0.2.7")
    assert calls == ["192.0.2.7"]  # one lookup, then the cache
    p.close()


def test_dns_cache_is_bounded() -> None:
    p = IpProfiler(resolver=lambda ip: "h", dns_cache_size=10, dns_workers=2)
    for i in range(50):
        p.profile(f"198.51.100.{i}")
        p.dns_wait_idle(5)
    assert p.dns_cache_entries == 10
    p.close()
