"""flows --bench: ratios, bars and report from known samples (no kernel)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bpfscope.bench import flows as bench


def _result() -> bench.TrafficResult:
    return bench.TrafficResult(
        "rr",
        "round trips/s",
        samples={"baseline": [100.0, 90.0, 110.0], "tcp_only": [95.0, 80.0, 100.0]},
        cpu_samples={"baseline": [200.0, 200.0, 200.0], "tcp_only": [198.0, 194.0, 199.0]},
    )


def test_ratios_on_both_measures_and_spread() -> None:
    r = _result()
    assert r.ratio("tcp_only") == 95.0 / 100.0
    assert r.ratio("tcp_only", cpu=True) == 198.0 / 200.0
    assert r.round_ratios("tcp_only", cpu=True) == [0.99, 0.97, 0.995]
    # median 0.99 >= 0.99, but one round at 0.97: the rounds straddle the bar
    assert r.bar_met() is None
    v = r.verdicts()["tcp_only_vs_baseline"]
    assert (v.outcome, v.low, v.high) == ("inconclusive", 0.97, 0.995)
    r.cpu_samples["tcp_only"] = [199.0, 198.0, 200.0]
    assert r.bar_met() is True  # every round >= 0.99, judged per CPU second
    r.cpu_samples["tcp_only"] = [190.0, 190.0, 190.0]
    assert r.bar_met() is False


def test_aa_band_floor_and_bpftrace_bars() -> None:
    r = _result()
    r.cpu_samples["baseline_aa"] = [202.0, 196.0, 200.0]  # A/A: 1.01, 0.98, 1.0
    r.cpu_samples["empty"] = [192.0, 192.0, 192.0]  # floor 0.96
    r.cpu_samples["everything"] = [190.0, 189.0, 191.0]  # 0.95, 0.945, 0.955
    r.cpu_samples["bpftrace"] = [160.0, 160.0, 160.0]
    band = r.noise_band()
    assert band is not None
    assert (band.low, band.median, band.high) == (0.98, 1.0, 1.01)
    assert r.in_noise_band("tcp_only") is True  # median 0.99 >= 0.98
    v = r.verdicts()
    # everything - floor per round: -0.01, -0.015, -0.005 against >= -0.01
    floor = v["everything_vs_floor"]
    assert floor.outcome == "inconclusive"
    assert floor.low == pytest.approx(-0.015)
    assert floor.high == pytest.approx(-0.005)
    assert v["everything_vs_bpftrace"].outcome == "meets"
    assert v["tcp_only_vs_bpftrace"].outcome == "meets"
    assert "everything_vs_baseline" not in v  # rr holds everything to the floor only
    r.cpu_samples["everything"] = [170.0, 170.0, 170.0]
    assert r.verdicts()["everything_vs_floor"].outcome == "misses"
    assert r.bar_met() is False


def test_stream_holds_both_configurations_to_the_bar() -> None:
    r = bench.TrafficResult(
        "stream",
        "bytes/s",
        samples={},
        cpu_samples={
            "baseline": [100.0, 100.0, 100.0],
            "tcp_only": [100.0, 99.5, 101.0],
            "everything": [95.0, 96.0, 97.0],
        },
    )
    v = r.verdicts()
    assert v["tcp_only_vs_baseline"].outcome == "meets"
    assert v["everything_vs_baseline"].outcome == "misses"
    assert "everything_vs_floor" not in v


def test_report_says_which_bars_are_met() -> None:
    r = _result()
    r.samples["bpftrace"] = [80.0, 80.0, 80.0]
    r.cpu_samples["bpftrace"] = [150.0, 150.0, 150.0]
    r.samples["baseline_aa"] = [100.0, 90.0, 110.0]
    r.cpu_samples["baseline_aa"] = [202.0, 196.0, 200.0]
    text = bench.report(bench.BenchResult([r], None, None, ["n"]))
    assert "TCP only" in text
    assert "A/A" in text
    assert "x0.990 [0.970-0.995]" in text
    assert (
        "noise band: A/A (baseline / baseline) per CPU second, per round 1.000 [0.980-1.010"
    ) in text
    assert (
        "bar: TCP only / baseline per CPU second, per round 0.990 [0.970-0.995, "
        "75% CI of the median, n=3]: INCONCLUSIVE for the bar >= 0.99 "
        "(median inside the A/A band)"
    ) in text
    # 198/150, 194/150, 199/150: every round above 1
    assert "TCP only / bpftrace (not slower than bpftrace) per CPU second, per round 1.320" in (
        text
    )
    assert ": meets the bar >= 1" in text
    out = bench.BenchResult([r], None, None).to_json()["traffic"][0]
    assert out["bar_met"] is None
    assert out["noise_band"]["interval"] == [0.98, 1.01]
    assert out["verdicts"]["tcp_only_vs_baseline"]["verdict"] == "inconclusive"
    assert out["verdicts"]["tcp_only_vs_bpftrace"]["verdict"] == "meets"


def test_netbench_output_parsed_and_pinned(tmp_path: Path) -> None:
    fake = tmp_path / "netbench"
    fake.write_text('#!/bin/sh\necho "$1 1000 2.0 0.5 $#" > "$0.args"\necho "$1 1000 2.0 0.5"\n')
    fake.chmod(0o755)
    assert bench.run_netbench(fake, "rr", 2.0, cpu=1) == (500.0, 2000.0)
    assert Path(f"{fake}.args").read_text().split()[-1] == "3"  # mode, seconds, cpu
    assert bench.bench_cpu() in os.sched_getaffinity(0)


def test_report_shows_the_empty_program_floor() -> None:
    r = _result()
    r.samples["empty"] = [98.0, 98.0, 98.0]
    r.cpu_samples["empty"] = [198.0, 198.0, 198.0]
    text = bench.report(bench.BenchResult([r], None, None))
    # TCP only 198/200 = 0.99 over a floor of 198/200: its own work costs nothing
    assert "floor: empty programs on the traffic hooks x0.990; TCP only on top" in text
    assert "on top of them x1.000" in text
