"""The agent's seams without a kernel: each sink is handed what changed,
once per poll; /metrics, /api/v1/programs and /api/v1/health read what the
last poll published (no kernel call, no query per request)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_helpers import FakeFlows, make_event, make_flow, serve_in_thread
from bpfscope.agent import Agent
from bpfscope.features import Mechanism
from bpfscope.ladder import Choice, Hook, Rung
from bpfscope.metrics import FlowMetrics
from bpfscope.server import create_app
from bpfscope.sinks import PollChanges
from bpfscope.store import Store


class RecordingSink:
    def __init__(self) -> None:
        self.got: list[PollChanges] = []

    def consume(self, changes: PollChanges) -> None:
        self.got.append(changes)


@dataclass
class Info:
    id: int
    run_cnt: int
    run_time_ns: int


class CountingProgram:
    def __init__(self, calls: list[str], name: str) -> None:
        self.calls, self.name = calls, name

    def info(self) -> Info:
        self.calls.append(self.name)
        return Info(id=7, run_cnt=len(self.calls), run_time_ns=100 * len(self.calls))


class FakeAttached:
    """A flows tool with one program; counts its info() reads (syscalls)."""

    def __init__(self) -> None:
        self.info_calls: list[str] = []
        rung = Rung(Mechanism("tp_btf"), "flows_send", "net_dev_xmit")
        self.choices = [Choice(Hook("send", (rung,)), rung)]
        self.obj = self

    def program(self, name: str) -> CountingProgram:
        return CountingProgram(self.info_calls, name)


class FlowsWithPrograms(FakeFlows):
    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.attached = FakeAttached()


def test_each_sink_gets_each_change_once() -> None:
    closed = make_flow(1, closed=5.0)
    source = FakeFlows([make_flow(0), closed], [make_event(1, "open")])
    sink = RecordingSink()
    a = Agent(flows=source, interval=60, sinks=[sink])
    a.poll_once()
    source.flows = []
    a.poll_once()
    assert len(sink.got) == 2
    first, second = sink.got
    assert [f.lport for f in first.flows] == [make_flow(0).lport, closed.lport]
    assert [e.lport for e in first.events] == [make_event(1).lport]
    assert (second.flows, second.events) == ([], [])
    # the closed flow lingers in the view, but is not handed over again
    assert closed in a.current_flows()
    assert first.syscalls is None
    assert first.self_metrics["collectors"] == {"flows": False}  # never started
    assert [e.seq for e in a.events_since(0)] == [1]


def test_scrapes_and_program_listings_read_the_last_poll(tmp_path: Path) -> None:
    source = FlowsWithPrograms([make_flow(0)])
    metrics = FlowMetrics()
    a = Agent(
        flows=source,
        interval=60,  # no poll of its own after the first: only the ones below
        metrics=metrics,
        store=Store(tmp_path / "h.db", bucket_seconds=1),
    )
    calls = source.attached.info_calls
    queries: list[str] = []
    store = a.store
    assert store is not None
    real_stats = store.stats

    def counted_stats() -> dict[str, Any]:
        queries.append("stats")
        return real_stats()

    store.stats = counted_stats  # type: ignore[method-assign]
    with a, serve_in_thread(create_app(a)) as url:
        deadline = time.monotonic() + 5
        while not a.published.programs and time.monotonic() < deadline:
            time.sleep(0.01)  # the agent's first poll, published
        read = len(calls)
        a.poll_once()
        assert len(calls) == read + 1  # one program, read once per poll
        read += 1
        polled_queries = len(queries)
        for _ in range(5):
            text = httpx.get(url + "/metrics").text
            programs = httpx.get(url + "/api/v1/programs").json()["items"]
            health = httpx.get(url + "/api/v1/health").json()
        assert len(calls) == read
        assert len(queries) == polled_queries
        assert [(p["program"], p["run_cnt"]) for p in programs] == [("flows_send", read)]
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        runs = fams["bpfscope_bpf_program_runs"].samples
        assert [(s.labels["program"], s.value) for s in runs] == [("flows_send", read)]
        assert health["store"]["ok"] is True
        assert health["store"]["rows"] >= 0
        assert health["collectors"]["flows"]["rungs"] == {"send": "fake"}


def test_a_dead_flow_collector_is_shown_down_in_the_metrics() -> None:
    source = FakeFlows([make_flow(1)])
    source.fail_after = 1
    metrics = FlowMetrics()
    a = Agent(flows=source, interval=0.02, metrics=metrics)

    def up() -> float | None:
        fams = {f.name: f for f in metrics.collect()}
        samples = fams["bpfscope_collector_up"].samples if "bpfscope_collector_up" in fams else []
        return samples[0].value if samples else None

    with a:
        assert up() is None or up() == 1
        deadline = time.monotonic() + 5
        while up() != 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not a.state.alive
        assert up() == 0


def test_the_seams_module_imports_no_feature_package() -> None:
    """pipeline.py names the seams only: the standard library, nothing of bpfscope."""
    import ast

    import bpfscope.pipeline

    tree = ast.parse(Path(bpfscope.pipeline.__file__).read_text())
    imported = {
        node.module if isinstance(node, ast.ImportFrom) else alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    levels = {node.level for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "typing"}
    assert levels == {0}  # no relative import


def test_both_collectors_satisfy_the_collector_protocol() -> None:
    """Checked by mypy too (the agent types its collectors with it); here the
    methods exist on both classes."""
    from bpfscope.flows.collector import FlowCollector
    from bpfscope.syscalls.collector import SyscallCollector

    for cls in (FlowCollector, SyscallCollector):
        for name in ("start", "poll", "stats", "close"):
            assert callable(getattr(cls, name)), (cls, name)


def test_metrics_count_tallies_exactly_and_never_label_client_ports() -> None:
    """Per-group tallies (the agent's event path at churn rates) add up to
    the exact count; a passive connection's remote port (the client's
    ephemeral port) is no label even with --metrics-labels remote."""
    from bpfscope.flows.events import ConnTally
    from bpfscope.sinks import PollChanges

    m = FlowMetrics(labels="remote")
    tallies = [
        ConnTally("open", 1, "nginx", 5, "ipv4", "127.0.0.1", 8080, "passive", count=7000),
        ConnTally("open", 2, "wrk", 5, "ipv4", "127.0.0.1", 8080, "active", count=7000),
    ]
    closes = ConnTally("close", 2, "wrk", 5, "ipv4", "127.0.0.1", 8080, "active", count=7000)
    closes.duration_count, closes.duration_sum = 7000, 7.0
    closes.buckets[3] = 7000
    for _ in range(3):
        m.consume(
            PollChanges(
                time=0.0, flows=[], events=[], syscalls=None, self_metrics={},
                tallies=[*tallies, closes],
            )
        )  # fmt: skip
    fams = {f.name: f for f in m.collect()}
    opened = {
        (s.labels["comm"], s.labels["remote_port"]): s.value
        for s in fams["bpfscope_tcp_connections_opened"].samples
    }
    assert opened == {("nginx", ""): 21000, ("wrk", "8080"): 21000}
    hist = {
        s.name: s.value
        for s in fams["bpfscope_tcp_connection_duration_seconds"].samples
        if not s.labels.get("le")
    }
    assert hist["bpfscope_tcp_connection_duration_seconds_count"] == 21000
    assert hist["bpfscope_tcp_connection_duration_seconds_sum"] == pytest.approx(21.0)
