"""Bulk ring buffer reader: every committed record in one pass, no callback.

libbpf's consumer calls back once per record; through ctypes that is a
Python call per kernel event, too slow at tens of thousands of events per
second. This reader maps the ring itself (the layout libbpf and the kernel
share: one read-write page holding the consumer position, then a read-only
page holding the producer position followed by the data pages, mapped twice
so a record that wraps is contiguous) and returns the payloads of all
committed records as one ``bytes`` per pass, for the caller to decode in
bulk (``struct.iter_unpack``).

Ordering: the reader loads the producer position, then each record's header,
and copies a record's payload only after its header said it is committed.
x86-64 keeps loads in program order, which is all this needs; other
architectures need barriers Python cannot issue, so there
:func:`bulk_supported` is false and callers use :class:`RingBuffer`.
"""

from __future__ import annotations

import mmap
import platform
import select
import struct
from typing import Final

from .maps import Map, MapType

__all__ = ["BulkRing", "bulk_supported"]

_BUSY: Final = 1 << 31
_DISCARD: Final = 1 << 30
_HDR: Final = 8
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")


def bulk_supported() -> bool:
    """Whether this CPU orders loads as the reader needs (x86-64)."""
    return platform.machine() in ("x86_64", "AMD64")


class BulkRing:
    """Read a BPF_MAP_TYPE_RINGBUF map's committed records in batches."""

    def __init__(self, ring: Map) -> None:
        if ring.map_type != MapType.RINGBUF:
            raise ValueError(f"map {ring.name} is not a ring buffer")
        self.map = ring
        self.size = ring.max_entries  # data bytes, a power of two pages
        self._mask = self.size - 1
        page = mmap.PAGESIZE
        fd = ring.fd
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            self._prod = mmap.mmap(
                fd, page + 2 * self.size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page
            )
        except BaseException:
            self._cons.close()
            raise
        self._data = page  # data pages start after the producer page
        self._epoll = select.epoll()
        self._epoll.register(fd, select.EPOLLIN)
        self.records = 0  # committed records read (discarded ones included)
        self.bytes_read = 0

    def pending(self) -> int:
        """Bytes between the consumer and the producer (committed or not)."""
        return int(_U64.unpack_from(self._prod, 0)[0] - _U64.unpack_from(self._cons, 0)[0])

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the kernel's wake-up; True if
        woken (records may be waiting)."""
        return bool(self._epoll.poll(timeout))

    def read(self, max_bytes: int | None = None) -> tuple[bytes, int]:
        """Every committed record's payload, concatenated, and how many there
        were. Stops at the first record still being written (the next read
        takes it) or after ``max_bytes`` of ring space."""
        prod_mm, data = self._prod, self._data
        cons = _U64.unpack_from(self._cons, 0)[0]
        prod = _U64.unpack_from(prod_mm, 0)[0]
        if max_bytes is not None:
            prod = min(prod, cons + max_bytes)
        mask = self._mask
        parts: list[bytes] = []
        n = 0
        start = cons
        while cons < prod:
            off = data + (cons & mask)
            length = _U32.unpack_from(prod_mm, off)[0]
            if length & _BUSY:
                break
            payload = length & ~_DISCARD
            if not length & _DISCARD:
                # the data pages are mapped twice: a wrapping record is contiguous
                parts.append(prod_mm[off + _HDR : off + _HDR + payload])
            n += 1
            cons += (payload + _HDR + 7) & ~7
        if cons != start:
            # release the space to the producer
            self._cons[0:8] = _U64.pack(cons)
            self.records += n
            self.bytes_read += cons - start
        return b"".join(parts), len(parts)

    def close(self) -> None:
        if not self._cons.closed:
            self._epoll.close()
            self._prod.close()
            self._cons.close()

    def __enter__(self) -> BulkRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
