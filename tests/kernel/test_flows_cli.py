"""The flow monitor's commands on real traffic: NDJSON output with exact
bytes, the lifecycle stream, plain snapshots in a pipe, input errors."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from bpfscope.flows import programs as flows_programs
from bpfscope.ladder import choose
from kernel_require import require

pytestmark = pytest.mark.kernel

PAYLOAD = 321


def bpfscope(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bpfscope.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def traffic() -> Iterator[int]:
    """Connections to a local port every 50 ms, PAYLOAD bytes each, until the test ends."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            while conn.recv(65536):
                pass
            conn.close()

    def talk() -> None:
        while not stop.wait(0.05):
            c = socket.create_connection(("127.0.0.1", port))
            c.sendall(b"t" * PAYLOAD)
            c.close()

    threads = [threading.Thread(target=serve), threading.Thread(target=talk)]
    for t in threads:
        t.start()
    yield port
    stop.set()
    for t in threads:
        t.join()
    srv.close()


def traffic_rung() -> str:
    """The rung the ladder picks for send/recv on this kernel (tp_btf here;
    fexit on 6.1, which has no sock_send_length)."""
    [send] = [c for c in choose(flows_programs.hooks()) if c.hook.name == "send"]
    assert send.rung is not None
    return str(send.rung.mechanism)


def test_flows_json_exact_bytes(traffic: int) -> None:
    require("tp_btf")
    r = bpfscope("flows", "--json", "--port", str(traffic), "-d", "2", "--stats")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    # a connection already open when the programs attached has no known
    # direction and part of its bytes unseen: only fully seen ones count
    clients = [
        f
        for f in rows
        if f["rport"] == traffic and f["pid"] == os.getpid() and f["direction"] is not None
    ]
    assert clients, rows
    # TCP from the kernel's counters: segments, not calls
    assert all(f["tx_bytes"] == PAYLOAD and f["tx_segs"] >= 1 for f in clients)
    assert all(f["tx_calls"] is None and f["retrans_bytes"] == 0 for f in clients)
    assert all(f["direction"] == "active" and f["proto"] == "tcp" for f in clients)
    assert all(traffic in (f["lport"], f["rport"]) for f in rows)  # kernel port filter
    stats = json.loads(r.stderr.strip().splitlines()[-1])["stats"]
    assert stats["rungs"]["send"] == stats["rungs"]["recv"] == traffic_rung()
    assert stats["events_dropped"] == 0
    assert stats["tcp_accounting"] == "counters"


def test_conns_json_stream(traffic: int) -> None:
    require("tp_btf")
    r = bpfscope("conns", "--json", "--port", str(traffic), "--count", "6", "-d", "20")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(events) == 6
    assert {e["type"] for e in events} <= {"open", "close"}
    assert all(e["pid"] == os.getpid() for e in events)
    closes = [e for e in events if e["type"] == "close" and e["direction"] == "active"]
    assert all(e["tx_bytes"] == PAYLOAD for e in closes)


def test_top_plain_snapshots_in_a_pipe(traffic: int) -> None:
    require("tp_btf")
    r = bpfscope("top", "-n", "2", "-i", "0.5", "--port", str(traffic), "--stats")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("PID  COMM") == 2
    rung = traffic_rung()
    assert f"rungs: send={rung}, recv={rung}" in r.stdout
    assert "\x1b[" not in r.stdout  # no terminal control in a pipe


def test_churn_groups_into_one_row_per_process(traffic: int) -> None:
    """A client churning through ephemeral ports was one row per port;
    grouped by process it is one row with the connection count."""
    require("tp_btf")
    r = bpfscope("flows", "--json", "--port", str(traffic), "-d", "2", "-g", "process")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    # this process is the client and the server of the traffic fixture
    mine = [g for g in rows if g["key"].endswith(f"[{os.getpid()}]")]
    assert len(mine) == 1, rows
    assert mine[0]["connections"] >= 2 * 10  # >= 10 connections in 2 s, both ends
    assert mine[0]["tx_bytes"] >= 10 * PAYLOAD
    r = bpfscope("top", "-n", "1", "-i", "0.5", "--port", str(traffic), "-g", "remote_port")
    assert r.returncode == 0, r.stderr
    assert "REMOTE_PORT" in r.stdout
    assert r.stdout.count(f"\n{traffic} ") == 1  # the clients' side: one row


@pytest.mark.parametrize(
    "args",
    [
        ["top", "--cidr", "10.0.0.0/33"],
        ["flows", "-4", "-6"],
        ["conns", "--udp-only"],
        ["flows", "--udp-only", "--no-udp"],
        ["flows", "-g", "process", "-s", "age"],
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str]) -> None:
    r = bpfscope(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("bpfscope: error:")
