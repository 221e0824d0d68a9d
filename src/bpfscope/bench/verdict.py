"""The lab's one rule for a verdict: a bar is judged on ratios measured
round by round inside one run, and only an interval that clears the bar
decides it.

Each round (every configuration measured once, interleaved) gives one
ratio. The verdict takes their median and a distribution-free confidence
interval for that median (order statistics of the per-round ratios, from the
binomial distribution): "meets" when the whole interval is on the good side
of the bar, "misses" when the whole interval is on the bad side, and
"inconclusive" otherwise, that is, when the noise between rounds is larger
than the distance between the effect and the bar, and always with fewer
than :data:`MIN_ROUNDS` rounds. Deterministic (no
resampling): the same rounds always give the same verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "CONFIDENCE",
    "MIN_ROUNDS",
    "Outcome",
    "Verdict",
    "added_ratios",
    "judge",
    "median_interval",
    "paired_ratios",
]

CONFIDENCE: Final = 0.95
# Fewer rounds say nothing about the noise (one round is a zero-width
# interval): always inconclusive.
MIN_ROUNDS: Final = 3

Outcome = Literal["meets", "misses", "inconclusive"]
# "below": a ratio at or under the bar is good (a cost); "above": at or over
# the bar is good (a throughput kept).
Good = Literal["below", "above"]


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    total: int = sum(math.comb(n, i) for i in range(k + 1))
    return total / (1 << n)


def median_interval(
    values: Sequence[float], confidence: float = CONFIDENCE
) -> tuple[float, float, float]:
    """(low, high, coverage): the narrowest order-statistic interval
    [x_(k), x_(n+1-k)] whose coverage of the true median is at least
    ``confidence``. With too few values for that (n < 6 at 95%), min-max and
    its (lower) coverage."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        raise ValueError("no values")
    k = 1  # 1-based rank of the lower bound
    while k + 1 <= (n + 1) // 2 and 1 - 2 * _binom_cdf(k, n) >= confidence:
        k += 1
    coverage = 1 - 2 * _binom_cdf(k - 1, n) if n > 1 else 0.0
    return xs[k - 1], xs[n - k], coverage


def paired_ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """num[i] / den[i] round by round; a round whose denominator is not
    positive gives +inf (no meaningful ratio: count it against the bar)."""
    return [n / d if d > 0 else math.inf for n, d in zip(num, den, strict=False)]


def added_ratios(
    mode: Sequence[float], reference: Sequence[float], baseline: Sequence[float]
) -> list[float]:
    """Per round: what ``mode`` adds over the baseline divided by what
    ``reference`` adds over it (costs measured in the same round)."""
    rounds = list(zip(mode, reference, baseline, strict=False))
    return paired_ratios([m - b for m, _, b in rounds], [r - b for _, r, b in rounds])


@dataclass(frozen=True)
class Verdict:
    """A ratio over rounds, its interval and, with a bar, the outcome."""

    ratios: tuple[float, ...]
    median: float
    low: float
    high: float
    coverage: float
    bar: float | None = None
    good: Good = "below"
    outcome: Outcome | None = None

    @property
    def meets(self) -> bool | None:
        """True/False when decided, None when inconclusive or without a bar."""
        return None if self.outcome in (None, "inconclusive") else self.outcome == "meets"

    def to_json(self) -> dict[str, Any]:
        return {
            "round_ratios": [_num(r) for r in self.ratios],
            "median": _num(self.median),
            "interval": [_num(self.low), _num(self.high)],
            "interval_coverage": round(self.coverage, 4),
            "bar": self.bar,
            "good": self.good,
            "verdict": self.outcome,
        }

    def text(self, digits: int = 2) -> str:
        """``0.98 [0.95-0.99, 94% CI of the median, n=5]`` and, with a bar,
        ``: meets the bar >= 0.97``."""
        f = f"{{:.{digits}f}}"
        out = (
            f"{_fmt(self.median, f)} [{_fmt(self.low, f)}-{_fmt(self.high, f)}, "
            f"{self.coverage:.0%} CI of the median, n={len(self.ratios)}]"
        )
        if self.bar is not None and self.outcome is not None:
            sign = "<=" if self.good == "below" else ">="
            word = {"meets": "meets", "misses": "MISSES", "inconclusive": "INCONCLUSIVE for"}
            out += f": {word[self.outcome]} the bar {sign} {self.bar:g}"
        return out


def _num(x: float) -> float | None:
    return None if math.isinf(x) or math.isnan(x) else x


def _fmt(x: float, f: str) -> str:
    return "inf" if math.isinf(x) else f.format(x)


def judge(ratios: Sequence[float], bar: float | None = None, good: Good = "below") -> Verdict:
    """The verdict on per-round ``ratios`` against ``bar``."""
    if not ratios:
        raise ValueError("no rounds to judge")
    low, high, coverage = median_interval(ratios)
    med = statistics.median(sorted(ratios))
    outcome: Outcome | None = None
    if bar is not None and len(ratios) < MIN_ROUNDS:
        outcome = "inconclusive"
    elif bar is not None:
        if good == "below":
            outcome = "meets" if high <= bar else "misses" if low > bar else "inconclusive"
        else:
            outcome = "meets" if low >= bar else "misses" if high < bar else "inconclusive"
    return Verdict(tuple(ratios), med, low, high, coverage, bar, good, outcome)
