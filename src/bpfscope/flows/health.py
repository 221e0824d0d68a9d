"""TCP health of a flow: decoding ``struct tcp_health`` and the verdict.

The kernel side reads what ``tcp_info`` reports from each socket, in the
counters iterator each poll and at CLOSE (``flows.bpf.c``, ``read_health``).
The chrono times (busy, receive-window limited, send-buffer limited) come in
jiffies with the running period included, together with the jiffies they were
read at, so fractions are ratios of jiffies and need no HZ:

- live: over the interval since the previous reading of the same flow (the
  first reading: since ESTABLISHED, when that was seen);
- at close: over the lifetime, ESTABLISHED to CLOSE.

Time not in any chrono is time the socket had nothing to send: the
application is the limit (idle). ``limited_by`` is :func:`verdict`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "FRACTIONS",
    "HEALTH_FIELDS",
    "IDLE",
    "LIMITS",
    "Chrono",
    "TcpHealthC",
    "apply_readings",
    "chrono_of",
    "decode",
    "decode_raw",
    "empty",
    "fractions",
    "verdict",
]

HEALTH_F_READ: Final = 0x1
HEALTH_F_START: Final = 0x2
_U32: Final = 0xFFFFFFFF
TCP_INFINITE_SSTHRESH: Final = 0x7FFFFFFF

# verdict -> the fraction behind it, in tie-break order (specific causes first)
LIMITS: Final = {
    "receiver": "rwnd_limited_frac",
    "sndbuf": "sndbuf_limited_frac",
    "network": "network_limited_frac",
    "app": "app_limited_frac",
}
FRACTIONS: Final = tuple(LIMITS.values())
# Every health field of FlowRecord and ConnEvent (same names in JSON and API).
HEALTH_FIELDS: Final = (
    "rtt_us",
    "rtt_var_us",
    "min_rtt_us",
    "cwnd",
    "ssthresh",
    "lost",
    "delivery_rate",
    "rcv_wnd",
    "snd_wnd",
    *FRACTIONS,
    "limited_by",
)


class TcpHealthC(ctypes.Structure):
    """Mirror of ``struct tcp_health``."""

    _fields_ = [
        ("delivery_rate", ctypes.c_uint64),
        ("jiffies", ctypes.c_uint32),
        ("start_jiffies", ctypes.c_uint32),
        ("chrono", ctypes.c_uint32 * 3),
        ("srtt_us", ctypes.c_uint32),
        ("rttvar_us", ctypes.c_uint32),
        ("min_rtt_us", ctypes.c_uint32),
        ("cwnd", ctypes.c_uint32),
        ("ssthresh", ctypes.c_uint32),
        ("lost", ctypes.c_uint32),
        ("rcv_wnd", ctypes.c_uint32),
        ("snd_wnd", ctypes.c_uint32),
        ("mss", ctypes.c_uint32),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 7),
    ]


@dataclass(frozen=True)
class Chrono:
    """One reading of a socket's chrono times (jiffies, 32-bit, wrapping)."""

    jiffies: int
    busy: int
    rwnd: int
    sndbuf: int


def fractions(now: Chrono, before: Chrono) -> dict[str, float] | None:
    """Share of the time between two readings spent in each limit; None when
    no jiffy passed. The four shares add up to 1."""
    elapsed = (now.jiffies - before.jiffies) & _U32
    if elapsed == 0:
        return None
    busy = float(min((now.busy - before.busy) & _U32, elapsed))
    rwnd = float(min((now.rwnd - before.rwnd) & _U32, elapsed))
    sndbuf = float(min((now.sndbuf - before.sndbuf) & _U32, elapsed))
    spent = busy + rwnd + sndbuf
    if spent > elapsed:  # a tick's rounding between chrono switches
        busy, rwnd, sndbuf = (x * elapsed / spent for x in (busy, rwnd, sndbuf))
        spent = elapsed
    return {
        "rwnd_limited_frac": rwnd / elapsed,
        "sndbuf_limited_frac": sndbuf / elapsed,
        "network_limited_frac": busy / elapsed,
        "app_limited_frac": (elapsed - spent) / elapsed,
    }


def verdict(fracs: dict[str, float] | None) -> str | None:
    """The limit that took the largest share of the time; ties go to the
    more specific cause (receiver, sndbuf, network, app). None: no time."""
    if not fracs:
        return None
    best = max(fracs[name] for name in FRACTIONS)
    return next(kind for kind, name in LIMITS.items() if fracs[name] == best)


def empty() -> dict[str, Any]:
    """Every health field unknown (UDP, rungs without iter/tcp)."""
    return dict.fromkeys(HEALTH_FIELDS)


def chrono_of(h: TcpHealthC) -> Chrono:
    return Chrono(h.jiffies, h.chrono[0], h.chrono[1], h.chrono[2])


def decode(h: TcpHealthC, before: Chrono | None = None) -> tuple[dict[str, Any], Chrono | None]:
    """Health fields of one reading, with fractions over the time since
    ``before`` (else since ESTABLISHED, when known), and the chrono reading
    to pass as ``before`` next time. Nothing read: all None."""
    if not h.flags & HEALTH_F_READ:
        return empty(), before
    now = chrono_of(h)
    if before is None and h.flags & HEALTH_F_START:
        before = Chrono(h.start_jiffies, 0, 0, 0)
    fracs = fractions(now, before) if before is not None else None
    out: dict[str, Any] = {
        "rtt_us": h.srtt_us or None,  # 0: no RTT sample yet
        "rtt_var_us": h.rttvar_us if h.srtt_us else None,
        "min_rtt_us": None if h.min_rtt_us == _U32 else h.min_rtt_us,
        "cwnd": h.cwnd,
        "ssthresh": None if h.ssthresh >= TCP_INFINITE_SSTHRESH else h.ssthresh,
        "lost": h.lost,
        "delivery_rate": h.delivery_rate,
        "rcv_wnd": h.rcv_wnd,
        "snd_wnd": h.snd_wnd,
    }
    for name in FRACTIONS:
        out[name] = round(fracs[name], 4) if fracs else None
    out["limited_by"] = verdict(fracs)
    return out, now


# struct tcp_health bytes around `jiffies`: equal before and after means the
# socket changed nothing but the clock, and its chrono ran for no limit
_JIFFIES: Final = slice(TcpHealthC.jiffies.offset, TcpHealthC.jiffies.offset + 4)


def only_time_passed(raw: bytes, prev: bytes) -> bool:
    """Two readings differ in nothing but the jiffies they were taken at:
    no chrono accrued in between, so the whole interval was idle (app)."""
    return raw[_JIFFIES] != prev[_JIFFIES] and (
        raw[: _JIFFIES.start] == prev[: _JIFFIES.start]
        and raw[_JIFFIES.stop :] == prev[_JIFFIES.stop :]
    )


IDLE: Final[dict[str, Any]] = {
    "rwnd_limited_frac": 0.0,
    "sndbuf_limited_frac": 0.0,
    "network_limited_frac": 0.0,
    "app_limited_frac": 1.0,
    "limited_by": "app",
}


def decode_raw(raw: bytes, prev: bytes | None) -> dict[str, Any]:
    """:func:`decode` of a map value, with fractions since the reading ``prev``."""
    before = chrono_of(TcpHealthC.from_buffer_copy(prev)) if prev is not None else None
    return decode(TcpHealthC.from_buffer_copy(raw), before)[0]


def apply_readings(
    record_of: Callable[[bytes], Any],
    last: dict[bytes, bytes],
    readings: list[tuple[bytes, bytes]],
) -> None:
    """Set the health fields of each flow's record (``record_of(key)``, None:
    no record yet) from this poll's readings, with fractions since ``last``
    (the previous poll's readings by key). Per-flow work only where a
    socket changed more than the clock: an idle socket's reading differs
    from the last one in jiffies alone."""
    for key, raw in readings:
        rec = record_of(key)
        if rec is None:
            continue  # its reading stays the start of its first interval
        prev = last.get(key)
        if prev is not None and rec.cwnd is not None:
            if raw == prev:
                continue  # not read again since (closed): keep what it shows
            if only_time_passed(raw, prev):
                if rec.limited_by != "app" or rec.app_limited_frac != 1.0:
                    for name, value in IDLE.items():
                        setattr(rec, name, value)
                continue
        for name, value in decode_raw(raw, prev).items():
            setattr(rec, name, value)
