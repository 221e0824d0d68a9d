"""flows --bench: ratios, bars and report from known samples (no kernel)."""

from __future__ import annotations

import os
from pathlib import Path

from bpfscope.bench import flows as bench


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
    # median 0.98 >= 0.97, but one round at 0.95: the rounds straddle the bar
    assert r.bar_met() is None
    v = r.verdict()
    assert v is not None
    assert (v.outcome, v.low, v.high) == ("inconclusive", 0.95, 0.99)
    r.cpu_samples["bpfscope"] = [196.0, 198.0, 199.0]
    assert r.bar_met() is True  # every round >= 0.97, judged per CPU second
    r.cpu_samples["bpfscope"] = [190.0, 190.0, 190.0]
    assert r.bar_met() is False


def test_report_says_which_bars_are_met() -> None:
    r = _result()
    r.samples["bpftrace"] = [80.0, 80.0, 80.0]
    r.cpu_samples["bpftrace"] = [150.0, 150.0, 150.0]
    text = bench.report(bench.BenchResult([r], None, None, ["n"]))
    assert "x0.980 [0.950-0.990]" in text
    assert (
        "bar: bpfscope / baseline per CPU second, per round 0.980 [0.950-0.990, "
        "75% CI of the median, n=3]: INCONCLUSIVE for the bar >= 0.97"
    ) in text
    # 196/150, 190/150, 198/150: every round above 1
    assert "(bpfscope / bpftrace per CPU second), per round 1.307 [1.267-1.320" in text
    assert ": meets the bar >= 1" in text
    out = bench.BenchResult([r], None, None).to_json()["traffic"][0]
    assert out["bar_met"] is None
    assert out["verdicts"]["bpfscope_vs_baseline"]["verdict"] == "inconclusive"
    assert out["verdicts"]["bpfscope_vs_bpftrace"]["verdict"] == "meets"


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
