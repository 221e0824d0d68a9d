"""Parsing of durations, sizes and listen addresses given on the command line."""

from __future__ import annotations

import ipaddress
import re
from typing import Final

__all__ = ["parse_duration", "parse_listen", "parse_size"]

_DURATION: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.I)


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '12h', '7d' -> seconds (positive)."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r}: use e.g. 30s, 15m, 12h, 7d")
    value = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if value <= 0:
        raise ValueError(f"duration must be positive, not {text!r}")
    return value


def parse_size(text: str) -> int:
    """'512MiB', '2G', '100000' -> bytes (binary units for 'iB')."""
    m = _SIZE.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r}: use e.g. 512MiB, 2GiB")
    unit = (m.group(2) or "").lower()
    base = 1024 if "i" in unit else 1000
    prefix = unit[:1] if unit not in ("", "b") else ""
    factor = base ** " kmgt".index(prefix) if prefix else 1
    value = int(float(m.group(1)) * factor)
    if value <= 0:
        raise ValueError(f"size must be positive, not {text!r}")
    return value


def parse_listen(text: str) -> tuple[str, int]:
    """'127.0.0.1:9464', '[::1]:9464', ':9464' (all addresses), '9464'."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "127.0.0.1", text
    host = host.strip("[]") or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"invalid listen address {text!r}: expected HOST:PORT") from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid port {port} in {text!r}")
    if host != "localhost":
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"invalid listen host {host!r}: use an IP address") from None
    return host, port
