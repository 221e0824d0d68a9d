"""bench flows-conns: report and bar from known results, input errors (no kernel)."""

from __future__ import annotations

import pytest

from bpfscope import cli
from bpfscope.bench import flows_conns as bench


def _result(n: int, cpu: float) -> bench.ConnsResult:
    return bench.ConnsResult(
        connections=n,
        sockets_walked=2 * n + 5,
        interval=1.0,
        seconds=10.0,
        cpu_seconds=cpu,
        polls=10,
        poll_ms=[3.0] * 10,
        counters_ms=2.5,
        drain_ms=0.5,
        flows_in_map=2 * n,
        map_bytes=12 * 2**20,
    )


def test_report_judges_the_bar_at_ten_thousand() -> None:
    text = bench.report([_result(1_000, 0.01), _result(10_000, 0.15)])
    assert " 10,000 connections:  1.50% of one core at 1s (15.0 ms CPU per poll" in text
    assert "BPF map memory 12.0 MiB" in text
    assert "bar: < 2% of one core with 10,000 connections at 1s: met (1.50%)" in text
    text = bench.report([_result(10_000, 0.25)])
    assert "at 1s: MISSED (2.50%)" in text


def test_map_memory_of_a_process_without_maps() -> None:
    assert bench.map_memory() == 0


def test_bad_connection_counts_are_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    for arg in ("many", "-5"):
        assert cli.main(["bench", "flows-conns", "--connections", arg]) == 2
        err = capsys.readouterr().err
        assert "--connections" in err
        assert "Traceback" not in err
