"""TCP volume from the kernel's own socket counters (iter/tcp each poll, the
lifecycle hook at CLOSE and destroy): exact payload bytes and segments at
every poll, sendfile, pre-fork servers, connections older than the
collector, and no bpfscope program per TCP message. Real sockets and
subprocess peers on loopback; exact numbers."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flows_support import Peer, Recorder

from bpfscope import libbpf as bpf
from bpfscope.flows import FlowCollector, FlowRecord, KernelFilter
from bpfscope.flows.collector import flows_of
from kernel_require import require

pytestmark = pytest.mark.kernel

# the traffic hooks of TCP: none of them may be attached with --no-udp
PER_MESSAGE_TARGETS = ("sock_send_length", "sock_recv_length", "tcp_sendmsg", "tcp_recvmsg")
# syscall tracepoints (and raw_syscalls): never attached by the flows tools
SYSCALL_TRACEPOINTS = ("sys_enter", "sys_exit")


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


def counters_collector(**kw: object) -> FlowCollector:
    require("tp_btf")
    c = FlowCollector(idle_timeout=3600, **kw)  # type: ignore[arg-type]
    c.start()
    if c.stats().tcp_accounting != "counters":
        c.close()
        pytest.fail("iter/tcp loads on this kernel, yet the collector fell back to the table")
    return c


@pytest.fixture
def collector() -> Iterator[FlowCollector]:
    c = counters_collector()
    try:
        yield c
    finally:
        c.close()


def test_counters_path_is_chosen_and_the_table_path_stays_available() -> None:
    c = counters_collector()
    with c:
        stats = c.stats()
        assert "tcp accounting: counters" in stats.summary()
        assert stats.sweeps == 1  # at start: owners of sockets older than the collector
    with FlowCollector(tcp_counters=False) as t:
        assert t.stats().tcp_accounting == "table"
        assert t.rungs()["send"] is not None


def test_exact_deltas_at_every_poll(collector: FlowCollector) -> None:
    """One connection across six polls: each poll reports exactly what moved
    since the previous one, bytes and segments, with no close."""
    srv, cl, conn = pair()
    port = srv.getsockname()[1]
    tx = rx = 0
    try:
        for size in (1, 4096, 100_000, 3, 65_536, 777):
            cl.sendall(b"a" * size)
            drain(conn, size)
            conn.sendall(b"b" * (size % 50 + 1))
            drain(cl, size % 50 + 1)
            tx += size
            rx += size % 50 + 1
            (client,) = [
                f for f in flows_of(collector.poll()) if f.pid == os.getpid() and f.rport == port
            ]
            assert (client.tx_delta, client.rx_delta) == (size, size % 50 + 1)
            assert (client.tx_bytes, client.rx_bytes) == (tx, rx)
            assert client.tx_segs
            assert client.rx_segs
            assert client.tx_segs_delta >= 1
            assert client.tx_calls is None  # segments, not calls, on this path
            assert client.retrans_bytes == 0
    finally:
        for s in (cl, conn, srv):
            s.close()


def test_sendfile_exact_bytes_both_ways(collector: FlowCollector) -> None:
    rec = Recorder(collector)
    with tempfile.NamedTemporaryFile() as f:
        f.write(os.urandom(1_234_567))
        f.flush()
        server = Peer("sendfile-server", f.name, "54321")
        port = server.port()
        client = Peer("tcp-client", "4", "127.0.0.1", str(port), "54321", "1234567", "normal")
        client.finish()
        server.finish()

    def closed() -> bool:
        return {server.pid, client.pid} <= {e.pid for e in rec.events if e.type == "close"}

    rec.wait(closed)
    (s,) = flows_on(rec, server.pid, port)
    (c,) = flows_on(rec, client.pid, port)
    assert (s.tx_bytes, s.rx_bytes) == (1_234_567, 54_321)
    assert (c.tx_bytes, c.rx_bytes) == (54_321, 1_234_567)
    closes = {e.pid: e for e in rec.events if e.type == "close" and port in (e.lport, e.rport)}
    assert (closes[server.pid].tx_bytes, closes[server.pid].rx_bytes) == (1_234_567, 54_321)
    assert closes[server.pid].tx_segs == s.tx_segs
    # loopback retransmits only under load (a tail loss probe): whatever it
    # was, the close event and the flow agree
    assert closes[server.pid].retrans_bytes == s.retrans_bytes


@pytest.mark.parametrize("close", ["after-peer", "first", "abort"])
def test_prefork_workers_are_credited_with_their_own_connections(
    collector: FlowCollector, close: str
) -> None:
    """The parent makes the listener, two forked workers accept: each worker
    gets exactly its connections' bytes and the open events, the parent
    nothing. Where no accept hook loads (this host: no fexit, no kprobes),
    a connection the worker still holds at a poll is adopted by the sweep
    (checked live on the first one), and one it closes before any poll by
    its own close: after the client's FIN, first, or with unread data (a
    reset)."""
    rec = Recorder(collector)
    server = Peer("prefork-server", "2", "2", close)
    port = server.port()
    sizes = [10_000, 23_456, 7_001, 99_999]
    unread = 100 if close == "abort" else 0
    for i, n in enumerate(sizes):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(struct.pack("!Q", n) + b"c" * (n - 8))
        drain(s, n // 3 + 7)
        if close == "after-peer" and i == 0:
            rec.wait(
                lambda n=n: any(f.lport == port and f.rx_bytes == n for f in rec.flows.values())
            )
            (live,) = [f for f in rec.flows.values() if f.lport == port]
            assert live.pid != server.pid
            assert (live.rx_bytes, live.tx_bytes) == (n, n // 3 + 7)
            assert [e.pid for e in rec.events if e.type == "open" and e.lport == port] == [live.pid]
        if unread:
            s.sendall(b"z" * unread)
            with contextlib.suppress(ConnectionResetError):
                s.recv(1)  # the worker's reset (or FIN)
        s.close()
    out = server.finish()
    served: dict[int, tuple[int, int]] = {}
    for line in out.splitlines():
        if line.startswith("served "):
            _, pid, _cport, n, reply = line.split()
            rx, tx = served.get(int(pid), (0, 0))
            served[int(pid)] = (rx + int(n), tx + int(reply))
    assert len(served) == 2, out
    assert sum(rx for rx, _ in served.values()) == sum(sizes) + unread * len(sizes), out

    def all_closed() -> bool:
        return sum(1 for e in rec.events if e.type == "close" and e.pid in served) == 4

    rec.wait(all_closed)
    for pid, (rx, tx) in served.items():
        flows = flows_on(rec, pid, port)
        assert sum(f.rx_bytes for f in flows) == rx
        assert sum(f.tx_bytes for f in flows) == tx
        opens = [e for e in rec.events_of(pid) if e.type == "open" and e.lport == port]
        assert len(opens) == 2
        assert all(e.direction == "passive" and e.duration is not None for e in opens)
    assert not [f for f in flows_on(rec, server.pid, port) if f.tx_bytes or f.rx_bytes]
    assert not [e for e in rec.events_of(server.pid) if e.type in ("open", "close")]


def test_connection_older_than_the_collector_counts_from_its_start() -> None:
    """Connected and sending before the collector: the sweep at start finds
    both processes; bytes count from the collector's start, exactly."""
    before, after = 50_000, 12_345
    server = Peer("ack-server", str(before), str(after))
    port = server.port()
    client = Peer("early-client", str(port), str(before), str(after))
    assert client.line() == "connected"
    c = counters_collector()
    with c:
        rec = Recorder(c)
        rec.poll()
        assert c.stats().adopted >= 2
        client.tell("go")
        client.finish()
        server.finish()
        rec.wait(lambda: any(e.type == "close" for e in rec.events_of(client.pid)))
        (cflow,) = flows_on(rec, client.pid, port)
        (sflow,) = flows_on(rec, server.pid, port)
        assert (cflow.tx_bytes, cflow.rx_bytes) == (after, 1)
        assert (sflow.tx_bytes, sflow.rx_bytes) == (1, after)
        assert cflow.comm == sflow.comm
        # no transition seen before the close: the state is the socket's
        assert cflow.state == sflow.state == "CLOSE"
        assert cflow.comm.startswith("python")


def test_connection_older_than_the_collector_shows_its_state() -> None:
    """No transition of it was seen: the counters pass gives the state."""
    srv, cl, conn = pair()
    port = srv.getsockname()[1]
    try:
        with counters_collector() as c:
            c.poll()
            cl.sendall(b"s" * 1000)
            drain(conn, 1000)
            live = [f for f in flows_of(c.poll()) if port in (f.lport, f.rport)]
            assert sorted((f.tx_bytes, f.state) for f in live) == [
                (0, "ESTABLISHED"),
                (1000, "ESTABLISHED"),
            ]
    finally:
        for s in (cl, conn, srv):
            s.close()


def test_concurrent_senders_and_polls_lose_nothing(collector: FlowCollector) -> None:
    srv, cl, conn = pair()
    port = srv.getsockname()[1]
    threads, sends, size = 4, 8000, 100
    stop = threading.Event()

    def poller() -> None:
        while not stop.is_set():
            collector.poll()

    def sender() -> None:
        for _ in range(sends):
            cl.sendall(b"x" * size)

    p = threading.Thread(target=poller)
    p.start()
    try:
        workers = [threading.Thread(target=sender) for _ in range(threads)]
        for w in workers:
            w.start()
        drain(conn, threads * sends * size)
        for w in workers:
            w.join()
    finally:
        stop.set()
        p.join()
    rec = Recorder(collector)
    rec.poll()
    try:
        client = [f for f in collector.snapshot() if f.pid == os.getpid() and f.rport == port]
        server = [f for f in collector.snapshot() if f.pid == os.getpid() and f.lport == port]
        assert [f.tx_bytes for f in client] == [threads * sends * size]
        assert [f.rx_bytes for f in server] == [threads * sends * size]
    finally:
        for s in (cl, conn, srv):
            s.close()


def test_port_filter_applies_to_the_counters() -> None:
    srv_a, cl_a, conn_a = pair()
    srv_b, cl_b, conn_b = pair()
    port_a = srv_a.getsockname()[1]
    try:
        c = counters_collector(kernel_filter=KernelFilter(port=port_a, pid=os.getpid()))
        with c:
            rec = Recorder(c)
            for cl, conn in ((cl_a, conn_a), (cl_b, conn_b)):
                cl.sendall(b"f" * 5000)
                drain(conn, 5000)
            rec.poll()
            ports = {(f.lport, f.rport) for f in rec.flows_of(os.getpid())}
            assert ports
            assert all(port_a in p for p in ports), ports
            client = [f for f in rec.flows_of(os.getpid()) if f.rport == port_a]
            assert [f.tx_bytes for f in client] == [5000]
    finally:
        for s in (cl_a, conn_a, srv_a, cl_b, conn_b, srv_b):
            s.close()


def test_bytes_received_before_a_reset_count(collector: FlowCollector) -> None:
    """The peer sends and resets: received payload counts when the kernel
    received it (counters), whether or not the application read it."""
    rec = Recorder(collector)
    srv, cl, conn = pair()
    port = srv.getsockname()[1]
    conn.sendall(b"r" * 3000)
    time.sleep(0.1)  # on loopback the data is in our receive queue now
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    srv.close()
    cl.close()
    rec.wait(lambda: any(e.type == "close" and e.rport == port for e in rec.events))
    (client,) = [f for f in flows_on(rec, os.getpid(), port) if f.rport == port]
    assert client.rx_bytes == 3000
    closes = [e for e in rec.events if e.type == "close" and e.rport == port]
    assert [e.rx_bytes for e in closes] == [3000]


def test_doctor_check_loads_what_the_collector_loads() -> None:
    """doctor --check loads flows with the counters path, and says so."""
    require("tp_btf")
    from io import StringIO

    from rich.console import Console

    from bpfscope.doctor_cli import _check

    (flows,) = [r for r in _check(None, None, Console(file=StringIO())) if r["tool"] == "flows"]
    assert flows["ok"] is True, flows
    assert flows["tcp_accounting"] == "counters", flows
    assert "socket counters" in flows["detail"], flows


def test_a_failed_counters_pass_is_counted_and_the_next_catches_up(
    collector: FlowCollector,
) -> None:
    rec = Recorder(collector)
    srv, cl, conn = pair()
    port = srv.getsockname()[1]
    passes = collector._counters
    assert passes is not None
    real = passes._counters

    class Failing:
        def run_iter(self) -> bytes:
            raise OSError(12, "Cannot allocate memory")

    try:
        cl.sendall(b"f" * 4321)
        drain(conn, 4321)
        passes._counters = Failing()  # type: ignore[assignment]
        rec.poll()  # no exception: counted
        assert collector.stats().counters_failures == 1
        passes._counters = real
        rec.poll()
        (client,) = [f for f in flows_on(rec, os.getpid(), port) if f.rport == port]
        assert client.tx_bytes == 4321
    finally:
        passes._counters = real
        for s in (cl, conn, srv):
            s.close()


@pytest.mark.parametrize("udp", [False, True])
def test_no_program_runs_per_tcp_message(udp: bool) -> None:
    """N round trips on one connection run the flows programs a constant
    number of times (lifecycle), not N: with UDP accounting off everywhere,
    and with it on where UDP has hooks of its own (fexit/kprobe on the UDP
    functions, e.g. 6.1), not the tracepoints TCP fires too."""
    c = counters_collector(udp=udp)
    with c:
        if udp and c.stats().udp_shares_tcp_hooks:
            pytest.skip(
                "UDP accounting shares the TCP send/receive hooks on this kernel "
                f"(send on {c.rungs()['send']}): TCP messages run its program"
            )
        if not udp:
            assert c.rungs().get("send") is None
            assert c.rungs().get("recv") is None
        obj = c.attached.obj
        names = [n for n, p in obj.programs.items() if p.autoload]
        iters = {"tcp_counters_iter", "sweep_owners"}
        with bpf.enable_run_time_stats():
            before = {n: obj.program(n).info().run_cnt for n in names}
            srv, cl, conn = pair()
            n = 2000
            try:
                for _ in range(n):
                    cl.sendall(b"q")
                    drain(conn, 1)
                    conn.sendall(b"r")
                    drain(cl, 1)
            finally:
                for s in (cl, conn, srv):
                    s.close()
            time.sleep(0.1)
            runs = {n_: obj.program(n_).info().run_cnt - before[n_] for n_ in names}
        per_event = sum(v for k, v in runs.items() if k not in iters)
        # a connect, an accept, state changes and destroys of three sockets
        # (and whatever other TCP the host made meanwhile): far below n
        assert per_event < 100, runs
        assert runs.get("tcp_counters_iter", 0) == 0  # no poll ran meanwhile


def test_flows_no_udp_attaches_nothing_to_the_tcp_message_path() -> None:
    """While `bpfscope flows --no-udp` runs, none of its links targets a
    send/receive hook."""
    require("tp_btf")
    from bpfscope.introspect.inventory import collect_links

    exe = Path(sys.executable).with_name("bpfscope")
    proc = subprocess.Popen(
        [str(exe), "flows", "--no-udp", "-d", "120", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        mine: list[object] = []
        deadline = time.monotonic() + 90  # a start-up under qemu TCG takes long
        while time.monotonic() < deadline and proc.poll() is None:
            links = collect_links()
            mine = [link for link in links if any(h.pid == proc.pid for h in link.holders)]
            if any("inet_sock_set_state" in link.target for link in mine):
                break
            time.sleep(0.2)
        targets = [link.target for link in mine]  # type: ignore[attr-defined]
        assert any("inet_sock_set_state" in t for t in targets), targets
        assert not [t for t in targets if any(p in t for p in PER_MESSAGE_TARGETS)], targets
        # a syscall tracepoint, even for accept alone, sends every syscall of
        # every task through the kernel's syscall-tracing slow path
        assert not [t for t in targets if any(p in t for p in SYSCALL_TRACEPOINTS)], targets
    finally:
        proc.terminate()
        proc.wait(10)


def test_live_counts_in_another_network_namespace(collector: FlowCollector) -> None:
    """iter/tcp walks its reader's namespace only: a connection inside a
    namespace the test creates shows its bytes before it closes."""
    from flows_support import netns_pair

    with netns_pair() as nets:
        server = Peer("ack-server", "40000", "1", netns=nets.b)
        port = server.port()
        client = Peer("early-client", str(port), "40000", "1", netns=nets.b)
        assert client.line() == "connected"
        rec = Recorder(collector)
        try:
            rec.wait(lambda: bool([f for f in flows_on(rec, client.pid, port) if f.tx_bytes]))
            (cflow,) = flows_on(rec, client.pid, port)
            assert (cflow.tx_bytes, cflow.rx_bytes) == (40000, 1)
            assert cflow.netns == nets.inode(nets.b)
            assert cflow.closed is None  # counted live, not at close
            assert collector.stats().netns_visited >= 2
        finally:
            client.tell("go")
            client.finish()
            server.finish()
