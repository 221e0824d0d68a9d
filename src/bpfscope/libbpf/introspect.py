"""Kernel-wide introspection: object ids, info by fd or id, run-time stats,
and libbpf's type probes.

Everything here works on any program, map or link loaded on the host, not
only on bpfscope's own (listing them needs CAP_SYS_ADMIN).
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from .errors import BpfError, check_ret
from .ffi import BpfMapInfoStruct, BpfProgInfoStruct, libbpf
from .maps import Map

__all__ = [
    "LinkInfo",
    "MapDetails",
    "ProgInfo",
    "ProgType",
    "StatsHandle",
    "btf_ids",
    "enable_run_time_stats",
    "link_fd_by_id",
    "link_ids",
    "link_info_by_id",
    "link_info_with_buffers",
    "map_details_from_fd",
    "map_fd_by_id",
    "map_from_id",
    "map_ids",
    "probe_map_type",
    "probe_prog_type",
    "prog_fd_by_id",
    "prog_func_type_ids",
    "prog_ids",
    "prog_info_and_struct_from_fd",
    "prog_info_by_id",
    "prog_info_from_fd",
    "prog_info_struct_by_id",
]


class ProgType:
    """The ``enum bpf_prog_type`` values bpfscope probes."""

    KPROBE: Final = 2
    TRACEPOINT: Final = 5
    CGROUP_SKB: Final = 8
    RAW_TRACEPOINT: Final = 17
    TRACING: Final = 26


# --------------------------------------------------------------------------
# ids and fds


def _ids(fn: Callable[..., int], what: str) -> Iterator[int]:
    cur = ctypes.c_uint32(0)
    nxt = ctypes.c_uint32(0)
    while True:
        ret = fn(cur, ctypes.byref(nxt))
        if ret == -errno_mod.ENOENT:
            return
        check_ret(ret, what)
        yield nxt.value
        cur.value = nxt.value


def prog_ids() -> Iterator[int]:
    """Ids of every program loaded on the host (needs CAP_SYS_ADMIN)."""
    return _ids(libbpf().bpf_prog_get_next_id, "list BPF programs")


def map_ids() -> Iterator[int]:
    return _ids(libbpf().bpf_map_get_next_id, "list BPF maps")


def link_ids() -> Iterator[int]:
    return _ids(libbpf().bpf_link_get_next_id, "list BPF links")


def btf_ids() -> Iterator[int]:
    return _ids(libbpf().bpf_btf_get_next_id, "list BTF objects")


def _fd_by_id(fn: Callable[[int], int], obj_id: int, what: str) -> int | None:
    fd = int(fn(obj_id))
    if fd == -errno_mod.ENOENT:
        return None
    return check_ret(fd, f"open {what} {obj_id}")


def prog_fd_by_id(prog_id: int) -> int | None:
    """A new fd for program ``prog_id`` (caller closes it); None if it is gone."""
    return _fd_by_id(libbpf().bpf_prog_get_fd_by_id, prog_id, "program")


def map_fd_by_id(map_id: int) -> int | None:
    """A new fd for map ``map_id`` (caller closes it); None if it is gone."""
    return _fd_by_id(libbpf().bpf_map_get_fd_by_id, map_id, "map")


def link_fd_by_id(link_id: int) -> int | None:
    """A new fd for link ``link_id`` (caller closes it); None if it is gone."""
    return _fd_by_id(libbpf().bpf_link_get_fd_by_id, link_id, "link")


def _get_info(fd: int, info: ctypes.Structure, what: str) -> None:
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check_ret(libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), what)


# --------------------------------------------------------------------------
# programs


@dataclass(frozen=True)
class ProgInfo:
    id: int
    type: int
    name: str
    tag: str
    run_time_ns: int
    run_cnt: int
    recursion_misses: int
    verified_insns: int
    jited_prog_len: int
    xlated_prog_len: int
    load_time_ns: int
    created_by_uid: int
    btf_id: int
    map_ids: tuple[int, ...]


def prog_info_from_fd(fd: int) -> ProgInfo:
    info = BpfProgInfoStruct()
    _get_info(fd, info, "get program info")
    map_ids: tuple[int, ...] = ()
    if info.nr_map_ids:
        # Second call with a buffer for the map ids; everything else zeroed.
        ids = (ctypes.c_uint32 * info.nr_map_ids)()
        again = BpfProgInfoStruct(nr_map_ids=info.nr_map_ids, map_ids=ctypes.addressof(ids))
        _get_info(fd, again, "get program map ids")
        map_ids = tuple(ids[: min(again.nr_map_ids, info.nr_map_ids)])
    return ProgInfo(
        id=info.id,
        type=info.type,
        name=info.name.decode(errors="replace"),
        tag=bytes(info.tag).hex(),
        run_time_ns=info.run_time_ns,
        run_cnt=info.run_cnt,
        recursion_misses=info.recursion_misses,
        verified_insns=info.verified_insns,
        jited_prog_len=info.jited_prog_len,
        xlated_prog_len=info.xlated_prog_len,
        load_time_ns=info.load_time,
        created_by_uid=info.created_by_uid,
        btf_id=info.btf_id,
        map_ids=map_ids,
    )


def prog_info_by_id(prog_id: int) -> ProgInfo | None:
    """Info of one program, or None if it went away meanwhile."""
    fd = int(libbpf().bpf_prog_get_fd_by_id(prog_id))
    if fd == -errno_mod.ENOENT:
        return None
    check_ret(fd, f"open program {prog_id}")
    try:
        return prog_info_from_fd(fd)
    finally:
        os.close(fd)


def prog_info_struct_by_id(prog_id: int) -> BpfProgInfoStruct | None:
    """The whole first-call ``struct bpf_prog_info`` (attach_btf_id, ifindex,
    gpl_compatible, ...), or None if the program went away."""
    fd = prog_fd_by_id(prog_id)
    if fd is None:
        return None
    try:
        info = BpfProgInfoStruct()
        _get_info(fd, info, f"get info of program {prog_id}")
        return info
    finally:
        os.close(fd)


def prog_info_and_struct_from_fd(fd: int) -> tuple[ProgInfo, BpfProgInfoStruct]:
    """``ProgInfo`` (with map ids) and the raw first-call struct, one fd."""
    info = BpfProgInfoStruct()
    _get_info(fd, info, "get program info")
    return prog_info_from_fd(fd), info


def prog_func_type_ids(fd: int) -> list[int]:
    """BTF type ids (in the program's ``btf_id`` object) of the program's
    functions, main function first: its full name when ``name`` was cut to
    15 characters. Empty when the program has no BTF func info."""
    first = BpfProgInfoStruct()
    _get_info(fd, first, "get program info")
    count = int(first.nr_func_info)
    if not count or not first.btf_id:
        return []
    rec_size = max(int(first.func_info_rec_size), 8)
    buf = ctypes.create_string_buffer(rec_size * count)
    again = BpfProgInfoStruct(
        nr_func_info=count, func_info_rec_size=rec_size, func_info=ctypes.addressof(buf)
    )
    _get_info(fd, again, "get program func info")
    n = min(int(again.nr_func_info), count)
    # struct bpf_func_info { __u32 insn_off; __u32 type_id; }
    return [struct.unpack_from("=II", buf.raw, i * rec_size)[1] for i in range(n)]


# --------------------------------------------------------------------------
# maps


@dataclass(frozen=True)
class MapDetails:
    """Every field of ``struct bpf_map_info`` that introspection shows."""

    id: int
    type: int
    name: str
    key_size: int
    value_size: int
    max_entries: int
    map_flags: int
    ifindex: int
    btf_id: int
    btf_key_type_id: int
    btf_value_type_id: int
    btf_vmlinux_value_type_id: int
    map_extra: int


def map_details_from_fd(fd: int) -> MapDetails:
    info = BpfMapInfoStruct()
    _get_info(fd, info, "get map info")
    return MapDetails(
        id=info.id,
        type=info.type,
        name=info.name.decode(errors="replace"),
        key_size=info.key_size,
        value_size=info.value_size,
        max_entries=info.max_entries,
        map_flags=info.map_flags,
        ifindex=info.ifindex,
        btf_id=info.btf_id,
        btf_key_type_id=info.btf_key_type_id,
        btf_value_type_id=info.btf_value_type_id,
        btf_vmlinux_value_type_id=info.btf_vmlinux_value_type_id,
        map_extra=info.map_extra,
    )


def map_from_id(map_id: int) -> tuple[Map, MapDetails] | None:
    """Open any loaded map by id as a ``Map`` that owns its fd (close it, or
    use it as a context manager), with its details; None if it is gone."""
    fd = map_fd_by_id(map_id)
    if fd is None:
        return None
    try:
        details = map_details_from_fd(fd)
    except BaseException:
        os.close(fd)
        raise
    m = Map(
        None,
        name=details.name,
        fd=fd,
        map_type=details.type,
        key_size=details.key_size,
        value_size=details.value_size,
        max_entries=details.max_entries,
        owns_fd=True,
    )
    return m, details


# --------------------------------------------------------------------------
# links


@dataclass(frozen=True)
class LinkInfo:
    """``struct bpf_link_info``: the fixed head, plus the raw per-type union
    (offset 16 onwards) for callers that decode a particular link type."""

    id: int
    type: int
    prog_id: int
    raw: bytes


_LINK_INFO_SIZE: Final = 256  # larger than any kernel's bpf_link_info; tail stays zero


def link_info_by_id(link_id: int) -> LinkInfo | None:
    fd = int(libbpf().bpf_link_get_fd_by_id(link_id))
    if fd == -errno_mod.ENOENT:
        return None
    check_ret(fd, f"open link {link_id}")
    try:
        buf = ctypes.create_string_buffer(_LINK_INFO_SIZE)
        size = ctypes.c_uint32(_LINK_INFO_SIZE)
        check_ret(libbpf().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size)), "get link info")
    finally:
        os.close(fd)
    link_type, lid, prog_id = struct.unpack_from("=III", buf.raw)
    return LinkInfo(id=lid, type=link_type, prog_id=prog_id, raw=buf.raw[: size.value])


def link_info_with_buffers(
    link_id: int, buffers: list[tuple[int, int, int]]
) -> tuple[LinkInfo, list[bytes]] | None:
    """``struct bpf_link_info`` with user buffers for its string fields.

    Each of ``buffers`` is (offset of a u64 pointer field, offset of its u32
    length field, buffer size), offsets into ``struct bpf_link_info``. The
    kernel copies e.g. a tracepoint or file name there; the buffers come back
    in order. None if the link went away.
    """
    fd = link_fd_by_id(link_id)
    if fd is None:
        return None
    try:
        req = ctypes.create_string_buffer(_LINK_INFO_SIZE)
        keep = []
        for ptr_off, len_off, size in buffers:
            buf = ctypes.create_string_buffer(size)
            keep.append(buf)
            struct.pack_into("=Q", req, ptr_off, ctypes.addressof(buf))
            struct.pack_into("=I", req, len_off, size)
        size_v = ctypes.c_uint32(_LINK_INFO_SIZE)
        check_ret(
            libbpf().bpf_obj_get_info_by_fd(fd, req, ctypes.byref(size_v)),
            f"get info of link {link_id}",
        )
    finally:
        os.close(fd)
    raw = req.raw[: size_v.value]
    # Do not hand our own buffer addresses back as if they were data.
    patched = bytearray(raw)
    for ptr_off, _len_off, _size in buffers:
        if ptr_off + 8 <= len(patched):
            struct.pack_into("=Q", patched, ptr_off, 0)
    link_type, lid, prog_id = struct.unpack_from("=III", raw)
    info = LinkInfo(id=lid, type=link_type, prog_id=prog_id, raw=bytes(patched))
    return info, [b.raw for b in keep]


# --------------------------------------------------------------------------
# run-time stats and type probes


class StatsHandle:
    """Run-time statistics stay on while this fd is open (any exit closes it)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> StatsHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


BPF_STATS_RUN_TIME: Final = 0


def enable_run_time_stats() -> StatsHandle:
    """Turn on kernel.bpf_stats for as long as the returned handle is open."""
    fd = check_ret(libbpf().bpf_enable_stats(BPF_STATS_RUN_TIME), "enable BPF run-time stats")
    return StatsHandle(fd)


def probe_prog_type(prog_type: int) -> bool:
    """libbpf's own trial load of a trivial program of this type."""
    ret = int(libbpf().libbpf_probe_bpf_prog_type(prog_type, None))
    if ret < 0:
        raise BpfError(f"probe program type {prog_type}", -ret)
    return ret == 1


def probe_map_type(map_type: int) -> bool:
    ret = int(libbpf().libbpf_probe_bpf_map_type(map_type, None))
    if ret < 0:
        raise BpfError(f"probe map type {map_type}", -ret)
    return ret == 1
