"""Per-socket TCP accounting (BTF rungs): traffic accumulates in socket-local
storage and is folded into the flow table by the collector's iterator, at
CLOSE, at destroy and when another process uses the socket. Real sockets,
exact numbers; the table path (raw_tp) is the reference."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from flows_support import Recorder

from bpfscope import features
from bpfscope.features import Mechanism
from bpfscope.flows import FlowCollector, FlowRecord, KernelFilter, programs
from bpfscope.ladder import target_missing
from kernel_require import require

pytestmark = pytest.mark.kernel


def pair() -> tuple[socket.socket, socket.socket, socket.socket]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    cl = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    return srv, cl, conn


def drain(sock: socket.socket, n: int) -> None:
    got = 0
    while got < n:
        chunk = sock.recv(65536)
        assert chunk, "peer closed early"
        got += len(chunk)


def flows_on(rec: Recorder, pid: int, port: int) -> list[FlowRecord]:
    return [f for f in rec.flows_of(pid) if port in (f.lport, f.rport)]


@pytest.fixture
def collector() -> Iterator[FlowCollector]:
    require("tp_btf")
    with FlowCollector(idle_timeout=3600) as c:
        yield c


def expected_mode(rungs: dict[str, str | None]) -> str:
    btf = {"tp_btf", "fexit"}
    on_btf = {rungs["send"], rungs["recv"]} <= btf
    folds = features.probe(Mechanism.MAP_ITER).available  # the fold is a map iterator
    return (
        "socket" if folds and on_btf and rungs["state"] == rungs["destroy"] == "tp_btf" else "table"
    )


def require_socket_mode(c: FlowCollector) -> None:
    """Per-socket accounting where the rungs allow it; else skip, saying why."""
    rungs = c.rungs()
    if expected_mode(rungs) == "table":
        # e.g. Debian 12's arm64 6.1: no fexit, no sock_send_length: kprobe rungs
        pytest.skip(f"TCP accounting is per table with send={rungs['send']}, recv={rungs['recv']}")
    assert c.stats().tcp_accounting == "socket", rungs


def test_mode_follows_the_rungs() -> None:
    require("tp_btf")
    with FlowCollector() as c:
        rungs = c.rungs()
        expected = expected_mode(rungs)
        assert c.stats().tcp_accounting == expected, rungs
        assert f"tcp accounting per {expected}" in c.stats().summary()
    # a rung without BTF-typed sockets: every event updates the table
    for mech in (Mechanism.RAW_TP, Mechanism.TRACEPOINT, Mechanism.KPROBE):
        send = next(r for r in programs.traffic_hooks()[0].rungs if r.mechanism is mech)
        if features.probe(mech).available and target_missing(send) is None:
            break
    else:
        pytest.skip("no rung without BTF (raw_tp, tracepoint, kprobe) can carry traffic here")
    with FlowCollector(force=mech) as c:
        assert c.stats().tcp_accounting == "table", c.rungs()


def test_pending_bytes_are_visible_at_every_poll(collector: FlowCollector) -> None:
    """No close, no owner change: only the iterator can fold these."""
    rec = Recorder(collector)
    srv, cl, conn = pair()
    port = srv.getsockname()[1]
    try:
        total = 0
        for size in (1, 4096, 100_000):
            cl.sendall(b"a" * size)
            drain(conn, size)
            total += size
            rec.poll()
            (client,) = [f for f in flows_on(rec, os.getpid(), port) if f.rport == port]
            assert (client.tx_bytes, client.rx_bytes) == (total, 0)
    finally:
        for s in (cl, conn, srv):
            s.close()


def test_socket_used_by_two_processes_in_turn(collector: FlowCollector) -> None:
    """Each process is credited with exactly what it sent on the shared socket."""
    rec = Recorder(collector)
    srv, cl, conn = pair()
    port = srv.getsockname()[1]
    try:
        cl.sendall(b"p" * 1000)
        child = subprocess.run(
            [
                sys.executable,
                "-c",
                "import socket, sys; s = socket.socket(fileno=int(sys.argv[1]));"
                " s.sendall(b'c' * 2000); print('ok')",
                str(cl.fileno()),
            ],
            pass_fds=[cl.fileno()],
            capture_output=True,
            text=True,
            check=True,
        )
        assert child.stdout.strip() == "ok"
        cl.sendall(b"p" * 3000)
        drain(conn, 6000)
        rec.poll()
        mine = [f for f in flows_on(rec, os.getpid(), port) if f.rport == port]
        assert [(f.tx_bytes, f.tx_calls) for f in mine] == [(4000, 2)]
        # the child's pid is gone; find its flow by the tuple and bytes
        others = [
            f
            for f in rec.flows.values()
            if f.rport == port and f.pid != os.getpid() and f.lport == cl.getsockname()[1]
        ]
        assert [(f.tx_bytes, f.tx_calls) for f in others] == [(2000, 1)]
    finally:
        for s in (cl, conn, srv):
            s.close()


def test_concurrent_senders_and_polls_lose_nothing(collector: FlowCollector) -> None:
    """Four threads send on one socket while the collector folds in a tight
    loop: every byte and call is counted exactly once."""
    srv, cl, conn = pair()
    port = srv.getsockname()[1]
    threads, sends, size = 4, 2000, 100
    stop = threading.Event()

    def reader() -> None:
        drain(conn, threads * sends * size)

    def sender() -> None:
        for _ in range(sends):
            cl.sendall(b"s" * size)

    def poller() -> None:
        while not stop.is_set():
            collector.poll()

    r = threading.Thread(target=reader)
    p = threading.Thread(target=poller)
    r.start()
    p.start()
    ts = [threading.Thread(target=sender) for _ in range(threads)]
    try:
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        r.join()
    finally:
        stop.set()
        p.join()
    collector.poll()  # the last sends' events may follow the reader's wakeup
    try:
        flows = [
            f for f in collector.snapshot() if f.pid == os.getpid() and port in (f.lport, f.rport)
        ]
        client = [f for f in flows if f.rport == port]
        server = [f for f in flows if f.lport == port]
        assert [(f.tx_bytes, f.tx_calls) for f in client] == [
            (threads * sends * size, threads * sends)
        ]
        assert [f.rx_bytes for f in server] == [threads * sends * size]
    finally:
        for s in (cl, conn, srv):
            s.close()


def test_port_filter_is_decided_per_socket() -> None:
    require("tp_btf")
    require("map_iter")  # the per-socket mode folds with a map iterator
    srv_a, cl_a, conn_a = pair()
    srv_b, cl_b, conn_b = pair()
    port_a, port_b = srv_a.getsockname()[1], srv_b.getsockname()[1]
    try:
        with FlowCollector(kernel_filter=KernelFilter(port=port_a, pid=os.getpid())) as c:
            require_socket_mode(c)
            rec = Recorder(c)
            for cl, conn in ((cl_a, conn_a), (cl_b, conn_b)):
                cl.sendall(b"f" * 5000)
                drain(conn, 5000)
            rec.poll()
            ports = {(f.lport, f.rport) for f in rec.flows_of(os.getpid())}
            assert ports
            assert all(port_a in p for p in ports), ports
            assert not any(port_b in p for p in ports)
            client = [f for f in rec.flows_of(os.getpid()) if f.rport == port_a]
            assert [f.tx_bytes for f in client] == [5000]
    finally:
        for s in (cl_a, conn_a, srv_a, cl_b, conn_b, srv_b):
            s.close()


def test_bytes_read_after_close_are_folded_at_destroy(collector: FlowCollector) -> None:
    """The peer sends and closes; we read only after our socket reached
    CLOSE (by a reset), then close it: the destroy fold keeps those bytes."""
    rec = Recorder(collector)
    srv, cl, conn = pair()
    port = srv.getsockname()[1]
    conn.sendall(b"r" * 3000)
    # abortive close of the server side: our socket goes to CLOSE on the RST,
    # with the 3000 bytes still queued for reading
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    conn.close()
    srv.close()
    got = 0
    try:
        while got < 3000:
            chunk = cl.recv(65536)
            if not chunk:
                break
            got += len(chunk)
    except ConnectionResetError:
        pass
    cl.close()
    rec.wait(lambda: any(f.rx_bytes for f in flows_on(rec, os.getpid(), port) if f.rport == port))
    (client,) = [f for f in flows_on(rec, os.getpid(), port) if f.rport == port]
    assert client.rx_bytes == got
    assert got > 0


def test_doctor_check_loads_what_the_collector_loads() -> None:
    """doctor --check loads flows with its extras, and says so."""
    require("tp_btf")
    from io import StringIO

    from rich.console import Console

    from bpfscope.doctor_cli import _check

    (flows,) = [r for r in _check(None, None, Console(file=StringIO())) if r["tool"] == "flows"]
    assert flows["ok"] is True, flows
    with FlowCollector() as c:
        per_socket = c.stats().tcp_accounting == "socket"
    assert ("TCP accounting per socket" in flows["detail"]) is per_socket, flows


def test_connection_older_than_the_collector_ending_in_a_reset() -> None:
    """A connection made before the collector started (no state change seen
    while the tuple was complete) and ended by a reset, which clears the
    local port before the last fold: every byte stays on the real flow."""
    require("tp_btf")
    srv, cl, conn = pair()
    port, cport = srv.getsockname()[1], cl.getsockname()[1]
    try:
        with FlowCollector(idle_timeout=3600, kernel_filter=KernelFilter(pid=os.getpid())) as c:
            rec = Recorder(c)
            cl.sendall(b"o" * 1000)
            drain(conn, 1000)
            rec.poll()
            cl.sendall(b"o" * 2000)
            drain(conn, 2000)
            cl.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            cl.close()  # RST: both ends go to CLOSE, ports cleared
            rec.wait(lambda: any(e.type == "close" for e in rec.events_of(os.getpid())))
            rec.poll()
            mine = [f for f in flows_on(rec, os.getpid(), port) if f.tx_bytes or f.rport == port]
            client = [f for f in mine if f.rport == port]
            assert [(f.lport, f.tx_bytes, f.tx_calls) for f in client] == [(cport, 3000, 2)]
            assert not [f for f in rec.flows.values() if f.lport == 0 and f.rport == port]
            closes = [e for e in rec.events_of(os.getpid()) if e.type == "close"]
            assert any(e.lport == cport and e.tx_bytes == 3000 for e in closes), closes
    finally:
        for s in (conn, srv):
            s.close()


def test_a_failed_fold_is_counted_and_the_next_poll_catches_up(collector: FlowCollector) -> None:
    require("map_iter")
    require_socket_mode(collector)
    rec = Recorder(collector)
    srv, cl, conn = pair()
    port = srv.getsockname()[1]
    real = collector._fold
    assert real is not None

    class Failing:
        def run_iter(self) -> bytes:
            raise OSError(12, "Cannot allocate memory")

    try:
        cl.sendall(b"f" * 4321)
        drain(conn, 4321)
        collector._fold = Failing()  # type: ignore[assignment]
        rec.poll()  # no exception: counted, read without the pending bytes
        assert collector.stats().fold_failures == 1
        collector._fold = real
        rec.poll()
        (client,) = [f for f in flows_on(rec, os.getpid(), port) if f.rport == port]
        assert client.tx_bytes == 4321
    finally:
        collector._fold = real
        for s in (cl, conn, srv):
            s.close()
