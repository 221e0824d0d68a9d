"""Report, performance bar, study comparison, CSV and plot on a synthetic run."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from bpfscope.bench import report
from bpfscope.bench.runner import (
    BASELINE,
    BPFTRACE,
    BenchResult,
    Config,
    Options,
    Row,
    SyscallResult,
    plan_configs,
    schedule,
)
from bpfscope.bench.stats import Sample
from bpfscope.features import Mechanism

N = 1_000_000
TP = Mechanism.TRACEPOINT
RAW = Mechanism.RAW_TP


def _row(config: Config, real: float, user: float, sys: float) -> Row:
    # Three samples spread around the median so min/max are known too.
    return Row(
        config,
        [
            Sample(real=real * k, user=user, sys=sys * k, clock=(real - 0.001) * k)
            for k in (1.0, 0.9, 1.2)
        ],
    )


def _result() -> BenchResult:
    opts = Options(syscalls=("getpid",), calls=N, reps=3, works=("empty", "count"), probes=(1, 2))
    res = SyscallResult("getpid", 39, "raw", verify_calls=10_000, verified_syscalls=10_000)
    res.rows = [
        _row(BASELINE, 0.105, 0.040, 0.065),
        _row(Config("bpf", TP, "empty", 1), 0.225, 0.040, 0.185),  # +120 ns
        _row(Config("bpf", TP, "count", 1), 0.235, 0.040, 0.195),  # +130 ns
        _row(Config("bpf", TP, "count", 2), 0.257, 0.040, 0.217),  # +152 ns
        _row(Config("bpf", RAW, "empty", 1), 0.180, 0.040, 0.140),  # +75 ns
        _row(Config("bpf", RAW, "count", 1), 0.185, 0.040, 0.145),  # +80 ns
        _row(BPFTRACE, 0.267, 0.041, 0.226),  # +162 ns
    ]
    res.skipped = [("fentry", "skipped: trampolines unavailable")]
    return BenchResult(opts, {"kernel": "test", "cores": 2}, [res], seconds=1.0)


def test_derived_overheads_and_ratios() -> None:
    rows = {d.config.label: d for d in report.derive(_result().syscalls[0], N)}
    assert rows["tracepoint/empty"].overhead_ns["real"] == pytest.approx(120.0)
    assert rows["bpftrace @=count()"].overhead_ns["real"] == pytest.approx(162.0)
    assert rows["tracepoint/empty"].ratios["real"] == pytest.approx(0.225 / 0.105)
    assert rows["tracepoint/empty"].ratios["user"] == pytest.approx(1.0)
    assert rows["baseline"].spreads["real"].min == pytest.approx(0.105 * 0.9)
    assert rows["baseline"].spreads["real"].max == pytest.approx(0.105 * 1.2)
    assert rows["baseline"].spreads["gap"].median == pytest.approx(0.001)


def test_bar_uses_cheapest_hook() -> None:
    b = report.bar(_result().syscalls[0], N)
    assert b is not None
    assert b["hook"] == "raw_tp"
    assert b["empty_ns"] == pytest.approx(75.0)
    assert b["count_over_empty"] == pytest.approx(80 / 75)
    assert b["count_within_limit"] is True
    assert b["count_below_bpftrace"] is True


def test_bar_fails_honestly() -> None:
    result = _result()
    res = result.syscalls[0]
    res.rows[5] = _row(Config("bpf", RAW, "count", 1), 0.195, 0.040, 0.155)  # +90 > 1.15*75
    b = report.bar(res, N)
    assert b is not None
    assert b["count_within_limit"] is False
    assert b["verdicts"]["count_over_empty"]["verdict"] == "misses"
    assert "count / empty 1.20 [1.20-1.20" in "\n".join(report.bar_lines(result))
    assert ": MISSES the bar <= 1.15" in "\n".join(report.bar_lines(result))


def test_bar_is_inconclusive_when_repetitions_straddle_it() -> None:
    """Medians alone say PASS (+80 vs +75 ns); one repetition of three adds
    more than 1.15x the empty program's cost, so no verdict."""
    result = _result()
    res = result.syscalls[0]
    count = res.rows[5]
    # third repetition (x1.2): empty adds 90 ns, count now 110 ns (x1.22)
    count.samples[2] = Sample(real=0.222, user=0.04, sys=0.174, clock=0.104 * 1.2 + 110e-9 * N)
    b = report.bar(res, N)
    assert b is not None
    assert b["count_over_empty"] == pytest.approx(80 / 75)
    assert b["count_within_limit"] is None
    assert b["verdicts"]["count_over_empty"]["verdict"] == "inconclusive"
    assert "INCONCLUSIVE for the bar <= 1.15" in "\n".join(report.bar_lines(result))


def test_study_comparison_verdicts() -> None:
    comp = report.study_comparison(_result())
    e = comp["syscalls"][0]
    assert e["bpftrace"]["real"]["verdict"] == "above"  # x2.54 > 2.03
    assert e["bpftrace"]["user"]["verdict"] == "within"  # x1.025
    assert e["probes"]["per_extra_program_ns"] == pytest.approx(22.0)
    assert e["probes"]["agrees"] is True


def test_json_csv_text() -> None:
    result = _result()
    data = json.loads(json.dumps(report.to_json(result)))
    sc = data["syscalls"][0]
    assert sc["real_syscall"] is True
    assert next(r["label"] for r in sc["rows"]) == "baseline"
    assert sc["skipped"] == [{"what": "fentry", "why": "skipped: trampolines unavailable"}]
    rows = list(csv.DictReader(io.StringIO(report.csv_text(result))))
    assert len(rows) == 8  # 7 measured + 1 skipped
    assert rows[-1]["skipped"].startswith("skipped:")
    assert float(rows[1]["real_overhead_ns"]) == pytest.approx(120.0)
    text = report.text_report(result)
    assert "getpid (nr 39, raw path, real syscall" in text
    assert "fentry" in text
    assert "trampolines unavailable" in text
    assert "Compared with the study" in text


def test_plot_one_panel_per_syscall(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bpfscope.bench.plot import plot

    result = _result()
    second = SyscallResult("getppid", 110, "raw")
    second.rows = [_row(r.config, 0.1, 0.04, 0.06) for r in result.syscalls[0].rows]
    result.syscalls.append(second)
    out = plot(result, str(tmp_path / "fig.svg"))
    summary = out.read_text()
    assert "what tracing one syscall adds" in summary
    assert "kernel test" in summary  # kernel, machine and protocol in the title
    assert "1,000,000 calls x 3 repetitions" in summary
    detail = (tmp_path / "fig-detail.svg").read_text()
    assert "getpid (raw" in detail
    assert "getppid (raw" in detail


def test_plan_and_interleaving() -> None:
    opts = Options(works=("empty", "count", "hash"), probes=(1, 2, 4))
    configs = plan_configs(opts, [TP, RAW], bpftrace=True)
    labels = [c.label for c in configs]
    assert labels[0] == "baseline"
    assert labels[-1] == "bpftrace @=count()"
    assert "tracepoint/count x4" in labels
    assert "raw_tp/hash" in labels
    assert "raw_tp/hash x2" not in labels  # the sweep uses the count body

    class S:
        def __init__(self, configs: list[Config]) -> None:
            self.configs = configs

    order = list(schedule([S(configs[:3])], reps=3, warmup=True))
    reps = [r for r, _, _ in order]
    assert reps == [-1] * 3 + [0] * 3 + [1] * 3 + [2] * 3
    firsts = [c.label for r, _, c in order if r >= 0][::3]
    assert len(set(firsts)) == 3  # each repetition starts somewhere else


def test_pooled_bar_judges_every_hook_over_all_syscalls() -> None:
    """Each syscall's repetitions are more rounds of the same hook and body:
    pooled, two syscalls x three repetitions give six ratios per hook."""
    one = _result()
    two = _result().syscalls[0]
    two.syscall = "getppid"
    result = BenchResult(one.options, one.env, [one.syscalls[0], two], seconds=1.0)
    pooled = {p["hook"]: p for p in report.pooled_bar(result)}
    assert set(pooled) == {"tracepoint", "raw_tp"}
    raw = pooled["raw_tp"]
    assert raw["syscalls"] == ["getpid", "getppid"]
    assert raw.get("cheapest") is True
    assert "cheapest" not in pooled["tracepoint"]
    assert len(raw["count_over_empty"]["round_ratios"]) == 6
    assert raw["count_over_empty"]["verdict"] == "meets"
    assert raw["count_over_bpftrace"]["verdict"] == "meets"
    text = "\n".join(report.bar_lines(result))
    assert "raw_tp (cheapest): empty +75 ns" in text
    assert "n=6]: meets the bar <= 1.15" in text
    assert report.to_json(result)["bar"] == report.pooled_bar(result)
