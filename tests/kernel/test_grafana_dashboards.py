"""Every query of every Grafana dashboard in deploy/grafana/, evaluated by a
real Prometheus (Debian's binary) that scraped a real agent while this test
made loopback traffic: no query errors, the traffic panels return series,
and every metric name a panel uses is in the agent's /metrics."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_agent_live import agent

from agent_helpers import free_port, tcp_exchange

pytestmark = pytest.mark.kernel

DASHBOARDS = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "dashboards"
PROMETHEUS = shutil.which("prometheus")
# Grafana's variables, as the dashboard would expand them for one agent.
VARIABLES = {"$__rate_interval": "15s", "$instance": ".+"}
METRIC = re.compile(r"\bbpfscope_[a-zA-Z0-9_]+")


def panel_queries() -> list[tuple[str, str, str, str]]:
    """(dashboard, row, panel title, expr) for every target of every panel."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        row = ""
        for p in json.loads(path.read_text())["panels"]:
            if p["type"] == "row":
                row = p["title"]
                continue
            out += [(path.name, row, p["title"], t["expr"]) for t in p["targets"]]
    return out


def expand(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(agent URL, Prometheus URL) after ~10 s of scraping with traffic."""
    if PROMETHEUS is None:
        pytest.skip("needs Debian's prometheus package (scripts/setup.sh)")
    tmp = tmp_path_factory.mktemp("grafana")
    with agent(tmp, "--syscall-latency", "--bpf-stats") as (url, _proc):
        port = free_port()
        target = url.removeprefix("http://")
        (tmp / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: bpfscope\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        prom = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        prom_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if httpx.get(prom_url + "/-/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if prom.poll() is not None or time.monotonic() > deadline:
                    prom.kill()
                    raise AssertionError(f"prometheus did not start: {prom.communicate()[1]}")
                time.sleep(0.2)
            make_traffic(seconds=10)
            time.sleep(2)  # a last scrape after the traffic
            yield url, prom_url
        finally:
            prom.terminate()
            try:
                prom.wait(timeout=20)
            except subprocess.TimeoutExpired:
                prom.kill()
                prom.wait(timeout=10)


def make_traffic(seconds: float) -> None:
    """TCP exchanges, UDP datagrams and a refused connect, all on loopback."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            tcp_exchange(20_000, 80_000)
            udp.sendto(b"u" * 1200, sink.getsockname())
            sink.recv(2048)
            # refused: a reset, which the resets panel counts
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", free_port()), timeout=1).close()
            time.sleep(0.2)
    finally:
        udp.close()
        sink.close()


def query(prom_url: str, expr: str) -> list[dict[str, Any]]:
    r = httpx.get(prom_url + "/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200, f"{expr}: {body.get('error')}"
    assert body["status"] == "success", f"{expr}: {body.get('error')}"
    assert not body.get("warnings"), f"{expr}: {body['warnings']}"
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_dashboards_have_queries() -> None:
    queries = panel_queries()
    assert len(queries) >= 20
    assert {row for _d, row, _t, _e in queries} >= {"Traffic", "Connections", "Agent"}


def test_every_panel_query_runs_and_traffic_panels_have_series(
    scraped: tuple[str, str],
) -> None:
    _url, prom_url = scraped
    empty = []
    for dash, row, title, expr in panel_queries():
        result = query(prom_url, expand(expr))
        if row == "Traffic" and not result:
            empty.append(f"{dash} / {title}: {expr}")
    assert empty == [], "traffic panels without series"
    up = query(prom_url, "bpfscope_collector_up")
    assert {s["metric"]["collector"] for s in up} >= {"flows", "syscalls"}
    # the dashboard's $instance variable finds this agent
    values = httpx.get(
        prom_url + "/api/v1/label/instance/values",
        params={"match[]": "bpfscope_collector_up"},
    ).json()["data"]
    assert values, "label_values(bpfscope_collector_up, instance) is empty"


def test_every_panel_metric_is_exported(scraped: tuple[str, str]) -> None:
    url, _prom = scraped
    text = httpx.get(url + "/metrics").text
    exported = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            exported.add(name)
            if kind == "histogram":
                exported |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            if kind == "counter":
                exported.add(f"{name}_total")
        elif line and not line.startswith("#"):
            exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    missing = {
        (title, name)
        for _d, _row, title, expr in panel_queries()
        for name in METRIC.findall(expr)
        if name not in exported
    }
    assert missing == set()
