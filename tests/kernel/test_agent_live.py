"""`bpfscope serve` for real: a subprocess agent on loopback, real TCP
traffic from this process, exact byte counts through the API, /metrics and
the history; SIGKILL leaves nothing attached and the history intact."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_helpers import free_port
from agent_helpers import tcp_exchange as exchange
from bpfscope import libbpf as bpf

pytestmark = pytest.mark.kernel


@contextmanager
def agent(
    tmp_path: Path, *extra: str, db: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    args = [
        sys.executable, "-m", "bpfscope.cli", "serve",
        "--listen", f"127.0.0.1:{port}", "--interval", "0.2s", "--bucket", "1s",
        "--db", str(db or tmp_path / "history.db"), "--no-dns", *extra,
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/api/v1/health", timeout=1).status_code in (200, 401, 503):
                break
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()  # never leave an agent (and its programs) behind
            _out, err = proc.communicate(timeout=10)
            raise AssertionError(f"agent did not come up: {err}")
        time.sleep(0.1)
    try:
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def wait_for(fn: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.1)
    return fn()


def test_flows_connections_metrics_and_history_are_exact(tmp_path: Path) -> None:
    with agent(tmp_path) as (url, _proc):
        port, cport = exchange(12_345, 54_321)

        def client_flow() -> dict[str, Any] | None:
            items = httpx.get(url + "/api/v1/flows", params={"port": port, "limit": 10}).json()[
                "items"
            ]
            mine = [f for f in items if f["lport"] == cport and f["pid"] == os.getpid()]
            return mine[0] if mine and mine[0]["rx_bytes"] == 54_321 else None

        flow = wait_for(client_flow)
        assert flow is not None, "the client side of the connection never showed up"
        assert flow["tx_bytes"] == 12_345
        assert flow["rx_bytes"] == 54_321
        assert flow["proto"] == "tcp"
        assert flow["rport"] == port
        assert flow["remote_profile"]["class"] == "loopback"

        events = wait_for(
            lambda: [
                e
                for e in httpx.get(
                    url + "/api/v1/connections", params={"port": port, "limit": 1000}
                ).json()["items"]
                if e["type"] in ("open", "close") and e["pid"] == os.getpid()
            ]
        )
        kinds = {(e["type"], e["direction"]) for e in events}
        assert ("open", "active") in kinds

        text = httpx.get(url + "/metrics").text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        comm = Path("/proc/self/comm").read_text().strip()
        rx = sum(
            s.value
            for s in fams["bpfscope_tcp_received_bytes"].samples
            if s.labels["comm"] == comm and s.labels["remote_class"] == "loopback"
        )
        assert rx >= 54_321 + 12_345  # both ends are this process

        def stored() -> list[dict[str, Any]]:
            r = httpx.get(
                url + "/api/v1/history", params={"port": port, "since": -600, "limit": 1000}
            )
            # the client's row: keyed by the service port, its ephemeral port not stored
            rows = [x for x in r.json()["items"] if x["direction"] == "active"]
            return rows if sum(x["rx_bytes"] for x in rows) == 54_321 else []

        rows = wait_for(stored, timeout=15)
        assert rows, "history never got the flow"
        assert sum(x["tx_bytes"] for x in rows) == 12_345
        assert {(x["lport"], x["rport"]) for x in rows} == {(0, port)}
        assert sum(x["opened"] for x in rows) == 1


def test_sigkill_leaves_nothing_attached_and_history_intact(tmp_path: Path) -> None:
    db = tmp_path / "k.db"
    with agent(tmp_path, db=db) as (url, proc):
        ids = [p["id"] for p in httpx.get(url + "/api/v1/programs").json()["items"]]
        assert ids
        assert all(bpf.prog_info_by_id(i) is not None for i in ids)
        exchange(1000, 1000)
        wait_for(lambda: httpx.get(url + "/api/v1/health").json()["store"]["rows_written"] > 0, 15)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    alive = wait_for(lambda: not [i for i in ids if bpf.prog_info_by_id(i) is not None], 5)
    assert alive, "programs stayed loaded after SIGKILL"
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows_before = conn.execute("SELECT count(*) FROM flow_buckets").fetchone()[0]
    conn.close()
    assert rows_before > 0
    with agent(tmp_path, db=db) as (url, _):  # restart continues the same file
        exchange(500, 500)
        assert wait_for(
            lambda: httpx.get(url + "/api/v1/health").json()["store"]["rows"] > rows_before, 15
        )


def test_corrupt_history_keeps_live_data_serving(tmp_path: Path) -> None:
    db = tmp_path / "bad.db"
    db.write_bytes(b"garbage" * 500)
    with agent(tmp_path, db=db) as (url, _proc):
        health = httpx.get(url + "/api/v1/health").json()
        assert health["ok"] is True
        assert health["store"]["ok"] is False
        assert "corrupt" in health["store"]["error"]
        assert httpx.get(url + "/api/v1/history").status_code == 503
        assert httpx.get(url + "/api/v1/flows").status_code == 200
        # a broken history is no reason to restart the agent
        live = httpx.get(url + "/api/v1/live")
        assert live.status_code == 200
        assert live.json()["alive"] is True
    assert db.read_bytes() == b"garbage" * 500


def test_bad_flags_are_clear(tmp_path: Path) -> None:
    for args, needle in (
        (["--listen", "nohost:99999"], "invalid"),
        (["--interval", "0s"], "--interval"),
        (["--token-file", str(tmp_path / "missing")], "--token-file"),
        (["--attach", "warp"], "Invalid value for '--attach'"),
        (["--metrics-labels", "everything"], "Invalid value"),
    ):
        out = subprocess.run(
            [sys.executable, "-m", "bpfscope.cli", "serve", *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert out.returncode == 2, (args, out.stderr)
        assert needle in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_token_file_is_enforced(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    with agent(tmp_path, "--token-file", str(token)) as (url, _):
        assert httpx.get(url + "/api/v1/flows").status_code == 401
        ok = httpx.get(url + "/api/v1/flows", headers={"Authorization": "Bearer t0ken"})
        assert ok.status_code == 200


CHILD = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
nr = {"x86_64": (110, 3), "aarch64": (173, 57)}[os.uname().machine]
print(os.getpid(), flush=True)
sys.stdin.readline()
for _ in range(321):
    libc.syscall(nr[0])
for _ in range(45):
    libc.syscall(nr[1], -1)
print("done", flush=True)
sys.stdin.readline()
"""


@pytest.mark.parametrize("flag", ["--syscalls", "--syscall-latency"])
def test_syscalls_api_and_metrics_count_exactly(tmp_path: Path, flag: str) -> None:
    """--syscalls counts (sys_exit alone); --syscall-latency (which implies
    it) also times calls: the latency histogram and the API's latency fields."""
    latency = flag == "--syscall-latency"
    # a 1 s interval: the 0.1 s polling below cannot miss an interval
    with agent(tmp_path, flag, "--interval", "1s") as (url, _):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert child.stdin is not None
        assert child.stdout is not None
        pid = int(child.stdout.readline())
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "done"

        counts: dict[str, int] = {}
        seen_intervals: set[float] = set()

        def seen() -> bool:
            # each response is one interval; count each interval once
            body = httpx.get(url + "/api/v1/syscalls", params={"pid": pid, "limit": 1000}).json()
            if body["time"] in seen_intervals:
                return False
            seen_intervals.add(body["time"])
            assert body["latency"] is latency
            for item in body["items"]:
                assert ("total_ns" in item) is latency
                assert ("latency_log2_ns" in item) is latency
                counts[item["syscall"]] = counts.get(item["syscall"], 0) + item["count"]
            for e in body["errnos"]:
                key = f"{e['syscall']}:{e['errno']}"
                counts[key] = counts.get(key, 0) + e["count"]
            return counts.get("getppid", 0) >= 321 and counts.get("close:EBADF", 0) >= 45

        assert wait_for(seen, 10), counts
        # Python's own start-up never calls getppid nor closes fd -1
        assert counts["getppid"] == 321
        assert counts["close:EBADF"] == 45
        child.stdin.write("bye\n")
        child.stdin.flush()
        child.wait(timeout=10)

        fams = {f.name: f for f in text_string_to_metric_families(httpx.get(url + "/metrics").text)}
        calls = {s.labels["syscall"]: s.value for s in fams["bpfscope_syscalls"].samples}
        assert calls["getppid"] >= 321
        errs = {
            (s.labels["syscall"], s.labels["errno"]): s.value
            for s in fams["bpfscope_syscall_errors"].samples
        }
        assert errs[("close", "EBADF")] >= 45
        collectors = httpx.get(url + "/api/v1/health").json()["collectors"]
        health = collectors["syscalls"]
        assert health["alive"] is True
        assert health["latency"] is latency
        flows = collectors["flows"]
        # iter/tcp runs wherever tp_btf does (5.9+ with BTF)
        assert flows["tcp_accounting"] == "counters"
        assert flows["udp"] is True
        shared = flows["rungs"]["send"] in ("tp_btf", "raw_tp", "tracepoint")
        assert (flows["udp_note"] is not None) is shared
        by_time = httpx.get(url + "/api/v1/syscalls", params={"sort": "time"})
        if latency:
            assert health["rungs"].keys() == {"sys_enter", "sys_exit"}
            hist = fams["bpfscope_syscall_latency_seconds"]
            assert hist.type == "histogram"
            timed = {
                s.labels["syscall"]: s.value for s in hist.samples if s.name.endswith("_count")
            }
            assert timed["getppid"] >= 321
            assert by_time.status_code == 200
        else:
            assert health["rungs"].keys() == {"sys_exit"}  # one hook, no clock reads
            assert "bpfscope_syscall_latency_seconds" not in fams
            assert by_time.status_code == 400
            assert "--syscall-latency" in by_time.json()["detail"]
        # grouping and the page size apply to the errno rows as to the items
        grouped = httpx.get(url + "/api/v1/syscalls", params={"by": "syscall", "limit": 1}).json()
        assert len(grouped["items"]) <= 1
        assert len(grouped["errnos"]) <= 1
        for row in grouped["items"] + grouped["errnos"]:
            assert "pid" not in row
            assert "syscall" in row
        bad = httpx.get(url + "/api/v1/syscalls", params={"syscall": "getpdi"})
        assert bad.status_code == 400
        assert "did you mean" in bad.json()["detail"]


SHORT_CALLS = 5000
# Makes SHORT_CALLS getppid calls and exits (Python's start-up makes none).
SHORT = f"""
import ctypes, os
libc = ctypes.CDLL(None)
nr = {{"x86_64": 110, "aarch64": 173}}[os.uname().machine]
for _ in range({SHORT_CALLS}):
    libc.syscall(nr)
"""


def test_a_process_that_exits_within_an_interval_is_in_that_interval(tmp_path: Path) -> None:
    """A process that starts and exits between two polls is in the
    /api/v1/syscalls interval it ran in, with its exact count, and in the
    metrics published with it (not one interval later)."""

    def view(**params: Any) -> dict[str, Any]:
        return dict(httpx.get(url + "/api/v1/syscalls", params=params).json())

    def getppid_total() -> float:
        text = httpx.get(url + "/metrics").text
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        calls = fams.get("bpfscope_syscalls")
        samples = calls.samples if calls else []
        return sum(s.value for s in samples if s.labels["syscall"] == "getppid")

    # 2 s polls: the child (~0.1 s) starts right after one and is gone
    # long before the next, which has never seen it alive.
    with agent(tmp_path, "--syscalls", "--interval", "2s") as (url, _):
        first = wait_for(lambda: view().get("time"))
        assert wait_for(lambda: view().get("time") != first), "the syscall view never changed"
        before = view()
        metrics_before = getppid_total()
        assert view()["time"] == before["time"], "the child must start right after a poll"
        child = subprocess.Popen([sys.executable, "-c", SHORT])
        assert child.wait(timeout=30) == 0
        assert view()["time"] == before["time"], "the child outlived the interval"
        mine = {"pid": child.pid, "syscall": "getppid"}
        after = wait_for(lambda: (v := view(**mine))["time"] != before["time"] and v)
        metrics_after = getppid_total()
        assert view()["time"] == after["time"], "the metrics were read one interval late"
    mine = [(i["syscall"], i["count"]) for i in after["items"] if i["pid"] == child.pid]
    assert mine == [("getppid", SHORT_CALLS)]
    assert metrics_after - metrics_before >= SHORT_CALLS


def test_otlp_export_carries_real_flows(tmp_path: Path) -> None:
    """serve --otlp-endpoint sends each interval's flows, exact bytes, to an
    OTLP/HTTP receiver on loopback."""
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http", reason="bpfscope[otlp] missing")
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    bodies: list[bytes] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with agent(tmp_path, "--otlp-endpoint", endpoint):
            _port, cport = exchange(31_337, 4_242)

            def exported() -> dict[str, int]:
                tx = rx = 0
                for body in list(bodies):
                    req = ExportLogsServiceRequest()
                    req.ParseFromString(body)
                    for rl in req.resource_logs:
                        for sl in rl.scope_logs:
                            for r in sl.log_records:
                                a = {x.key: x.value for x in r.attributes}
                                if a["network.local.port"].int_value == cport:
                                    tx += a["bpfscope.flow.tx_bytes"].int_value
                                    rx += a["bpfscope.flow.rx_bytes"].int_value
                return {"tx": tx, "rx": rx} if rx >= 4_242 else {}

            got = wait_for(exported, 15)
        assert got == {"tx": 31_337, "rx": 4_242}
    finally:
        server.shutdown()
        server.server_close()
