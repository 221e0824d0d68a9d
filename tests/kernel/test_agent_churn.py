"""Connection churn through a real agent: nginx on loopback, the fixed-rate
load generator, `bpfscope serve` in a subprocess; the agent's metrics count
every connection the generator made, exactly, and no event is lost."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest

from agent_helpers import free_port
from bpfscope.bench import churn

pytestmark = pytest.mark.kernel


@pytest.mark.skipif(
    shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(),
    reason="needs nginx (scripts/setup.sh installs nginx-light)",
)
def test_churn_counts_every_connection_exactly() -> None:
    exe = churn._generator()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        nginx = churn._nginx(Path(tmp), port)
        try:
            r = churn._one_rate(exe, port, rate=2000, seconds=3.0, procs=2)
        finally:
            nginx.send_signal(signal.SIGQUIT)
            try:
                nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                nginx.kill()
    assert r.made >= 5000, r  # about 2,000 per second for 3 s
    assert r.failed == 0, r
    assert r.events_lost == 0, r
    assert r.opens_active == r.made, r
    assert r.opens_passive == r.made, r
    assert r.closes == r.made, r
    # the history: one row per (process, peer, service port) per bucket,
    # not one per client port, and every connection counted in it (short
    # ones folded by the collector, the others one by one)
    assert r.history_rows_max <= r.history_groups, r
    assert (r.history_opened, r.history_closed) == (r.made, r.made), r
    # RSS, CPU and poll timing are bars of `bench agent --churn`, not of
    # this test (docs/agent.md, Connection churn).
