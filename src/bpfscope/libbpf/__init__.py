"""ctypes binding over the system ``libbpf.so.1`` (version 1.1 or newer).

One package, one job: turn libbpf's C API into small Python objects that
close deterministically. Nothing else in bpfscope talks to ctypes for BPF.
One module per job:

  ``ffi``         foreign-function signatures and structs; loads the library
  ``errors``      ``BpfError``: errno, libbpf's message and what to do
  ``btf``         BTF type information
  ``programs``    programs and links, and the one attach dispatch
  ``object``      ELF objects: open, set globals, load, close
  ``maps``        map operations and standalone maps
  ``ringbuf``     ring buffer consumer
  ``introspect``  host-wide ids, info, run-time stats, type probes

Ownership rules (why "nothing stays attached"):
  * nothing is pinned, so every program, map and link lives only as long as
    the file descriptors this process holds;
  * the kernel closes those on any exit, SIGKILL included, which detaches
    links and frees programs;
  * ``BpfObject.close()`` (and its context manager) destroys links first,
    then the object, for the orderly paths.

Callers use the names re-exported here (``from bpfscope import libbpf``).
"""

from __future__ import annotations

from .btf import (
    BTF_INT_BOOL,
    BTF_INT_CHAR,
    BTF_INT_SIGNED,
    BTF_KIND_ARRAY,
    BTF_KIND_CONST,
    BTF_KIND_DATASEC,
    BTF_KIND_DECL_TAG,
    BTF_KIND_ENUM,
    BTF_KIND_ENUM64,
    BTF_KIND_FLOAT,
    BTF_KIND_FUNC,
    BTF_KIND_FUNC_PROTO,
    BTF_KIND_FWD,
    BTF_KIND_INT,
    BTF_KIND_PTR,
    BTF_KIND_RESTRICT,
    BTF_KIND_STRUCT,
    BTF_KIND_TYPE_TAG,
    BTF_KIND_TYPEDEF,
    BTF_KIND_UNION,
    BTF_KIND_VAR,
    BTF_KIND_VOLATILE,
    Btf,
    BtfMember,
    btf_array_info,
    btf_by_id,
    btf_enum_values,
    btf_int_encoding,
    btf_ref_type,
    btf_type_count,
)
from .errors import ENOTSUPP, BpfError
from .ffi import (
    MIN_LIBBPF,
    SIGNATURES,
    BpfMapInfoStruct,
    BpfProgInfoStruct,
    LibbpfUnavailable,
    libbpf,
    libbpf_version,
    quiet_libbpf,
)
from .introspect import (
    LinkInfo,
    MapDetails,
    ProgInfo,
    ProgType,
    StatsHandle,
    btf_ids,
    enable_run_time_stats,
    link_fd_by_id,
    link_ids,
    link_info_by_id,
    link_info_with_buffers,
    map_details_from_fd,
    map_fd_by_id,
    map_from_id,
    map_ids,
    probe_map_type,
    probe_prog_type,
    prog_fd_by_id,
    prog_func_type_ids,
    prog_ids,
    prog_info_and_struct_from_fd,
    prog_info_by_id,
    prog_info_struct_by_id,
)
from .maps import (
    BPF_ANY,
    BPF_EXIST,
    BPF_F_NO_PREALLOC,
    BPF_NOEXIST,
    Map,
    MapType,
    create_map,
    have_lookup_and_delete,
    num_possible_cpus,
)
from .object import BpfObject, Globals
from .programs import AttachKind, Link, Program
from .ringbuf import RingBuffer
from .ringbulk import BulkRing, bulk_supported

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_F_NO_PREALLOC",
    "BPF_NOEXIST",
    "BTF_INT_BOOL",
    "BTF_INT_CHAR",
    "BTF_INT_SIGNED",
    "BTF_KIND_ARRAY",
    "BTF_KIND_CONST",
    "BTF_KIND_DATASEC",
    "BTF_KIND_DECL_TAG",
    "BTF_KIND_ENUM",
    "BTF_KIND_ENUM64",
    "BTF_KIND_FLOAT",
    "BTF_KIND_FUNC",
    "BTF_KIND_FUNC_PROTO",
    "BTF_KIND_FWD",
    "BTF_KIND_INT",
    "BTF_KIND_PTR",
    "BTF_KIND_RESTRICT",
    "BTF_KIND_STRUCT",
    "BTF_KIND_TYPEDEF",
    "BTF_KIND_TYPE_TAG",
    "BTF_KIND_UNION",
    "BTF_KIND_VAR",
    "BTF_KIND_VOLATILE",
    "ENOTSUPP",
    "MIN_LIBBPF",
    "SIGNATURES",
    "AttachKind",
    "BpfError",
    "BpfMapInfoStruct",
    "BpfObject",
    "BpfProgInfoStruct",
    "Btf",
    "BtfMember",
    "BulkRing",
    "Globals",
    "LibbpfUnavailable",
    "Link",
    "LinkInfo",
    "Map",
    "MapDetails",
    "MapType",
    "ProgInfo",
    "ProgType",
    "Program",
    "RingBuffer",
    "StatsHandle",
    "btf_array_info",
    "btf_by_id",
    "btf_enum_values",
    "btf_ids",
    "btf_int_encoding",
    "btf_ref_type",
    "btf_type_count",
    "bulk_supported",
    "create_map",
    "enable_run_time_stats",
    "have_lookup_and_delete",
    "libbpf",
    "libbpf_version",
    "link_fd_by_id",
    "link_ids",
    "link_info_by_id",
    "link_info_with_buffers",
    "map_details_from_fd",
    "map_fd_by_id",
    "map_from_id",
    "map_ids",
    "num_possible_cpus",
    "probe_map_type",
    "probe_prog_type",
    "prog_fd_by_id",
    "prog_func_type_ids",
    "prog_ids",
    "prog_info_and_struct_from_fd",
    "prog_info_by_id",
    "prog_info_struct_by_id",
    "quiet_libbpf",
]
