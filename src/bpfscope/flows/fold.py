"""Short TCP connections folded into one record per group.

At churn rates most connections open and close between two polls; kept as
flows of their own (the kernel's table is keyed by the whole 5-tuple) each
costs a record, an update and a deletion in the collector, a row in the
history's open bucket and a lingering entry in the agent's view. The
collector takes them from the kernel table as it first sees them closed and
hands one :class:`FlowRecord` per (process, cgroup, addresses, service
port, direction) and poll instead, the client's ephemeral port 0 and
``folded`` the number of connections in it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

from .records import DIRECTIONS, FlowMeta, FlowRecord, decode_key

__all__ = ["PROTO_AT", "TCP", "VALUE", "fold_closed"]

# struct flow_value, little-endian (BPF is host-endian; x86_64/arm64 here)
VALUE: Final = struct.Struct("<9Q3IBB2x16s")
assert VALUE.size == 104
# struct flow_key offsets (FlowKeyC): the ports, the protocol
LPORT_AT: Final = 48
RPORT_AT: Final = 50
PROTO_AT: Final = 53
TCP: Final = 6
_ACTIVE, _PASSIVE = 1, 2


def group_key(key: bytes, direction: int) -> bytes:
    """The flow key without the client's port: the local port of a
    connection we made, the remote port of one we accepted."""
    if direction == _ACTIVE:
        return key[:LPORT_AT] + b"\0\0" + key[LPORT_AT + 2 :]
    if direction == _PASSIVE:
        return key[:RPORT_AT] + b"\0\0" + key[RPORT_AT + 2 :]
    return key


def fold_closed(
    short: list[tuple[bytes, bytes]],
    new_record: Callable[[FlowMeta, bytes], FlowRecord],
    wall: Callable[[int], float],
    *,
    counters: bool,
    dt: float,
) -> list[FlowRecord]:
    """Fold closed flows (key, value as read) into one record per group."""
    groups: dict[bytes, FlowRecord] = {}
    for key, raw in short:
        v = VALUE.unpack(raw)
        tx, rx, txc, rxc, first_ns, last_ns, open_ns, close_ns, rbytes = v[:9]
        retrans, rst_sent, rst_recv, _state, direction = v[9:14]
        group = group_key(key, direction)
        rec = groups.get(group)
        if rec is None:
            rec = groups[group] = new_record(decode_key(group), raw)
            rec.direction, rec.state = DIRECTIONS.get(direction), "CLOSE"
            rec.first_seen, rec.opened = wall(first_ns), wall(open_ns) if open_ns else None
            rec.tx_calls = rec.rx_calls = 0 if not counters else None
        rec.folded += 1
        rec.tx_bytes += tx
        rec.rx_bytes += rx
        if counters:
            rec.tx_segs = (rec.tx_segs or 0) + txc
            rec.rx_segs = (rec.rx_segs or 0) + rxc
            rec.retrans_bytes = (rec.retrans_bytes or 0) + rbytes
        else:
            rec.tx_calls = (rec.tx_calls or 0) + txc
            rec.rx_calls = (rec.rx_calls or 0) + rxc
        rec.retransmits += retrans
        rec.resets_sent += rst_sent
        rec.resets_received += rst_recv
        rec.first_seen = min(rec.first_seen, wall(first_ns))
        rec.last_seen = max(rec.last_seen, wall(last_ns))
        rec.closed = max(rec.closed or 0.0, wall(close_ns))
        if open_ns:
            ms = max(0, round((close_ns - open_ns) / 1e6))
            rec.folded_durations += 1
            rec.folded_duration_ms_sum += ms
            rec.folded_duration_ms_max = max(rec.folded_duration_ms_max, ms)
    for rec in groups.values():
        # every byte of a folded connection moved since the last poll
        rec.tx_delta, rec.rx_delta = rec.tx_bytes, rec.rx_bytes
        if counters:
            rec.tx_segs_delta, rec.rx_segs_delta = rec.tx_segs or 0, rec.rx_segs or 0
            rec.retrans_bytes_delta = rec.retrans_bytes or 0
        rec.tx_rate, rec.rx_rate = rec.tx_bytes / dt, rec.rx_bytes / dt
    return list(groups.values())
