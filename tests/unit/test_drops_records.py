"""Drop records without a kernel: decoding map entries, reason names from
BTF enums, protocol labels, symbols, filters and the metric family."""

from __future__ import annotations

import ctypes
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bpfscope import libbpf as bpf
from bpfscope import system
from bpfscope.drops.cli import reason_filter, select
from bpfscope.drops.collector import KernelSymbols
from bpfscope.drops.records import (
    AF_INET,
    AF_INET6,
    F_HEADERS,
    F_LOCAL_SRC,
    F_REASON,
    F_SOCK,
    MIRRORS,
    PROTOCOL_LABELS,
    DropKeyC,
    DropValueC,
    ReasonNames,
    decode,
    protocol_label,
    protocol_name,
)
from bpfscope.flowquery import BadQuery, FlowFilter
from bpfscope.metrics import DropMetrics
from bpfscope.objects import object_path

NAMES = ReasonNames.from_enums(
    [
        ("SKB_CONSUMED", 1),
        ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
        ("SKB_DROP_REASON_NO_SOCKET", 3),
        ("SKB_DROP_REASON_NETFILTER_DROP", 12),
        ("SKB_DROP_REASON_SUBSYS_MASK", 0xFFFF0000),
        ("SKB_DROP_REASON_MAX", 120),
    ],
    {1: [("RX_DROP_U_MISMATCH", 0x10001)]},
)


def entry(
    *,
    family: int = AF_INET,
    proto: int = 17,
    src: str = "10.1.2.3",
    dst: str = "10.1.2.4",
    sport: int = 5000,
    dport: int = 53,
    flags: int = F_REASON | F_HEADERS,
    reason: int = 3,
    tgid: int = 0,
    ino: int = 0,
    comm: bytes = b"",
    count: int = 4,
    nbytes: int = 60,
) -> tuple[bytes, bytes]:
    k = DropKeyC()
    k.location = 0xFFFF0010
    k.netns = 4026531840
    k.ifindex = 2
    k.reason = reason
    k.sock_ino = ino
    k.family = family
    k.proto = proto
    k.flags = flags
    k.sport, k.dport = sport, dport
    size = 4 if family == AF_INET else 16
    ctypes.memmove(k.saddr, ipaddress.ip_address(src).packed, size)
    ctypes.memmove(k.daddr, ipaddress.ip_address(dst).packed, size)
    v = DropValueC(count=count, bytes=nbytes, first_ns=2_000_000_000, last_ns=3_000_000_000)
    v.comm = comm
    v.tgid = tgid
    v.ifname = b"eth0"
    return bytes(k), bytes(v)


def test_reason_names_strip_the_prefix_and_skip_markers() -> None:
    assert NAMES.name(3) == "NO_SOCKET"
    assert NAMES.name(12) == "NETFILTER_DROP"
    assert NAMES.name(1) == "SKB_CONSUMED"
    assert NAMES.name(0x10001) == "RX_DROP_U_MISMATCH"  # a subsystem's own enum
    assert NAMES.name(999) == "REASON_999"  # newer than the BTF read: still shown
    assert 120 not in NAMES.names
    assert 0xFFFF0000 not in NAMES.names
    assert NAMES.value("skb_drop_reason_no_socket") == 3
    assert NAMES.value("NO_SUCH_THING") is None


@pytest.mark.skipif(not system.VMLINUX_BTF.is_file(), reason="kernel has no BTF")
def test_reason_names_of_this_kernel_are_read_from_its_btf() -> None:
    with bpf.Btf.vmlinux() as btf:
        tid = btf.find("skb_drop_reason", bpf.BTF_KIND_ENUM)
        names = ReasonNames.from_btf(btf)
    if tid is None:
        pytest.skip("this kernel has no enum skb_drop_reason (before 5.17)")
    assert names.value("NO_SOCKET") is not None
    assert names.value("NETFILTER_DROP") is not None
    assert len(names.names) > 30


def test_decode_a_socketless_udp_drop() -> None:
    k, v = entry()
    r = decode(k, v, NAMES, boot_offset=100.0)
    assert (r.reason, r.reason_code, r.proto, r.family) == ("NO_SOCKET", 3, "udp", "ipv4")
    assert (r.src, r.sport, r.dst, r.dport) == ("10.1.2.3", 5000, "10.1.2.4", 53)
    assert (r.count, r.drop_bytes, r.ifname, r.ifindex) == (4, 60, "eth0", 2)
    assert (r.pid, r.comm, r.socket, r.flow()) == (0, "", False, None)
    assert (r.first_seen, r.last_seen) == (102.0, 103.0)
    assert r.location == "0xffff0010"
    data = r.to_json()
    assert data["pid"] is None
    assert data["comm"] is None
    assert data["reason"] == "NO_SOCKET"


def test_decode_an_owned_tcp_drop_orients_its_flow() -> None:
    k, v = entry(
        proto=6,
        flags=F_REASON | F_HEADERS | F_SOCK,  # received: the packet's source is remote
        reason=12,
        tgid=4242,
        ino=31337,
        comm=b"curl",
        src="10.9.9.9",
        sport=443,
        dst="10.1.1.1",
        dport=40000,
    )
    r = decode(k, v, NAMES)
    assert (r.pid, r.comm, r.reason) == (4242, "curl", "NETFILTER_DROP")
    assert (r.owner_from, r.sock_ino) == ("kernel", 31337)
    assert r.to_json()["socket_inode"] == 31337
    assert r.flow() == {"laddr": "10.1.1.1", "lport": 40000, "raddr": "10.9.9.9", "rport": 443}
    k, v = entry(proto=6, flags=F_REASON | F_SOCK | F_LOCAL_SRC, comm=b"stale")
    r = decode(k, v, NAMES)
    assert r.flow() == {"laddr": "10.1.2.3", "lport": 5000, "raddr": "10.1.2.4", "rport": 53}
    assert (r.pid, r.comm, r.owner_from) == (0, "", None)  # no owner: its comm is not trusted


def test_decode_without_reason_or_headers() -> None:
    k, v = entry(flags=0, family=0, proto=0)
    r = decode(k, v, NAMES)
    assert r.reason is None
    assert r.reason_code is None
    assert (r.src, r.sport, r.family) == (None, None, "")
    k, v = entry(family=AF_INET6, src="fd00::1", dst="fd00::2", proto=58)
    r = decode(k, v, NAMES)
    assert (r.src, r.dst, r.proto, r.sport) == ("fd00::1", "fd00::2", "icmpv6", None)


def test_protocol_labels_stay_bounded() -> None:
    assert protocol_name(AF_INET, 6, 0x0800) == "tcp"
    assert protocol_name(0, 0, 0x0806) == "arp"
    assert protocol_name(0, 0, 0x1234) == "ethertype-0x1234"
    assert protocol_name(AF_INET, 99, 0x0800) == "ip-99"
    for name in ("tcp", "ip-99", "arp", "ethertype-0x1234", "unknown", "ipv6", "sctp"):
        assert protocol_label(name) in PROTOCOL_LABELS


def test_structs_match_the_object_btf() -> None:
    from test_struct_layout import ctypes_layout

    with bpf.Btf.from_file(object_path("drops")) as btf:
        for name, struct in MIRRORS.items():
            assert ctypes_layout(struct) == btf.struct_layout(name), name


def test_kernel_symbols(tmp_path: Path) -> None:
    path = tmp_path / "kallsyms"
    path.write_text(
        "ffffffff81000000 T _stext\nffffffff81001000 t __udp4_lib_rcv\n"
        "ffffffff81002000 T nf_hook_slow\nffffffff81003000 d some_data\n"
    )
    sym = KernelSymbols(str(path))
    assert sym(0xFFFFFFFF81001234) == "__udp4_lib_rcv+0x234"
    assert sym(0xFFFFFFFF81003010) == "nf_hook_slow+0x1010"  # data symbols are skipped
    assert sym(0x10) == "0x10"


def test_filters_and_reasons() -> None:
    records = [
        decode(*entry(), NAMES),
        decode(*entry(reason=12, dport=80, count=9), NAMES),
        decode(
            *entry(proto=6, flags=F_REASON | F_HEADERS | F_SOCK, tgid=5, comm=b"nc", count=2),
            NAMES,
        ),
    ]
    assert [r.count for r in select(records, FlowFilter())] == [9, 4, 2]
    assert [r.count for r in select(records, FlowFilter(port=80))] == [9]
    assert [r.count for r in select(records, FlowFilter(proto="tcp"))] == [2]
    assert [r.count for r in select(records, FlowFilter(pid=5, comm="nc"))] == [2]
    assert [r.count for r in select(records, FlowFilter(cidr="10.1.2.0/24"))] == [9, 4, 2]
    assert select(records, FlowFilter(cidr="192.168.0.0/16")) == []
    wanted = reason_filter(NAMES, ["skb_drop_reason_netfilter_drop"])
    assert [r.count for r in select(records, FlowFilter(), wanted)] == [9]
    with pytest.raises(BadQuery, match="unknown drop reason"):
        reason_filter(NAMES, ["NOPE"])
    assert reason_filter(ReasonNames(), ["ANY"]) == {"ANY"}  # no BTF: nothing to check


class _Source:
    def drop_view(self) -> tuple[Any, dict[tuple[str, str], int]]:
        return [], {("NO_SOCKET", "udp"): 3, ("NETFILTER_DROP", "tcp"): 2}


def test_drop_metrics_parse() -> None:
    registry = CollectorRegistry()
    registry.register(DropMetrics(_Source()))
    text = generate_latest(registry).decode()
    (family,) = [
        f for f in text_string_to_metric_families(text) if f.name == "bpfscope_packet_drops"
    ]
    got = {
        (s.labels["reason"], s.labels["protocol"]): s.value
        for s in family.samples
        if s.name.endswith("_total")
    }
    assert got == {("NO_SOCKET", "udp"): 3.0, ("NETFILTER_DROP", "tcp"): 2.0}
