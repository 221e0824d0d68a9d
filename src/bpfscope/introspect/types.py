"""A small, libbpf-free model of BTF types, built once per map and decoded
against many values.

``from_btf`` walks a ``libbpf.Btf`` into these frozen dataclasses; the
decoder (``decode.py``) only knows this model, so unit tests build types by
hand and never need a kernel.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from .. import libbpf as bpf

if TYPE_CHECKING:
    from ..libbpf import Btf

__all__ = [
    "Array",
    "Enum",
    "Float",
    "Int",
    "Member",
    "Opaque",
    "Ptr",
    "Struct",
    "Type",
    "from_btf",
]


@dataclass(frozen=True)
class Int:
    size: int
    signed: bool = False
    name: str = ""
    char: bool = False
    boolean: bool = False
    # A typedef like __be16/__be32/__be64 says the bytes are big-endian.
    big_endian: bool = False
    alias: str = ""


@dataclass(frozen=True)
class Float:
    size: int
    name: str = ""
    alias: str = ""


@dataclass(frozen=True)
class Enum:
    size: int
    values: tuple[tuple[str, int], ...]
    signed: bool = False
    name: str = ""
    alias: str = ""


@dataclass(frozen=True)
class Ptr:
    size: int = 8
    target: str = ""
    alias: str = ""


@dataclass(frozen=True)
class Array:
    elem: Type
    count: int
    alias: str = ""

    @property
    def size(self) -> int:
        return type_size(self.elem) * self.count


@dataclass(frozen=True)
class Member:
    name: str
    offset_bits: int
    type: Type
    bitfield_size: int = 0


@dataclass(frozen=True)
class Struct:
    size: int
    members: tuple[Member, ...] = field(default_factory=tuple)
    name: str = ""
    union: bool = False
    alias: str = ""


@dataclass(frozen=True)
class Opaque:
    """Anything the decoder shows as hex (void, forward decls, functions)."""

    size: int
    name: str = ""
    alias: str = ""


Type = Int | Float | Enum | Ptr | Array | Struct | Opaque


def type_size(t: Type) -> int:
    return t.size


def type_name(t: Type) -> str:
    """The C-ish name a user recognises: typedef name first."""
    if t.alias:
        return t.alias
    if isinstance(t, Struct):
        return f"{'union' if t.union else 'struct'} {t.name or '(anon)'}"
    if isinstance(t, Enum):
        return f"enum {t.name or '(anon)'}"
    if isinstance(t, Array):
        return f"{type_name(t.elem)}[{t.count}]"
    if isinstance(t, Ptr):
        return f"{t.target or 'void'} *"
    return t.name or "?"


_BIG_ENDIAN_TYPEDEFS = frozenset({"__be16", "__be32", "__be64", "__sum16"})


def from_btf(btf: Btf, type_id: int, *, _depth: int = 0) -> Type:
    """Model of BTF type ``type_id`` (typedefs resolved, their name kept)."""

    if _depth > 32:
        return Opaque(0, "(too deep)")
    if type_id == 0:
        return Opaque(0, "void")
    kind = btf.kind(type_id)
    name = btf.name(type_id)
    if kind in (
        bpf.BTF_KIND_TYPEDEF,
        bpf.BTF_KIND_CONST,
        bpf.BTF_KIND_VOLATILE,
        bpf.BTF_KIND_RESTRICT,
        bpf.BTF_KIND_TYPE_TAG,
    ):
        inner = from_btf(btf, bpf.btf_ref_type(btf, type_id), _depth=_depth + 1)
        if kind != bpf.BTF_KIND_TYPEDEF:
            return inner
        # The outermost typedef names the type (__be16 over __u16 over
        # unsigned short); a big-endian typedef anywhere in the chain wins.
        inner = replace(inner, alias=name)
        if isinstance(inner, Int) and name in _BIG_ENDIAN_TYPEDEFS:
            inner = replace(inner, big_endian=True)
        return inner
    if kind == bpf.BTF_KIND_INT:
        encoding, _offset, _bits = bpf.btf_int_encoding(btf, type_id)
        return Int(
            size=btf.size(type_id),
            signed=bool(encoding & bpf.BTF_INT_SIGNED),
            name=name,
            char=bool(encoding & bpf.BTF_INT_CHAR) or name in ("char", "signed char"),
            boolean=bool(encoding & bpf.BTF_INT_BOOL) or name == "_Bool",
        )
    if kind == bpf.BTF_KIND_FLOAT:
        return Float(size=btf.size(type_id), name=name)
    if kind in (bpf.BTF_KIND_ENUM, bpf.BTF_KIND_ENUM64):
        values = tuple(bpf.btf_enum_values(btf, type_id))
        return Enum(
            size=btf.size(type_id),
            values=values,
            signed=any(v < 0 for _, v in values),
            name=name,
        )
    if kind == bpf.BTF_KIND_PTR:
        target = bpf.btf_ref_type(btf, type_id)
        target_name = btf.name(btf.skip_modifiers(target)) if target else "void"
        return Ptr(size=8, target=target_name)
    if kind == bpf.BTF_KIND_ARRAY:
        elem_id, count = bpf.btf_array_info(btf, type_id)
        return Array(elem=from_btf(btf, elem_id, _depth=_depth + 1), count=count)
    if kind in (bpf.BTF_KIND_STRUCT, bpf.BTF_KIND_UNION):
        members = tuple(
            Member(
                name=m.name,
                offset_bits=m.offset_bits,
                type=from_btf(btf, m.type_id, _depth=_depth + 1),
                bitfield_size=m.bitfield_size,
            )
            for m in btf.members(type_id)
        )
        return Struct(
            size=btf.size(type_id),
            members=members,
            name=name,
            union=kind == bpf.BTF_KIND_UNION,
        )
    try:
        size = btf.size(type_id)
    except OSError:
        size = 0
    return Opaque(size=size, name=name)
