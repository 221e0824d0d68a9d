"""The agent's syscall metrics: counters always, the latency histogram only
when the collector times calls (``serve --syscall-latency``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bpfscope.metrics import SyscallMetrics
from bpfscope.syscalls.programs import HIST_SLOTS
from bpfscope.syscalls.records import SyscallTotals


class Source:
    def __init__(self, totals: SyscallTotals | None) -> None:
        self.totals = totals

    def syscall_view(self) -> tuple[Any, Any]:
        return None, self.totals


def _scrape(source: Source, latency: bool) -> dict[str, Any]:
    registry = CollectorRegistry()
    registry.register(SyscallMetrics(source, latency=latency))
    text = generate_latest(registry).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def _totals(latency: bool) -> SyscallTotals:
    t = SyscallTotals(count={"read": 7, "close": 3}, errors={("close", "EBADF"): 2})
    if latency:
        hist = [0] * HIST_SLOTS
        hist[9], hist[20] = 6, 1  # [512 ns, 1 us) and [~1 ms, ~2 ms)
        t.hist["read"] = hist
        t.total_ns["read"] = 6 * 600 + 1_500_000
    return t


def test_counts_mode_has_counters_and_no_latency_histogram() -> None:
    fams = _scrape(Source(_totals(False)), latency=False)
    assert {s.labels["syscall"]: s.value for s in fams["bpfscope_syscalls"].samples} == {
        "read": 7,
        "close": 3,
    }
    (err,) = fams["bpfscope_syscall_errors"].samples
    assert (err.labels, err.value) == ({"syscall": "close", "errno": "EBADF"}, 2)
    assert "bpfscope_syscall_latency_seconds" not in fams


def test_latency_mode_exports_the_histogram() -> None:
    fams = _scrape(Source(_totals(True)), latency=True)
    hist = fams["bpfscope_syscall_latency_seconds"]
    assert hist.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets["1.024e-06"] == 6  # slot 9 ends at 2^10 ns
    assert buckets["0.001048576"] == 6
    assert buckets["0.004194304"] == 7
    assert buckets["+Inf"] == 7
    (total,) = [s.value for s in hist.samples if s.name.endswith("_sum")]
    assert total == (6 * 600 + 1_500_000) / 1e9


def test_before_the_first_poll_families_are_empty() -> None:
    fams = _scrape(Source(None), latency=True)
    assert fams["bpfscope_syscalls"].samples == []
    assert fams["bpfscope_syscall_latency_seconds"].samples == []


def test_serve_help_names_both_syscall_flags_and_their_cost() -> None:
    from click.testing import CliRunner

    from bpfscope.serve_cli import serve
    from bpfscope.syscalls import COST_NS

    out = " ".join(CliRunner().invoke(serve, ["--help"]).output.split())
    counts = f"adds ~{COST_NS['counts']} ns per syscall host-wide"
    assert (
        f"--syscalls Also count syscalls and errors of every process, on sys_exit ({counts}" in out
    )
    latency = f"implies --syscalls; adds ~{COST_NS['latency']} ns per syscall instead"
    assert (
        f"--syscall-latency Also time every syscall: bpfscope_syscall_latency_seconds ({latency}"
        in out
    )
