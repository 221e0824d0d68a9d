"""Test helpers for the agent: a fake flow source (no kernel) and a real
uvicorn server on loopback in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from bpfscope.flows.records import ConnEvent, FlowRecord


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_flow(i: int, **kw: Any) -> FlowRecord:
    base: dict[str, Any] = dict(
        pid=1000 + i % 50,
        comm=f"proc{i % 7}",
        cgroup_id=1,
        netns=1,
        family="ipv4",
        proto="tcp" if i % 3 else "udp",
        laddr="10.0.0.1",
        lport=40000 + i % 20000,
        raddr=f"192.168.{(i >> 8) & 255}.{i & 255}",
        rport=443 if i % 2 else 80,
        tx_bytes=i * 10,
        rx_bytes=i * 3,
        tx_delta=i % 100,
        rx_delta=(i * 7) % 100,
        first_seen=1000.0 + i,
        last_seen=2000.0 + i,
        container=f"ctr{i % 5}" if i % 4 else None,
    )
    base.update(kw)
    return FlowRecord(**base)


def make_event(i: int, kind: str = "open", **kw: Any) -> ConnEvent:
    base: dict[str, Any] = dict(
        time=1000.0 + i,
        type=kind,
        pid=1000 + i,
        comm="curl",
        cgroup_id=1,
        netns=1,
        family="ipv4",
        laddr="127.0.0.1",
        lport=50000 + i,
        raddr="127.0.0.1",
        rport=8080,
        direction="active",
        oldstate=None,
        newstate=None,
        established=True,
        duration=0.5 if kind == "close" else None,
        tx_bytes=None,
        rx_bytes=None,
        retransmits=None,
    )
    base.update(kw)
    return ConnEvent(**base)


class FakeStats:
    def to_json(self) -> dict[str, Any]:
        return {"rungs": {"send": "fake"}, "flows_in_map": 0}


class FakeFlows:
    """Stands in for FlowCollector in unit tests: scripted polls."""

    def __init__(self, flows: list[FlowRecord], events: list[ConnEvent] | None = None) -> None:
        self.flows = flows
        self.pending_events = list(events or [])
        self.fail_after: int | None = None
        self.polls = 0
        self.started = False
        self.closed = False

    def start(self) -> FakeFlows:
        self.started = True
        return self

    def poll(self, timeout: float = 0.0) -> list[Any]:
        self.polls += 1
        if self.fail_after is not None and self.polls > self.fail_after:
            raise RuntimeError("ring buffer vanished")
        events, self.pending_events = self.pending_events, []
        return [*self.flows, *events]

    def snapshot(self) -> list[FlowRecord]:
        return self.flows

    def stats(self) -> FakeStats:
        return FakeStats()

    def close(self) -> None:
        self.closed = True


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """Run ``app`` under a real uvicorn on a free loopback port."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def tcp_exchange(request: int, response: int) -> tuple[int, int]:
    """One TCP connection on loopback: client sends `request` bytes, the
    server answers `response` bytes. Returns (server port, client port)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def serve() -> None:
        conn, _ = srv.accept()
        got = 0
        while got < request:
            got += len(conn.recv(65536))
        conn.sendall(b"r" * response)
        conn.close()

    t = threading.Thread(target=serve)
    t.start()
    cli = socket.create_connection(("127.0.0.1", port))
    cport = cli.getsockname()[1]
    cli.sendall(b"q" * request)
    got = 0
    while got < response:
        chunk = cli.recv(65536)
        if not chunk:
            break
        got += len(chunk)
    cli.close()
    t.join()
    srv.close()
    return port, cport
