"""Arithmetic of the overhead lab on known inputs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bpfscope.bench.stats import Sample, overhead_ns, per_copy_overhead_ns, ratio, spread


def test_spread_median_min_max() -> None:
    s = spread([3.0, 1.0, 2.0, 10.0, 4.0])
    assert (s.median, s.min, s.max, s.n) == (3.0, 1.0, 10.0, 5)
    even = spread([1.0, 2.0, 3.0, 4.0])
    assert even.median == 2.5


def test_spread_empty_is_an_error() -> None:
    with pytest.raises(ValueError, match="no values"):
        spread([])


def test_overhead_per_call_in_ns() -> None:
    # 1M calls: 0.105 s untraced, 0.225 s traced -> 120 ns per call.
    assert overhead_ns(0.225, 0.105, 1_000_000) == pytest.approx(120.0)
    assert overhead_ns(0.1, 0.105, 1_000_000) == pytest.approx(-5.0)
    with pytest.raises(ValueError, match="calls must be positive"):
        overhead_ns(1.0, 0.5, 0)


def test_ratio() -> None:
    assert ratio(0.227, 0.105) == pytest.approx(2.1619, rel=1e-3)
    assert ratio(1.0, 0.0) is None


def test_sample_gap_is_outside_minus_inside() -> None:
    s = Sample(real=1.5, user=0.2, sys=1.1, clock=1.19)
    assert s.gap == pytest.approx(0.31)
    assert s.metric("gap") == pytest.approx(0.31)
    with pytest.raises(KeyError):
        s.metric("wall")


def test_per_copy_slope() -> None:
    points = [(1, 120.0), (2, 142.0), (4, 186.0), (8, 274.0)]
    assert per_copy_overhead_ns(points) == pytest.approx(22.0)
    assert per_copy_overhead_ns([(1, 5.0), (1, 6.0)]) is None


@given(
    st.lists(st.floats(0.001, 100.0, allow_nan=False), min_size=1, max_size=30),
)
def test_spread_orders(values: list[float]) -> None:
    s = spread(values)
    assert s.min <= s.median <= s.max
    assert s.min == min(values)
    assert s.max == max(values)


@given(
    base=st.floats(0.01, 10.0),
    extra_ns=st.floats(-50.0, 5000.0),
    calls=st.integers(1, 10**8),
)
def test_overhead_roundtrip(base: float, extra_ns: float, calls: int) -> None:
    traced = base + extra_ns * calls / 1e9
    assert math.isclose(overhead_ns(traced, base, calls), extra_ns, rel_tol=1e-6, abs_tol=1e-3)
