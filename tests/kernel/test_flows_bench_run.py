"""flows --bench on the real kernel, briefly: every configuration runs and
yields work per second (the ratios are for docs/flows.md, not asserted)."""

from __future__ import annotations

import pytest

from bpfscope.bench import flows as bench
from bpfscope.bench.flows import traffic_mechanism
from bpfscope.flows import programs
from kernel_require import require

pytestmark = pytest.mark.kernel


def test_every_configuration_runs_on_the_same_rung() -> None:
    require("tp_btf")
    mech = traffic_mechanism()
    if mech not in programs.TRACEPOINT_RUNGS:
        pytest.skip(f"traffic stands on {mech} here: the floor has tracepoint rungs only")
    results = bench.traffic_bench(
        seconds=0.3, rounds=1, configs=("baseline", "empty", "tcp_only"), cpu=bench.bench_cpu()
    )
    assert [r.mode for r in results] == ["rr", "stream"]
    for r in results:
        for config in ("baseline", "empty", "tcp_only"):
            assert len(r.cpu_samples[config]) == 1
            assert r.cpu_samples[config][0] > 0, (r.mode, config)
