"""Decode ``struct bpf_link_info`` per link type into a target description.

The layout comes from the running kernel's BTF (``struct bpf_link_info``),
so fields a newer kernel adds are decoded without code changes. The union
arm is the one named like the link type (``raw_tracepoint``, ``tracing``,
``cgroup``, ``perf_event`` ...); string fields (tracepoint, function and file
names) are fetched with a second ``BPF_OBJ_GET_INFO_BY_FD`` call that gives
the kernel buffers to copy them into.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .. import cgroups, system
from .. import libbpf as bpf
from .decode import decode
from .names import KernelNames, kernel_names
from .types import Int, Struct, from_btf

__all__ = [
    "LinkDecoded",
    "arm_for",
    "decode_link",
    "link_info_model",
    "string_fields",
    "summarize",
]

log = logging.getLogger("bpfscope.introspect")

STRING_BUF: int = 4096

# perf_event link sub-arm per enum bpf_perf_event_type short name
_PERF_ARMS = {
    "uprobe": "uprobe",
    "uretprobe": "uprobe",
    "kprobe": "kprobe",
    "kretprobe": "kprobe",
    "tracepoint": "tracepoint",
    "event": "event",
}


@dataclass(frozen=True)
class LinkDecoded:
    """A link's type-specific fields and a one-line target description."""

    type_name: str
    fields: dict[str, Any]
    target: str
    attach_type: str | None


@functools.cache
def link_info_model() -> Struct | None:
    """``struct bpf_link_info`` of the running kernel, or None without BTF."""

    try:
        btf = bpf.Btf.vmlinux()
    except (bpf.BpfError, bpf.LibbpfUnavailable) as exc:
        log.debug("no kernel BTF for bpf_link_info: %s", exc)
        return None
    try:
        tid = btf.find("bpf_link_info", bpf.BTF_KIND_STRUCT)
        if tid is None:
            return None
        model = from_btf(btf, tid)
    finally:
        btf.close()
    return model if isinstance(model, Struct) else None


def _union(model: Struct) -> tuple[int, Struct] | None:
    for m in model.members:
        if not m.name and isinstance(m.type, Struct) and m.type.union:
            return m.offset_bits // 8, m.type
    return None


def arm_for(model: Struct, type_name: str) -> tuple[int, Struct] | None:
    """(byte offset, struct) of the union arm for link type ``type_name``."""
    found = _union(model)
    if found is None:
        return None
    base, union = found
    for m in union.members:
        if m.name == type_name and isinstance(m.type, Struct):
            return base + m.offset_bits // 8, m.type
    return None


def _sub_arm(arm: Struct, base: int, name: str) -> tuple[int, Struct] | None:
    for m in arm.members:
        if not m.name and isinstance(m.type, Struct) and m.type.union:
            ubase = base + m.offset_bits // 8
            for sub in m.type.members:
                if sub.name == name and isinstance(sub.type, Struct):
                    return ubase + sub.offset_bits // 8, sub.type
    return None


def string_fields(arm: Struct, base: int) -> list[tuple[str, int, str, int]]:
    """(field, pointer offset, length field, length offset) of string fields.

    A u64 field whose name ends in ``name`` (or is ``path``) paired with a
    u32 ``<field>_len``, ``<field>_size`` or ``name_len``.
    """
    ints = {
        m.name: base + m.offset_bits // 8
        for m in arm.members
        if isinstance(m.type, Int) and not m.bitfield_size
    }
    sizes = {m.name: m.type.size for m in arm.members if isinstance(m.type, Int) and m.name in ints}
    out = []
    for name, off in ints.items():
        if sizes.get(name) != 8 or not (name.endswith("name") or name == "path"):
            continue
        for len_name in (f"{name}_len", f"{name}_size", "name_len"):
            if len_name in ints and sizes.get(len_name) == 4:
                out.append((name, off, len_name, ints[len_name]))
                break
    return out


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


Fetch = Callable[[list[tuple[int, int, int]]], tuple[bytes, list[bytes]] | None]


def decode_link(
    link_type: int,
    raw: bytes,
    fetch_strings: Fetch | None = None,
    *,
    names: KernelNames | None = None,
    model: Struct | None = None,
) -> LinkDecoded:
    """Decode one link's raw ``bpf_link_info``.

    ``fetch_strings(buffers)`` re-reads the info with string buffers (see
    ``libbpf.link_info_with_buffers``) and returns (raw, strings), or None
    when the link went away; without it, names are left out.
    """
    names = names or kernel_names()
    model = model if model is not None else link_info_model()
    type_name = names.link_type(link_type)
    if model is None:
        return LinkDecoded(type_name, {}, "", None)
    found = arm_for(model, type_name)
    if found is None:
        return LinkDecoded(type_name, {}, "", None)
    base, arm = found
    raw = raw.ljust(model.size, b"\0")
    fields: dict[str, Any] = decode(arm, raw[base : base + arm.size])
    # perf_event links nest a second union chosen by perf_event.type
    targets: list[tuple[str, int, Struct, dict[str, Any]]] = [(type_name, base, arm, fields)]
    if type_name == "perf_event" and isinstance(fields.get("type"), int):
        pe_name = names.perf_event_type(fields["type"])
        fields["type"] = pe_name
        sub_name = _PERF_ARMS.get(pe_name)
        sub = _sub_arm(arm, base, sub_name) if sub_name else None
        for key in list(fields):
            if key in _PERF_ARMS.values():
                del fields[key]  # the union's other arms are noise
        if sub is not None and sub_name is not None:
            sbase, sarm = sub
            sfields: dict[str, Any] = decode(sarm, raw[sbase : sbase + sarm.size])
            fields[sub_name] = sfields
            targets.append((sub_name, sbase, sarm, sfields))
    wanted: list[tuple[dict[str, Any], str, int, str, int]] = []
    for _name, tbase, tarm, tfields in targets:
        for fname, ptr_off, len_name, len_off in string_fields(tarm, tbase):
            wanted.append((tfields, fname, ptr_off, len_name, len_off))
    if wanted and fetch_strings is not None:
        got = fetch_strings([(p, n, STRING_BUF) for _f, _fn, p, _ln, n in wanted])
        if got is not None:
            _raw2, strings = got
            for (tfields, fname, _p, _ln, _n), buf in zip(wanted, strings, strict=True):
                tfields[fname] = _cstr(buf)
    for tfields, fname, _p, len_name, _n in wanted:
        tfields.pop(len_name, None)  # buffer bookkeeping, not information
        if isinstance(tfields.get(fname), int):
            del tfields[fname]  # a user pointer we did not fill: meaningless
    # Translate enum numbers into names.
    attach_type = None
    if isinstance(fields.get("attach_type"), int):
        attach_type = names.attach_type(fields["attach_type"])
        fields["attach_type"] = attach_type
    return LinkDecoded(type_name, fields, summarize(type_name, fields), attach_type)


def _ifname(ifindex: Any) -> str:
    if not isinstance(ifindex, int) or ifindex <= 0:
        return str(ifindex)
    try:
        return socket.if_indextoname(ifindex)
    except OSError:
        return f"ifindex {ifindex}"


@functools.cache
def _cgroup_paths() -> dict[int, str]:
    """cgroup id (inode number in cgroup2) -> path under the cgroup2 mount."""
    root = system.cgroup2_mount()
    return cgroups.paths_by_id(root) if root is not None else {}


def cgroup_path(cgroup_id: int) -> str:
    """Path of a cgroup v2 id; the walk is cached and redone on a miss."""
    try:
        found = _cgroup_paths().get(cgroup_id)
        if found is None:
            _cgroup_paths.cache_clear()  # created since the last walk?
            found = _cgroup_paths().get(cgroup_id)
    except Exception:  # cgroup discovery is a nicety, never an error
        found = None
    return found or f"cgroup id {cgroup_id}"


@functools.cache
def btf_func_name(obj_id: int, type_id: int) -> str:
    """Name of BTF type ``type_id`` in kernel BTF object ``obj_id``."""

    if not obj_id or not type_id:
        return ""
    try:
        with bpf.btf_by_id(obj_id) as btf:
            return btf.name(type_id)
    except (OSError, KeyError):
        return ""


def summarize(type_name: str, f: dict[str, Any]) -> str:
    """One line saying where a link is attached."""
    at = f.get("attach_type", "")
    if type_name == "raw_tracepoint":
        return f"raw_tp {f.get('tp_name', '?')}"
    if type_name == "tracing":
        func = btf_func_name(f.get("target_obj_id", 0), f.get("target_btf_id", 0))
        return f"{at} {func or 'btf id ' + str(f.get('target_btf_id'))}".strip()
    if type_name == "cgroup":
        cid = f.get("cgroup_id")
        return f"{at} {cgroup_path(cid) if isinstance(cid, int) else cid}".strip()
    if type_name == "iter":
        return f"iter {f.get('target_name', '?')}"
    if type_name == "netns":
        return f"{at} netns {f.get('netns_ino')}".strip()
    if type_name in ("xdp", "tcx", "netkit"):
        return f"{at or type_name} {_ifname(f.get('ifindex'))}".strip()
    if type_name == "perf_event":
        kind = f.get("type", "?")
        if kind == "tracepoint":
            return f"tracepoint {f.get('tracepoint', {}).get('tp_name', '?')}"
        if kind in ("uprobe", "uretprobe"):
            u = f.get("uprobe", {})
            return f"{kind} {u.get('file_name', '?')}+{hex(u.get('offset', 0))}"
        if kind in ("kprobe", "kretprobe"):
            k = f.get("kprobe", {})
            name = k.get("func_name") or hex(k.get("addr", 0))
            off = k.get("offset", 0)
            return f"{kind} {name}" + (f"+{hex(off)}" if off else "")
        if kind == "event":
            e = f.get("event", {})
            return f"perf event type {e.get('type')} config {e.get('config')}"
        return f"perf_event {kind}"
    if type_name == "kprobe_multi":
        return f"kprobe_multi {f.get('count', '?')} functions"
    if type_name == "uprobe_multi":
        return f"uprobe_multi {f.get('path', '?')} ({f.get('count', '?')} offsets)"
    if type_name == "netfilter":
        return f"netfilter pf {f.get('pf')} hook {f.get('hooknum')} priority {f.get('priority')}"
    if type_name in ("struct_ops", "sockmap"):
        return f"{at or type_name} map {f.get('map_id')}".strip()
    simple = [f"{k}={v}" for k, v in f.items() if isinstance(v, int | str)]
    return f"{type_name} " + " ".join(simple)
