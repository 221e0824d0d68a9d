"""BTF: read-only views of type information (an object's, or the kernel's).

Type records are read in place from libbpf's parsed blob: a ``struct
btf_type`` head, then a kind-specific trailer (members, array, enumerators,
section variables) laid out as the kernel's ``btf.h`` defines them.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
from dataclasses import dataclass
from typing import Any, Final

from .errors import ERRNO_HINTS, BpfError, call_ptr, check_ptr
from .ffi import BtfType, libbpf

__all__ = [
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
    "Btf",
    "BtfMember",
    "btf_array_info",
    "btf_by_id",
    "btf_enum_values",
    "btf_int_encoding",
    "btf_ref_type",
    "btf_type_count",
]

BTF_KIND_INT: Final = 1
BTF_KIND_PTR: Final = 2
BTF_KIND_ARRAY: Final = 3
BTF_KIND_STRUCT: Final = 4
BTF_KIND_UNION: Final = 5
BTF_KIND_ENUM: Final = 6
BTF_KIND_FWD: Final = 7
BTF_KIND_TYPEDEF: Final = 8
BTF_KIND_VOLATILE: Final = 9
BTF_KIND_CONST: Final = 10
BTF_KIND_RESTRICT: Final = 11
BTF_KIND_FUNC: Final = 12
BTF_KIND_FUNC_PROTO: Final = 13
BTF_KIND_VAR: Final = 14
BTF_KIND_DATASEC: Final = 15
BTF_KIND_FLOAT: Final = 16
BTF_KIND_DECL_TAG: Final = 17
BTF_KIND_TYPE_TAG: Final = 18
BTF_KIND_ENUM64: Final = 19

# BTF_INT_ENCODING bits
BTF_INT_SIGNED: Final = 1
BTF_INT_CHAR: Final = 2
BTF_INT_BOOL: Final = 4


# Trailers after the btf_type head, per kind.


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


class _BtfEnumRaw(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("val", ctypes.c_int32)]


class _BtfEnum64Raw(ctypes.Structure):
    _fields_ = [
        ("name_off", ctypes.c_uint32),
        ("val_lo32", ctypes.c_uint32),
        ("val_hi32", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class BtfMember:
    name: str
    type_id: int
    offset_bits: int
    bitfield_size: int


class Btf:
    """Read-only view of a BTF blob (an object's, or the kernel's)."""

    def __init__(self, ptr: int, *, owned: bool) -> None:
        self._ptr: int | None = ptr
        self._owned = owned

    @classmethod
    def vmlinux(cls) -> Btf:
        ptr = check_ptr(
            call_ptr(libbpf().btf__load_vmlinux_btf),
            "load kernel BTF",
            hint=ERRNO_HINTS[errno_mod.ESRCH],
        )
        return cls(ptr, owned=True)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Btf:
        ptr = check_ptr(
            call_ptr(libbpf().btf__parse, os.fsencode(path), None),
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

    def type_count(self) -> int:
        """Number of type ids (ids run from 1 to count - 1)."""
        return int(libbpf().btf__type_cnt(self.ptr))

    def _type(self, type_id: int) -> BtfType:
        ptr = libbpf().btf__type_by_id(self.ptr, type_id)
        if not ptr:
            raise KeyError(f"BTF type id {type_id} not found")
        btf_type: BtfType = ptr.contents
        return btf_type

    def kind(self, type_id: int) -> int:
        return (int(self._type(type_id).info) >> 24) & 0x1F

    def vlen(self, type_id: int) -> int:
        return int(self._type(type_id).info) & 0xFFFF

    def kflag(self, type_id: int) -> bool:
        """The kind flag: bitfield offsets for structs, signedness for enums."""
        return bool(self._type(type_id).info >> 31)

    def name(self, type_id: int) -> str:
        return self._string(self._type(type_id).name_off)

    def _string(self, offset: int) -> str:
        raw = libbpf().btf__name_by_offset(self.ptr, offset)
        return raw.decode() if raw else ""

    def size(self, type_id: int) -> int:
        size = int(libbpf().btf__resolve_size(self.ptr, type_id))
        if size < 0:
            raise BpfError(f"resolve size of BTF type {type_id}", -size)
        return size

    def ref_type(self, type_id: int) -> int:
        """The type a PTR/TYPEDEF/CONST/VOLATILE/RESTRICT/TYPE_TAG/VAR refers to."""
        return int(self._type(type_id).size_or_type)

    def _trailer_address(self, type_id: int) -> int:
        return ctypes.addressof(self._type(type_id)) + ctypes.sizeof(BtfType)

    def _trailing(self, type_id: int, item: type[ctypes.Structure]) -> list[Any]:
        count = self.vlen(type_id)
        return list((item * count).from_address(self._trailer_address(type_id)))

    def skip_modifiers(self, type_id: int) -> int:
        """Follow typedef/const/volatile to the underlying type."""
        while self.kind(type_id) in (BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST):
            type_id = self._type(type_id).size_or_type
        return type_id

    def members(self, type_id: int) -> list[BtfMember]:
        type_id = self.skip_modifiers(type_id)
        if self.kind(type_id) not in (BTF_KIND_STRUCT, BTF_KIND_UNION):
            raise TypeError(f"BTF type {type_id} is not a struct or union")
        kflag = self.kflag(type_id)
        out = []
        for raw in self._trailing(type_id, _BtfMemberRaw):
            if kflag:
                offset, bits = raw.offset & 0xFFFFFF, raw.offset >> 24
            else:
                offset, bits = raw.offset, 0
            out.append(BtfMember(self._string(raw.name_off), raw.type, offset, bits))
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

    def int_encoding(self, type_id: int) -> tuple[int, int, int]:
        """(encoding bits BTF_INT_*, bit offset, bit count) of a BTF_KIND_INT."""
        if self.kind(type_id) != BTF_KIND_INT:
            raise TypeError(f"BTF type {type_id} is not an int")
        word = ctypes.c_uint32.from_address(self._trailer_address(type_id)).value
        return (word >> 24) & 0x0F, (word >> 16) & 0xFF, word & 0xFF

    def int_is_signed(self, type_id: int) -> bool:
        type_id = self.skip_modifiers(type_id)
        if self.kind(type_id) != BTF_KIND_INT:
            return False
        return bool(self.int_encoding(type_id)[0] & BTF_INT_SIGNED)

    def is_int(self, type_id: int) -> bool:
        return self.kind(self.skip_modifiers(type_id)) == BTF_KIND_INT

    def array_info(self, type_id: int) -> tuple[int, int]:
        """(element type id, number of elements) of a BTF_KIND_ARRAY."""
        if self.kind(type_id) != BTF_KIND_ARRAY:
            raise TypeError(f"BTF type {type_id} is not an array")
        arr = _BtfArray.from_address(self._trailer_address(type_id))
        return int(arr.type), int(arr.nelems)

    def enum_values(self, type_id: int) -> list[tuple[str, int]]:
        """Enumerators (name, value) of a BTF_KIND_ENUM or BTF_KIND_ENUM64."""
        kind = self.kind(type_id)
        signed = self.kflag(type_id)
        out: list[tuple[str, int]] = []
        if kind == BTF_KIND_ENUM:
            for raw in self._trailing(type_id, _BtfEnumRaw):
                value = int(raw.val) if signed else int(raw.val) & 0xFFFFFFFF
                out.append((self._string(raw.name_off), value))
        elif kind == BTF_KIND_ENUM64:
            for raw64 in self._trailing(type_id, _BtfEnum64Raw):
                value = (int(raw64.val_hi32) << 32) | int(raw64.val_lo32)
                if signed and value >= 1 << 63:
                    value -= 1 << 64
                out.append((self._string(raw64.name_off), value))
        else:
            raise TypeError(f"BTF type {type_id} is not an enum")
        return out


def btf_by_id(btf_id: int) -> Btf:
    """A kernel-loaded BTF object (a program's or map's) by id."""
    ptr = check_ptr(
        call_ptr(libbpf().btf__load_from_kernel_by_id, btf_id), f"load BTF object {btf_id}"
    )
    return Btf(ptr, owned=True)


# Free-function spellings of the methods above, as the introspection views
# call them.


def btf_type_count(btf: Btf) -> int:
    """Number of type ids in ``btf`` (ids run from 1 to count - 1)."""
    return btf.type_count()


def btf_ref_type(btf: Btf, type_id: int) -> int:
    """The type a PTR/TYPEDEF/CONST/VOLATILE/RESTRICT/TYPE_TAG/VAR refers to."""
    return btf.ref_type(type_id)


def btf_array_info(btf: Btf, type_id: int) -> tuple[int, int]:
    """(element type id, number of elements) of a BTF_KIND_ARRAY."""
    return btf.array_info(type_id)


def btf_int_encoding(btf: Btf, type_id: int) -> tuple[int, int, int]:
    """(encoding bits BTF_INT_*, bit offset, bit count) of a BTF_KIND_INT."""
    return btf.int_encoding(type_id)


def btf_enum_values(btf: Btf, type_id: int) -> list[tuple[str, int]]:
    """Enumerators (name, value) of a BTF_KIND_ENUM or BTF_KIND_ENUM64."""
    return btf.enum_values(type_id)
