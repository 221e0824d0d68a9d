"""Strict parameters on every API endpoint: unknown names are a 400 that
lists the valid ones, non-finite or out-of-range numbers a 4xx naming the
parameter, the same filter names and meanings on every flow and connection
endpoint, and no 5xx for any input (fuzzed from the OpenAPI schema)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_helpers import FakeFlows, make_event, make_flow, serve_in_thread
from bpfscope.agent import Agent
from bpfscope.server import create_app
from bpfscope.store import Store

N_FLOWS = 60
FILTERS = {"pid", "comm", "port", "cidr", "container", "family", "protocol"}
FILTERED = (
    "/api/v1/flows",
    "/api/v1/connections",
    "/api/v1/connections/stream",
    "/api/v1/history",
)


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    flows = [make_flow(i) for i in range(N_FLOWS)]
    events = [make_event(i, "open") for i in range(5)]
    events += [make_event(9, "close", comm="nginx", container="abc123")]
    store = Store(tmp_path_factory.mktemp("h") / "h.db", bucket_seconds=1)
    a = Agent(flows=FakeFlows(flows, events), interval=0.05, store=store)
    with a:
        deadline = time.monotonic() + 5
        while a.state.polls < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        store.flush()
        yield a


@pytest.fixture(scope="module")
def url(agent: Agent) -> Iterator[str]:
    with serve_in_thread(create_app(agent, stream_poll_seconds=0.01)) as u:
        yield u


@pytest.fixture
def api(url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=url, timeout=10) as client:
        yield client


@pytest.mark.parametrize("path", FILTERED)
def test_every_flow_endpoint_takes_the_same_filters(api: httpx.Client, path: str) -> None:
    params = api.get("/openapi.json").json()["paths"][path]["get"]["parameters"]
    assert {p["name"] for p in params} >= FILTERS


@pytest.mark.parametrize(
    "path", [*FILTERED, "/api/v1/syscalls", "/api/v1/programs", "/api/v1/health"]
)
def test_unknown_parameter_is_400_naming_it_and_the_valid_ones(
    api: httpx.Client, path: str
) -> None:
    r = api.get(path, params={"bogus": "1", "comm": "x"} if path != "/api/v1/health" else {"x": 1})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert ("bogus" in detail) or ("x" in detail)
    assert "valid:" in detail
    if path in FILTERED:
        assert all(name in detail for name in FILTERS)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1e308", "1e308", "NaN", "1e12"])
@pytest.mark.parametrize("name", ["since", "until"])
def test_history_times_must_be_finite_and_in_range(
    api: httpx.Client, name: str, value: str
) -> None:
    r = api.get("/api/v1/history", params={name: value})
    assert r.status_code == 422, r.text
    assert name in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "params", "needle"),
    [
        ("/api/v1/flows", {"pid": 2**70}, "pid"),
        ("/api/v1/history", {"pid": 2**70}, "pid"),
        ("/api/v1/connections", {"after": 2**70}, "after"),
        ("/api/v1/connections", {"port": 0}, "port"),
        ("/api/v1/connections/stream", {"after": -1}, "after"),
        ("/api/v1/history", {"limit": "nan"}, "limit"),
        ("/api/v1/syscalls", {"pid": "inf"}, "pid"),
    ],
)
def test_out_of_range_numbers_are_4xx_naming_the_parameter(
    api: httpx.Client, path: str, params: dict[str, Any], needle: str
) -> None:
    r = api.get(path, params=params)
    assert 400 <= r.status_code < 500, r.text
    assert needle in r.json()["detail"]


def test_connections_filter_by_comm_and_container_like_flows(api: httpx.Client) -> None:
    everything = api.get("/api/v1/connections").json()["items"]
    assert len(everything) == 6
    by_comm = api.get("/api/v1/connections", params={"comm": "nginx"}).json()["items"]
    assert [e["type"] for e in by_comm] == ["close"]
    by_ctr = api.get("/api/v1/connections", params={"container": "abc"}).json()["items"]
    assert [e["comm"] for e in by_ctr] == ["nginx"]
    assert api.get("/api/v1/connections", params={"family": "ipv6"}).json()["items"] == []
    assert api.get("/api/v1/connections", params={"protocol": "udp"}).json()["items"] == []
    with api.stream(
        "GET", "/api/v1/connections/stream", params={"after": 0, "max_events": 1, "comm": "nginx"}
    ) as r:
        data = [line for line in r.iter_lines() if line.startswith("data: ")]
    assert len(data) == 1
    assert '"nginx"' in data[0]


def test_history_container_is_a_prefix_as_in_flows(api: httpx.Client) -> None:
    live = api.get("/api/v1/flows", params={"container": "ctr", "limit": 1000}).json()
    stored = api.get("/api/v1/history", params={"container": "ctr", "limit": 1000}).json()
    assert live["total"] > 0
    assert stored["count"] > 0
    assert {r["container"] for r in stored["items"]} <= {f"ctr{i}" for i in range(5)}
    live_keys = {(f["raddr"], f["pid"]) for f in live["items"]}
    assert {(r["raddr"], r["pid"]) for r in stored["items"]} <= live_keys


# -- fuzzing every GET endpoint from the OpenAPI schema ------------------------

NASTY = [
    "", "nan", "NaN", "inf", "-inf", "-1e308", "1e309", "0", "-1", "1", "65536",
    "99999999999999999999999", "4194305", "1.5", "ipv4", "tcp", "::ffff:10.0.0.1",
    "10.0.0.0/8", "fd00::/129", "x" * 200, "%00", "\u00e9\u2603", "' OR 1=1 --",
]  # fmt: skip


def _value(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    kinds = {s.get("type") for s in schema.get("anyOf", [schema])}
    valid: st.SearchStrategy[str] = st.text(max_size=20)
    if "integer" in kinds:
        valid = st.integers(-(2**70), 2**70).map(str)
    elif "number" in kinds:
        valid = st.floats(allow_nan=True, allow_infinity=True).map(repr)
    return st.one_of(valid, st.sampled_from(NASTY), st.text(max_size=30))


def _requests(paths: dict[str, Any]) -> st.SearchStrategy[tuple[str, dict[str, str]]]:
    options = []
    for path, ops in paths.items():
        if "get" not in ops or not path.startswith("/api/"):
            continue
        params = {p["name"]: _value(p.get("schema", {})) for p in ops["get"].get("parameters", [])}
        params["zz_unknown"] = st.text(max_size=5)  # sometimes sent: must be a 400
        options.append(
            st.tuples(
                st.just(path),
                st.fixed_dictionaries({}, optional=params),  # type: ignore[arg-type]
            )
        )
    return st.one_of(options)


@pytest.fixture(scope="module")
def schema_paths(url: str) -> dict[str, Any]:
    paths: dict[str, Any] = httpx.get(url + "/openapi.json").json()["paths"]
    return paths


def test_fuzz_no_input_gives_a_5xx(url: str, schema_paths: dict[str, Any]) -> None:
    client = httpx.Client(base_url=url, timeout=10)

    @given(_requests(schema_paths))
    @settings(
        max_examples=300,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    def one(req: tuple[str, dict[str, str]]) -> None:
        path, params = req
        if path.endswith("/stream"):
            params = {**params, "max_events": params.get("max_events", "1")}
            with client.stream("GET", path, params=params) as r:
                status = r.status_code  # headers only: the body may wait for events
        else:
            r = client.get(path, params=params)
            status = r.status_code
            if status >= 400:
                assert "Traceback" not in r.text
                assert r.json()["detail"]
        assert status < 500 or (status == 503 and path == "/api/v1/health"), (path, params)
        if "zz_unknown" in params:
            assert status in (400, 401, 414), (path, params, status)

    try:
        one()
    finally:
        client.close()
