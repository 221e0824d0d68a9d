"""flows --bench: ratios, bars and report from known samples (no kernel)."""

from __future__ import annotations

import os
from pathlib import Path

from bpfscope.flows import bench


def _result() -> bench.TrafficResult:
    return bench.TrafficResult(
        "rr",
        "round trips/s",
        samples={"baseline": [100.0, 90.0, 110.0], "bpfscope": [95.0, 80.0, 100.0]},
        cpu_samples={"baseline": [200.0, 200.0, 200.0], "bpfscope": [196.0, 190.0, 198.0]},
    )


def test_ratios_on_both_measures_and_spread() -> None:
    r = _result()
    assert r.ratio("bpfscope") == 95.0 / 100.0
    assert r.ratio("bpfscope", cpu=True) == 196.0 / 200.0
    assert r.round_ratios("bpfscope", cpu=True) == [0.98, 0.95, 0.99]
    assert r.bar_met() is True  # 0.98 >= 0.97, judged per CPU second
    r.cpu_samples["bpfscope"] = [190.0, 190.0, 190.0]
    assert r.bar_met() is False


def test_report_says_which_bars_are_met() -> None:
    r = _result()
    r.samples["bpftrace"] = [80.0, 80.0, 80.0]
    r.cpu_samples["bpftrace"] = [150.0, 150.0, 150.0]
    text = bench.report(bench.BenchResult([r], None, None, ["n"]))
    assert "x0.980 [0.950-0.990]" in text
    assert "bar: bpfscope >= x0.97 of baseline per CPU second: met" in text
    assert "bar: bpfscope slows less than bpftrace (per CPU second): met" in text
    assert bench.BenchResult([r], None, None).to_json()["traffic"][0]["bar_met"] is True


def test_netbench_output_parsed_and_pinned(tmp_path: Path) -> None:
    fake = tmp_path / "netbench"
    fake.write_text('#!/bin/sh\necho "$1 1000 2.0 0.5 $#" > "$0.args"\necho "$1 1000 2.0 0.5"\n')
    fake.chmod(0o755)
    assert bench._run_netbench(fake, "rr", 2.0, cpu=1) == (500.0, 2000.0)
    assert Path(f"{fake}.args").read_text().split()[-1] == "3"  # mode, seconds, cpu
    assert bench.bench_cpu() in os.sched_getaffinity(0)


def test_report_shows_the_empty_program_floor() -> None:
    r = _result()
    r.samples["empty"] = [98.0, 98.0, 98.0]
    r.cpu_samples["empty"] = [196.0, 196.0, 196.0]
    text = bench.report(bench.BenchResult([r], None, None))
    # bpfscope 196/200 = 0.98 over a floor of 196/200: its own work costs nothing
    assert "floor: empty programs on the same hooks x0.980; bpfscope's own work" in text
    assert "on top of them x1.000" in text
