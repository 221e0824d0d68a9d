"""Programs and links: configure a program before load, attach it after.

:meth:`Program.attach_to` is the one place that turns an attach kind and a
target, as the attach ladder and the feature probes spell them, into the
libbpf call for that kind.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from enum import StrEnum
from typing import Any

from .errors import BpfError, call_ptr, check_ptr, check_ret
from .ffi import IterAttachOpts, UprobeOpts, libbpf
from .introspect import ProgInfo, prog_info_from_fd
from .maps import Map

__all__ = ["AttachKind", "Link", "Program"]


class AttachKind(StrEnum):
    """How a program attaches. The values are those of the program
    mechanisms of ``features.Mechanism``, so either can be passed."""

    TRACEPOINT = "tracepoint"
    RAW_TP = "raw_tp"
    TP_BTF = "tp_btf"
    FENTRY = "fentry"
    FEXIT = "fexit"
    KPROBE = "kprobe"
    KRETPROBE = "kretprobe"
    UPROBE = "uprobe"
    URETPROBE = "uretprobe"
    CGROUP_SKB = "cgroup_skb"


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
        fd = check_ret(int(libbpf().bpf_iter_create(self.fd)), f"run {self.description}")
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
    """One BPF program of an object. Attach methods return a ``Link`` and
    hand it to ``track`` (the owning object's), so that closing the object
    detaches it."""

    def __init__(self, ptr: int, track: Callable[[Link], None]) -> None:
        self._ptr = ptr
        self._track = track
        self.name: str = libbpf().bpf_program__name(ptr).decode()
        self.section: str = libbpf().bpf_program__section_name(ptr).decode()

    def __repr__(self) -> str:
        return f"<Program {self.name} [{self.section}]>"

    @property
    def autoload(self) -> bool:
        return bool(libbpf().bpf_program__autoload(self._ptr))

    @autoload.setter
    def autoload(self, enabled: bool) -> None:
        check_ret(
            libbpf().bpf_program__set_autoload(self._ptr, enabled),
            f"set autoload of {self.name}",
        )

    def set_attach_target(self, function: str, target_prog_fd: int = 0) -> None:
        """Retarget an fentry/fexit/tp_btf program before load."""
        check_ret(
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
        return prog_info_from_fd(self.fd)

    def _attach(self, what: str, fn: Callable[..., int | None], *args: Any) -> Link:
        ptr = check_ptr(call_ptr(fn, self._ptr, *args), f"attach {self.name} to {what}")
        link = Link(ptr, what)
        self._track(link)
        return link

    def attach_to(self, kind: str, target: str) -> Link:
        """Attach as ``kind`` (an :class:`AttachKind` value) to ``target``:

        * tracepoint: ``category:name``;
        * raw_tp: the tracepoint name;
        * tp_btf, fentry, fexit: ignored (the target is fixed before load
          with :meth:`set_attach_target`);
        * kprobe, kretprobe: a kernel function;
        * uprobe, uretprobe: ``binary:function`` (or ``binary`` alone);
        * cgroup_skb: a cgroup v2 directory.

        Raises ValueError for a kind that is not an attach kind.
        """
        k = AttachKind(kind)
        if k is AttachKind.TRACEPOINT:
            category, _, name = target.partition(":")
            return self.attach_tracepoint(category, name)
        if k is AttachKind.RAW_TP:
            return self.attach_raw_tracepoint(target)
        if k in (AttachKind.TP_BTF, AttachKind.FENTRY, AttachKind.FEXIT):
            return self.attach_trace()
        if k in (AttachKind.KPROBE, AttachKind.KRETPROBE):
            return self.attach_kprobe(target, retprobe=k is AttachKind.KRETPROBE)
        if k in (AttachKind.UPROBE, AttachKind.URETPROBE):
            binary, _, function = target.partition(":")
            return self.attach_uprobe(binary, function or None, retprobe=k is AttachKind.URETPROBE)
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)  # CGROUP_SKB
        try:
            return self.attach_cgroup(fd)  # the link keeps its own reference
        finally:
            os.close(fd)

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
        opts = UprobeOpts(sz=ctypes.sizeof(UprobeOpts), retprobe=retprobe)
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
        opts = IterAttachOpts(
            sz=ctypes.sizeof(IterAttachOpts),
            link_info=ctypes.addressof(map_fd),
            link_info_len=ctypes.sizeof(map_fd),
        )
        return self._attach(
            f"iterator over map {target.name}",
            libbpf().bpf_program__attach_iter,
            ctypes.byref(opts),
        )
