"""The ctypes table agrees with libbpf's own headers and library."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bpfscope import libbpf as bpf
from bpfscope.libbpf import ffi

HEADERS = [Path("/usr/include/bpf") / h for h in ("libbpf.h", "bpf.h", "btf.h")]


def _prototypes() -> dict[str, int]:
    """name -> number of parameters, from LIBBPF_API declarations."""
    text = "\n".join(h.read_text() for h in HEADERS)
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    out: dict[str, int] = {}
    for m in re.finditer(r"LIBBPF_API\s+([^;{]*?)\b(\w+)\s*\(([^;]*?)\)\s*;", text, re.S):
        name, params = m.group(2), " ".join(m.group(3).split())
        if params in ("", "void"):
            out[name] = 0
        else:
            # function-pointer parameters contain commas inside parentheses
            depth, count = 0, 1
            for ch in params:
                depth += ch == "("
                depth -= ch == ")"
                count += ch == "," and depth == 0
            out[name] = count
    return out


@pytest.mark.skipif(not HEADERS[0].exists(), reason="libbpf-dev headers not installed")
def test_every_signature_matches_the_header_parameter_count() -> None:
    protos = _prototypes()
    assert len(protos) > 100  # the parser found the API, not nothing
    wrong = {}
    for name, (_restype, argtypes) in bpf.SIGNATURES.items():
        assert name in protos, f"{name} is not declared in libbpf's headers"
        if protos[name] != len(argtypes):
            wrong[name] = (protos[name], len(argtypes))
    assert not wrong, f"parameter counts differ (header, ours): {wrong}"


def test_loading_declares_every_function() -> None:
    lib = bpf.libbpf()
    for name, (restype, argtypes) in bpf.SIGNATURES.items():
        fn = getattr(lib, name)
        assert fn.argtypes == argtypes, name
        assert fn.restype == restype, name


def test_version_is_at_least_1_1() -> None:
    major, minor = (int(x) for x in bpf.libbpf_version().split("."))
    assert (major, minor) >= bpf.MIN_LIBBPF


OPTS = {
    "bpf_object_open_opts": ffi.OpenOpts,
    "bpf_uprobe_opts": ffi.UprobeOpts,
    "bpf_map_batch_opts": ffi.BatchOpts,
    "ring_buffer_opts": ffi.RingBufferOpts,
    "bpf_iter_attach_opts": ffi.IterAttachOpts,
}


@pytest.mark.skipif(
    not HEADERS[0].exists() or shutil.which("cc") is None,
    reason="needs libbpf-dev headers and a C compiler",
)
def test_opts_structs_match_the_c_layout(tmp_path: Path) -> None:
    """Compile offsetof() of every field we mirror and compare."""
    lines = []
    for cname, struct in OPTS.items():
        lines.append(f'printf("{cname} size %zu\\n", sizeof(struct {cname}));')
        for field, *_ in struct._fields_:
            if field.startswith("_"):
                continue  # padding stand-ins have no C name
            lines.append(f'printf("{cname} {field} %zu\\n", offsetof(struct {cname}, {field}));')
    src = tmp_path / "offsets.c"
    src.write_text(
        "#include <stddef.h>\n#include <stdio.h>\n#include <bpf/libbpf.h>\n"
        "#include <bpf/bpf.h>\nint main(void) {\n" + "\n".join(lines) + "\nreturn 0; }\n"
    )
    exe = tmp_path / "offsets"
    subprocess.run(["cc", str(src), "-o", str(exe)], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        cname, field, value = line.split()
        struct = OPTS[cname]
        ours = ctypes.sizeof(struct) if field == "size" else getattr(struct, field).offset
        # libbpf pads each opts struct to its alignment with `size_t :0`
        assert ours == int(value) or (field == "size" and ours <= int(value)), line
