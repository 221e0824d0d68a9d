"""Decode raw map keys and values through a type model into JSON-able data.

Structs become dicts, arrays lists, ``char[]`` strings, enums their
enumerator name, and fields that hold addresses (``saddr``, ``daddr6``,
``struct in6_addr``, ``__be32 ip`` ...) dotted or colon notation. Without a
type, bytes become hex.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from typing import Any

from .types import Array, Enum, Float, Int, Opaque, Ptr, Struct, Type, type_name

__all__ = [
    "decode",
    "format_value",
    "hexbytes",
    "looks_like_ip_field",
]

# Field names that hold an address: saddr, daddr, addr, ip, src_ip, dst_addr6,
# saddr_v6, remote_ip4, ... (whole words split on "_").
_IP_NAME = re.compile(
    r"(^|_)(s|d|src|dst|local|remote|peer|client|server|nh|gw)?_?"
    r"(addr|ip|address)(4|6|v4|v6)?($|_)",
    re.IGNORECASE,
)
_IP_TYPES = frozenset({"in_addr", "in6_addr", "in_addr_t"})


def hexbytes(raw: bytes) -> str:
    """``0a 00 00 01`` style, what bpftool prints for untyped maps."""
    return raw.hex(" ")


def looks_like_ip_field(name: str, t: Type) -> int:
    """4 or 6 if a field called ``name`` of type ``t`` is an IP address."""
    size = t.size
    if size not in (4, 16):
        return 0
    tname = t.name if isinstance(t, Struct) else ""
    if tname in _IP_TYPES:
        return 4 if size == 4 else 6
    if not name or not _IP_NAME.search(name):
        return 0
    if isinstance(t, Int) and size == 4:
        return 4
    if isinstance(t, Array) and isinstance(t.elem, Int) and not t.elem.char:
        return 4 if size == 4 else 6
    if isinstance(t, Array) and isinstance(t.elem, Int) and t.elem.char:
        # char addr[16] is usually a string; only call it an address if it
        # is not printable text (checked by the caller on the bytes)
        return -(4 if size == 4 else 6)
    if isinstance(t, Struct) and size in (4, 16):
        return 4 if size == 4 else 6
    return 0


def _printable(raw: bytes) -> bool:
    text = raw.split(b"\0", 1)[0]
    return all(32 <= b < 127 or b in (9, 10) for b in text) and (
        not text or raw[len(text) :].strip(b"\0") == b""
    )


def _ip(raw: bytes, version: int) -> str:
    if version == 4:
        return str(ipaddress.IPv4Address(raw))
    addr = ipaddress.IPv6Address(raw)
    mapped = addr.ipv4_mapped
    return f"::ffff:{mapped}" if mapped is not None else str(addr)


def _int(raw: bytes, t: Int) -> int | bool | str:
    value = int.from_bytes(raw[: t.size], "big" if t.big_endian else "little", signed=t.signed)
    if t.boolean:
        return bool(value)
    return value


def _bits(raw: bytes, offset_bits: int, nbits: int, signed: bool) -> int:
    whole = int.from_bytes(raw, "little")
    value = (whole >> offset_bits) & ((1 << nbits) - 1)
    if signed and value >> (nbits - 1):
        value -= 1 << nbits
    return value


def decode(t: Type, raw: bytes, name: str = "") -> Any:
    """Decode ``raw`` (at least ``t.size`` bytes) as ``t``; ``name`` is the
    field name, used to recognise addresses."""
    size = t.size
    if size and len(raw) < size:
        return hexbytes(raw)
    raw = raw[:size] if size else raw
    ip = looks_like_ip_field(name, t)
    if ip < 0 and not _printable(raw):
        ip = -ip
    if ip > 0:
        return _ip(raw, ip)
    if isinstance(t, Int):
        if t.size not in (1, 2, 4, 8, 16):
            return hexbytes(raw)
        return _int(raw, t)
    if isinstance(t, Enum):
        value = int.from_bytes(raw, "little", signed=t.signed)
        for ename, evalue in t.values:
            if evalue == value:
                return ename
        return value
    if isinstance(t, Float):
        if t.size == 4:
            return struct.unpack("<f", raw)[0]
        if t.size == 8:
            return struct.unpack("<d", raw)[0]
        return hexbytes(raw)
    if isinstance(t, Ptr):
        return hex(int.from_bytes(raw, "little"))
    if isinstance(t, Array):
        elem = t.elem
        if isinstance(elem, Int) and elem.char and elem.size == 1:
            if _printable(raw):
                return raw.split(b"\0", 1)[0].decode("ascii")
            return hexbytes(raw)
        step = elem.size
        if step == 0:
            return []
        return [decode(elem, raw[i * step : (i + 1) * step]) for i in range(t.count)]
    if isinstance(t, Struct):
        out: dict[str, Any] = {}
        for i, m in enumerate(t.members):
            key = m.name or f"(anon{i})"
            if m.bitfield_size:
                signed = isinstance(m.type, Int) and m.type.signed
                out[key] = _bits(raw, m.offset_bits, m.bitfield_size, signed)
                continue
            start = m.offset_bits // 8
            sub = raw[start : start + m.type.size]
            value = decode(m.type, sub, m.name)
            if not m.name and isinstance(value, dict):
                out.update(value)  # anonymous struct/union: flatten like C
            else:
                out[key] = value
        return out
    if isinstance(t, Opaque):
        return hexbytes(raw)
    return hexbytes(raw)  # pragma: no cover - exhaustive above


def format_value(value: Any) -> str:
    """One-line rendering of a decoded value for plain text output."""
    if isinstance(value, dict):
        inner = ", ".join(f"{k}={format_value(v)}" for k, v in value.items())
        return "{" + inner + "}"
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, str):
        return value if value and _SIMPLE.fullmatch(value) else repr(value)
    return str(value)


_SIMPLE = re.compile(r"[\w.:/\- ]*")


def describe(t: Type) -> str:
    """Type name for headers (``struct flow_key``, ``__u64``)."""
    return type_name(t)
