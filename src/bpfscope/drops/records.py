"""Packet-drop records: the ctypes mirrors of drops.h, the decoded record,
and the names of drop reasons read from the kernel's BTF.

Reason names come from the running kernel's ``enum skb_drop_reason`` at run
time, so a newer kernel's reasons are named without a code change. Values
with a subsystem in their upper 16 bits (mac80211, openvswitch, ...) are
named from that subsystem's own enum when the BTF has it.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from .. import libbpf as bpf

__all__ = [
    "AF_INET",
    "AF_INET6",
    "COMM_LEN",
    "F_HEADERS",
    "F_LOCAL_SRC",
    "F_OWNER",
    "F_REASON",
    "F_SOCK",
    "MIRRORS",
    "DropKeyC",
    "DropOwnerC",
    "DropRecord",
    "DropValueC",
    "ReasonNames",
    "decode",
    "protocol_label",
    "protocol_name",
]

AF_INET: Final = 2
AF_INET6: Final = 10
COMM_LEN: Final = 16
IFNAME_LEN: Final = 16

# drop_key.flags (drops.h)
F_REASON: Final = 0x1
F_SOCK: Final = 0x2
F_LOCAL_SRC: Final = 0x4
F_HEADERS: Final = 0x8
F_OWNER: Final = 0x10  # no longer set: the owner is in the value (tgid != 0)

# stats slots (drops.h)
STAT_SLOTS: Final = {
    "seen": 0,
    "consumed_skipped": 1,
    "update_failed": 2,
    "inserts": 3,
    "owner_wanted": 4,
    "swept": 5,
    "empty_purged": 6,
}
STAT_MAX: Final = 7

_PREFIX: Final = "SKB_DROP_REASON_"
_SUBSYS_SHIFT: Final = 16
_IP_PROTOCOLS: Final = {1: "icmp", 2: "igmp", 6: "tcp", 17: "udp", 58: "icmpv6", 132: "sctp"}
_ETHERTYPES: Final = {0x0806: "arp", 0x8100: "vlan", 0x88CC: "lldp", 0x86DD: "ipv6", 0x0800: "ipv4"}
# Metric label values: a fixed set, whatever the traffic.
PROTOCOL_LABELS: Final = ("tcp", "udp", "icmp", "icmpv6", "ip-other", "arp", "other")


class DropKeyC(ctypes.Structure):
    _fields_ = [
        ("location", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("netns", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
        ("reason", ctypes.c_uint32),
        ("sock_ino", ctypes.c_uint32),
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("l3proto", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 7),
    ]


class DropValueC(ctypes.Structure):
    _fields_ = [
        ("count", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("first_ns", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("comm", ctypes.c_char * COMM_LEN),
        ("ifname", ctypes.c_char * IFNAME_LEN),
        ("tgid", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
    ]


class DropOwnerC(ctypes.Structure):
    _fields_ = [
        ("cgroup_id", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("comm", ctypes.c_char * COMM_LEN),
    ]


MIRRORS: Final[dict[str, type[ctypes.Structure]]] = {
    "drop_key": DropKeyC,
    "drop_value": DropValueC,
    "drop_owner": DropOwnerC,
}


class ReasonNames:
    """Drop reason value -> name (``NO_SOCKET``), from a BTF's enums.

    ``names`` maps the core enum's values; ``subsystems`` maps a subsystem
    number to its enum's values. Unknown values are named by number."""

    def __init__(
        self,
        names: dict[int, str] | None = None,
        subsystems: dict[int, dict[int, str]] | None = None,
    ) -> None:
        self.names = names or {}
        self.subsystems = subsystems or {}

    @classmethod
    def from_enums(
        cls, core: Iterable[tuple[str, int]], subsystems: dict[int, Iterable[tuple[str, int]]]
    ) -> ReasonNames:
        names = {}
        for name, value in core:
            if name.startswith(_PREFIX):
                name = name[len(_PREFIX) :]
            if name == "MAX" or name.startswith("SUBSYS_"):
                continue
            names[value] = name
        subs = {n: dict((v, name) for name, v in vals) for n, vals in subsystems.items()}
        return cls(names, subs)

    @classmethod
    def from_btf(cls, btf: bpf.Btf) -> ReasonNames:
        tid = btf.find("skb_drop_reason", bpf.BTF_KIND_ENUM) or btf.find(
            "skb_drop_reason", bpf.BTF_KIND_ENUM64
        )
        core = btf.enum_values(tid) if tid else []
        subsystems: dict[int, Iterable[tuple[str, int]]] = {}
        sub_tid = btf.find("skb_drop_reason_subsys", bpf.BTF_KIND_ENUM)
        for name, number in btf.enum_values(sub_tid) if sub_tid else []:
            # SKB_DROP_REASON_SUBSYS_MAC80211_UNUSABLE -> enum mac80211_drop_reason
            short = name.removeprefix("SKB_DROP_REASON_SUBSYS_").lower()
            owner = short.split("_", 1)[0]
            for enum_name in (f"{short}_drop_reason", f"{owner}_drop_reason"):
                etid = btf.find(enum_name, bpf.BTF_KIND_ENUM)
                if etid:
                    subsystems[number] = btf.enum_values(etid)
                    break
        return cls.from_enums(core, subsystems)

    @classmethod
    def load(cls, btf_path: str | os.PathLike[str] | None = None) -> ReasonNames:
        """The running kernel's names (or those of ``btf_path``); none if
        the kernel has no BTF or no such enum (before 5.17)."""
        try:
            btf = bpf.Btf.from_file(btf_path) if btf_path else bpf.Btf.vmlinux()
        except bpf.BpfError:
            return cls()
        with btf:
            return cls.from_btf(btf)

    def name(self, value: int) -> str:
        if value in self.names:
            return self.names[value]
        sub = value >> _SUBSYS_SHIFT
        if sub and value in self.subsystems.get(sub, {}):
            return self.subsystems[sub][value]
        return f"REASON_{value}"

    def value(self, name: str) -> int | None:
        """The value of a name (with or without SKB_DROP_REASON_), or None."""
        wanted = name.upper().removeprefix(_PREFIX)
        for v, n in self.names.items():
            if n == wanted:
                return v
        return None


def protocol_name(family: int, proto: int, l3proto: int) -> str:
    """tcp, udp, icmp, ... for IP packets; the ethertype's name otherwise."""
    if family in (AF_INET, AF_INET6) and proto:
        return _IP_PROTOCOLS.get(proto, f"ip-{proto}")
    if family in (AF_INET, AF_INET6):
        return "ipv4" if family == AF_INET else "ipv6"
    if l3proto:
        return _ETHERTYPES.get(l3proto, f"ethertype-{l3proto:#06x}")
    return "unknown"


def protocol_label(name: str) -> str:
    """A protocol name folded into the metric's bounded label set."""
    if name in PROTOCOL_LABELS:
        return name
    if name.startswith("ip-") or name in ("ipv4", "ipv6", "igmp", "sctp"):
        return "ip-other"
    return "other"


def _addr(family: int, raw: bytes) -> str | None:
    if family == AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    if family == AF_INET6:
        return str(ipaddress.IPv6Address(raw))
    return None


@dataclass
class DropRecord:
    """Drops of one kind (one kernel key): cumulative ``count``/``bytes``
    and, per poll, ``delta``. ``pid`` is the socket's owner, 0 when unknown;
    ``owner_from`` says who knew it: ``kernel`` (connect hook or sweep, read
    in the BPF program), ``sweep`` (found after the first drops), ``flows``
    (the agent's flows collector owns the same flow)."""

    reason: str | None  # None: the kernel gives no reason (before 5.17)
    reason_code: int | None
    location: str  # kernel symbol+offset that freed the skb
    netns: int
    ifindex: int
    ifname: str | None
    family: str  # ipv4 | ipv6 | "" (neither socket nor headers said)
    proto: str
    src: str | None
    dst: str | None
    sport: int | None
    dport: int | None
    socket: bool  # the skb belonged to a socket
    local_is_src: bool
    pid: int
    comm: str
    cgroup_id: int
    count: int = 0
    drop_bytes: int = 0
    delta: int = 0
    first_seen: float = 0.0
    last_seen: float = 0.0
    container: str | None = None
    sock_ino: int = 0  # the socket's inode (0: none, or orphaned)
    owner_from: str | None = None
    key: bytes = field(default=b"", repr=False, compare=False)

    # What the shared flow filter looks at (flowquery.FlowLike): either end.
    @property
    def laddr(self) -> str:
        return (self.src if self.local_is_src else self.dst) or ""

    @property
    def raddr(self) -> str | None:
        return self.dst if self.local_is_src else self.src

    @property
    def lport(self) -> int:
        return (self.sport if self.local_is_src else self.dport) or 0

    @property
    def rport(self) -> int | None:
        return self.dport if self.local_is_src else self.sport

    def flow(self) -> dict[str, Any] | None:
        """The socket's flow (local and remote ends) when the skb had one."""
        if not self.socket:
            return None
        return {
            "laddr": self.laddr,
            "lport": self.lport,
            "raddr": self.raddr,
            "rport": self.rport,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "reason": self.reason,
            "reason_code": self.reason_code,
            "location": self.location,
            "count": self.count,
            "delta": self.delta,
            "bytes": self.drop_bytes,
            "netns": self.netns,
            "ifindex": self.ifindex or None,
            "interface": self.ifname,
            "family": self.family or None,
            "protocol": self.proto,
            "src": self.src,
            "sport": self.sport,
            "dst": self.dst,
            "dport": self.dport,
            "flow": self.flow(),
            "pid": self.pid or None,
            "comm": self.comm or None,
            "owner_from": self.owner_from if self.pid else None,
            "socket_inode": self.sock_ino or None,
            "cgroup_id": self.cgroup_id or None,
            "container": self.container,
            "first_seen": round(self.first_seen, 3),
            "last_seen": round(self.last_seen, 3),
        }


def decode(
    raw_key: bytes,
    raw_value: bytes,
    reasons: ReasonNames,
    symbol: Any = None,
    boot_offset: float = 0.0,
) -> DropRecord:
    """One map entry as a record (``count`` cumulative, ``delta`` 0).
    ``symbol(address) -> str`` names the location; ``boot_offset`` turns
    the kernel's monotonic ns into Unix time."""
    k = DropKeyC.from_buffer_copy(raw_key)
    v = DropValueC.from_buffer_copy(raw_value[: ctypes.sizeof(DropValueC)])
    flags = k.flags
    family = k.family if k.family in (AF_INET, AF_INET6) else 0
    parsed = bool(flags & (F_HEADERS | F_SOCK)) and family
    proto = protocol_name(family, k.proto, k.l3proto)
    has_ports = parsed and k.proto in (6, 17)
    owner = v.tgid != 0
    return DropRecord(
        reason=reasons.name(k.reason) if flags & F_REASON else None,
        reason_code=k.reason if flags & F_REASON else None,
        location=symbol(k.location) if symbol else f"{k.location:#x}",
        netns=k.netns,
        ifindex=k.ifindex,
        ifname=v.ifname.decode("utf-8", "replace") or None if k.ifindex else None,
        family={AF_INET: "ipv4", AF_INET6: "ipv6"}.get(family, ""),
        proto=proto,
        src=_addr(family, bytes(k.saddr)) if parsed else None,
        dst=_addr(family, bytes(k.daddr)) if parsed else None,
        sport=k.sport if has_ports else None,
        dport=k.dport if has_ports else None,
        socket=bool(flags & F_SOCK),
        local_is_src=bool(flags & F_LOCAL_SRC),
        pid=v.tgid,
        comm=v.comm.decode("utf-8", "replace") if owner else "",
        cgroup_id=k.cgroup_id,
        count=v.count,
        drop_bytes=v.bytes,
        first_seen=v.first_ns / 1e9 + boot_offset,
        last_seen=v.last_ns / 1e9 + boot_offset,
        sock_ino=k.sock_ino if flags & F_SOCK else 0,
        owner_from="kernel" if owner else None,
        key=bytes(raw_key),
    )
