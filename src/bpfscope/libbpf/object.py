"""BPF objects: open an ELF object, set its globals, load it, close it.

The object owns its programs, maps and every link its programs made;
``BpfObject.close()`` destroys the links first, then frees the rest.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

from .btf import Btf
from .errors import BpfError, call_ptr, check_ptr
from .ffi import OpenOpts, libbpf, take_log_tail
from .maps import Map
from .programs import Link, Program

__all__ = ["BpfObject", "Globals"]


class Globals:
    """``const volatile`` globals (.rodata) and other data sections of an
    object, located through the object's BTF and written before load (the
    others, .bss and .data, also after it)."""

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
            raw = value.to_bytes(size, sys.byteorder, signed=signed)
        else:
            raw = bytes(value)
            if len(raw) > size:
                raise ValueError(f"{name}: {len(raw)} bytes do not fit in {size}")
            raw = raw.ljust(size, b"\0")
        if self._obj.loaded:
            # Through the map, not the mmap: libbpf before 1.5 points the
            # mmap at the kernel's memory only for skeletons, so after a
            # plain load a write there would never reach the programs.
            m = self._map()
            key = b"\0\0\0\0"
            current = m.lookup(key)
            if current is None:
                raise KeyError(f"{self._section} of {self._obj.name} has no value")
            m.update(key, current[:offset] + raw + current[offset + size :])
            return
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
        address = self._map().initial_value_address()
        if address is None:
            raise RuntimeError(f"{self._section} of {self._obj.name} is not mmapable")
        return address


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
            p = Program(prog, self._links.append)
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
    def _opts(name: str, btf_path: str | os.PathLike[str] | None) -> OpenOpts:
        opts = OpenOpts(sz=ctypes.sizeof(OpenOpts), object_name=name.encode())
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
        ptr = check_ptr(
            call_ptr(libbpf().bpf_object__open_file, os.fsencode(path), ctypes.byref(opts)),
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
        ptr = check_ptr(
            call_ptr(libbpf().bpf_object__open_mem, buf, len(data), ctypes.byref(opts)),
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
        take_log_tail()
        ret = libbpf().bpf_object__load(self._ptr)
        if ret < 0:
            err = -ret
            tail = take_log_tail()
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
