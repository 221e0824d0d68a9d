"""The agent's HTTP API on a real uvicorn, fed by a fake flow source (no
kernel): filters, paging, validation, token, read-only, health, metrics."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_helpers import FakeFlows, make_event, make_flow, serve_in_thread
from bpfscope.agent import Agent
from bpfscope.ipprofile import IpProfiler
from bpfscope.metrics import FlowMetrics
from bpfscope.server import create_app
from bpfscope.store import Store

N_FLOWS = 500


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    flows = [make_flow(i) for i in range(N_FLOWS)]
    events = [make_event(i, "open") for i in range(5)] + [make_event(9, "close")]
    profiler = IpProfiler(dns=False)
    metrics = FlowMetrics(remote_class=lambda ip: profiler.profile(ip).remote_class)
    a = Agent(
        flows=FakeFlows(flows, events),
        # Each poll writes 500 flows to the history; on a loaded machine that
        # can take over 3 x 50 ms, which health rightly calls lagging (503).
        interval=0.25,
        store=Store(tmp_path / "h.db", bucket_seconds=1),
        profiler=profiler,
        metrics=metrics,
    )
    with a:
        deadline = time.monotonic() + 5
        while a.state.polls < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        yield a


@pytest.fixture
def api(agent: Agent) -> Iterator[httpx.Client]:
    with serve_in_thread(create_app(agent)) as url, httpx.Client(base_url=url) as client:
        yield client


def test_flows_filters_match_the_records(api: httpx.Client) -> None:
    body = api.get("/api/v1/flows", params={"port": 443, "protocol": "tcp", "limit": 1000}).json()
    expected = [
        f for f in (make_flow(i) for i in range(N_FLOWS)) if f.rport == 443 and f.proto == "tcp"
    ]
    assert body["total"] == len(expected)
    assert all(it["rport"] == 443 and it["proto"] == "tcp" for it in body["items"])
    one = api.get("/api/v1/flows", params={"cidr": "192.168.1.0/24"}).json()
    assert one["total"] == sum(1 for i in range(N_FLOWS) if (i >> 8) & 255 == 1)
    assert all(it["raddr"].startswith("192.168.1.") for it in one["items"])
    by_ctr = api.get("/api/v1/flows", params={"container": "ctr1", "limit": 1000}).json()
    assert by_ctr["total"] > 0
    assert {it["container"] for it in by_ctr["items"]} == {"ctr1"}
    assert body["items"][0]["remote_profile"]["class"] == "private"


def test_paging_returns_every_flow_once_in_sort_order(api: httpx.Client) -> None:
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, str | int] = {"limit": 77, "sort": "tx", "order": "asc"}
        if cursor:
            params["cursor"] = cursor
        body = api.get("/api/v1/flows", params=params).json()
        seen += [it["tx_bytes"] for it in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(i * 10 for i in range(N_FLOWS))


@pytest.mark.parametrize(
    ("params", "status", "needle"),
    [
        ({"limit": 0}, 422, "limit"),
        ({"limit": 5000}, 422, "limit"),
        ({"port": 70000}, 422, "port"),
        ({"pid": -1}, 422, "pid"),
        ({"family": "ipx"}, 422, "family"),
        ({"cidr": "10.0.0.0/33"}, 400, "invalid CIDR"),
        ({"sort": "bogus"}, 400, "unknown sort key"),
        ({"cursor": "!!!"}, 400, "invalid cursor"),
    ],
)
def test_bad_parameters_are_4xx_with_a_message(
    api: httpx.Client, params: dict[str, object], status: int, needle: str
) -> None:
    r = api.get("/api/v1/flows", params=params)  # type: ignore[arg-type]
    assert r.status_code == status
    assert needle in r.json()["detail"]
    assert "Traceback" not in r.text


def test_api_is_read_only_and_bounded(api: httpx.Client) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        assert api.request(method, "/api/v1/flows").status_code == 405
    assert api.get("/api/v1/flows?comm=" + "x" * 10_000).status_code == 414
    assert api.get("/docs").status_code == 200
    assert "/api/v1/flows" in api.get("/openapi.json").json()["paths"]


def test_connections_and_stream(api: httpx.Client, agent: Agent) -> None:
    body = api.get("/api/v1/connections").json()
    assert [e["type"] for e in body["items"]] == ["open"] * 5 + ["close"]
    assert body["items"][-1]["duration"] == 0.5
    closes = api.get("/api/v1/connections", params={"type": "close"}).json()["items"]
    assert len(closes) == 1
    with api.stream("GET", "/api/v1/connections/stream", params={"after": 0, "max_events": 3}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        data = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert len(data) == 3


def test_health_and_programs(api: httpx.Client) -> None:
    h = api.get("/api/v1/health")
    assert h.status_code == 200
    assert h.json()["collectors"]["flows"]["alive"] is True
    assert h.json()["store"]["ok"] is True
    assert api.get("/api/v1/programs").json() == {"bpf_stats": False, "items": []}


def test_metrics_parse_and_have_the_right_types(api: httpx.Client) -> None:
    text = api.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "bpfscope_tcp_sent_bytes",
        "bpfscope_tcp_received_bytes",
        "bpfscope_udp_sent_bytes",
        "bpfscope_tcp_retransmits",
        "bpfscope_tcp_resets",
        "bpfscope_tcp_connections_opened",
        "bpfscope_metrics_series_dropped",
        "bpfscope_events_dropped",
        "bpfscope_bpf_program_runs",
    ):
        assert families[name].type == "counter", name
    assert families["bpfscope_tcp_connection_duration_seconds"].type == "histogram"
    assert families["bpfscope_map_entries"].type == "gauge"
    assert "bpfscope_process_cpu_seconds" in families
    opened = [s for s in families["bpfscope_tcp_connections_opened"].samples]
    assert sum(s.value for s in opened if s.name.endswith("_total")) == 5
    # default labels stay bounded: no addresses or ports
    sent = families["bpfscope_tcp_sent_bytes"].samples
    assert sent
    assert all(set(s.labels) == {"container", "comm", "remote_class"} for s in sent)
    assert len(sent) <= 7 * 6  # comms x containers, whatever the flow count


def test_token_protects_api_not_metrics(agent: Agent, tmp_path: Path) -> None:
    app = create_app(agent, token="s3cret")
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as c:
        assert c.get("/api/v1/health").status_code == 401
        assert c.get("/api/v1/health", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert (
            c.get("/api/v1/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        )
        assert c.get("/metrics").status_code == 200
    app = create_app(agent, token="s3cret", protect_metrics=True)
    with serve_in_thread(app) as url, httpx.Client(base_url=url) as c:
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_dead_collector_makes_health_503(tmp_path: Path) -> None:
    source = FakeFlows([make_flow(1)])
    source.fail_after = 1
    a = Agent(flows=source, interval=0.02)
    with a, serve_in_thread(create_app(a)) as url:
        deadline = time.monotonic() + 5
        while a.state.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        r = httpx.get(url + "/api/v1/health")
        assert r.status_code == 503
        assert "ring buffer vanished" in r.json()["collectors"]["flows"]["error"]
        # live data stays readable
        assert httpx.get(url + "/api/v1/flows").status_code == 200


def test_history_unavailable_is_503_with_reason() -> None:
    a = Agent(flows=FakeFlows([]), interval=0.05, store_error="history file x is corrupt")
    with a, serve_in_thread(create_app(a)) as url:
        r = httpx.get(url + "/api/v1/history")
        assert r.status_code == 503
        assert "corrupt" in r.json()["detail"]


def test_series_cap_counts_what_it_dropped() -> None:
    m = FlowMetrics(labels="remote", max_series=10)
    m.ingest([make_flow(i) for i in range(1, 200)], [])
    families = {f.name: f for f in m.collect()}
    series = {tuple(s.labels.items()) for s in families["bpfscope_tcp_sent_bytes"].samples}
    series |= {tuple(s.labels.items()) for s in families["bpfscope_udp_sent_bytes"].samples}
    assert len(series) <= 10
    dropped = families["bpfscope_metrics_series_dropped"].samples[0].value
    assert dropped > 0


def test_closed_flows_linger_in_the_current_view() -> None:
    closed = make_flow(1, closed=1234.0, state="CLOSE")
    source = FakeFlows([closed])
    a = Agent(flows=source, interval=60, closed_linger=30)
    a.poll_once()  # reported as changed while still in the table
    source.flows = []  # the collector deleted it
    a.poll_once()
    assert a.current_flows() == [closed]
    a.closed_linger = 0
    source.flows = [closed]
    a.poll_once()
    source.flows = []
    time.sleep(0.01)
    a.poll_once()
    assert a.current_flows() == []


def test_api_docs_need_no_cdn(api: httpx.Client) -> None:
    page = api.get("/docs")
    assert page.status_code == 200
    assert "cdn." not in page.text
    assert "https://" not in page.text
    for ref in ("docs/assets/swagger-ui-bundle.js", "docs/assets/swagger-ui.css", "openapi.json"):
        assert ref in page.text
        assert api.get(f"/{ref}").status_code == 200, ref
    assert api.get("/docs/assets/index.html").status_code == 404  # only what the page needs
    assert api.get("/redoc").status_code == 404  # ReDoc would load from a CDN too


class SlowFlows(FakeFlows):
    """A collector whose polls stall (as under connection churn)."""

    def __init__(self) -> None:
        super().__init__([make_flow(1)])
        self.stall = threading.Event()

    def poll(self, timeout: float = 0.0) -> list[Any]:
        if self.polls >= 2:
            self.stall.wait(5)  # the third poll hangs until released
        return super().poll(timeout)


def test_lagging_polls_make_health_degraded_and_503() -> None:
    source = SlowFlows()
    a = Agent(flows=source, interval=0.05)
    with a, serve_in_thread(create_app(a)) as url:
        deadline = time.monotonic() + 5
        while source.polls < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.4)  # > 3 intervals late
        r = httpx.get(url + "/api/v1/health")
        flows = r.json()["collectors"]["flows"]
        assert r.status_code == 503
        assert r.json()["status"] == "degraded"
        assert r.json()["lagging"] == ["flows"]
        assert flows["alive"]
        assert flows["lagging"]
        assert flows["last_poll_age_seconds"] >= 0.35
        assert flows["lag_seconds"] >= 0.3
        text = httpx.get(url + "/metrics").text
        lag = [
            s.value
            for f in text_string_to_metric_families(text)
            if f.name == "bpfscope_collector_lag_seconds"
            for s in f.samples
        ]
        assert lag
        assert lag[0] >= 0.3
        assert 'bpfscope_collector_poll_duration_seconds_count{collector="flows"}' in text
        source.stall.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            r = httpx.get(url + "/api/v1/health")
            if r.status_code == 200:
                break
            time.sleep(0.02)
        assert r.status_code == 200
        assert r.json()["status"] == "ok"
        assert r.json()["collectors"]["flows"]["longest_gap_seconds"] >= 0.35


def test_liveness_stays_200_while_readiness_is_503_for_lagging_polls() -> None:
    """An overloaded agent is not ready (health 503) but alive: the probe
    that restarts it must not fire, or the restart makes the overload worse."""
    source = SlowFlows()
    a = Agent(flows=source, interval=0.05)
    with a, serve_in_thread(create_app(a)) as url:
        deadline = time.monotonic() + 5
        while source.polls < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.4)  # > 3 intervals late
        assert httpx.get(url + "/api/v1/health").status_code == 503
        r = httpx.get(url + "/api/v1/live")
        assert r.status_code == 200
        assert r.json()["alive"] is True
        assert r.json()["last_poll_age_seconds"] >= 0.35
        # a loop stuck past the stall limit is not alive
        a.state.last_done -= r.json()["stall_seconds"] + 1
        r = httpx.get(url + "/api/v1/live")
        assert r.status_code == 503
        assert "no poll completed" in r.json()["reasons"][0]
        source.stall.set()


def test_liveness_is_503_when_the_collector_died() -> None:
    source = FakeFlows([make_flow(1)])
    source.fail_after = 1
    a = Agent(flows=source, interval=0.02)
    with a, serve_in_thread(create_app(a)) as url:
        deadline = time.monotonic() + 5
        while a.state.alive and time.monotonic() < deadline:
            time.sleep(0.02)
        r = httpx.get(url + "/api/v1/live")
        assert r.status_code == 503
        assert "ring buffer vanished" in r.json()["reasons"][0]
