"""Python mirrors of kernel/BPF structs match the BTF, field by field."""

from __future__ import annotations

import ctypes

import pytest

from bpfscope import libbpf as bpf
from bpfscope import selftest, system
from bpfscope.objects import object_path


def ctypes_layout(struct: type[ctypes.Structure]) -> tuple[int, dict[str, tuple[int, int]]]:
    fields = {}
    for name, *rest in struct._fields_:
        desc = getattr(struct, name)
        bits = rest[1] if len(rest) > 1 else 0
        fields[name] = (desc.offset, -bits if bits else desc.size)
    return ctypes.sizeof(struct), fields


@pytest.mark.parametrize(
    ("struct", "btf_name"),
    [
        (selftest.SelftestEvent, "selftest_event"),
        (selftest.SelftestKey, "selftest_key"),
        (selftest.SelftestValue, "selftest_value"),
    ],
)
def test_selftest_structs_match_object_btf(struct: type[ctypes.Structure], btf_name: str) -> None:
    with bpf.Btf.from_file(object_path("selftest")) as btf:
        assert ctypes_layout(struct) == btf.struct_layout(btf_name)


@pytest.mark.skipif(not system.VMLINUX_BTF.is_file(), reason="kernel has no BTF")
@pytest.mark.parametrize(
    ("struct", "btf_name"),
    [(bpf.BpfProgInfoStruct, "bpf_prog_info"), (bpf.BpfMapInfoStruct, "bpf_map_info")],
)
def test_uapi_info_structs_match_kernel_btf(struct: type[ctypes.Structure], btf_name: str) -> None:
    with bpf.Btf.from_file(system.VMLINUX_BTF) as btf:
        size, fields = btf.struct_layout(btf_name)
    ours_size, ours = ctypes_layout(struct)
    # Ours may stop before the kernel's newest fields, never disagree.
    for name, where in ours.items():
        assert fields[name] == where, name
    assert ours_size <= size
