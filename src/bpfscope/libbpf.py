"""ctypes binding over the system ``libbpf.so.1`` (version 1.1 or newer).

One module, one job: turn libbpf's C API into small Python objects that close
deterministically. Every foreign function is declared once in ``SIGNATURES``
with its argument and return types; nothing else in bpfscope talks to ctypes
for BPF.

Ownership rules (why "nothing stays attached"):
  * nothing is pinned, so every program, map and link lives only as long as
    the file descriptors this process holds;
  * the kernel closes those on any exit, SIGKILL included, which detaches
    links and frees programs;
  * ``BpfObject.close()`` (and its context manager) destroys links first,
    then the object, for the orderly paths.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import logging
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .errors import EXIT_FAILURE, EXIT_PRIVILEGES, EXIT_UNSUPPORTED, BpfscopeError

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_NOEXIST",
    "SIGNATURES",
    "BpfError",
    "BpfObject",
    "Btf",
    "BtfMember",
    "LibbpfUnavailable",
    "Link",
    "LinkInfo",
    "Map",
    "MapType",
    "ProgInfo",
    "ProgType",
    "Program",
    "RingBuffer",
    "StatsHandle",
    "btf_by_id",
    "btf_ids",
    "create_map",
    "enable_run_time_stats",
    "libbpf",
    "libbpf_version",
    "link_ids",
    "link_info_by_id",
    "map_ids",
    "num_possible_cpus",
    "probe_map_type",
    "probe_prog_type",
    "prog_ids",
    "prog_info_by_id",
]

log = logging.getLogger("bpfscope.libbpf")

MIN_LIBBPF: Final = (1, 1)

BPF_ANY: Final = 0
BPF_NOEXIST: Final = 1
BPF_EXIST: Final = 2

# Kernel's ENOTSUPP (524) is not in Python's errno table; batch ops use it.
ENOTSUPP: Final = 524


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


class ProgType:
    """The ``enum bpf_prog_type`` values bpfscope probes."""

    KPROBE: Final = 2
    TRACEPOINT: Final = 5
    CGROUP_SKB: Final = 8
    RAW_TRACEPOINT: Final = 17
    TRACING: Final = 26


# --------------------------------------------------------------------------
# errors


_ERRNO_HINTS: Final[dict[int, str]] = {
    errno_mod.EPERM: (
        "run as root, or grant CAP_BPF and CAP_PERFMON (CAP_NET_ADMIN for "
        "network hooks; CAP_SYS_RESOURCE on kernels older than 5.11 that "
        "account BPF memory against RLIMIT_MEMLOCK); `bpfscope doctor` "
        "names what is missing"
    ),
    errno_mod.EACCES: (
        "the verifier rejected the program or the caller lacks privileges; "
        "rerun with -v to see libbpf's log"
    ),
    errno_mod.ENOENT: (
        "the hook does not exist on this kernel (tracepoint, kernel function "
        "or symbol not found); `bpfscope doctor` lists the mechanisms that "
        "work here"
    ),
    errno_mod.ESRCH: (
        "a BTF type or kernel symbol was not found: the kernel needs "
        "CONFIG_DEBUG_INFO_BTF=y, or pass a BTF file with --btf"
    ),
    errno_mod.EOPNOTSUPP: "this kernel does not support the operation",
    ENOTSUPP: "this kernel does not support the operation",
    errno_mod.E2BIG: "the kernel is too old for this program or map layout",
    errno_mod.ENOMEM: (
        "out of memory for BPF maps: raise RLIMIT_MEMLOCK (ulimit -l) or the cgroup memory limit"
    ),
    errno_mod.EBUSY: "the hook is already in use by another exclusive attachment",
}


# libbpf's own error codes (LIBBPF_ERRNO__*): bad ELF, relocation, ...
_LIBBPF_ERRNO_FIRST: Final = 4000
_LIBBPF_ERRNO_LAST: Final = 4100


def _strerror(code: int) -> str:
    if _LIBBPF_ERRNO_FIRST <= code < _LIBBPF_ERRNO_LAST and _lib is not None:
        buf = ctypes.create_string_buffer(256)
        if _lib.libbpf_strerror(code, buf, len(buf)) == 0:
            return buf.value.decode(errors="replace")
    return os.strerror(code)


def _errno_name(code: int) -> str:
    if code == ENOTSUPP:
        return "ENOTSUPP"
    if _LIBBPF_ERRNO_FIRST <= code < _LIBBPF_ERRNO_LAST:
        return f"libbpf error {code}"
    return errno_mod.errorcode.get(code, f"errno {code}")


class BpfError(BpfscopeError, OSError):
    """A libbpf or bpf() failure with errno, libbpf's message and a hint.

    ``libbpf_log`` holds the last lines libbpf printed while the failing call
    ran (its verifier and relocation messages), so that the user sees why.
    """

    def __init__(
        self,
        what: str,
        err: int,
        *,
        hint: str | None = None,
        libbpf_log: list[str] | None = None,
    ) -> None:
        self.what = what
        self.hint = hint if hint is not None else _ERRNO_HINTS.get(err)
        self.libbpf_log = libbpf_log or []
        self.exit_code = EXIT_PRIVILEGES if err == errno_mod.EPERM else EXIT_FAILURE
        super().__init__(err, self._message(err))

    def _message(self, err: int) -> str:
        text = f"{self.what}: {_strerror(err)} ({_errno_name(err)})"
        if self.hint:
            text += f"; {self.hint}"
        return text

    def __str__(self) -> str:
        return str(self.args[1])

    def user_message(self) -> str:
        text = str(self)
        if self.libbpf_log:
            tail = "\n  ".join(self.libbpf_log[-8:])
            text += f"\nlibbpf said:\n  {tail}"
        return text


class LibbpfUnavailable(BpfscopeError, RuntimeError):
    """libbpf.so.1 is missing or too old; says which package provides it."""

    exit_code = EXIT_UNSUPPORTED


# --------------------------------------------------------------------------
# ctypes structures (layouts from libbpf 1.1 headers and the kernel UAPI)


class _OpenOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("object_name", ctypes.c_char_p),
        ("relaxed_maps", ctypes.c_bool),
        ("pin_root_path", ctypes.c_char_p),
        ("_removed_attach_prog_fd", ctypes.c_uint32),
        ("kconfig", ctypes.c_char_p),
        ("btf_custom_path", ctypes.c_char_p),
        ("kernel_log_buf", ctypes.c_char_p),
        ("kernel_log_size", ctypes.c_size_t),
        ("kernel_log_level", ctypes.c_uint32),
    ]


class _UprobeOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ref_ctr_offset", ctypes.c_size_t),
        ("bpf_cookie", ctypes.c_uint64),
        ("retprobe", ctypes.c_bool),
        ("func_name", ctypes.c_char_p),
    ]


class _IterAttachOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("link_info", ctypes.c_void_p),
        ("link_info_len", ctypes.c_uint32),
    ]


class _BatchOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class _RingBufferOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t)]


class BpfProgInfoStruct(ctypes.Structure):
    """``struct bpf_prog_info`` (UAPI); checked against kernel BTF in tests."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("gpl_compatible", ctypes.c_uint32, 1),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("nr_jited_ksyms", ctypes.c_uint32),
        ("nr_jited_func_lens", ctypes.c_uint32),
        ("jited_ksyms", ctypes.c_uint64),
        ("jited_func_lens", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("func_info_rec_size", ctypes.c_uint32),
        ("func_info", ctypes.c_uint64),
        ("nr_func_info", ctypes.c_uint32),
        ("nr_line_info", ctypes.c_uint32),
        ("line_info", ctypes.c_uint64),
        ("jited_line_info", ctypes.c_uint64),
        ("nr_jited_line_info", ctypes.c_uint32),
        ("line_info_rec_size", ctypes.c_uint32),
        ("jited_line_info_rec_size", ctypes.c_uint32),
        ("nr_prog_tags", ctypes.c_uint32),
        ("prog_tags", ctypes.c_uint64),
        ("run_time_ns", ctypes.c_uint64),
        ("run_cnt", ctypes.c_uint64),
        ("recursion_misses", ctypes.c_uint64),
        ("verified_insns", ctypes.c_uint32),
        ("attach_btf_obj_id", ctypes.c_uint32),
        ("attach_btf_id", ctypes.c_uint32),
    ]


class BpfMapInfoStruct(ctypes.Structure):
    """``struct bpf_map_info`` (UAPI, up to ``btf_vmlinux_id``)."""

    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
        ("ifindex", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("netns_dev", ctypes.c_uint64),
        ("netns_ino", ctypes.c_uint64),
        ("btf_id", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_id", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
    ]


class _BtfType(ctypes.Structure):
    # struct btf_type: name_off, info, and a union of size/type.
    _fields_ = [
        ("name_off", ctypes.c_uint32),
        ("info", ctypes.c_uint32),
        ("size_or_type", ctypes.c_uint32),
    ]


class _BtfMemberRaw(ctypes.Structure):
    _fields_ = [
        ("name_off", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("offset", ctypes.c_uint32),
    ]


class _BtfVarSecinfo(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("offset", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
    ]


class _BtfArray(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("index_type", ctypes.c_uint32),
        ("nelems", ctypes.c_uint32),
    ]


# --------------------------------------------------------------------------
# foreign function table

_vp = ctypes.c_void_p
_int = ctypes.c_int
_u32 = ctypes.c_uint32
_cp = ctypes.c_char_p
_sz = ctypes.c_size_t

PRINT_FN = ctypes.CFUNCTYPE(_int, _int, _cp, _vp)
SAMPLE_FN = ctypes.CFUNCTYPE(_int, _vp, _vp, _sz)

# name -> (restype, argtypes). The unit tests compare this table with the
# prototypes in libbpf's headers when they are installed.
SIGNATURES: Final[dict[str, tuple[Any, list[Any]]]] = {
    "libbpf_major_version": (_u32, []),
    "libbpf_minor_version": (_u32, []),
    "libbpf_strerror": (_int, [_int, _cp, _sz]),
    "libbpf_set_print": (_vp, [PRINT_FN]),
    "libbpf_num_possible_cpus": (_int, []),
    "libbpf_probe_bpf_prog_type": (_int, [_int, _vp]),
    "libbpf_probe_bpf_map_type": (_int, [_int, _vp]),
    "bpf_object__open_file": (_vp, [_cp, ctypes.POINTER(_OpenOpts)]),
    "bpf_object__open_mem": (_vp, [_vp, _sz, ctypes.POINTER(_OpenOpts)]),
    "bpf_object__load": (_int, [_vp]),
    "bpf_object__close": (None, [_vp]),
    "bpf_object__name": (_cp, [_vp]),
    "bpf_object__btf": (_vp, [_vp]),
    "bpf_object__next_program": (_vp, [_vp, _vp]),
    "bpf_object__next_map": (_vp, [_vp, _vp]),
    "bpf_program__name": (_cp, [_vp]),
    "bpf_program__section_name": (_cp, [_vp]),
    "bpf_program__autoload": (ctypes.c_bool, [_vp]),
    "bpf_program__set_autoload": (_int, [_vp, ctypes.c_bool]),
    "bpf_program__set_attach_target": (_int, [_vp, _int, _cp]),
    "bpf_program__fd": (_int, [_vp]),
    "bpf_program__type": (_int, [_vp]),
    "bpf_program__attach": (_vp, [_vp]),
    "bpf_program__attach_tracepoint": (_vp, [_vp, _cp, _cp]),
    "bpf_program__attach_raw_tracepoint": (_vp, [_vp, _cp]),
    "bpf_program__attach_trace": (_vp, [_vp]),
    "bpf_program__attach_kprobe": (_vp, [_vp, ctypes.c_bool, _cp]),
    "bpf_program__attach_uprobe_opts": (
        _vp,
        [_vp, ctypes.c_int32, _cp, _sz, ctypes.POINTER(_UprobeOpts)],
    ),
    "bpf_program__attach_cgroup": (_vp, [_vp, _int]),
    "bpf_program__attach_iter": (_vp, [_vp, ctypes.POINTER(_IterAttachOpts)]),
    "bpf_iter_create": (_int, [_int]),
    "bpf_link__destroy": (_int, [_vp]),
    "bpf_link__fd": (_int, [_vp]),
    "bpf_map__name": (_cp, [_vp]),
    "bpf_map__fd": (_int, [_vp]),
    "bpf_map__type": (_int, [_vp]),
    "bpf_map__key_size": (_u32, [_vp]),
    "bpf_map__value_size": (_u32, [_vp]),
    "bpf_map__max_entries": (_u32, [_vp]),
    "bpf_map__set_max_entries": (_int, [_vp, _u32]),
    "bpf_map__initial_value": (_vp, [_vp, ctypes.POINTER(_sz)]),
    "bpf_map__btf_key_type_id": (_u32, [_vp]),
    "bpf_map__btf_value_type_id": (_u32, [_vp]),
    "bpf_map_create": (_int, [_int, _cp, _u32, _u32, _u32, _vp]),
    "bpf_map_lookup_elem": (_int, [_int, _vp, _vp]),
    "bpf_map_update_elem": (_int, [_int, _vp, _vp, ctypes.c_uint64]),
    "bpf_map_delete_elem": (_int, [_int, _vp]),
    "bpf_map_get_next_key": (_int, [_int, _vp, _vp]),
    "bpf_map_lookup_batch": (
        _int,
        [_int, _vp, _vp, _vp, _vp, ctypes.POINTER(_u32), ctypes.POINTER(_BatchOpts)],
    ),
    "bpf_map_lookup_and_delete_batch": (
        _int,
        [_int, _vp, _vp, _vp, _vp, ctypes.POINTER(_u32), ctypes.POINTER(_BatchOpts)],
    ),
    "bpf_enable_stats": (_int, [_int]),
    "bpf_prog_get_next_id": (_int, [_u32, ctypes.POINTER(_u32)]),
    "bpf_map_get_next_id": (_int, [_u32, ctypes.POINTER(_u32)]),
    "bpf_prog_get_fd_by_id": (_int, [_u32]),
    "bpf_map_get_fd_by_id": (_int, [_u32]),
    "bpf_obj_get_info_by_fd": (_int, [_int, _vp, ctypes.POINTER(_u32)]),
    "bpf_link_get_next_id": (_int, [_u32, ctypes.POINTER(_u32)]),
    "bpf_link_get_fd_by_id": (_int, [_u32]),
    "bpf_btf_get_next_id": (_int, [_u32, ctypes.POINTER(_u32)]),
    "btf__load_from_kernel_by_id": (_vp, [_u32]),
    "ring_buffer__new": (_vp, [_int, SAMPLE_FN, _vp, ctypes.POINTER(_RingBufferOpts)]),
    "ring_buffer__poll": (_int, [_vp, _int]),
    "ring_buffer__consume": (_int, [_vp]),
    "ring_buffer__free": (None, [_vp]),
    "ring_buffer__epoll_fd": (_int, [_vp]),
    "btf__load_vmlinux_btf": (_vp, []),
    "btf__parse": (_vp, [_cp, _vp]),
    "btf__free": (None, [_vp]),
    "btf__type_cnt": (_u32, [_vp]),
    "btf__type_by_id": (ctypes.POINTER(_BtfType), [_vp, _u32]),
    "btf__name_by_offset": (_cp, [_vp, _u32]),
    "btf__find_by_name_kind": (ctypes.c_int32, [_vp, _cp, _u32]),
    "btf__resolve_size": (ctypes.c_int64, [_vp, _u32]),
}

_LIBBPF_PACKAGES: Final = (
    "install libbpf 1.1 or newer: `apt install libbpf1` (Debian/Ubuntu), "
    "`dnf install libbpf` (Fedora/RHEL), `apk add libbpf` (Alpine)"
)

_lib_lock = threading.Lock()
_lib: ctypes.CDLL | None = None


def libbpf() -> ctypes.CDLL:
    """Load libbpf.so.1 once, declare every signature, route its log."""
    global _lib
    with _lib_lock:
        if _lib is not None:
            return _lib
        try:
            lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
        except OSError as exc:
            raise LibbpfUnavailable(
                f"cannot load libbpf.so.1 ({exc}); {_LIBBPF_PACKAGES}"
            ) from None
        missing = []
        for name, (restype, argtypes) in SIGNATURES.items():
            try:
                fn = getattr(lib, name)
            except AttributeError:
                missing.append(name)
                continue
            fn.restype = restype
            fn.argtypes = argtypes
        version = (lib.libbpf_major_version(), lib.libbpf_minor_version())
        if version < MIN_LIBBPF or missing:
            raise LibbpfUnavailable(
                f"libbpf {version[0]}.{version[1]} is too old "
                f"(missing: {', '.join(missing) or 'none'}); {_LIBBPF_PACKAGES}"
            )
        _install_print_callback(lib)
        _lib = lib
        return lib


def libbpf_version() -> str:
    lib = libbpf()
    return f"{lib.libbpf_major_version()}.{lib.libbpf_minor_version()}"


def num_possible_cpus() -> int:
    n = int(libbpf().libbpf_num_possible_cpus())
    if n < 0:
        raise BpfError("libbpf_num_possible_cpus", -n)
    return n


# --------------------------------------------------------------------------
# libbpf log -> logging, with a tail kept for error messages

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
# vasprintf sizes the buffer itself: verifier logs are long and their last
# lines carry the error. va_list is passed as a pointer on x86_64 and (by
# reference) on arm64.
_vasprintf = _libc.vasprintf
_vasprintf.restype = _int
_vasprintf.argtypes = [ctypes.POINTER(ctypes.c_void_p), _cp, _vp]
_free = _libc.free
_free.restype = None
_free.argtypes = [_vp]

_LIBBPF_WARN, _LIBBPF_INFO, _LIBBPF_DEBUG = 0, 1, 2
_log_tail: deque[str] = deque(maxlen=40)
_quiet = threading.local()


def _format(fmt: bytes | None, va_list: int | None) -> tuple[str, int]:
    out = ctypes.c_void_p()
    n = _vasprintf(ctypes.byref(out), fmt, va_list)
    if n < 0 or not out.value:
        return "", 0
    try:
        return ctypes.string_at(out.value, n).decode("utf-8", "replace"), int(n)
    finally:
        _free(out)


def _on_libbpf_print(level: int, fmt: bytes | None, va_list: int | None) -> int:
    text, n = _format(fmt, va_list)
    for line in text.rstrip("\n").splitlines():
        _log_tail.append(line)
        if level == _LIBBPF_WARN and not getattr(_quiet, "on", False):
            log.warning("%s", line)
        elif level == _LIBBPF_INFO:
            log.info("%s", line)
        else:
            log.debug("%s", line)
    return n


_print_cb = PRINT_FN(_on_libbpf_print)  # kept alive for the process lifetime


def _install_print_callback(lib: ctypes.CDLL) -> None:
    lib.libbpf_set_print(_print_cb)


class quiet_libbpf:  # noqa: N801 - used like a function: `with quiet_libbpf():`
    """Demote libbpf warnings to debug while probing expected failures."""

    def __enter__(self) -> None:
        self._prev = getattr(_quiet, "on", False)
        _quiet.on = True

    def __exit__(self, *exc: object) -> None:
        _quiet.on = self._prev


def _take_log_tail() -> list[str]:
    lines = list(_log_tail)
    _log_tail.clear()
    return lines


def _errno_from_ptr_call() -> int:
    return ctypes.get_errno() or errno_mod.EINVAL


def _check_ret(ret: int, what: str) -> int:
    """libbpf 1.x returns -errno from int functions."""
    if ret < 0:
        raise BpfError(what, -ret, libbpf_log=_take_log_tail())
    return ret


def _check_ptr(ptr: int | None, what: str, hint: str | None = None) -> int:
    """libbpf 1.x returns NULL and sets errno from pointer functions."""
    if not ptr:
        raise BpfError(what, _errno_from_ptr_call(), hint=hint, libbpf_log=_take_log_tail())
    return ptr


def _call_ptr(fn: Callable[..., int | None], *args: Any) -> int | None:
    ctypes.set_errno(0)
    return fn(*args)


# --------------------------------------------------------------------------
# BTF


@dataclass(frozen=True)
class BtfMember:
    name: str
    type_id: int
    offset_bits: int
    bitfield_size: int


BTF_KIND_INT = 1
BTF_KIND_ARRAY = 3
BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5
BTF_KIND_TYPEDEF = 8
BTF_KIND_VOLATILE = 9
BTF_KIND_CONST = 10
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15


class Btf:
    """Read-only view of a BTF blob (an object's, or the kernel's)."""

    def __init__(self, ptr: int, *, owned: bool) -> None:
        self._ptr: int | None = ptr
        self._owned = owned

    @classmethod
    def vmlinux(cls) -> Btf:
        ptr = _check_ptr(
            _call_ptr(libbpf().btf__load_vmlinux_btf),
            "load kernel BTF",
            hint=_ERRNO_HINTS[errno_mod.ESRCH],
        )
        return cls(ptr, owned=True)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Btf:
        ptr = _check_ptr(
            _call_ptr(libbpf().btf__parse, os.fsencode(path), None),
            f"parse BTF from {path}",
        )
        return cls(ptr, owned=True)

    @property
    def ptr(self) -> int:
        if self._ptr is None:
            raise ValueError("BTF is closed")
        return self._ptr

    def close(self) -> None:
        if self._ptr is not None and self._owned:
            libbpf().btf__free(self._ptr)
        self._ptr = None

    def __enter__(self) -> Btf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def find(self, name: str, kind: int) -> int | None:
        tid = int(libbpf().btf__find_by_name_kind(self.ptr, name.encode(), kind))
        return tid if tid > 0 else None

    def _type(self, type_id: int) -> _BtfType:
        ptr = libbpf().btf__type_by_id(self.ptr, type_id)
        if not ptr:
            raise KeyError(f"BTF type id {type_id} not found")
        btf_type: _BtfType = ptr.contents
        return btf_type

    def kind(self, type_id: int) -> int:
        return (int(self._type(type_id).info) >> 24) & 0x1F

    def vlen(self, type_id: int) -> int:
        return int(self._type(type_id).info) & 0xFFFF

    def name(self, type_id: int) -> str:
        raw = libbpf().btf__name_by_offset(self.ptr, self._type(type_id).name_off)
        return raw.decode() if raw else ""

    def size(self, type_id: int) -> int:
        size = int(libbpf().btf__resolve_size(self.ptr, type_id))
        if size < 0:
            raise BpfError(f"resolve size of BTF type {type_id}", -size)
        return size

    def _trailing(self, type_id: int, item: type[ctypes.Structure]) -> list[Any]:
        base = ctypes.addressof(self._type(type_id)) + ctypes.sizeof(_BtfType)
        count = self.vlen(type_id)
        return list((item * count).from_address(base))

    def skip_modifiers(self, type_id: int) -> int:
        """Follow typedef/const/volatile to the underlying type."""
        while self.kind(type_id) in (BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST):
            type_id = self._type(type_id).size_or_type
        return type_id

    def members(self, type_id: int) -> list[BtfMember]:
        type_id = self.skip_modifiers(type_id)
        if self.kind(type_id) not in (BTF_KIND_STRUCT, BTF_KIND_UNION):
            raise TypeError(f"BTF type {type_id} is not a struct or union")
        kflag = bool(self._type(type_id).info >> 31)
        out = []
        for raw in self._trailing(type_id, _BtfMemberRaw):
            name = libbpf().btf__name_by_offset(self.ptr, raw.name_off)
            if kflag:
                offset, bits = raw.offset & 0xFFFFFF, raw.offset >> 24
            else:
                offset, bits = raw.offset, 0
            out.append(BtfMember((name or b"").decode(), raw.type, offset, bits))
        return out

    def struct_layout(self, name: str) -> tuple[int, dict[str, tuple[int, int]]]:
        """Size of ``struct name`` and each member's (byte offset, byte size)."""
        tid = self.find(name, BTF_KIND_STRUCT)
        if tid is None:
            raise KeyError(f"struct {name} not in BTF")
        fields = {}
        for m in self.members(tid):
            if m.bitfield_size:
                fields[m.name] = (m.offset_bits // 8, -m.bitfield_size)
            else:
                fields[m.name] = (m.offset_bits // 8, self.size(m.type_id))
        return self.size(tid), fields

    def datasec_vars(self, section: str) -> dict[str, tuple[int, int, int]]:
        """Variables of a data section: name -> (offset, size, type id)."""
        tid = self.find(section, BTF_KIND_DATASEC)
        if tid is None:
            return {}
        out = {}
        for info in self._trailing(tid, _BtfVarSecinfo):
            var_type = self._type(info.type)
            out[self.name(info.type)] = (info.offset, info.size, var_type.size_or_type)
        return out

    def int_is_signed(self, type_id: int) -> bool:
        type_id = self.skip_modifiers(type_id)
        if self.kind(type_id) != BTF_KIND_INT:
            return False
        encoding_word = ctypes.c_uint32.from_address(
            ctypes.addressof(self._type(type_id)) + ctypes.sizeof(_BtfType)
        ).value
        return bool((encoding_word >> 24) & 0x1)

    def is_int(self, type_id: int) -> bool:
        return self.kind(self.skip_modifiers(type_id)) == BTF_KIND_INT


# --------------------------------------------------------------------------
# links and programs


class Link:
    """An attachment. Destroying it detaches; so does process exit."""

    def __init__(self, ptr: int, description: str) -> None:
        self._ptr: int | None = ptr
        self.description = description

    @property
    def attached(self) -> bool:
        return self._ptr is not None

    @property
    def fd(self) -> int:
        if self._ptr is None:
            raise ValueError("link destroyed")
        return int(libbpf().bpf_link__fd(self._ptr))

    def run_iter(self) -> bytes:
        """Run an iterator link once: the program visits every element and
        whatever it writes with bpf_seq_write/printf is returned."""
        fd = _check_ret(int(libbpf().bpf_iter_create(self.fd)), f"run {self.description}")
        chunks = []
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    # the kernel pauses an iterator after a million objects
                    # without output; reading again resumes it
                    continue
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(fd)
        return b"".join(chunks)

    def destroy(self) -> None:
        if self._ptr is not None:
            libbpf().bpf_link__destroy(self._ptr)
            self._ptr = None

    def __enter__(self) -> Link:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    def __repr__(self) -> str:
        state = "attached" if self.attached else "destroyed"
        return f"<Link {self.description} {state}>"


class Program:
    """One BPF program of an object. Attach methods return a ``Link`` that
    the owning object also tracks, so closing the object detaches it."""

    def __init__(self, obj: BpfObject, ptr: int) -> None:
        self._obj = obj
        self._ptr = ptr
        self.name: str = libbpf().bpf_program__name(ptr).decode()
        self.section: str = libbpf().bpf_program__section_name(ptr).decode()

    def __repr__(self) -> str:
        return f"<Program {self.name} [{self.section}]>"

    @property
    def autoload(self) -> bool:
        return bool(libbpf().bpf_program__autoload(self._ptr))

    @autoload.setter
    def autoload(self, enabled: bool) -> None:
        _check_ret(
            libbpf().bpf_program__set_autoload(self._ptr, enabled),
            f"set autoload of {self.name}",
        )

    def set_attach_target(self, function: str, target_prog_fd: int = 0) -> None:
        """Retarget an fentry/fexit/tp_btf program before load."""
        _check_ret(
            libbpf().bpf_program__set_attach_target(self._ptr, target_prog_fd, function.encode()),
            f"set attach target of {self.name} to {function}",
        )

    @property
    def fd(self) -> int:
        fd = int(libbpf().bpf_program__fd(self._ptr))
        if fd < 0:
            raise BpfError(f"program {self.name} is not loaded", -fd)
        return fd

    @property
    def prog_type(self) -> int:
        return int(libbpf().bpf_program__type(self._ptr))

    def info(self) -> ProgInfo:
        return _prog_info_from_fd(self.fd)

    def _attach(self, what: str, fn: Callable[..., int | None], *args: Any) -> Link:
        ptr = _check_ptr(_call_ptr(fn, self._ptr, *args), f"attach {self.name} to {what}")
        link = Link(ptr, what)
        self._obj._track(link)
        return link

    def attach(self) -> Link:
        """Attach by section name (``SEC("tracepoint/a/b")`` and the like)."""
        return self._attach(self.section, libbpf().bpf_program__attach)

    def attach_tracepoint(self, category: str, name: str) -> Link:
        return self._attach(
            f"tracepoint {category}:{name}",
            libbpf().bpf_program__attach_tracepoint,
            category.encode(),
            name.encode(),
        )

    def attach_raw_tracepoint(self, name: str) -> Link:
        return self._attach(
            f"raw_tp {name}", libbpf().bpf_program__attach_raw_tracepoint, name.encode()
        )

    def attach_trace(self) -> Link:
        """tp_btf, fentry, fexit and lsm programs (target fixed at load)."""
        return self._attach(self.section, libbpf().bpf_program__attach_trace)

    def attach_kprobe(self, function: str, *, retprobe: bool = False) -> Link:
        kind = "kretprobe" if retprobe else "kprobe"
        return self._attach(
            f"{kind} {function}",
            libbpf().bpf_program__attach_kprobe,
            retprobe,
            function.encode(),
        )

    def attach_uprobe(
        self,
        binary: str,
        function: str | None = None,
        *,
        offset: int = 0,
        pid: int = -1,
        retprobe: bool = False,
    ) -> Link:
        """Attach to ``function`` (resolved by libbpf) or ``offset`` in binary."""
        opts = _UprobeOpts(sz=ctypes.sizeof(_UprobeOpts), retprobe=retprobe)
        if function:
            opts.func_name = function.encode()
        kind = "uretprobe" if retprobe else "uprobe"
        return self._attach(
            f"{kind} {binary}:{function or hex(offset)}",
            libbpf().bpf_program__attach_uprobe_opts,
            pid,
            os.fsencode(binary),
            offset,
            ctypes.byref(opts),
        )

    def attach_cgroup(self, cgroup_fd: int) -> Link:
        return self._attach(
            f"cgroup fd {cgroup_fd}", libbpf().bpf_program__attach_cgroup, cgroup_fd
        )

    def attach_map_iter(self, target: Map) -> Link:
        """An ``iter/bpf_*_map`` program over ``target``'s elements; run it
        with :func:`run_iter`."""
        map_fd = ctypes.c_uint32(target.fd)  # union bpf_iter_link_info: map.map_fd first
        opts = _IterAttachOpts(
            sz=ctypes.sizeof(_IterAttachOpts),
            link_info=ctypes.addressof(map_fd),
            link_info_len=ctypes.sizeof(map_fd),
        )
        return self._attach(
            f"iterator over map {target.name}",
            libbpf().bpf_program__attach_iter,
            ctypes.byref(opts),
        )


# --------------------------------------------------------------------------
# maps


def _round8(n: int) -> int:
    return (n + 7) & ~7


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
        _check_ret(
            libbpf().bpf_map__set_max_entries(self._ptr, n),
            f"set max_entries of {self.name}",
        )

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
        _check_ret(ret, f"lookup in map {self.name}")
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
        return sum(struct.unpack_from("<Q" if _LITTLE else ">Q", s)[0] for s in slots)

    def update(self, key: Any, value: Any, flags: int = BPF_ANY) -> None:
        kbuf = self._key_buf(key)
        raw = bytes(value)
        if len(raw) != self._value_buf_size:
            raise ValueError(
                f"{self.name}: value is {len(raw)} bytes, map wants {self._value_buf_size}"
            )
        vbuf = ctypes.create_string_buffer(raw, len(raw))
        _check_ret(
            libbpf().bpf_map_update_elem(self.fd, kbuf, vbuf, flags),
            f"update map {self.name}",
        )

    def delete(self, key: Any) -> bool:
        ret = libbpf().bpf_map_delete_elem(self.fd, self._key_buf(key))
        if ret == -errno_mod.ENOENT:
            return False
        _check_ret(ret, f"delete from map {self.name}")
        return True

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
            _check_ret(ret, f"iterate keys of map {self.name}")

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
        opts = _BatchOpts(sz=ctypes.sizeof(_BatchOpts))
        stride = self._value_buf_size
        out: list[tuple[bytes, bytes]] = []
        first = True
        while True:
            keys = ctypes.create_string_buffer(self.key_size * chunk)
            values = ctypes.create_string_buffer(stride * chunk)
            count = _u32(chunk)
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
                _check_ret(ret, f"{what} on map {self.name}")
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


class _BatchUnsupported(Exception):
    pass


_LITTLE = struct.pack("=H", 1) == struct.pack("<H", 1)


def create_map(
    map_type: int, key_size: int, value_size: int, max_entries: int, name: str = ""
) -> Map:
    """Create a standalone map (no object); close it with ``Map.close()``."""
    fd = _check_ret(
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


# --------------------------------------------------------------------------
# objects


class Globals:
    """``const volatile`` globals (.rodata) and other data sections of an
    object, located through the object's BTF and written before load."""

    def __init__(self, obj: BpfObject, section: str) -> None:
        self._obj = obj
        self._section = section

    def _map(self) -> Map:
        for m in self._obj.maps.values():
            if m.name.endswith(self._section):
                return m
        raise KeyError(f"object {self._obj.name} has no {self._section} section")

    def names(self) -> list[str]:
        btf = self._obj.btf()
        return list(btf.datasec_vars(self._section)) if btf else []

    def __setitem__(self, name: str, value: int | bytes) -> None:
        if self._obj.loaded and self._section == ".rodata":
            raise RuntimeError(f"{name}: .rodata is frozen once the object is loaded")
        btf = self._obj.btf()
        if btf is None:
            raise RuntimeError(f"object {self._obj.name} has no BTF")
        var = btf.datasec_vars(self._section).get(name)
        if var is None:
            raise KeyError(f"{self._section} of {self._obj.name} has no variable {name!r}")
        offset, size, type_id = var
        if isinstance(value, int):
            signed = btf.int_is_signed(type_id)
            raw = value.to_bytes(size, "little" if _LITTLE else "big", signed=signed)
        else:
            raw = bytes(value)
            if len(raw) > size:
                raise ValueError(f"{name}: {len(raw)} bytes do not fit in {size}")
            raw = raw.ljust(size, b"\0")
        mapped = self._mapped()
        ctypes.memmove(mapped + offset, raw, size)

    def __getitem__(self, name: str) -> bytes:
        btf = self._obj.btf()
        var = btf.datasec_vars(self._section).get(name) if btf else None
        if var is None:
            raise KeyError(name)
        offset, size, _ = var
        if self._obj.loaded:
            raw = self._map().lookup(b"\0\0\0\0")
            if raw is None:
                raise KeyError(name)
            return raw[offset : offset + size]
        return ctypes.string_at(self._mapped() + offset, size)

    def _mapped(self) -> int:
        m = self._map()
        size = _sz(0)
        ptr = libbpf().bpf_map__initial_value(m._ptr, ctypes.byref(size))
        if not ptr:
            raise RuntimeError(f"{self._section} of {self._obj.name} is not mmapable")
        return int(ptr)


class BpfObject:
    """An ELF BPF object: open, configure, load, attach, close.

    Use as a context manager; ``close()`` destroys every link this object
    made, then frees programs and maps.
    """

    def __init__(self, ptr: int, name: str) -> None:
        self._ptr: int | None = ptr
        self.name = name
        self.loaded = False
        self._links: list[Link] = []
        self._btf: Btf | None = None
        lib = libbpf()
        self.programs: dict[str, Program] = {}
        prog = lib.bpf_object__next_program(ptr, None)
        while prog:
            p = Program(self, prog)
            self.programs[p.name] = p
            prog = lib.bpf_object__next_program(ptr, prog)
        self.maps: dict[str, Map] = {}
        m = lib.bpf_object__next_map(ptr, None)
        while m:
            name_raw = lib.bpf_map__name(m).decode()
            self.maps[name_raw] = Map(m, name=name_raw)
            m = lib.bpf_object__next_map(ptr, m)
        self.rodata = Globals(self, ".rodata")
        self.bss = Globals(self, ".bss")

    @staticmethod
    def _opts(name: str, btf_path: str | os.PathLike[str] | None) -> _OpenOpts:
        opts = _OpenOpts(sz=ctypes.sizeof(_OpenOpts), object_name=name.encode())
        if btf_path is not None:
            opts.btf_custom_path = os.fsencode(btf_path)
        return opts

    @classmethod
    def open_file(
        cls,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        btf_path: str | os.PathLike[str] | None = None,
    ) -> BpfObject:
        path = Path(path)
        name = name or path.name.split(".")[0]
        opts = cls._opts(name, btf_path)
        ptr = _check_ptr(
            _call_ptr(libbpf().bpf_object__open_file, os.fsencode(path), ctypes.byref(opts)),
            f"open BPF object {path}",
        )
        return cls(ptr, name)

    @classmethod
    def open_bytes(
        cls,
        data: bytes,
        *,
        name: str,
        btf_path: str | os.PathLike[str] | None = None,
    ) -> BpfObject:
        opts = cls._opts(name, btf_path)
        # libbpf copies the ELF image during open, so a temporary buffer is fine.
        buf = ctypes.create_string_buffer(data, len(data))
        ptr = _check_ptr(
            _call_ptr(libbpf().bpf_object__open_mem, buf, len(data), ctypes.byref(opts)),
            f"open BPF object {name}",
        )
        return cls(ptr, name)

    def __repr__(self) -> str:
        return f"<BpfObject {self.name} loaded={self.loaded}>"

    def btf(self) -> Btf | None:
        if self._btf is None and self._ptr is not None:
            ptr = libbpf().bpf_object__btf(self._ptr)
            self._btf = Btf(ptr, owned=False) if ptr else None
        return self._btf

    def load(self) -> None:
        if self._ptr is None:
            raise ValueError("object is closed")
        _take_log_tail()
        ret = libbpf().bpf_object__load(self._ptr)
        if ret < 0:
            err = -ret
            tail = _take_log_tail()
            raise BpfError(f"load BPF object {self.name}", err, libbpf_log=tail)
        self.loaded = True

    def map(self, name: str) -> Map:
        try:
            return self.maps[name]
        except KeyError:
            raise KeyError(f"object {self.name} has no map {name!r}") from None

    def program(self, name: str) -> Program:
        try:
            return self.programs[name]
        except KeyError:
            raise KeyError(f"object {self.name} has no program {name!r}") from None

    def _track(self, link: Link) -> None:
        self._links.append(link)

    @property
    def links(self) -> list[Link]:
        return [link for link in self._links if link.attached]

    def detach_all(self) -> None:
        for link in reversed(self._links):
            link.destroy()
        self._links.clear()

    def close(self) -> None:
        self.detach_all()
        if self._ptr is not None:
            libbpf().bpf_object__close(self._ptr)
            self._ptr = None
            self._btf = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------
# ring buffer


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
        opts = _RingBufferOpts(sz=ctypes.sizeof(_RingBufferOpts))
        self._ptr: int | None = _check_ptr(
            _call_ptr(
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
        return _check_ret(ret, what)

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


# --------------------------------------------------------------------------
# kernel-wide: ids, info, stats, probes


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


def _get_info(fd: int, info: ctypes.Structure, what: str) -> None:
    size = _u32(ctypes.sizeof(info))
    _check_ret(libbpf().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), what)


def _prog_info_from_fd(fd: int) -> ProgInfo:
    info = BpfProgInfoStruct()
    _get_info(fd, info, "get program info")
    map_ids: tuple[int, ...] = ()
    if info.nr_map_ids:
        # Second call with a buffer for the map ids; everything else zeroed.
        ids = (_u32 * info.nr_map_ids)()
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


def _ids(fn: Callable[..., int], what: str) -> Iterator[int]:
    cur = _u32(0)
    nxt = _u32(0)
    while True:
        ret = fn(cur, ctypes.byref(nxt))
        if ret == -errno_mod.ENOENT:
            return
        _check_ret(ret, what)
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
    _check_ret(fd, f"open link {link_id}")
    try:
        buf = ctypes.create_string_buffer(_LINK_INFO_SIZE)
        size = _u32(_LINK_INFO_SIZE)
        _check_ret(libbpf().bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size)), "get link info")
    finally:
        os.close(fd)
    link_type, lid, prog_id = struct.unpack_from("=III", buf.raw)
    return LinkInfo(id=lid, type=link_type, prog_id=prog_id, raw=buf.raw[: size.value])


def btf_by_id(btf_id: int) -> Btf:
    """A kernel-loaded BTF object (a program's or map's) by id."""
    ptr = _check_ptr(
        _call_ptr(libbpf().btf__load_from_kernel_by_id, btf_id), f"load BTF object {btf_id}"
    )
    return Btf(ptr, owned=True)


def prog_info_by_id(prog_id: int) -> ProgInfo | None:
    """Info of one program, or None if it went away meanwhile."""
    fd = int(libbpf().bpf_prog_get_fd_by_id(prog_id))
    if fd == -errno_mod.ENOENT:
        return None
    _check_ret(fd, f"open program {prog_id}")
    try:
        return _prog_info_from_fd(fd)
    finally:
        os.close(fd)


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
    fd = _check_ret(libbpf().bpf_enable_stats(BPF_STATS_RUN_TIME), "enable BPF run-time stats")
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


# ==========================================================================
# Introspection additions (issue 7, `bpfscope progs|maps|links`).
# Additive only: nothing above depends on this section.

__all__ += [
    "BTF_KIND_ENUM",
    "BTF_KIND_ENUM64",
    "BTF_KIND_FLOAT",
    "BTF_KIND_FWD",
    "BTF_KIND_PTR",
    "MapDetails",
    "btf_array_info",
    "btf_enum_values",
    "btf_int_encoding",
    "btf_ref_type",
    "btf_type_count",
    "link_fd_by_id",
    "link_info_with_buffers",
    "map_details_from_fd",
    "map_fd_by_id",
    "map_from_id",
    "prog_fd_by_id",
    "prog_func_type_ids",
    "prog_info_and_struct_from_fd",
    "prog_info_struct_by_id",
]

BTF_KIND_PTR: Final = 2
BTF_KIND_ENUM: Final = 6
BTF_KIND_FWD: Final = 7
BTF_KIND_RESTRICT: Final = 11
BTF_KIND_FUNC: Final = 12
BTF_KIND_FUNC_PROTO: Final = 13
BTF_KIND_FLOAT: Final = 16
BTF_KIND_DECL_TAG: Final = 17
BTF_KIND_TYPE_TAG: Final = 18
BTF_KIND_ENUM64: Final = 19

# BTF_INT_ENCODING bits
BTF_INT_SIGNED: Final = 1
BTF_INT_CHAR: Final = 2
BTF_INT_BOOL: Final = 4


class _BtfEnumRaw(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("val", ctypes.c_int32)]


class _BtfEnum64Raw(ctypes.Structure):
    _fields_ = [
        ("name_off", ctypes.c_uint32),
        ("val_lo32", ctypes.c_uint32),
        ("val_hi32", ctypes.c_uint32),
    ]


def btf_type_count(btf: Btf) -> int:
    """Number of type ids in ``btf`` (ids run from 1 to count - 1)."""
    return int(libbpf().btf__type_cnt(btf.ptr))


def btf_ref_type(btf: Btf, type_id: int) -> int:
    """The type a PTR/TYPEDEF/CONST/VOLATILE/RESTRICT/TYPE_TAG/VAR refers to."""
    return int(btf._type(type_id).size_or_type)


def btf_array_info(btf: Btf, type_id: int) -> tuple[int, int]:
    """(element type id, number of elements) of a BTF_KIND_ARRAY."""
    if btf.kind(type_id) != BTF_KIND_ARRAY:
        raise TypeError(f"BTF type {type_id} is not an array")
    arr = _BtfArray.from_address(ctypes.addressof(btf._type(type_id)) + ctypes.sizeof(_BtfType))
    return int(arr.type), int(arr.nelems)


def btf_int_encoding(btf: Btf, type_id: int) -> tuple[int, int, int]:
    """(encoding bits BTF_INT_*, bit offset, bit count) of a BTF_KIND_INT."""
    if btf.kind(type_id) != BTF_KIND_INT:
        raise TypeError(f"BTF type {type_id} is not an int")
    word = ctypes.c_uint32.from_address(
        ctypes.addressof(btf._type(type_id)) + ctypes.sizeof(_BtfType)
    ).value
    return (word >> 24) & 0x0F, (word >> 16) & 0xFF, word & 0xFF


def btf_enum_values(btf: Btf, type_id: int) -> list[tuple[str, int]]:
    """Enumerators (name, value) of a BTF_KIND_ENUM or BTF_KIND_ENUM64."""
    kind = btf.kind(type_id)
    signed = bool(btf._type(type_id).info >> 31)
    lib = libbpf()
    out: list[tuple[str, int]] = []
    if kind == BTF_KIND_ENUM:
        for raw in btf._trailing(type_id, _BtfEnumRaw):
            value = int(raw.val) if signed else int(raw.val) & 0xFFFFFFFF
            out.append(((lib.btf__name_by_offset(btf.ptr, raw.name_off) or b"").decode(), value))
    elif kind == BTF_KIND_ENUM64:
        for raw64 in btf._trailing(type_id, _BtfEnum64Raw):
            value = (int(raw64.val_hi32) << 32) | int(raw64.val_lo32)
            if signed and value >= 1 << 63:
                value -= 1 << 64
            name = (lib.btf__name_by_offset(btf.ptr, raw64.name_off) or b"").decode()
            out.append((name, value))
    else:
        raise TypeError(f"BTF type {type_id} is not an enum")
    return out


def _fd_by_id(fn: Callable[[int], int], obj_id: int, what: str) -> int | None:
    fd = int(fn(obj_id))
    if fd == -errno_mod.ENOENT:
        return None
    return _check_ret(fd, f"open {what} {obj_id}")


def prog_fd_by_id(prog_id: int) -> int | None:
    """A new fd for program ``prog_id`` (caller closes it); None if it is gone."""
    return _fd_by_id(libbpf().bpf_prog_get_fd_by_id, prog_id, "program")


def map_fd_by_id(map_id: int) -> int | None:
    """A new fd for map ``map_id`` (caller closes it); None if it is gone."""
    return _fd_by_id(libbpf().bpf_map_get_fd_by_id, map_id, "map")


def link_fd_by_id(link_id: int) -> int | None:
    """A new fd for link ``link_id`` (caller closes it); None if it is gone."""
    return _fd_by_id(libbpf().bpf_link_get_fd_by_id, link_id, "link")


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
    return _prog_info_from_fd(fd), info


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
        size_v = _u32(_LINK_INFO_SIZE)
        _check_ret(
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
