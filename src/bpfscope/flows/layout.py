"""Byte layout of the flow monitor's kernel/user structs (``flows.h``):
ctypes mirrors (a test checks every size and offset against the object's
BTF), their ``struct`` formats for bulk decoding, and the constants the
kernel side writes into them; the kernel-side filters (`const volatile`)."""

from __future__ import annotations

import ctypes
import socket
import struct
from dataclasses import dataclass
from typing import Any, Final

from .health import TcpHealthC

AF_INET: Final = socket.AF_INET.value
AF_INET6: Final = socket.AF_INET6.value
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17

FLOW_F_REMOTE_UNKNOWN: Final = 0x1

DIRECTIONS: Final = {0: None, 1: "active", 2: "passive"}
EVENT_TYPES: Final = {
    1: "open",
    2: "close",
    3: "retransmit",
    4: "reset_sent",
    5: "reset_received",
}
TCP_STATES: Final = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}

# stats slots of the per-CPU array flows_stats (FLOW_STAT_* in flows.h)
STAT_INSERTS: Final = 0
STAT_UPDATE_FAILED: Final = 1
STAT_SK_UPDATE_FAILED: Final = 2
STAT_NO_OWNER: Final = 3
STAT_UDP_DEST_HIT: Final = 4
STAT_UDP_DEST_MISS: Final = 5
STAT_ADOPTED: Final = 6
STAT_SLOTS: Final = 7


class FlowKeyC(ctypes.Structure):
    """Mirror of ``struct flow_key``."""

    _fields_ = [
        ("cgroup_id", ctypes.c_uint64),
        ("netns", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("laddr", ctypes.c_uint8 * 16),
        ("raddr", ctypes.c_uint8 * 16),
        ("lport", ctypes.c_uint16),
        ("rport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class FlowValueC(ctypes.Structure):
    """Mirror of ``struct flow_value``."""

    _fields_ = [
        ("tx_bytes", ctypes.c_uint64),
        ("rx_bytes", ctypes.c_uint64),
        ("tx_calls", ctypes.c_uint64),
        ("rx_calls", ctypes.c_uint64),
        ("first_ns", ctypes.c_uint64),
        ("last_ns", ctypes.c_uint64),
        ("open_ns", ctypes.c_uint64),
        ("close_ns", ctypes.c_uint64),
        ("retrans_bytes", ctypes.c_uint64),
        ("retrans", ctypes.c_uint32),
        ("resets_sent", ctypes.c_uint32),
        ("resets_recv", ctypes.c_uint32),
        ("state", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 2),
        ("comm", ctypes.c_char * 16),
    ]


class SkOwnerC(ctypes.Structure):
    """Mirror of ``struct sk_owner``."""

    _fields_ = [
        ("cgroup_id", ctypes.c_uint64),
        ("open_ns", ctypes.c_uint64),
        ("tgid", ctypes.c_uint32),
        ("netns", ctypes.c_uint32),
        ("laddr", ctypes.c_uint8 * 16),
        ("raddr", ctypes.c_uint8 * 16),
        ("lport", ctypes.c_uint16),
        ("rport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("established", ctypes.c_uint8),
        ("has_tuple", ctypes.c_uint8),
        ("comm", ctypes.c_char * 16),
        ("closed", ctypes.c_uint8),
        ("pending_accept", ctypes.c_uint8),
        ("has_est_jiffies", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("est_jiffies", ctypes.c_uint32),
        ("est_ns", ctypes.c_uint64),
        ("c_tx", ctypes.c_uint64),
        ("c_retrans", ctypes.c_uint64),
        ("c_rx", ctypes.c_uint64),
        ("c_segs_out", ctypes.c_uint32),
        ("c_segs_in", ctypes.c_uint32),
    ]


class ListenKeyC(ctypes.Structure):
    """Mirror of ``struct listen_key``."""

    _fields_ = [
        ("netns", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class UdpDestC(ctypes.Structure):
    """Mirror of ``struct udp_dest``."""

    _fields_ = [
        ("raddr", ctypes.c_uint8 * 16),
        ("lport", ctypes.c_uint16),
        ("rport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class FlowEventC(ctypes.Structure):
    """Mirror of ``struct flow_event`` (ring buffer record)."""

    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("cgroup_id", ctypes.c_uint64),
        ("duration_ns", ctypes.c_uint64),
        ("tx_bytes", ctypes.c_uint64),
        ("rx_bytes", ctypes.c_uint64),
        ("netns", ctypes.c_uint32),
        ("tgid", ctypes.c_uint32),
        ("laddr", ctypes.c_uint8 * 16),
        ("raddr", ctypes.c_uint8 * 16),
        ("lport", ctypes.c_uint16),
        ("rport", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("proto", ctypes.c_uint8),
        ("type", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("oldstate", ctypes.c_uint8),
        ("newstate", ctypes.c_uint8),
        ("established", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("retrans", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("retrans_bytes", ctypes.c_uint64),
        ("tx_segs", ctypes.c_uint64),
        ("rx_segs", ctypes.c_uint64),
        ("health", TcpHealthC),
    ]


_STRUCT_CODES: Final[dict[Any, str]] = {
    ctypes.c_uint64: "Q",
    ctypes.c_uint32: "I",
    ctypes.c_uint16: "H",
    ctypes.c_uint8: "B",
}


def struct_of(mirror: type[ctypes.Structure]) -> tuple[struct.Struct, dict[str, int]]:
    """A ``struct`` format for a ctypes mirror (byte arrays and strings as
    ``bytes``, padding skipped) and each field's index in the unpacked
    tuple: bulk decoding follows the one definition the layout test checks."""
    fmt = ["<"]
    index: dict[str, int] = {}
    pos = 0
    for name, ctype, *_bits in mirror._fields_:
        off = getattr(mirror, name).offset
        if off > pos:
            fmt.append(f"{off - pos}x")
        code = _STRUCT_CODES.get(ctype)
        if code is None:  # arrays of bytes / chars
            code = f"{ctypes.sizeof(ctype)}s"
        if name != "pad":
            index[name] = len(index)
            fmt.append(code)
        else:
            fmt.append(f"{ctypes.sizeof(ctype)}x")
        pos = off + ctypes.sizeof(ctype)
    if ctypes.sizeof(mirror) > pos:
        fmt.append(f"{ctypes.sizeof(mirror) - pos}x")
    packed = struct.Struct("".join(fmt))
    assert packed.size == ctypes.sizeof(mirror), mirror
    return packed, index


class _Fields:
    """Field indices of an unpacked record, as attributes (``EV.tgid``)."""

    def __init__(self, index: dict[str, int]) -> None:
        self.__dict__.update(index)

    def __getattr__(self, name: str) -> int:  # for mypy: every field is an int index
        raise AttributeError(name)


MIRRORS: Final[dict[str, type[ctypes.Structure]]] = {
    "flow_key": FlowKeyC,
    "flow_value": FlowValueC,
    "sk_owner": SkOwnerC,
    "listen_key": ListenKeyC,
    "udp_dest": UdpDestC,
    "flow_event": FlowEventC,
    "tcp_health": TcpHealthC,
}


# struct flow_event as one struct.Struct, and its fields' indices
EVENT, _EVENT_INDEX = struct_of(FlowEventC)
EV: Final = _Fields(_EVENT_INDEX)


@dataclass(frozen=True)
class KernelFilter:
    """Filters applied in the kernel (``const volatile``, set before load)."""

    pid: int | None = None
    cgroup_id: int | None = None
    port: int | None = None
    family: int | None = None  # socket.AF_INET / AF_INET6

    def rodata(self) -> dict[str, int]:
        if self.family not in (None, AF_INET, AF_INET6):
            raise ValueError(f"family must be AF_INET or AF_INET6, not {self.family}")
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, not {self.port}")
        return {
            "filter_tgid": self.pid or 0,
            "filter_cgroup": self.cgroup_id or 0,
            "filter_port": self.port or 0,
            "filter_family": self.family or 0,
        }
