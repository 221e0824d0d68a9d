"""The lab's shared pieces: references, pinning and interleaving, the
workload build cache, and that the lab stands apart from the feature CLIs."""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest

from bpfscope import libbpf
from bpfscope.bench import agent, driver, pinning, references
from bpfscope.objects import object_bytes

BENCH = Path(__file__).parents[2] / "src" / "bpfscope" / "bench"


@pytest.mark.parametrize(
    ("obj", "table"),
    [
        (references.SYSCALLS_OBJECT, references.SYSCALLS),
        (references.FLOWS_OBJECT, references.FLOWS),
    ],
)
def test_every_reference_program_exists_in_its_object(obj: str, table: dict) -> None:
    with libbpf.BpfObject.open_bytes(object_bytes(obj), name=obj) as o:
        names = set(o.programs)
    for description, hooks in table.values():
        assert description
        for hook in hooks():
            for rung in hook.rungs:
                assert set(rung.programs) <= names, (obj, rung)


def test_interleave_rotates_and_keeps_every_item_once_per_round() -> None:
    order = list(pinning.interleave(["a", "b", "c"], 4))
    assert [x for _, x in order] == list("abcbcacababc")
    assert [r for r, _ in order] == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    fixed = list(pinning.interleave(["a", "b"], 2, rotate=False))
    assert fixed == [(0, "a"), (0, "b"), (1, "a"), (1, "b")]
    assert pinning.rotated([], 3) == []


def test_pinned_moves_this_thread_and_restores_it() -> None:
    before = os.sched_getaffinity(0)
    cpu = pinning.bench_cpu()
    assert cpu == max(before)
    with pinning.pinned(cpu):
        assert os.sched_getaffinity(0) == {cpu}
    assert os.sched_getaffinity(0) == before
    with pinning.pinned(None):
        assert os.sched_getaffinity(0) == before


@pytest.mark.skipif(not any(shutil.which(c) for c in ("cc", "gcc", "clang")), reason="no cc")
def test_one_build_cache_for_every_workload(tmp_path: Path) -> None:
    src = b"int main(void) { return 0; }\n"
    first = driver.build_c(src, "tiny", directory=tmp_path)
    assert first.name.startswith("tiny-")
    assert driver.build_c(src, "tiny", directory=tmp_path) == first  # cached
    other = driver.build_c(src + b"/* edited */\n", "tiny", directory=tmp_path)
    assert other != first  # an edited workload gets a fresh binary
    pinned_exe = driver.build(directory=tmp_path)
    assert pinned_exe.name.startswith("driver-")


def test_the_lab_imports_no_feature_cli() -> None:
    """Features may hand the lab their workloads; the lab never reaches
    into a command-line module (flows.cli, syscalls.cli, ...)."""
    for path in BENCH.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.endswith("cli") or name.startswith("click"), (path.name, name)


def test_agent_bars() -> None:
    good = {
        "flows_limit100_p95_ms": 104.0,
        "metrics_scrape_max_s": 0.05,
        "concurrent_errors": 0,
        "events_dropped_during_load": 0,
    }
    assert agent.bars_met(good)
    assert not agent.bars_met(good | {"flows_limit100_p95_ms": 250.0})
    assert not agent.bars_met(good | {"events_dropped_during_load": 3})
    assert agent.percentile([5.0, 1.0, 3.0, 2.0, 4.0], 50) == 3.0
