"""Drops of sockets the owner hook never saw connect, attributed to the
process holding them: a UDP socket whose receive buffer is full (exactly
N - received drops, the receiver's pid) and an accepted TCP connection whose
output an nftables rule drops (the accepting server's pid). Standalone (the
sweep), through the agent (the flows collector's owner of the same flow)
and through ``bpfscope drops --json`` (the accepted connection: UDP
receive drops have a socket in the tracepoint only from 6.11 on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import httpx
import pytest
from test_drops import CLIENT_PORT, Pair, matching, netns_pair, nft_drop, run

from agent_helpers import serve_in_thread
from bpfscope import libbpf as bpf
from bpfscope.agent import Agent
from bpfscope.drops.collector import DropCollector
from bpfscope.drops.records import DropRecord
from bpfscope.flows.collector import FlowCollector
from bpfscope.server import create_app

pytestmark = pytest.mark.kernel

UDP_PORT = 39121
TCP_PORT = 39122
SENT = 60  # datagrams of 1000 bytes into a receive buffer of a few KB


@dataclass
class Held:
    """A process that holds the dropping socket open until the test ends."""

    proc: subprocess.Popen[str]
    comm: str
    stdin: IO[str]
    stdout: IO[str]

    def say(self, line: str = "go") -> None:
        self.stdin.write(line + "\n")
        self.stdin.flush()

    def line(self) -> str:
        return self.stdout.readline().strip()


@contextmanager
def held(ns: str, code: str) -> Iterator[Held]:
    proc = subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        h = Held(proc, "", proc.stdin, proc.stdout)
        assert h.line() == "ready"
        with open(f"/proc/{proc.pid}/comm") as f:
            h.comm = f.read().strip()
        yield h
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def udp_overflow(pair: Pair) -> Iterator[tuple[Held, int]]:
    """A receiver (in b) that does not read while a sender (in a) sends
    SENT datagrams; yields (the receiver, how many the kernel dropped), the
    receiver still holding its socket."""
    receiver = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        "s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,1)\n"
        f"s.bind(('{pair.b4}',{UDP_PORT}))\n"
        "print('ready',flush=True)\n"
        "sys.stdin.readline()\n"
        "s.setblocking(False)\n"
        "n=0\n"
        "while True:\n"
        "  try: s.recv(4096)\n"
        "  except BlockingIOError: break\n"
        "  n+=1\n"
        "print(n,flush=True)\n"
        "sys.stdin.readline()\n"
    )
    sender = (
        "import socket\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.bind(('{pair.a4}',{CLIENT_PORT}))\n"
        f"[s.sendto(b'x'*1000,('{pair.b4}',{UDP_PORT})) for _ in range({SENT})]\n"
    )
    with held(pair.b, receiver) as r:
        run("ip", "netns", "exec", pair.a, sys.executable, "-c", sender)
        time.sleep(0.3)  # the veth's backlog delivers in softirq
        r.say()
        received = int(r.line())
        assert 0 < received < SENT, received
        yield r, SENT - received


@contextmanager
def accepted_tcp(pair: Pair) -> Iterator[Held]:
    """A server (in b) that accepts a client (in a), then sends while an
    nftables rule drops its output; yields the server, still holding it."""
    server = (
        "import socket,sys,time\n"
        "l=socket.socket()\n"
        f"l.bind(('{pair.b4}',{TCP_PORT}))\n"
        "l.listen()\n"
        "print('ready',flush=True)\n"
        "c,_=l.accept()\n"
        "print('accepted',flush=True)\n"
        "sys.stdin.readline()\n"
        "c.setblocking(False)\n"
        "[c.send(b'y'*1000) for _ in range(3)]\n"
        "time.sleep(1.5)\n"  # a retransmission or two, from the timer
        "print('done',flush=True)\n"
        "sys.stdin.readline()\n"
    )
    client = (
        "import socket,sys\n"
        "s=socket.socket()\n"
        f"s.bind(('{pair.a4}',{CLIENT_PORT}))\n"
        f"s.connect(('{pair.b4}',{TCP_PORT}))\n"
        "print('ready',flush=True)\n"
        "sys.stdin.readline()\n"
    )
    with held(pair.b, server) as srv, held(pair.a, client):
        assert srv.line() == "accepted"
        nft_drop(pair.b, "output", f"tcp sport {TCP_PORT}")
        srv.say()
        assert srv.line() == "done"
        yield srv


def wait_for(collector: DropCollector, n: int, **want: Any) -> list[DropRecord]:
    deadline = time.monotonic() + 5
    while True:
        collector.poll()
        got = matching(collector.snapshot(), **want)
        if (sum(r.count for r in got) >= n and all(r.pid for r in got)) or (
            time.monotonic() > deadline
        ):
            return got
        time.sleep(0.1)


RCVBUF_REASONS = {"SOCKET_RCVBUFF", "PROTO_MEM"}


def _tracepoint_has_rx_sk() -> bool:
    try:
        with bpf.Btf.vmlinux() as btf:
            _, fields = btf.struct_layout("trace_event_raw_kfree_skb")
    except (bpf.BpfError, KeyError):
        return False
    return "rx_sk" in fields


# A datagram dropped before it is queued to its socket has no skb->sk; the
# tracepoint names the receiving socket (rx_sk) only from 6.11 on.
HAS_RX_SK = _tracepoint_has_rx_sk()
NO_RX_SK = (
    "skb:kfree_skb has no rx_sk before 6.11: a UDP datagram dropped for a full receive "
    "buffer has no socket in the tracepoint (skb->sk is set only once it is queued), so "
    "there is no socket, hence no owner, to report"
)


@pytest.mark.skipif(not HAS_RX_SK, reason=NO_RX_SK)
def test_udp_receive_buffer_drops_belong_to_the_receiver() -> None:
    with DropCollector() as collector, netns_pair() as pair:
        with udp_overflow(pair) as (r, dropped):
            got = wait_for(collector, dropped, dport=UDP_PORT, netns=pair.inode(pair.b))
            assert sum(x.count for x in got) == dropped, [x.to_json() for x in got]
            for x in got:
                assert x.reason in RCVBUF_REASONS, x.to_json()
                assert (x.pid, x.comm, x.owner_from) == (r.proc.pid, r.comm, "sweep"), x.to_json()
                assert x.socket
                assert x.sock_ino
                assert (x.proto, x.src, x.sport, x.dst) == ("udp", pair.a4, CLIENT_PORT, pair.b4)
                assert x.flow() == {
                    "laddr": pair.b4,
                    "lport": UDP_PORT,
                    "raddr": pair.a4,
                    "rport": CLIENT_PORT,
                }
        stats = collector.stats()
        assert stats.sweeps >= 1
        assert stats.owners_swept >= 1


def test_accepted_tcp_drops_belong_to_the_server() -> None:
    with DropCollector() as collector, netns_pair() as pair, accepted_tcp(pair) as srv:
        got = wait_for(collector, 1, sport=TCP_PORT, netns=pair.inode(pair.b))
        assert sum(x.count for x in got) >= 2  # a first send and a retransmission
        for x in got:
            assert x.reason == "NETFILTER_DROP", x.to_json()
            assert (x.pid, x.comm) == (srv.proc.pid, srv.comm), x.to_json()
            assert x.flow() == {
                "laddr": pair.b4,
                "lport": TCP_PORT,
                "raddr": pair.a4,
                "rport": CLIENT_PORT,
            }


def _api_items(url: str, port: int) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = httpx.get(url + "/api/v1/drops", params={"port": port}).json()[
        "items"
    ]
    return items


def _wait_api(url: str, port: int, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 6
    while True:
        items = _api_items(url, port)
        done = sum(i["count"] for i in items) >= n and all(i["pid"] for i in items)
        if done or time.monotonic() > deadline:
            time.sleep(0.5)  # one more poll: nothing more comes
            return _api_items(url, port)
        time.sleep(0.1)


def test_agent_attributes_both_through_the_api() -> None:
    """The agent joins a drop with the flows collector's owner of the same
    flow (the accepted connection); the UDP receiver has no flow (it never
    read), so the sweep names it."""
    flows = FlowCollector(idle_timeout=3600, udp=False)
    agent = Agent(flows=flows, drops=DropCollector(), interval=0.2)
    with agent, serve_in_thread(create_app(agent)) as url, netns_pair() as pair:
        with udp_overflow(pair) as (r, dropped):
            if not HAS_RX_SK:  # the rest still runs: the accepted connection
                items = _wait_api(url, UDP_PORT, dropped)
                assert sum(i["count"] for i in items) == dropped, items
                assert all(i["pid"] is None and i["flow"] is None for i in items), items
                dropped = 0
            items = _wait_api(url, UDP_PORT, dropped) if dropped else []
            assert sum(i["count"] for i in items) == dropped, items
            for i in items:
                assert (i["pid"], i["comm"]) == (r.proc.pid, r.comm), i
                assert i["protocol"] == "udp"
                assert i["reason"] in RCVBUF_REASONS
        with accepted_tcp(pair) as srv:
            items = _wait_api(url, TCP_PORT, 2)
            server_ns = pair.inode(pair.b)
            mine = [i for i in items if i["sport"] == TCP_PORT and i["netns"] == server_ns]
            assert sum(i["count"] for i in mine) >= 2, items
            for i in mine:
                assert (i["pid"], i["comm"], i["owner_from"]) == (
                    srv.proc.pid,
                    srv.comm,
                    "flows",
                ), [
                    (i["netns"], i["reason"], i["pid"], i["count"], i["sport"], i["socket_inode"])
                    for i in items
                ]
                assert i["reason"] == "NETFILTER_DROP"


def _drop_program_ids() -> set[int]:
    out = run("bpftool", "prog", "show", "-j")
    return {int(p["id"]) for p in json.loads(out) if p.get("name", "").startswith("drop_tp")}


def test_cli_json_carries_the_owner() -> None:
    """The accepting server's drops, named by the sweep (no flows collector
    in the CLI)."""
    before = _drop_program_ids()
    cli = subprocess.Popen(
        [sys.executable, "-m", "bpfscope.cli", "drops", "--json", "-d", "5", "--port",
         str(TCP_PORT), "--tcp"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while _drop_program_ids() <= before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _drop_program_ids() - before, "bpfscope drops did not attach"
        with netns_pair() as pair, accepted_tcp(pair) as srv:
            out, err = cli.communicate(timeout=20)
            assert cli.returncode == 0, err
            rows = [json.loads(line) for line in out.splitlines()]
            mine = [x for x in rows if x["netns"] == pair.inode(pair.b) and x["sport"] == TCP_PORT]
            assert sum(x["count"] for x in mine) >= 2, rows
            for x in mine:
                assert (x["pid"], x["comm"], x["owner_from"]) == (srv.proc.pid, srv.comm, "sweep")
                assert x["reason"] == "NETFILTER_DROP"
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
