"""Packet drops for real: datagrams to a port nobody listens on, datagrams
and a TCP connection dropped by nftables rules, in network namespaces these
tests create (and remove), counted exactly and attributed; then the same
through the agent's API and /metrics on a real uvicorn."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_helpers import FakeFlows, serve_in_thread
from bpfscope.agent import Agent
from bpfscope.drops.collector import DropCollector
from bpfscope.drops.records import DropRecord
from bpfscope.server import create_app

pytestmark = pytest.mark.kernel

UDP_PORT = 39111
TCP_PORT = 39112
NFT_PORT = 39113  # its own: namespace inodes are reused, kept records are not
CLIENT_PORT = 41234


def run(*cmd: str) -> str:
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


@dataclass(frozen=True)
class Pair:
    a: str
    b: str
    dev_a: str
    dev_b: str
    a4: str = "10.233.8.1"
    b4: str = "10.233.8.2"

    def inode(self, ns: str) -> int:
        return os.stat(f"/run/netns/{ns}").st_ino


def _mac(ns: str, dev: str) -> str:
    return str(json.loads(run("ip", "-n", ns, "-j", "link", "show", "dev", dev))[0]["address"])


@contextmanager
def netns_pair() -> Iterator[Pair]:
    """Two namespaces joined by a veth, with permanent neighbour entries
    (no ARP queue, so no drop but the ones a test makes)."""
    tag = secrets.token_hex(3)
    pair = Pair(a=f"bpfsdrop{tag}a", b=f"bpfsdrop{tag}b", dev_a=f"bda{tag}", dev_b=f"bdb{tag}")
    try:
        run("ip", "netns", "add", pair.a)
        run("ip", "netns", "add", pair.b)
        run(
            "ip", "link", "add", pair.dev_a, "netns", pair.a,
            "type", "veth", "peer", pair.dev_b, "netns", pair.b,
        )  # fmt: skip
        for ns, dev, addr in ((pair.a, pair.dev_a, pair.a4), (pair.b, pair.dev_b, pair.b4)):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        for ns, dev, peer_addr, peer_ns, peer_dev in (
            (pair.a, pair.dev_a, pair.b4, pair.b, pair.dev_b),
            (pair.b, pair.dev_b, pair.a4, pair.a, pair.dev_a),
        ):
            mac = _mac(peer_ns, peer_dev)
            run("ip", "-n", ns, "neigh", "replace", peer_addr, "lladdr", mac, "dev", dev, "nud",
                "permanent")  # fmt: skip
        yield pair
    finally:
        for ns in (pair.a, pair.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def nft_drop(ns: str, hook: str, match: str) -> None:
    """A table (its own name) in ``ns`` that drops ``match`` on ``hook``;
    it goes with the namespace."""
    table = f"bpfsdrop{secrets.token_hex(3)}"
    script = (
        f"table inet {table} {{\n chain c {{\n  type filter hook {hook} priority 0;\n"
        f"  {match} drop\n }}\n}}\n"
    )
    subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=script, check=True,
                   capture_output=True, text=True)  # fmt: skip


def send_udp(ns: str, dst: str, port: int, n: int) -> None:
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.bind(('0.0.0.0',{CLIENT_PORT}))\n"
        f"[s.sendto(b'drop-me',('{dst}',{port})) for _ in range({n})]\n"
    )
    run("ip", "netns", "exec", ns, sys.executable, "-c", code)


def matching(records: list[DropRecord], **want: Any) -> list[DropRecord]:
    return [r for r in records if all(getattr(r, k) == v for k, v in want.items())]


def wait_total(
    collector: DropCollector, pick: Callable[[list[DropRecord]], list[DropRecord]], n: int
) -> list[DropRecord]:
    deadline = time.monotonic() + 5
    while True:
        collector.poll()
        got = pick(collector.snapshot())
        if sum(r.count for r in got) >= n or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


@pytest.fixture(scope="module")
def collector() -> Iterator[DropCollector]:
    with DropCollector() as c:
        yield c


def test_reason_names_come_from_this_kernel(collector: DropCollector) -> None:
    assert collector.reasons.value("NO_SOCKET") is not None
    assert collector.reasons.value("NETFILTER_DROP") is not None
    assert collector.stats().rungs["drop"] == "tp_btf"


def test_udp_to_a_closed_port_counts_each_datagram_once(collector: DropCollector) -> None:
    n = 7
    with netns_pair() as pair:
        send_udp(pair.a, pair.b4, UDP_PORT, n)
        got = wait_total(
            collector,
            lambda rs: matching(rs, reason="NO_SOCKET", dport=UDP_PORT, sport=CLIENT_PORT),
            n,
        )
        time.sleep(0.3)
        collector.poll()
        got = matching(
            collector.snapshot(), reason="NO_SOCKET", dport=UDP_PORT, netns=pair.inode(pair.b)
        )
        assert sum(r.count for r in got) == n, [r.to_json() for r in got]
        (r,) = got
        assert (r.proto, r.family, r.src, r.dst) == ("udp", "ipv4", pair.a4, pair.b4)
        assert (r.sport, r.dport) == (CLIENT_PORT, UDP_PORT)
        # received by b: b's namespace and interface, no socket, no owner
        assert (r.netns, r.ifname) == (pair.inode(pair.b), pair.dev_b)
        assert not r.socket
        assert r.pid == 0
        assert r.comm == ""
        assert r.location.startswith("__udp4_lib_rcv")
        assert r.drop_bytes == n * (8 + 7)  # what kfree_skb saw: UDP header + payload


def test_nftables_drops_count_each_datagram_once(collector: DropCollector) -> None:
    n = 11
    with netns_pair() as pair:
        nft_drop(pair.b, "input", f"udp dport {NFT_PORT}")
        send_udp(pair.a, pair.b4, NFT_PORT, n)
        wait_total(collector, lambda rs: matching(rs, reason="NETFILTER_DROP", dport=NFT_PORT), n)
        time.sleep(0.3)
        collector.poll()
        got = matching(
            collector.snapshot(), reason="NETFILTER_DROP", dport=NFT_PORT, netns=pair.inode(pair.b)
        )
        assert sum(r.count for r in got) == n, [r.to_json() for r in got]
        assert {(r.proto, r.src, r.dst, r.sport, r.netns) for r in got} == {
            ("udp", pair.a4, pair.b4, CLIENT_PORT, pair.inode(pair.b))
        }
        # nothing reached the UDP layer: no NO_SOCKET drop for these
        assert not matching(
            collector.snapshot(), reason="NO_SOCKET", dport=NFT_PORT, netns=pair.inode(pair.b)
        )


def test_tcp_drops_belong_to_the_clients_flow_and_process(collector: DropCollector) -> None:
    """The rule drops the client's SYNs on output: the first in connect()
    (the client's context), the retransmission from a timer (softirq, any
    task): both are the client's, through the owner recorded at connect."""
    with netns_pair() as pair:
        nft_drop(pair.a, "output", f"tcp dport {TCP_PORT}")
        code = (
            "import socket,sys\n"
            "s=socket.socket()\n"
            f"s.bind(('{pair.a4}',{CLIENT_PORT}))\n"
            "s.settimeout(2.5)\n"
            "print('go',flush=True)\n"
            f"try: s.connect(('{pair.b4}',{TCP_PORT}))\n"
            "except OSError as e: print('failed',e,flush=True)\n"
        )
        proc = subprocess.Popen(
            ["ip", "netns", "exec", pair.a, sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "go"
        with open(f"/proc/{proc.pid}/comm") as f:
            comm = f.read().strip()
        out, _ = proc.communicate(timeout=20)
        assert "failed" in out
        collector.poll()
        got = matching(
            collector.snapshot(), dport=TCP_PORT, sport=CLIENT_PORT, netns=pair.inode(pair.a)
        )
        assert got, "no drop seen for the TCP client"
        assert sum(r.count for r in got) >= 2  # the SYN and at least one retransmission
        for r in got:
            assert r.reason == "NETFILTER_DROP"
            assert (r.pid, r.comm) == (proc.pid, comm), r.to_json()
            assert r.socket
            assert r.flow() == {
                "laddr": pair.a4,
                "lport": CLIENT_PORT,
                "raddr": pair.b4,
                "rport": TCP_PORT,
            }
            assert (r.proto, r.netns) == ("tcp", pair.inode(pair.a))


def test_api_and_metrics_show_the_drops() -> None:
    n = 5
    drops = DropCollector()
    agent = Agent(flows=FakeFlows([]), drops=drops, interval=0.2)
    with agent, serve_in_thread(create_app(agent)) as url, netns_pair() as pair:
        send_udp(pair.a, pair.b4, UDP_PORT, n)

        def items() -> list[dict[str, Any]]:
            got: list[dict[str, Any]] = httpx.get(
                url + "/api/v1/drops", params={"reason": "NO_SOCKET", "port": UDP_PORT}
            ).json()["items"]
            return got

        deadline = time.monotonic() + 5
        while sum(i["count"] for i in items()) < n and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        (item,) = items()
        assert item["count"] == n
        assert (item["protocol"], item["src"], item["dst"], item["dport"]) == (
            "udp", pair.a4, pair.b4, UDP_PORT,
        )  # fmt: skip
        assert item["interface"] == pair.dev_b
        assert item["pid"] is None
        assert (
            httpx.get(url + "/api/v1/drops", params={"protocol": "tcp", "port": UDP_PORT}).json()[
                "items"
            ]
            == []
        )
        for bad, status in (
            ({"bogus": "1"}, 400),
            ({"reason": "NOT_A_REASON"}, 400),
            ({"port": "0"}, 422),
            ({"protocol": "sctp"}, 422),
            ({"cidr": "10.0.0.300/8"}, 400),
            ({"limit": "0"}, 422),
        ):
            r = httpx.get(url + "/api/v1/drops", params=bad)
            assert r.status_code == status, (bad, r.text)
            assert "detail" in r.json()
        text = httpx.get(url + "/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(text)}
        samples = {
            (s.labels["reason"], s.labels["protocol"]): s.value
            for s in families["bpfscope_packet_drops"].samples
            if s.name == "bpfscope_packet_drops_total"
        }
        assert samples[("NO_SOCKET", "udp")] >= n
        assert all(set(s.labels) == {"reason", "protocol"} for s in families[
            "bpfscope_packet_drops"].samples)  # fmt: skip
        health = httpx.get(url + "/api/v1/health").json()["collectors"]["drops"]
        assert health["alive"]
        assert health["rungs"]["drop"] == "tp_btf"
        programs = httpx.get(url + "/api/v1/programs").json()["items"]
        assert any(p["collector"] == "drops" and p["hook"] == "drop" for p in programs)


def test_nothing_stays_attached_after_close() -> None:
    before = set(_drop_programs())
    with DropCollector() as c:
        mine = set(_drop_programs()) - before
        assert mine
        c.poll()
    deadline = time.monotonic() + 5  # the kernel frees programs after a grace period
    while mine & set(_drop_programs()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not mine & set(_drop_programs())


def _drop_programs() -> list[str]:
    out = run("bpftool", "prog", "show", "-j")
    return sorted(str(p["id"]) for p in json.loads(out) if p.get("name", "").startswith("drop_"))


def test_socket_less_drop_without_headers_is_kept(collector: DropCollector) -> None:
    """A sanity check on what every poll reads: no record has a port
    without an address, and counts never go down between polls."""
    collector.poll()
    first = {r.key: r.count for r in collector.snapshot()}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"x", ("127.0.0.1", 9))
    time.sleep(0.2)
    collector.poll()
    for r in collector.snapshot():
        assert r.count >= first.get(r.key, 0)
        if r.sport is not None:
            assert r.src is not None


def test_an_unread_fin_purged_at_close_is_not_a_drop(collector: DropCollector) -> None:
    """Closing a TCP socket without reading its peer's FIN purges that FIN's
    empty skb (QUEUE_PURGE): no data lost. Counted as skipped, not kept as a
    drop of its own connection (at churn rates that was one key per
    connection)."""
    if collector.reasons.value("QUEUE_PURGE") is None:
        pytest.skip("this kernel has no QUEUE_PURGE drop reason (before 6.0)")
    collector.poll()
    skipped = collector.stats().empty_purged_skipped
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]
    n = 20
    try:
        for _ in range(n):
            # a request and its answer, the server closing first: the
            # client reads the answer, not the end of file, and closes
            cl = socket.create_connection(("127.0.0.1", port))
            conn, _ = srv.accept()
            cl.sendall(b"GET / HTTP/1.1\r\n\r\n")
            conn.recv(100)
            conn.sendall(b"HTTP/1.1 200 OK\r\n\r\nhi")
            conn.close()
            cl.recv(100)
            cl.close()
    finally:
        srv.close()
    time.sleep(0.2)
    collector.poll()
    mine = [r for r in collector.snapshot() if port in (r.sport, r.dport)]
    assert not [r for r in mine if r.reason == "QUEUE_PURGE"], [r.to_json() for r in mine]
    assert collector.stats().empty_purged_skipped - skipped >= n, [r.to_json() for r in mine][:2]
