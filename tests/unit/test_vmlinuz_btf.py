"""scripts/vmlinuz_btf.py finds the kernel's BTF blob inside a boot image."""

from __future__ import annotations

import gzip
import importlib.util
import struct
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "vmlinuz_btf.py"
_spec = importlib.util.spec_from_file_location("vmlinuz_btf", SCRIPT)
assert _spec is not None
assert _spec.loader is not None
vb = importlib.util.module_from_spec(_spec)
sys.modules["vmlinuz_btf"] = vb
_spec.loader.exec_module(vb)


def _btf(types: bytes, strings: bytes) -> bytes:
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_finds_the_largest_well_formed_blob_in_plain_and_gzip_images() -> None:
    real = _btf(b"T" * 64, b"\0int\0long\0")
    # a stray magic with a nonsense header, and a smaller valid blob (a module's)
    stray = b"\x9f\xeb\x01\x00" + b"\xff" * 20
    small = _btf(b"t" * 8, b"\0x\0")
    image = b"MZ" + b"\0" * 100 + stray + small + b"\1" * 50 + real + b"\2" * 30
    assert vb.find_btf(vb.unpack_image(image)) == real
    assert vb.find_btf(vb.unpack_image(gzip.compress(image))) == real


def test_an_image_without_btf_is_a_clear_error() -> None:
    with pytest.raises(SystemExit, match="no BTF found"):
        vb.find_btf(b"MZ" + b"\0" * 1000)
