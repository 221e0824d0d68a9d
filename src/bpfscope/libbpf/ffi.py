"""Foreign functions: libbpf's C API as ctypes declarations, loaded once.

Every libbpf function bpfscope calls is declared once in ``SIGNATURES`` with
its argument and return types, and every struct passed across is mirrored
here with the layout of libbpf 1.1's headers and the kernel UAPI. Loading
the library also routes libbpf's own log to ``logging`` (logger
``bpfscope.libbpf``), keeping the last lines for error messages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections import deque
from typing import Any, Final

from ..errors import EXIT_UNSUPPORTED, BpfscopeError

__all__ = [
    "MIN_LIBBPF",
    "PRINT_FN",
    "SAMPLE_FN",
    "SIGNATURES",
    "BatchOpts",
    "BpfMapInfoStruct",
    "BpfProgInfoStruct",
    "BtfType",
    "IterAttachOpts",
    "LibbpfUnavailable",
    "OpenOpts",
    "RingBufferOpts",
    "UprobeOpts",
    "libbpf",
    "libbpf_version",
    "loaded",
    "quiet_libbpf",
    "take_log_tail",
]

log = logging.getLogger("bpfscope.libbpf")

MIN_LIBBPF: Final = (1, 1)


class LibbpfUnavailable(BpfscopeError, RuntimeError):
    """libbpf.so.1 is missing or too old; says which package provides it."""

    exit_code = EXIT_UNSUPPORTED


# --------------------------------------------------------------------------
# structures (layouts from libbpf 1.1 headers and the kernel UAPI)


class OpenOpts(ctypes.Structure):
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


class UprobeOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("ref_ctr_offset", ctypes.c_size_t),
        ("bpf_cookie", ctypes.c_uint64),
        ("retprobe", ctypes.c_bool),
        ("func_name", ctypes.c_char_p),
    ]


class IterAttachOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("link_info", ctypes.c_void_p),
        ("link_info_len", ctypes.c_uint32),
    ]


class BatchOpts(ctypes.Structure):
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class RingBufferOpts(ctypes.Structure):
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


class BtfType(ctypes.Structure):
    """``struct btf_type``: name_off, info, and a union of size/type."""

    _fields_ = [
        ("name_off", ctypes.c_uint32),
        ("info", ctypes.c_uint32),
        ("size_or_type", ctypes.c_uint32),
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
    "bpf_object__open_file": (_vp, [_cp, ctypes.POINTER(OpenOpts)]),
    "bpf_object__open_mem": (_vp, [_vp, _sz, ctypes.POINTER(OpenOpts)]),
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
        [_vp, ctypes.c_int32, _cp, _sz, ctypes.POINTER(UprobeOpts)],
    ),
    "bpf_program__attach_cgroup": (_vp, [_vp, _int]),
    "bpf_program__attach_iter": (_vp, [_vp, ctypes.POINTER(IterAttachOpts)]),
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
    "bpf_map__map_flags": (_u32, [_vp]),
    "bpf_map__set_map_flags": (_int, [_vp, _u32]),
    "bpf_map__initial_value": (_vp, [_vp, ctypes.POINTER(_sz)]),
    "bpf_map__btf_key_type_id": (_u32, [_vp]),
    "bpf_map__btf_value_type_id": (_u32, [_vp]),
    "bpf_map_create": (_int, [_int, _cp, _u32, _u32, _u32, _vp]),
    "bpf_map_lookup_elem": (_int, [_int, _vp, _vp]),
    "bpf_map_update_elem": (_int, [_int, _vp, _vp, ctypes.c_uint64]),
    "bpf_map_delete_elem": (_int, [_int, _vp]),
    "bpf_map_lookup_and_delete_elem": (_int, [_int, _vp, _vp]),
    "bpf_map_get_next_key": (_int, [_int, _vp, _vp]),
    "bpf_map_lookup_batch": (
        _int,
        [_int, _vp, _vp, _vp, _vp, ctypes.POINTER(_u32), ctypes.POINTER(BatchOpts)],
    ),
    "bpf_map_lookup_and_delete_batch": (
        _int,
        [_int, _vp, _vp, _vp, _vp, ctypes.POINTER(_u32), ctypes.POINTER(BatchOpts)],
    ),
    "bpf_map_delete_batch": (
        _int,
        [_int, _vp, ctypes.POINTER(_u32), ctypes.POINTER(BatchOpts)],
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
    "ring_buffer__new": (_vp, [_int, SAMPLE_FN, _vp, ctypes.POINTER(RingBufferOpts)]),
    "ring_buffer__poll": (_int, [_vp, _int]),
    "ring_buffer__consume": (_int, [_vp]),
    "ring_buffer__free": (None, [_vp]),
    "ring_buffer__epoll_fd": (_int, [_vp]),
    "btf__load_vmlinux_btf": (_vp, []),
    "btf__parse": (_vp, [_cp, _vp]),
    "btf__free": (None, [_vp]),
    "btf__type_cnt": (_u32, [_vp]),
    "btf__type_by_id": (ctypes.POINTER(BtfType), [_vp, _u32]),
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
        lib.libbpf_set_print(_print_cb)
        _lib = lib
        return lib


def loaded() -> ctypes.CDLL | None:
    """The library if it is already loaded (error paths must not load it)."""
    return _lib


def libbpf_version() -> str:
    lib = libbpf()
    return f"{lib.libbpf_major_version()}.{lib.libbpf_minor_version()}"


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


class quiet_libbpf:  # noqa: N801 - used like a function: `with quiet_libbpf():`
    """Demote libbpf warnings to debug while probing expected failures."""

    def __enter__(self) -> None:
        self._prev = getattr(_quiet, "on", False)
        _quiet.on = True

    def __exit__(self, *exc: object) -> None:
        _quiet.on = self._prev


def take_log_tail() -> list[str]:
    """libbpf's last lines since the previous call (then forgets them)."""
    lines = list(_log_tail)
    _log_tail.clear()
    return lines
