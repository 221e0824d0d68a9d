"""The layering holds: foundations import no feature, modules stay small.

Read from the source (every import, module-level or inside a function), so
a lazy import cannot hide a dependency. The layers, bottom up:

- foundations: the libbpf binding, errors, system facts, syscall names,
  cgroups, feature probes, the attach ladder, hook targets, shipped objects;
- features: flows, syscalls, introspect, bench (each a tool);
- the agent and its sinks: agent, server, metrics, store, otlp;
- command lines: cli and the *_cli modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "bpfscope"

FOUNDATIONS = (
    "libbpf",
    "errors",
    "system",
    "sysnames",
    "cgroups",
    "features",
    "ladder",
    "targets",
    "objects",
    "units",
)
FEATURES = (
    "flows",
    "syscalls",
    "drops",
    "introspect",
    "bench",
    "agent",
    "server",
    "metrics",
    "store",
    "historyquery",
    "historyschema",
    "otlp",
    "tools",
    "doctor",
    "selftest",
)
GENERATED = {"sysnames/table.py"}
MAX_LINES = 600


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(("bpfscope", *parts))


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module) for every import in ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from . import flows` names a module
                yield node.lineno, f"{target}.{alias.name}"


def _top(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "bpfscope" else None


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_the_source_tree_is_where_the_test_looks() -> None:
    names = {_top(_module_name(p)) for p in _sources()}
    assert set(FOUNDATIONS) <= names, set(FOUNDATIONS) - names
    assert {"flows", "syscalls", "introspect", "bench", "agent", "server"} <= names


@pytest.mark.parametrize("foundation", FOUNDATIONS)
def test_foundations_import_no_feature(foundation: str) -> None:
    paths = [p for p in _sources() if _top(_module_name(p)) == foundation]
    assert paths
    bad = [
        f"{p.relative_to(SRC)}:{line} imports {target}"
        for p in paths
        for line, target in _imports(p)
        if _top(target) in FEATURES
    ]
    assert not bad, "\n".join(bad)


def test_errors_is_the_ground_floor() -> None:
    """Every layer raises these errors, so errors.py imports nothing of ours."""
    own = [t for _, t in _imports(SRC / "errors.py") if _top(t)]
    assert own == []


def test_no_module_outgrows_one_job() -> None:
    long = {
        str(p.relative_to(SRC)): n
        for p in _sources()
        if str(p.relative_to(SRC)) not in GENERATED
        and (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_relative_and_lazy_imports() -> None:
    """The import reader itself: relative, aliased and function-level imports."""
    src = SRC / "features.py"
    targets = {t for _, t in _imports(src)}
    assert "bpfscope.libbpf" in targets  # `from . import libbpf as bpf`
    assert "bpfscope.sysnames" in targets  # `from .sysnames import syscall_nr`
    fake = SRC / "flows" / "collector.py"
    assert any(_top(t) == "ladder" for _, t in _imports(fake))


def test_test_files_have_unique_basenames() -> None:
    """pytest imports test modules by basename (rootdir-relative, no
    packages): two test_x.py in different folders fail the whole collection."""
    tests = Path(__file__).resolve().parents[1]
    seen: dict[str, Path] = {}
    for path in sorted(tests.rglob("test_*.py")):
        assert path.name not in seen, f"{path} and {seen[path.name]} share a basename"
        seen[path.name] = path
