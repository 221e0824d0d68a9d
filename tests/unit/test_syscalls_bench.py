"""syscalls --bench: added costs, ratios, bars and the clock floor from
known samples (no kernel)."""

from __future__ import annotations

import json

import pytest

from bpfscope.bench.tracer import COMPARISONS, MODES, BenchResult

# Best runs (ns per call): added over baseline 100 = empty 40, empty_exit 20,
# counts 30, clock 100, latency 110, bpftrace 260.
SAMPLES = {
    "baseline": [101.0, 100.0, 104.0],
    "empty": [140.0, 141.0, 150.0],
    "empty_exit": [120.0, 125.0, 121.0],
    "counts": [131.0, 130.0, 133.0],
    "clock": [200.0, 205.0, 201.0],
    "latency": [210.0, 212.0, 211.0],
    "bpftrace": [360.0, 380.0, 370.0],
}


def _result(samples: dict[str, list[float]] = SAMPLES) -> BenchResult:
    return BenchResult(2_000_000, 3, "C loop (cc)", "tp_btf", samples=dict(samples))


def test_added_costs_are_best_run_over_best_baseline() -> None:
    r = _result()
    assert r.added("counts") == 30.0
    assert r.added("latency") == 110.0
    assert r.median("empty") == 141.0
    assert r.over_clock_floor() == 10.0


def test_comparisons_and_bars() -> None:
    ratios = {(c["mode"], c["reference"]): c for c in _result().comparisons()}
    assert [(c.mode, c.reference) for c in COMPARISONS] == list(ratios)
    judged = ratios[("counts", "empty")]  # the bar, on the default mode
    assert (judged["ratio"], judged["bar"], judged["meets"]) == (0.75, 1.35, True)
    assert ratios[("counts", "empty_exit")]["ratio"] == 1.5
    assert ratios[("counts", "empty_exit")]["meets"] is None  # a reference, no bar
    assert ratios[("latency", "empty")]["meets"] is False  # 2.75
    assert ratios[("latency", "bpftrace")]["ratio"] == pytest.approx(110 / 260)
    assert ratios[("latency", "bpftrace")]["meets"] is True
    assert ratios[("clock", "empty")]["ratio"] == 2.5
    assert ratios[("latency", "clock")]["ratio"] == 1.1


def test_text_report_names_modes_verdicts_and_the_floor() -> None:
    text = _result().text()
    assert "rung: tp_btf" in text
    assert "  counts       130.0   +30.0   131.0   131.0 130.0 133.0" in text
    # per round: (131-101)/(140-101), (130-100)/(141-100), (133-104)/(150-104)
    assert (
        "counts / empty: 0.75 of the added cost (best runs); per round 0.73 "
        "[0.63-0.77, 75% CI of the median, n=3]: meets the bar <= 1.35"
    ) in text
    assert "latency / empty: 2.75 of the added cost (best runs); per round 2.73" in text
    assert ": MISSES the bar <= 1.35" in text
    assert "latency / bpftrace: 0.42 of the added cost (best runs); per round 0.40" in text
    assert ": meets the bar <= 0.5" in text
    assert "counts / empty_exit: 1.50 of the added cost (best runs); per round 1.58 " in text
    assert "n=3]\n" in text  # a reference without a bar: no verdict
    assert "the bar 1.35 x empty allows +54.0 ns; reading the clock at entry and exit" in text
    assert "latency mode above the clock floor: +10.0 ns per call" in text
    assert "    clock      " + MODES["clock"] in text.splitlines()


def test_json_carries_the_same_numbers() -> None:
    out = json.loads(json.dumps(_result().to_json()))
    assert out["mechanism"] == "tp_btf"
    assert set(out["modes"]) == set(SAMPLES)
    assert out["added_ns"]["counts"] == 30.0
    assert out["ns_per_call"]["latency"]["samples"] == SAMPLES["latency"]
    assert out["latency_over_clock_floor_ns"] == 10.0
    first = out["comparisons"][0]
    rounds = first.pop("rounds")
    assert first == {
        "mode": "counts",
        "reference": "empty",
        "ratio": 0.75,
        "bar": 1.35,
        "meets": True,
        "verdict": "meets",
    }
    assert rounds["round_ratios"] == pytest.approx([30 / 39, 30 / 41, 29 / 46])
    assert rounds["interval"] == pytest.approx([29 / 46, 30 / 39])


def test_rounds_that_straddle_the_bar_are_inconclusive() -> None:
    """The best runs alone would say "meets"; one round in three says
    otherwise, so the verdict is inconclusive, not a coin toss."""
    samples = dict(SAMPLES, counts=[131.0, 130.0, 170.0])  # round 3 adds 66 over 46
    c = _result(samples).comparisons()[0]
    assert (c["ratio"], c["meets"], c["verdict"]) == (0.75, None, "inconclusive")
    assert "INCONCLUSIVE for the bar <= 1.35" in _result(samples).text()


def test_without_bpftrace_its_comparison_is_left_out() -> None:
    samples = {k: v for k, v in SAMPLES.items() if k != "bpftrace"}
    r = _result(samples)
    assert ("latency", "bpftrace") not in {(c["mode"], c["reference"]) for c in r.comparisons()}
    assert "bpftrace" not in r.text().split("modes:")[1]  # neither a row nor a comparison
