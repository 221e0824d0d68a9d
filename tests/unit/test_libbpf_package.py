"""The binding package keeps its shape: small modules, one public surface,
no private names across modules, one attach vocabulary."""

from __future__ import annotations

import ast
from pathlib import Path

from bpfscope import features
from bpfscope import libbpf as bpf

PACKAGE = Path(bpf.__file__).parent


def test_every_exported_name_resolves() -> None:
    assert len(bpf.__all__) == len(set(bpf.__all__))
    missing = [name for name in bpf.__all__ if not hasattr(bpf, name)]
    assert not missing


def test_modules_stay_small() -> None:
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert len(sizes) >= 6
    assert all(n <= 500 for n in sizes.values()), sizes


def test_no_module_imports_a_private_name_of_another() -> None:
    offenders = []
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name[0] == "_"]
    assert not offenders


def test_attach_kinds_are_the_program_mechanisms() -> None:
    """The ladder and the feature probes pass a Mechanism to the one
    dispatch, Program.attach_to; both vocabularies must stay the same."""
    assert {str(m) for m in features.PROGRAM_MECHANISMS} == {str(k) for k in bpf.AttachKind}
