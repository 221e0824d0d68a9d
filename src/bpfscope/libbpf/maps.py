"""Maps: lookups, updates, deletes and batch drains; standalone maps.

Keys and values cross as ``bytes``. Per-CPU maps hold one value slot per
possible CPU, each rounded up to 8 bytes, as the kernel copies them.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import struct
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Final

from .errors import ENOTSUPP, BpfError, check_ret
from .ffi import BatchOpts, libbpf

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_F_NO_PREALLOC",
    "BPF_NOEXIST",
    "Map",
    "MapType",
    "create_map",
    "have_lookup_and_delete",
    "num_possible_cpus",
]

BPF_F_NO_PREALLOC: Final = 1 << 0  # map_flags: allocate elements on update
BPF_ANY: Final = 0
BPF_NOEXIST: Final = 1
BPF_EXIST: Final = 2

_U64: Final = "<Q" if sys.byteorder == "little" else ">Q"


class MapType:
    """The ``enum bpf_map_type`` values bpfscope uses."""

    HASH: Final = 1
    ARRAY: Final = 2
    PERF_EVENT_ARRAY: Final = 4
    PERCPU_HASH: Final = 5
    PERCPU_ARRAY: Final = 6
    LRU_HASH: Final = 9
    LRU_PERCPU_HASH: Final = 10
    RINGBUF: Final = 27

    PERCPU: Final = frozenset({PERCPU_HASH, PERCPU_ARRAY, LRU_PERCPU_HASH})


def num_possible_cpus() -> int:
    n = int(libbpf().libbpf_num_possible_cpus())
    if n < 0:
        raise BpfError("libbpf_num_possible_cpus", -n)
    return n


def _round8(n: int) -> int:
    return (n + 7) & ~7


class _BatchUnsupported(Exception):
    pass


class Map:
    """A BPF map. Keys and values are ``bytes`` (or anything ``bytes()``
    accepts, such as a ctypes Structure); per-CPU values come back per CPU or
    summed."""

    def __init__(
        self,
        ptr: int | None,
        *,
        name: str,
        fd: int | None = None,
        map_type: int | None = None,
        key_size: int | None = None,
        value_size: int | None = None,
        max_entries: int | None = None,
        owns_fd: bool = False,
    ) -> None:
        self._ptr = ptr
        self.name = name
        self._fd = fd
        self._owns_fd = owns_fd
        lib = libbpf()
        self.map_type = map_type if map_type is not None else int(lib.bpf_map__type(ptr))
        self.key_size = key_size if key_size is not None else int(lib.bpf_map__key_size(ptr))
        self.value_size = (
            value_size if value_size is not None else int(lib.bpf_map__value_size(ptr))
        )
        self._max_entries = max_entries
        # Set to False the first time the kernel refuses batch ops on this map.
        self.batch_supported: bool | None = None

    def __repr__(self) -> str:
        return f"<Map {self.name} type={self.map_type} key={self.key_size} value={self.value_size}>"

    @property
    def fd(self) -> int:
        if self._fd is not None:
            return self._fd
        fd = int(libbpf().bpf_map__fd(self._ptr))
        if fd < 0:
            raise BpfError(f"map {self.name} is not created", -fd)
        return fd

    @property
    def max_entries(self) -> int:
        if self._ptr is not None:
            return int(libbpf().bpf_map__max_entries(self._ptr))
        return self._max_entries or 0

    @max_entries.setter
    def max_entries(self, n: int) -> None:
        if self._ptr is None:
            raise ValueError("max_entries can only be set on a map of an unloaded object")
        check_ret(
            libbpf().bpf_map__set_max_entries(self._ptr, n),
            f"set max_entries of {self.name}",
        )

    @property
    def map_flags(self) -> int:
        if self._ptr is None:
            raise ValueError("map_flags are known only for a map of an object")
        return int(libbpf().bpf_map__map_flags(self._ptr))

    @map_flags.setter
    def map_flags(self, flags: int) -> None:
        if self._ptr is None:
            raise ValueError("map_flags can only be set on a map of an unloaded object")
        check_ret(
            libbpf().bpf_map__set_map_flags(self._ptr, flags),
            f"set map_flags of {self.name}",
        )

    def initial_value_address(self) -> int | None:
        """Address of the memory-mapped contents of a data-section map of an
        object (``.rodata``, ``.bss``), or None where it is not mmapable."""
        if self._ptr is None:
            return None
        size = ctypes.c_size_t(0)
        ptr = libbpf().bpf_map__initial_value(self._ptr, ctypes.byref(size))
        return int(ptr) if ptr else None

    def close(self) -> None:
        """Close the fd of a standalone map (object maps close with their object)."""
        if self._owns_fd and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Map:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def percpu(self) -> bool:
        return self.map_type in MapType.PERCPU

    @property
    def _value_stride(self) -> int:
        return _round8(self.value_size) if self.percpu else self.value_size

    @property
    def _value_buf_size(self) -> int:
        return self._value_stride * (num_possible_cpus() if self.percpu else 1)

    def _key_buf(self, key: Any) -> ctypes.Array[ctypes.c_char]:
        raw = bytes(key)
        if len(raw) != self.key_size:
            raise ValueError(f"{self.name}: key is {len(raw)} bytes, map wants {self.key_size}")
        return ctypes.create_string_buffer(raw, len(raw))

    def lookup(self, key: Any) -> bytes | None:
        """Raw value (all CPUs' slots concatenated for per-CPU maps)."""
        kbuf = self._key_buf(key)
        vbuf = ctypes.create_string_buffer(self._value_buf_size)
        ret = libbpf().bpf_map_lookup_elem(self.fd, kbuf, vbuf)
        if ret == -errno_mod.ENOENT:
            return None
        check_ret(ret, f"lookup in map {self.name}")
        return vbuf.raw

    def lookup_percpu(self, key: Any) -> list[bytes] | None:
        raw = self.lookup(key)
        if raw is None:
            return None
        return self.split_percpu(raw)

    def split_percpu(self, raw: bytes) -> list[bytes]:
        stride = self._value_stride
        return [raw[i : i + self.value_size] for i in range(0, len(raw), stride)]

    def sum_percpu_u64(self, key: Any) -> int:
        """Sum a per-CPU (or plain) u64 counter; missing key counts as 0."""
        raw = self.lookup(key)
        if raw is None:
            return 0
        slots = self.split_percpu(raw) if self.percpu else [raw]
        return sum(struct.unpack_from(_U64, s)[0] for s in slots)

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        kbuf = self._key_buf(key)
        raw = bytes(value)
        if len(raw) != self._value_buf_size:
            raise ValueError(
                f"{self.name}: value is {len(raw)} bytes, map wants {self._value_buf_size}"
            )
        vbuf = ctypes.create_string_buffer(raw, len(raw))
        check_ret(
            libbpf().bpf_map_update_elem(self.fd, kbuf, vbuf, flags),
            f"update map {self.name}",
        )

    def delete(self, key: Any) -> bool:
        ret = libbpf().bpf_map_delete_elem(self.fd, self._key_buf(key))
        if ret == -errno_mod.ENOENT:
            return False
        check_ret(ret, f"delete from map {self.name}")
        return True

    def delete_batch(self, keys: list[bytes]) -> int:
        """Delete ``keys`` in as few calls as the kernel allows
        (BPF_MAP_DELETE_BATCH; per key where it has none). Keys already gone
        are skipped. Returns how many were deleted."""
        if not keys:
            return 0
        if self.batch_supported is False:
            return sum(self.delete(k) for k in keys)
        size = self.key_size
        buf = ctypes.create_string_buffer(b"".join(keys), size * len(keys))
        opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
        start, deleted = 0, 0
        while start < len(keys):
            count = ctypes.c_uint32(len(keys) - start)
            ret = libbpf().bpf_map_delete_batch(
                self.fd, ctypes.byref(buf, start * size), ctypes.byref(count), ctypes.byref(opts)
            )
            deleted += count.value
            if ret >= 0:
                break
            if -ret in (errno_mod.EINVAL, errno_mod.EOPNOTSUPP, ENOTSUPP) and start == 0:
                self.batch_supported = False
                return deleted + sum(self.delete(k) for k in keys[count.value :])
            if -ret != errno_mod.ENOENT:
                check_ret(ret, f"delete batch on map {self.name}")
            start += count.value + 1  # that key was gone already: skip it
        return deleted

    def lookup_and_delete(self, key: Any) -> bytes | None:
        """Read and delete one entry in one step (BPF_MAP_LOOKUP_AND_DELETE_ELEM):
        the value returned is the value deleted; None if the key is absent.

        Hash maps need Linux 5.14+; older kernels refuse (BpfError with
        EINVAL or ENOTSUPP): see :meth:`take`.
        A program that looked the entry up just before the delete may still
        add to it after the copy (programs update values in place): that
        window is one program run, not a user-space round trip.
        """
        kbuf = self._key_buf(key)
        vbuf = ctypes.create_string_buffer(self._value_buf_size)
        ret = libbpf().bpf_map_lookup_and_delete_elem(self.fd, kbuf, vbuf)
        if ret == -errno_mod.ENOENT:
            return None
        check_ret(ret, f"lookup-and-delete in map {self.name}")
        return vbuf.raw

    def take(self, key: Any) -> bytes | None:
        """Delete ``key`` and return the value deleted (None if absent): in
        one step where the kernel has lookup-and-delete for hash maps
        (:func:`have_lookup_and_delete`), else read, then deleted, when an
        update landing between the two is lost."""
        if have_lookup_and_delete():
            return self.lookup_and_delete(key)
        value = self.lookup(key)
        if value is not None and not self.delete(key):
            return None  # deleted by someone else meanwhile: not ours to count
        return value

    def keys(self) -> Iterator[bytes]:
        """Iterate keys with get_next_key (entries may change meanwhile)."""
        lib = libbpf()
        cur = ctypes.create_string_buffer(self.key_size)
        nxt = ctypes.create_string_buffer(self.key_size)
        ret = lib.bpf_map_get_next_key(self.fd, None, nxt)
        while ret == 0:
            yield nxt.raw
            ctypes.memmove(cur, nxt, self.key_size)
            ret = lib.bpf_map_get_next_key(self.fd, cur, nxt)
        if ret != -errno_mod.ENOENT:
            check_ret(ret, f"iterate keys of map {self.name}")

    def items_per_key(self) -> list[tuple[bytes, bytes]]:
        """Every entry read one key at a time (the fallback path)."""
        out = []
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:  # deleted between get_next_key and lookup
                out.append((key, value))
        return out

    def lookup_batch(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        """Every entry with BPF_MAP_LOOKUP_BATCH, falling back to per-key."""
        if self.batch_supported is not False:
            try:
                result = self._batch(libbpf().bpf_map_lookup_batch, chunk, "lookup batch")
                self.batch_supported = True
                return result
            except _BatchUnsupported:
                self.batch_supported = False
        return self.items_per_key()

    def lookup_and_delete_batch(self, chunk: int = 4096) -> list[tuple[bytes, bytes]]:
        """Drain the map: batch lookup-and-delete, or per-key lookup + delete.

        The per-key fallback is not atomic: an update landing between the
        lookup and the delete of the same key is lost, which is why the batch
        path is preferred where the kernel has it.
        """
        if self.batch_supported is not False:
            try:
                result = self._batch(
                    libbpf().bpf_map_lookup_and_delete_batch, chunk, "lookup-and-delete batch"
                )
                self.batch_supported = True
                return result
            except _BatchUnsupported:
                self.batch_supported = False
        out = []
        for key in list(self.keys()):
            value = self.lookup(key)
            if value is not None and self.delete(key):
                out.append((key, value))
        return out

    def _batch(self, fn: Callable[..., int], chunk: int, what: str) -> list[tuple[bytes, bytes]]:
        # Hash maps use a 4-byte bucket cursor; arrays use a key-sized one.
        token_size = max(self.key_size, 8)
        in_tok = ctypes.create_string_buffer(token_size)
        out_tok = ctypes.create_string_buffer(token_size)
        opts = BatchOpts(sz=ctypes.sizeof(BatchOpts))
        stride = self._value_buf_size
        out: list[tuple[bytes, bytes]] = []
        first = True
        while True:
            keys = ctypes.create_string_buffer(self.key_size * chunk)
            values = ctypes.create_string_buffer(stride * chunk)
            count = ctypes.c_uint32(chunk)
            ret = fn(
                self.fd,
                None if first else in_tok,
                out_tok,
                keys,
                values,
                ctypes.byref(count),
                ctypes.byref(opts),
            )
            if ret < 0 and -ret == errno_mod.ENOSPC and count.value == 0:
                chunk *= 2  # one bucket holds more entries than the chunk
                continue
            if ret < 0 and -ret in (errno_mod.EINVAL, errno_mod.EOPNOTSUPP, ENOTSUPP) and first:
                raise _BatchUnsupported(-ret)
            if ret < 0 and -ret != errno_mod.ENOENT:
                check_ret(ret, f"{what} on map {self.name}")
            kraw, vraw = keys.raw, values.raw
            for i in range(count.value):
                out.append(
                    (
                        kraw[i * self.key_size : (i + 1) * self.key_size],
                        vraw[i * stride : (i + 1) * stride],
                    )
                )
            if ret < 0:  # ENOENT: that was the last chunk
                return out
            ctypes.memmove(in_tok, out_tok, token_size)
            first = False


_lookup_and_delete_lock = threading.Lock()
_lookup_and_delete: bool | None = None


def have_lookup_and_delete() -> bool:
    """Whether this kernel has BPF_MAP_LOOKUP_AND_DELETE_ELEM for hash and
    LRU hash maps (Linux 5.14+), tried once per process on scratch maps."""
    global _lookup_and_delete
    with _lookup_and_delete_lock:
        if _lookup_and_delete is None:
            _lookup_and_delete = _try_lookup_and_delete()
        return _lookup_and_delete


def _try_lookup_and_delete() -> bool:
    key, value = (1).to_bytes(4, sys.byteorder), (2).to_bytes(8, sys.byteorder)
    for map_type in (MapType.HASH, MapType.LRU_HASH):
        with create_map(map_type, 4, 8, 2, "bpfscope_probe") as m:
            m.update(key, value)
            try:
                taken = m.lookup_and_delete(key)
            except BpfError as exc:
                if exc.errno in (errno_mod.EINVAL, errno_mod.EOPNOTSUPP, ENOTSUPP):
                    return False
                raise
            if taken != value or m.lookup(key) is not None:
                return False
    return True


def create_map(
    map_type: int, key_size: int, value_size: int, max_entries: int, name: str = ""
) -> Map:
    """Create a standalone map (no object); close it with ``Map.close()``."""
    fd = check_ret(
        libbpf().bpf_map_create(
            map_type, name.encode() or None, key_size, value_size, max_entries, None
        ),
        f"create map {name or map_type}",
    )
    return Map(
        None,
        name=name,
        fd=fd,
        map_type=map_type,
        key_size=key_size,
        value_size=value_size,
        max_entries=max_entries,
        owns_fd=True,
    )
