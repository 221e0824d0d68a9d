"""``bpfscope maps dump ID``: a map's entries, decoded through its BTF.

Keys and values are decoded with the map's own BTF (``btf_key_type_id`` /
``btf_value_type_id``); without BTF they are shown as hex bytes. Per-CPU
maps give one value per possible CPU. Entries are read one key at a time
with ``skip``/``limit`` so that a large map can be paged through.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from .. import libbpf as bpf
from ..errors import EXIT_USAGE, UserError
from .decode import decode, hexbytes
from .inventory import privileged, require_introspection_privileges
from .names import KernelNames, kernel_names
from .types import Type, from_btf, type_name

__all__ = ["DumpResult", "Entry", "MapDecoder", "dump_map"]

# Map types whose entries cannot be listed by key from user space.
NOT_DUMPABLE: Final = frozenset(
    {
        "ringbuf",
        "user_ringbuf",
        "perf_event_array",
        "queue",
        "stack",
        "bloom_filter",
        "struct_ops",
        "arena",
        "sk_storage",
        "inode_storage",
        "task_storage",
        "cgrp_storage",
        "cgroup_storage_deprecated",
        "percpu_cgroup_storage_deprecated",
    }
)
PERCPU: Final = frozenset({"percpu_hash", "percpu_array", "lru_percpu_hash"})


@dataclass
class Entry:
    key: Any
    value: Any  # decoded value, or a list of them (one per CPU)
    key_hex: str
    value_hex: str | list[str]

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value}


@dataclass
class DumpResult:
    map_id: int
    name: str
    type: str
    key_type: str
    value_type: str
    btf: bool
    percpu: bool
    skip: int
    limit: int | None
    entries: list[Entry] = field(default_factory=list)
    more: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.map_id,
            "name": self.name,
            "type": self.type,
            "key_type": self.key_type,
            "value_type": self.value_type,
            "btf": self.btf,
            "percpu": self.percpu,
            "skip": self.skip,
            "limit": self.limit,
            "more": self.more,
            "entries": [e.to_json() for e in self.entries],
        }


class MapDecoder:
    """Decode keys and values of one map: a type model each, or hex."""

    def __init__(self, key: Type | None, value: Type | None, *, percpu: bool) -> None:
        self.key = key
        self.value = value
        self.percpu = percpu

    def key_of(self, raw: bytes) -> Any:
        return hexbytes(raw) if self.key is None else decode(self.key, raw)

    def value_of(self, raw: bytes) -> Any:
        return hexbytes(raw) if self.value is None else decode(self.value, raw)

    def entry(self, key: bytes, value: bytes | list[bytes]) -> Entry:
        if isinstance(value, list):
            return Entry(
                self.key_of(key),
                [self.value_of(v) for v in value],
                hexbytes(key),
                [hexbytes(v) for v in value],
            )
        return Entry(self.key_of(key), self.value_of(value), hexbytes(key), hexbytes(value))


def _model(btf: bpf.Btf | None, type_id: int, size: int) -> Type | None:
    if btf is None or not type_id:
        return None
    try:
        t = from_btf(btf, type_id)
    except (KeyError, TypeError, OSError):
        return None
    return t if t.size == size else None  # a mismatch would decode garbage


def _keys(m: bpf.Map, type_name_: str) -> Iterator[bytes]:
    if type_name_ in ("array", "percpu_array", "prog_array", "cgroup_array", "array_of_maps"):
        # Arrays have every index; get_next_key would give the same order.
        for i in range(m.max_entries):
            yield i.to_bytes(m.key_size, "little")
        return
    yield from m.keys()


def dump_map(
    map_id: int,
    *,
    skip: int = 0,
    limit: int | None = 100,
    names: KernelNames | None = None,
) -> DumpResult:
    """Entries ``skip`` .. ``skip + limit`` of map ``map_id``."""
    require_introspection_privileges()
    names = names or kernel_names()
    opened = privileged(f"open map {map_id}", lambda: bpf.map_from_id(map_id))
    if opened is None:
        raise UserError(f"no BPF map with id {map_id} (see `bpfscope maps`)", EXIT_USAGE)
    m, d = opened
    with m:
        tname = names.map_type(d.type)
        if tname in NOT_DUMPABLE:
            raise UserError(
                f"map {map_id} ({d.name}) is a {tname} map: its entries cannot be "
                "listed by key from user space",
                EXIT_USAGE,
            )
        percpu = tname in PERCPU
        key_t: Type | None = None
        value_t: Type | None = None
        if d.btf_id:
            try:
                with bpf.btf_by_id(d.btf_id) as btf:
                    key_t = _model(btf, d.btf_key_type_id, d.key_size)
                    value_t = _model(btf, d.btf_value_type_id, d.value_size)
            except bpf.BpfError:
                pass  # BTF gone or unreadable: hex it is
        decoder = MapDecoder(key_t, value_t, percpu=percpu)
        result = DumpResult(
            map_id=d.id,
            name=d.name,
            type=tname,
            key_type=type_name(key_t) if key_t else f"{d.key_size} bytes (no BTF)",
            value_type=type_name(value_t) if value_t else f"{d.value_size} bytes (no BTF)",
            btf=bool(key_t or value_t),
            percpu=percpu,
            skip=skip,
            limit=limit,
        )
        index = 0
        for key in _keys(m, tname):
            try:
                raw = m.lookup(key)
            except bpf.BpfError as exc:
                if exc.errno in (errno.ENOENT,):
                    continue
                raise
            if raw is None:
                continue  # deleted between listing and reading
            if index < skip:
                index += 1
                continue
            if limit is not None and len(result.entries) >= limit:
                result.more = True
                break
            value: bytes | list[bytes] = m.split_percpu(raw) if percpu else raw
            result.entries.append(decoder.entry(key, value))
            index += 1
        return result
