"""Enumerate every BPF program, map and link on the host.

Through the kernel's id iteration (``BPF_PROG_GET_NEXT_ID`` and friends),
like bpftool: an object that disappears between listing and reading is
skipped, never an error. Load times are converted from boot time to wall
clock; type names come from the kernel's BTF (``names.py``); holders from
/proc (``holders.py``).
"""

from __future__ import annotations

import datetime as dt
import errno
import logging
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

from .. import libbpf as bpf
from .. import system
from ..errors import EXIT_PRIVILEGES, UserError
from . import holders as holders_mod
from .holders import Holder, Holders, fdinfo_of
from .links import LinkDecoded, btf_func_name, decode_link
from .names import KernelNames, kernel_names
from .types import from_btf, type_name

__all__ = [
    "LinkRecord",
    "MapRecord",
    "ProgRecord",
    "boot_to_wall_ns",
    "collect_links",
    "collect_maps",
    "collect_progs",
    "privileged",
    "require_introspection_privileges",
]

log = logging.getLogger("bpfscope.introspect")

T = TypeVar("T")


def require_introspection_privileges() -> None:
    """Listing every BPF object needs CAP_SYS_ADMIN (bpf *_GET_NEXT_ID)."""
    missing = system.missing_caps(names=("CAP_SYS_ADMIN",))
    if missing:
        raise UserError(
            "listing the host's BPF programs, maps and links needs CAP_SYS_ADMIN "
            "(the kernel's BPF id iteration is root-only): run with sudo",
            EXIT_PRIVILEGES,
        )


def privileged(what: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except bpf.BpfError as exc:
        if exc.errno in (errno.EPERM, errno.EACCES):
            raise UserError(
                f"{what}: permission denied; run as root (needs CAP_SYS_ADMIN)",
                EXIT_PRIVILEGES,
            ) from None
        raise


def _gone(exc: bpf.BpfError) -> bool:
    return exc.errno in (errno.ENOENT, errno.EBADF)


def boot_to_wall_ns(
    boot_ns: int, *, now_wall: int | None = None, now_boot: int | None = None
) -> int:
    """Wall-clock ns of a CLOCK_BOOTTIME timestamp (what load_time is)."""
    wall = time.time_ns() if now_wall is None else now_wall
    boot = time.clock_gettime_ns(time.CLOCK_BOOTTIME) if now_boot is None else now_boot
    return wall - (boot - boot_ns)


def iso(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).isoformat(timespec="seconds")


def _holder_json(hs: list[Holder]) -> list[dict[str, Any]]:
    return [{"pid": h.pid, "comm": h.comm} for h in hs]


@dataclass
class Attachment:
    link_id: int
    link_type: str
    attach_type: str | None
    target: str


@dataclass
class ProgRecord:
    id: int
    type: str
    type_id: int
    name: str
    tag: str
    loaded_at: str
    load_time_ns: int
    uid: int
    xlated_len: int
    jited_len: int
    verified_insns: int
    map_ids: list[int]
    btf_id: int
    gpl: bool
    run_cnt: int
    run_time_ns: int
    recursion_misses: int
    memlock: int | None
    attach_btf: str = ""
    attachments: list[Attachment] = field(default_factory=list)
    holders: list[Holder] = field(default_factory=list)
    bpfscope: bool = False

    @property
    def target(self) -> str:
        if self.attachments:
            return "; ".join(a.target for a in self.attachments)
        return self.attach_btf

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["holders"] = _holder_json(self.holders)
        out["target"] = self.target
        return out


@dataclass
class MapRecord:
    id: int
    type: str
    type_id: int
    name: str
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    memlock: int | None
    btf_id: int
    key_type: str
    value_type: str
    prog_ids: list[int] = field(default_factory=list)
    holders: list[Holder] = field(default_factory=list)
    bpfscope: bool = False

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["holders"] = _holder_json(self.holders)
        return out


@dataclass
class LinkRecord:
    id: int
    type: str
    type_id: int
    prog_id: int
    prog_name: str
    attach_type: str | None
    target: str
    fields: dict[str, Any]
    holders: list[Holder] = field(default_factory=list)
    bpfscope: bool = False

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["holders"] = _holder_json(self.holders)
        return out


def _ids(kind: str) -> list[int]:
    fn = {"prog": bpf.prog_ids, "map": bpf.map_ids, "link": bpf.link_ids}[kind]
    return privileged(f"list BPF {kind}s", lambda: list(fn()))


def _memlock(fd: int) -> int | None:
    value = fdinfo_of(fd).get("memlock")
    return int(value) if value and value.isdigit() else None


def _full_name(fd: int, info: bpf.ProgInfo) -> str:
    """The program's function name from its BTF: ``name`` is cut at 15."""
    if len(info.name) < 15 or not info.btf_id:
        return info.name
    try:
        type_ids = bpf.prog_func_type_ids(fd)
    except bpf.BpfError:
        return info.name
    if not type_ids:
        return info.name
    full = btf_func_name(info.btf_id, type_ids[0])
    return full if full.startswith(info.name) else info.name


def read_prog(prog_id: int, names: KernelNames) -> ProgRecord | None:
    """One program's record, or None when it went away meanwhile."""
    try:
        fd = bpf.prog_fd_by_id(prog_id)
    except bpf.BpfError as exc:
        if _gone(exc):
            return None
        raise
    if fd is None:
        return None
    try:
        info, raw = bpf.prog_info_and_struct_from_fd(fd)
        memlock = _memlock(fd)
        full_name = _full_name(fd, info)
    finally:
        os.close(fd)
    attach_btf = ""
    if raw.attach_btf_id:
        func = btf_func_name(raw.attach_btf_obj_id or 1, raw.attach_btf_id)
        attach_btf = func or f"btf id {raw.attach_btf_id}"
    return ProgRecord(
        id=info.id,
        type=names.prog_type(info.type),
        type_id=info.type,
        name=full_name,
        tag=info.tag,
        loaded_at=iso(boot_to_wall_ns(info.load_time_ns)),
        load_time_ns=info.load_time_ns,
        uid=info.created_by_uid,
        xlated_len=info.xlated_prog_len,
        jited_len=info.jited_prog_len,
        verified_insns=info.verified_insns,
        map_ids=list(info.map_ids),
        btf_id=info.btf_id,
        gpl=bool(raw.gpl_compatible),
        run_cnt=info.run_cnt,
        run_time_ns=info.run_time_ns,
        recursion_misses=info.recursion_misses,
        memlock=memlock,
        attach_btf=attach_btf,
    )


def _type_name_in_btf(btf: bpf.Btf | None, type_id: int) -> str:
    if btf is None or not type_id:
        return ""

    try:
        return type_name(from_btf(btf, type_id))
    except (KeyError, TypeError, OSError):
        return ""


def read_map(map_id: int, names: KernelNames) -> MapRecord | None:
    try:
        opened = bpf.map_from_id(map_id)
    except bpf.BpfError as exc:
        if _gone(exc):
            return None
        raise
    if opened is None:
        return None
    m, d = opened
    with m:
        memlock = _memlock(m.fd)
    key_type = value_type = ""
    if d.btf_id and (d.btf_key_type_id or d.btf_value_type_id):
        try:
            with bpf.btf_by_id(d.btf_id) as btf:
                key_type = _type_name_in_btf(btf, d.btf_key_type_id)
                value_type = _type_name_in_btf(btf, d.btf_value_type_id)
        except bpf.BpfError as exc:
            log.debug("map %d: BTF %d unreadable: %s", map_id, d.btf_id, exc)
    return MapRecord(
        id=d.id,
        type=names.map_type(d.type),
        type_id=d.type,
        name=d.name,
        key_size=d.key_size,
        value_size=d.value_size,
        max_entries=d.max_entries,
        flags=d.map_flags,
        memlock=memlock,
        btf_id=d.btf_id,
        key_type=key_type,
        value_type=value_type,
    )


def _fetch_strings(
    link_id: int,
) -> Callable[[list[tuple[int, int, int]]], tuple[bytes, list[bytes]] | None]:
    def fetch(buffers: list[tuple[int, int, int]]) -> tuple[bytes, list[bytes]] | None:
        try:
            got = bpf.link_info_with_buffers(link_id, buffers)
        except bpf.BpfError as exc:
            log.debug("link %d: string fields unreadable: %s", link_id, exc)
            return None
        if got is None:
            return None
        info, strings = got
        return info.raw, strings

    return fetch


def read_link(link_id: int, names: KernelNames) -> LinkRecord | None:
    try:
        info = bpf.link_info_by_id(link_id)
    except bpf.BpfError as exc:
        # EAGAIN: the id is taken but the link is still being attached
        # (not settled yet); a listing is a snapshot without it
        if _gone(exc) or exc.errno == errno.EAGAIN:
            return None
        raise
    if info is None:
        return None
    decoded: LinkDecoded = decode_link(info.type, info.raw, _fetch_strings(link_id), names=names)
    return LinkRecord(
        id=info.id,
        type=decoded.type_name,
        type_id=info.type,
        prog_id=info.prog_id,
        prog_name="",
        attach_type=decoded.attach_type,
        target=decoded.target,
        fields=decoded.fields,
    )


def _each(ids: list[int], read: Callable[[int], T | None]) -> Iterator[T]:
    for obj_id in ids:
        rec = read(obj_id)
        if rec is not None:
            yield rec


def collect_links(
    *, names: KernelNames | None = None, holders: Holders | None = None
) -> list[LinkRecord]:
    names = names or kernel_names()
    hs = holders if holders is not None else holders_mod.scan()
    out = list(_each(_ids("link"), lambda i: read_link(i, names)))
    prog_names: dict[int, str] = {}
    for rec in out:
        rec.holders = hs.of("link", rec.id)
        rec.bpfscope = any(h.bpfscope for h in rec.holders)
        if rec.prog_id and rec.prog_id not in prog_names:
            p = read_prog(rec.prog_id, names)
            prog_names[rec.prog_id] = p.name if p else ""
        rec.prog_name = prog_names.get(rec.prog_id, "")
    return out


def collect_progs(
    *,
    names: KernelNames | None = None,
    holders: Holders | None = None,
    with_links: bool = True,
    ids: list[int] | None = None,
) -> list[ProgRecord]:
    """Every loaded program (or those in ``ids``), with attachments."""
    names = names or kernel_names()
    hs = holders if holders is not None else holders_mod.scan()
    out = list(_each(_ids("prog") if ids is None else ids, lambda i: read_prog(i, names)))
    by_prog: dict[int, list[Attachment]] = defaultdict(list)
    if with_links:
        for link_id in _ids("link"):
            link = read_link(link_id, names)
            if link is not None:
                by_prog[link.prog_id].append(
                    Attachment(link.id, link.type, link.attach_type, link.target)
                )
    for rec in out:
        rec.attachments = by_prog.get(rec.id, [])
        rec.holders = hs.of("prog", rec.id)
        rec.bpfscope = any(h.bpfscope for h in rec.holders)
    return out


def collect_maps(
    *,
    names: KernelNames | None = None,
    holders: Holders | None = None,
    progs: list[ProgRecord] | None = None,
) -> list[MapRecord]:
    names = names or kernel_names()
    hs = holders if holders is not None else holders_mod.scan()
    out = list(_each(_ids("map"), lambda i: read_map(i, names)))
    if progs is None:
        progs = collect_progs(names=names, holders=hs, with_links=False)
    users: dict[int, list[int]] = defaultdict(list)
    for p in progs:
        for mid in p.map_ids:
            users[mid].append(p.id)
    own_progs = {p.id for p in progs if p.bpfscope}
    for rec in out:
        rec.prog_ids = users.get(rec.id, [])
        rec.holders = hs.of("map", rec.id)
        rec.bpfscope = any(h.bpfscope for h in rec.holders) or any(
            pid in own_progs for pid in rec.prog_ids
        )
    return out
