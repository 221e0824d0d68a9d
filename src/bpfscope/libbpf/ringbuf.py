"""Ring buffer consumer: BPF_MAP_TYPE_RINGBUF records to a Python callback."""

from __future__ import annotations

import ctypes
import errno as errno_mod
from collections.abc import Callable

from .errors import call_ptr, check_ptr, check_ret
from .ffi import SAMPLE_FN, RingBufferOpts, libbpf
from .maps import Map, MapType

__all__ = ["RingBuffer"]


class RingBuffer:
    """Consume a BPF_MAP_TYPE_RINGBUF map with a Python callback.

    The callback gets each record as ``bytes``. An exception in the callback
    stops the current poll and is re-raised from ``poll()``.
    """

    def __init__(self, ring: Map, callback: Callable[[bytes], object]) -> None:
        if ring.map_type != MapType.RINGBUF:
            raise ValueError(f"map {ring.name} is not a ring buffer")
        self.map = ring
        self._callback = callback
        self._error: BaseException | None = None
        self._c_callback = SAMPLE_FN(self._on_sample)
        opts = RingBufferOpts(sz=ctypes.sizeof(RingBufferOpts))
        self._ptr: int | None = check_ptr(
            call_ptr(
                libbpf().ring_buffer__new, ring.fd, self._c_callback, None, ctypes.byref(opts)
            ),
            f"create ring buffer consumer for {ring.name}",
        )

    def _on_sample(self, _ctx: int | None, data: int | None, size: int) -> int:
        try:
            self._callback(ctypes.string_at(data or 0, size))
        except BaseException as exc:  # re-raised in poll(), not swallowed
            self._error = exc
            return -1
        return 0

    def _raise_pending(self, ret: int, what: str) -> int:
        if self._error is not None:
            exc, self._error = self._error, None
            raise exc
        if ret == -errno_mod.EINTR:
            return 0
        return check_ret(ret, what)

    def poll(self, timeout_ms: int = 100) -> int:
        """Wait up to ``timeout_ms`` for records; return how many were handled."""
        if self._ptr is None:
            raise ValueError("ring buffer closed")
        ret = libbpf().ring_buffer__poll(self._ptr, timeout_ms)
        return self._raise_pending(ret, f"poll ring buffer {self.map.name}")

    def consume(self) -> int:
        """Handle every record already in the buffer without waiting."""
        if self._ptr is None:
            raise ValueError("ring buffer closed")
        ret = libbpf().ring_buffer__consume(self._ptr)
        return self._raise_pending(ret, f"consume ring buffer {self.map.name}")

    @property
    def epoll_fd(self) -> int:
        if self._ptr is None:
            raise ValueError("ring buffer closed")
        return int(libbpf().ring_buffer__epoll_fd(self._ptr))

    def close(self) -> None:
        if self._ptr is not None:
            libbpf().ring_buffer__free(self._ptr)
            self._ptr = None

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
