"""Names of BPF program, map, link, attach and perf-event types.

Read from the running kernel's own BTF (``enum bpf_prog_type`` and friends),
never typed by hand, so a type added by a newer kernel shows its real name.
``BPF_PROG_TYPE_RAW_TRACEPOINT`` becomes ``raw_tracepoint`` (bpftool's
spelling); unknown numbers become ``type 42``.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Final

from .. import libbpf as bpf

__all__ = [
    "ENUMS",
    "KernelNames",
    "kernel_names",
]

log = logging.getLogger("bpfscope.introspect")

# which kernel enum, and the prefix its enumerators share
ENUMS: Final[dict[str, tuple[str, str]]] = {
    "prog": ("bpf_prog_type", "BPF_PROG_TYPE_"),
    "map": ("bpf_map_type", "BPF_MAP_TYPE_"),
    "link": ("bpf_link_type", "BPF_LINK_TYPE_"),
    "attach": ("bpf_attach_type", "BPF_"),
    "perf_event": ("bpf_perf_event_type", "BPF_PERF_EVENT_"),
}


@dataclass(frozen=True)
class KernelNames:
    """number -> short name, per enum kind (``prog``, ``map``, ...)."""

    tables: dict[str, dict[int, str]]

    def name(self, kind: str, value: int) -> str:
        return self.tables.get(kind, {}).get(value, f"type {value}")

    def prog_type(self, value: int) -> str:
        return self.name("prog", value)

    def map_type(self, value: int) -> str:
        return self.name("map", value)

    def link_type(self, value: int) -> str:
        return self.name("link", value)

    def attach_type(self, value: int) -> str:
        return self.name("attach", value)

    def perf_event_type(self, value: int) -> str:
        return self.name("perf_event", value)

    def value(self, kind: str, name: str) -> int | None:
        """Reverse lookup: ``value("map", "hash") == 1``."""
        for number, short in self.tables.get(kind, {}).items():
            if short == name:
                return number
        return None

    @classmethod
    def from_enums(cls, enums: dict[str, list[tuple[str, int]]]) -> KernelNames:
        """Build from raw enumerators, keyed like ``ENUMS``."""
        tables: dict[str, dict[int, str]] = {}
        for kind, (_enum, prefix) in ENUMS.items():
            table: dict[int, str] = {}
            for name, value in enums.get(kind, []):
                if not name.startswith(prefix) or name.startswith("__MAX"):
                    continue
                short = name.removeprefix(prefix).lower()
                if short.startswith("__max") or short in ("max_bpf_attach_type",):
                    continue
                table.setdefault(value, short)
            tables[kind] = table
        return cls(tables)


@functools.cache
def kernel_names() -> KernelNames:
    """Names from /sys/kernel/btf/vmlinux (cached); numbers only without BTF."""

    enums: dict[str, list[tuple[str, int]]] = {}
    try:
        btf = bpf.Btf.vmlinux()
    except (bpf.BpfError, bpf.LibbpfUnavailable) as exc:
        log.warning("no kernel BTF, BPF types shown as numbers: %s", exc)
        return KernelNames({})
    try:
        for kind, (enum_name, _prefix) in ENUMS.items():
            tid = btf.find(enum_name, bpf.BTF_KIND_ENUM) or btf.find(enum_name, bpf.BTF_KIND_ENUM64)
            if tid is not None:
                enums[kind] = bpf.btf_enum_values(btf, tid)
    finally:
        btf.close()
    return KernelNames.from_enums(enums)
