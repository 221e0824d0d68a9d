"""The bench object has every program the runner and doctor name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bpfscope import libbpf
from bpfscope.bench import programs, tool
from bpfscope.objects import object_bytes


@pytest.fixture(scope="module")
def obj() -> Iterator[libbpf.BpfObject]:
    with libbpf.BpfObject.open_bytes(object_bytes("bench"), name="bench") as o:
        yield o


def test_every_mechanism_body_and_copy_exists(obj: libbpf.BpfObject) -> None:
    names = set(obj.programs)
    for m in programs.MECHANISMS:
        for w in programs.WORKS:
            for c in range(programs.MAX_COPIES):
                assert programs.program_name(m, w, c) in names
    assert len(names) == len(programs.MECHANISMS) * len(programs.WORKS) * programs.MAX_COPIES
    assert "target_nr" in obj.rodata.names()
    assert {"bench_counts", "bench_pids"} <= set(obj.maps)
    assert obj.map("bench_counts").max_entries == programs.MAX_COPIES


def test_doctor_hooks_name_real_programs(obj: libbpf.BpfObject) -> None:
    assert tool.OBJECT == "bench"
    assert tool.NAME == "bench syscalls"
    for hook in tool.hooks():
        for rung in hook.rungs:
            assert rung.program in obj.programs


def test_program_name_bounds() -> None:
    with pytest.raises(ValueError, match="unknown work"):
        programs.program_name(programs.MECHANISMS[0], "heavy", 0)
    with pytest.raises(ValueError, match="out of range"):
        programs.program_name(programs.MECHANISMS[0], "count", programs.MAX_COPIES)
