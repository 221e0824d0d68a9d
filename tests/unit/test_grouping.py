"""Grouping: one row per process/container/remote/port/peer, the same from
records in memory (top, flows, /api/v1/flows) and from the history's SQL."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from agent_helpers import FakeFlows, make_flow, serve_in_thread
from bpfscope.agent import Agent
from bpfscope.cli import cli
from bpfscope.flowgroup import GROUP_KEYS, group_flows, sort_groups
from bpfscope.flowquery import BadQuery, encode_cursor
from bpfscope.flows.cli import top_grouping
from bpfscope.ipprofile import IpProfiler
from bpfscope.server import create_app
from bpfscope.store import HistoryQuery, Store, query_history
from history_helpers import Rec, memory_history, to_sample, unique_flows

T0 = int(time.time()) // 10 * 10


def churn(n: int) -> list[Rec]:
    """One client on n ephemeral ports to one server: what `wrk` looks like."""
    return [
        Rec(7, "wrk", "ipv4", "tcp", "127.0.0.1", 40000 + i, "127.0.0.1", 8080, None, 100, 1000)
        for i in range(n)
    ]


def test_churn_is_one_row_per_process_and_per_remote_port() -> None:
    for key in ("process", "remote_port", "remote"):
        [g] = group_flows(churn(2868), key)
        assert (g.connections, g.tx_bytes, g.rx_bytes) == (2868, 286_800, 2_868_000)
    assert len(group_flows(churn(50), "local_port")) == 50


def test_group_sort_rejects_flow_only_keys() -> None:
    with pytest.raises(BadQuery, match="does not apply to groups"):
        sort_groups(group_flows(churn(3), "process"), "age")
    with pytest.raises(BadQuery, match="unknown group_by"):
        group_flows(churn(3), "pod")


def test_top_groups_by_process_only_when_rows_overflow() -> None:
    assert top_grouping("auto", 2868, 40)[0] == "process"
    assert "2868 flows > 40 rows" in top_grouping("auto", 2868, 40)[1]
    assert top_grouping("auto", 40, 40) == (None, "")
    assert top_grouping("auto", 100, None) == (None, "")  # pipes: no screen to overflow
    assert top_grouping("none", 2868, 40) == (None, "")
    assert top_grouping("remote", 1, 40) == ("remote", "")


ADDRS = ("10.0.0.1", "10.1.2.3", "::ffff:10.1.2.3", "fd00::5", None)


@st.composite
def records(draw: st.DrawFn) -> Rec:
    raddr = draw(st.sampled_from(ADDRS))
    return Rec(
        pid=draw(st.integers(1, 3)),
        comm=draw(st.sampled_from(("curl", "nginx"))),
        family="ipv4",
        proto=draw(st.sampled_from(("tcp", "udp"))),
        laddr="10.0.0.9",
        lport=draw(st.sampled_from((80, 443, 50000))),
        raddr=raddr,
        rport=None if raddr is None else draw(st.sampled_from((80, 443, 50001))),
        container=draw(st.sampled_from((None, "abc", "def"))),
        tx_bytes=draw(st.integers(1, 10**9)),
        rx_bytes=draw(st.integers(0, 10**9)),
    )


@given(
    recs=st.lists(records(), min_size=1, max_size=25),
    key=st.sampled_from([k for k in GROUP_KEYS if k != "peer"]),
)
@settings(max_examples=150, deadline=None)
def test_history_groups_like_memory(recs: list[Rec], key: str) -> None:
    unique = unique_flows(recs)
    # the same flows in two buckets: still one connection each
    conn = memory_history((b, to_sample(r)) for r in unique for b in (T0, T0 + 10))
    rows = query_history(conn, HistoryQuery(group_by=key, limit=1000), 10)
    stored = {r["key"]: (r["connections"], r["tx_bytes"], r["rx_bytes"]) for r in rows}
    memory = {
        g.key: (g.connections, 2 * g.tx_bytes, 2 * g.rx_bytes) for g in group_flows(unique, key)
    }
    assert stored == memory


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    store = Store(tmp_path / "h.db", bucket_seconds=1)
    a = Agent(
        flows=FakeFlows([make_flow(i) for i in range(100)]),
        interval=0.05,
        store=store,
        profiler=IpProfiler(dns=False),
    )
    with a:
        deadline = time.monotonic() + 5
        while a.state.polls < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        store.flush()
        yield a


def test_api_group_by(agent: Agent) -> None:
    flows = [make_flow(i) for i in range(100)]
    with serve_in_thread(create_app(agent)) as url, httpx.Client(base_url=url) as c:
        body = c.get("/api/v1/flows", params={"group_by": "process", "limit": 1000}).json()
        by_proc: dict[str, int] = {}
        for f in flows:
            by_proc[f"{f.comm}[{f.pid}]"] = by_proc.get(f"{f.comm}[{f.pid}]", 0) + 1
        assert body["total"] == len(by_proc)
        assert {it["key"]: it["connections"] for it in body["items"]} == by_proc
        assert set(body["items"][0]) >= {"tx_bytes", "rx_bytes", "tx_rate", "rx_rate"}
        peer = c.get("/api/v1/flows", params={"group_by": "peer"}).json()
        assert [it["key"] for it in peer["items"]] == ["private"]
        bad = c.get("/api/v1/flows", params={"group_by": "process", "sort": "age"})
        assert bad.status_code == 400
        assert "connections" in bad.json()["detail"]
        assert c.get("/api/v1/flows", params={"group_by": "pod"}).status_code == 422
        hist = c.get("/api/v1/history", params={"group_by": "container", "since": -3600}).json()
        assert hist["count"] > 0
        assert {it["key"] for it in hist["items"]} <= {"-", *(f"ctr{i}" for i in range(5))}
        assert all(it["connections"] >= 1 for it in hist["items"])


def test_history_cli_group_by(agent: Agent) -> None:
    assert agent.store is not None
    out = CliRunner().invoke(
        cli, ["history", "--db", str(agent.store.path), "--json", "-g", "remote_port"]
    )
    assert out.exit_code == 0, out.output
    rows = [json.loads(line) for line in out.output.splitlines()]
    assert rows
    assert all(r["group_by"] == "remote_port" for r in rows)
    # every new connection counts, also one that moved no bytes (make_flow(0))
    assert sum(r["connections"] for r in rows) == 100


def test_history_pages_with_a_cursor_and_draws_a_series(agent: Agent) -> None:
    with serve_in_thread(create_app(agent)) as url, httpx.Client(base_url=url) as c:
        # the agent keeps writing 1 s buckets (and the one flushed at the start
        # is written again): compare up to a pinned time before those
        time.sleep(2.5)
        until = c.get("/api/v1/history", params={"limit": 1}).json()["items"][0]["bucket_start"]
        until -= 2
        everything = c.get("/api/v1/history", params={"limit": 1000, "until": until}).json()
        assert everything["next_cursor"] is None
        seen: list[tuple[int, int, int]] = []
        cursor = None
        while True:
            params: dict[str, str | int] = {"limit": 7, "until": until}
            if cursor:
                params["cursor"] = cursor
            body = c.get("/api/v1/history", params=params).json()
            seen += [(r["bucket_start"], r["lport"], r["rport"]) for r in body["items"]]
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert seen == [(r["bucket_start"], r["lport"], r["rport"]) for r in everything["items"]]
        # a series of one group (here: one container) sums to its rows
        one = {"container": "ctr1", "limit": 1000, "until": until}
        rows = c.get("/api/v1/history", params=one).json()
        series = c.get("/api/v1/history", params={**one, "step": 1}).json()["items"]
        assert [p["time"] for p in series] == sorted({r["bucket_start"] for r in rows["items"]})
        assert sum(p["tx_bytes"] for p in series) == sum(r["tx_bytes"] for r in rows["items"])
        both = c.get("/api/v1/history", params={"group_by": "remote", "step": 10})
        assert both.status_code == 400
        huge = c.get("/api/v1/history", params={"cursor": encode_cursor(2**63)})
        assert huge.status_code == 400
