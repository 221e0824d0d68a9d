"""The lab's verdict rule: per-round ratios, an interval for their median,
meets/misses only when the interval clears the bar, else inconclusive."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpfscope.bench.verdict import added_ratios, judge, median_interval, paired_ratios

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
rounds = st.lists(finite, min_size=1, max_size=40)


@pytest.mark.parametrize(
    ("n", "ranks", "coverage"),
    [
        (3, (1, 3), 0.75),
        (5, (1, 5), 0.9375),
        (6, (1, 6), 0.96875),
        (9, (2, 8), 0.9609375),
        (12, (3, 10), 0.96142578125),
        (15, (4, 12), 0.96484375),
    ],
)
def test_interval_is_the_binomial_order_statistics(
    n: int, ranks: tuple[int, int], coverage: float
) -> None:
    values = [float(10 * i) for i in range(n)]
    random.Random(n).shuffle(values)
    low, high, cov = median_interval(values)
    assert (low, high) == (10.0 * (ranks[0] - 1), 10.0 * (ranks[1] - 1))
    assert cov == pytest.approx(coverage)


@given(rounds)
def test_interval_holds_the_median_within_the_range(values: list[float]) -> None:
    v = judge(values)
    assert min(values) <= v.low <= v.median <= v.high <= max(values)
    assert v.outcome is None  # no bar, no verdict
    assert v.meets is None


@given(st.lists(finite, min_size=3, max_size=40), finite)
def test_outcome_follows_the_interval(values: list[float], bar: float) -> None:
    below, above = judge(values, bar), judge(values, bar, good="above")
    if below.high <= bar:
        assert (below.outcome, below.meets) == ("meets", True)
    elif below.low > bar:
        assert (below.outcome, below.meets) == ("misses", False)
    else:
        assert (below.outcome, below.meets) == ("inconclusive", None)
    if above.low >= bar:
        assert above.outcome == "meets"
    elif above.high < bar:
        assert above.outcome == "misses"
    else:
        assert above.outcome == "inconclusive"


@given(rounds, finite)
def test_verdict_ignores_round_order(values: list[float], bar: float) -> None:
    assert judge(values, bar).outcome == judge(list(reversed(values)), bar).outcome


@given(st.lists(st.floats(min_value=0.5, max_value=2.0), min_size=9, max_size=30))
def test_one_wild_round_cannot_decide_with_enough_rounds(values: list[float]) -> None:
    """From 9 rounds on, the interval drops the extremes: one outlier on
    either side moves neither end past the other rounds."""
    tame = judge(values, 3.0)
    wild = judge([*values[:-1], 100.0], 3.0)
    assert tame.outcome == "meets"
    assert wild.outcome == "meets"


@given(st.lists(finite, min_size=1, max_size=2), finite)
def test_one_or_two_rounds_never_decide(values: list[float], bar: float) -> None:
    """One round has no spread at all: no verdict without a measure of the noise."""
    assert judge(values, bar).outcome == "inconclusive"
    assert judge(values, bar, good="above").outcome == "inconclusive"


def test_the_measured_flip_becomes_inconclusive() -> None:
    """Three rounds that straddle the bar (the 2.38-vs-1.06 kind of noise)
    cannot say meets or misses."""
    v = judge([2.38, 1.06, 1.2], 1.35)
    assert v.outcome == "inconclusive"
    assert "INCONCLUSIVE for the bar <= 1.35" in v.text()
    assert "[1.06-2.38, 75% CI of the median, n=3]" in v.text()


def test_clear_cases() -> None:
    assert judge([1.0, 1.1, 1.05, 1.02, 1.08, 1.01], 1.35).outcome == "meets"
    assert judge([2.0, 2.4, 1.9, 2.2, 2.1, 2.3], 1.35).outcome == "misses"
    assert judge([0.98, 0.99, 0.985], 0.97, good="above").outcome == "meets"
    assert judge([0.90, 0.92, 0.91], 0.97, good="above").outcome == "misses"


def test_ratios_round_by_round() -> None:
    assert paired_ratios([2.0, 3.0], [4.0, 0.0]) == [0.5, math.inf]
    # added over the baseline of the same round: (130-100)/(140-100), (131-101)/(101-101)
    assert added_ratios([130.0, 131.0], [140.0, 101.0], [100.0, 101.0]) == [0.75, math.inf]
    v = judge([0.75, math.inf, 0.8], 1.35)
    assert v.outcome == "inconclusive"  # a round without a measurable reference
    assert v.to_json()["interval"] == [0.75, None]
    assert "inf" in v.text()


def test_json_shape() -> None:
    out = judge([1.0, 1.2, 1.1], 1.35).to_json()
    assert out == {
        "round_ratios": [1.0, 1.2, 1.1],
        "median": 1.1,
        "interval": [1.0, 1.2],
        "interval_coverage": 0.75,
        "bar": 1.35,
        "good": "below",
        "verdict": "meets",
    }
