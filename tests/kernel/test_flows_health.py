"""TCP health per flow (RTT, windows, delivery rate, chrono fractions and
the limited_by verdict), read in the counters pass and at CLOSE. Real
traffic between two network namespaces these tests create (and remove),
joined by a veth; tbf shapes one path (netem is not available here)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from flows_support import run
from test_agent_live import agent, wait_for

from bpfscope.flows import ConnEvent, FlowCollector, FlowRecord
from bpfscope.flows.health import FRACTIONS, HEALTH_FIELDS
from kernel_require import require

pytestmark = pytest.mark.kernel

PEER = str(Path(__file__).with_name("health_peer.py"))
BPFSCOPE = (sys.executable, "-m", "bpfscope.cli")
# client ns -- router ns -- server ns; the router forwards, so a shaper on
# its egress is a real bottleneck queue (the sender's own qdisc would be
# kept short by TCP small queues)
CLIENT, SERVER = "10.232.1.1", "10.232.2.1"
# the shaped path: 8 Mbit/s (1 MB/s) with a 256 KB queue: 256 ms when full
RATE_BYTES = 1_000_000
QUEUE_BYTES = 256_000
QUEUE_DELAY_US = QUEUE_BYTES * 1_000_000 // RATE_BYTES


@dataclass(frozen=True)
class Net:
    client_ns: str
    router_ns: str
    server_ns: str


@contextmanager
def net(shaped: bool = False, one_segment_skbs: bool = False) -> Iterator[Net]:
    tag = secrets.token_hex(3)
    n = Net(f"bpfshc{tag}", f"bpfshr{tag}", f"bpfshs{tag}")
    c_dev, rc_dev, rs_dev, s_dev = (f"bh{x}{tag}" for x in ("c", "rc", "rs", "s"))
    try:
        for ns in (n.client_ns, n.router_ns, n.server_ns):
            run("ip", "netns", "add", ns)
            run("ip", "-n", ns, "link", "set", "lo", "up")
        for a_dev, a_ns, b_dev, b_ns in (
            (c_dev, n.client_ns, rc_dev, n.router_ns),
            (s_dev, n.server_ns, rs_dev, n.router_ns),
        ):
            run(
                "ip", "link", "add", a_dev, "netns", a_ns,
                "type", "veth", "peer", b_dev, "netns", b_ns,
            )  # fmt: skip
        for ns, dev, addr in (
            (n.client_ns, c_dev, f"{CLIENT}/24"),
            (n.router_ns, rc_dev, "10.232.1.254/24"),
            (n.router_ns, rs_dev, "10.232.2.254/24"),
            (n.server_ns, s_dev, f"{SERVER}/24"),
        ):
            run("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            run("ip", "-n", ns, "link", "set", dev, "up")
        if one_segment_skbs:  # no GSO: a send buffer holds segments, not one 64 KB skb
            run("ip", "-n", n.client_ns, "link", "set", c_dev, "gso_max_segs", "1")
        run("ip", "-n", n.client_ns, "route", "add", "default", "via", "10.232.1.254")
        run("ip", "-n", n.server_ns, "route", "add", "default", "via", "10.232.2.254")
        run("ip", "netns", "exec", n.router_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        if shaped:  # data goes client -> server: the queue is the router's toward the server
            run(
                "tc", "-n", n.router_ns, "qdisc", "add", "dev", rs_dev, "root", "tbf",
                "rate", f"{RATE_BYTES * 8}bit", "burst", "3000", "limit", str(QUEUE_BYTES),
            )  # fmt: skip
        yield n
    finally:
        for ns in (n.client_ns, n.router_ns, n.server_ns):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Proc:
    def __init__(self, ns: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, PEER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid

    def line(self) -> list[str]:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline().split()
        if not text:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"peer said nothing: {err}")
        return text

    def tell(self) -> None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write("go\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)


def health_of(r: FlowRecord | ConnEvent) -> dict[str, Any]:
    return {name: getattr(r, name) for name in HEALTH_FIELDS}


@dataclass
class Run:
    """What the collector saw of the client's flow."""

    live: list[dict[str, Any]] = field(default_factory=list)  # one per poll while sending
    last: dict[str, Any] = field(default_factory=dict)  # the flow's last poll
    close: ConnEvent | None = None
    sent: int = 0


def collector() -> FlowCollector:
    require("tp_btf")
    c = FlowCollector(idle_timeout=3600, udp=False).start()
    if c.stats().tcp_accounting != "counters":
        c.close()
        pytest.skip("iter/tcp not available: TCP health needs the counters path")
    return c


def transfer(c: FlowCollector, n: Net, server_mode: str, client_mode: str, seconds: float) -> Run:
    out = Run()
    server = Proc(n.server_ns, "server", SERVER, server_mode)
    client = None
    try:
        port = int(server.line()[1])
        client = Proc(n.client_ns, "client", SERVER, str(port), client_mode, str(seconds))
        lport = int(client.line()[1])

        def mine() -> FlowRecord | None:
            for f in c.snapshot():
                if f.pid == client.pid and f.lport == lport and f.proto == "tcp":
                    return f
            return None

        end = time.monotonic() + seconds
        while time.monotonic() < end - 0.5:
            c.poll(0.5)
            f = mine()
            if f is not None and f.limited_by is not None:
                out.live.append(health_of(f))
        out.sent = int(client.line()[1])
        c.poll(0.5)
        if (f := mine()) is not None:
            out.last = health_of(f)
        if server_mode == "stall":
            server.tell()  # closing with unread data resets the connection
        client.tell()
        deadline = time.monotonic() + 20  # queued data drains before the FIN
        while out.close is None and time.monotonic() < deadline:
            for r in c.poll(0.2):
                if isinstance(r, ConnEvent) and r.type == "close" and r.lport == lport:
                    out.close = r if r.pid == client.pid else out.close
        return out
    finally:
        server.stop()
        if client is not None:
            client.stop()


def show(label: str, r: Run) -> None:
    """What was measured, in the test's output (-s) and in failure messages."""
    print(f"{label}: sent {r.sent} bytes")
    for h in r.live:
        print("  live ", h)
    print("  close", r.close and health_of(r.close))


@pytest.fixture(scope="module")
def coll() -> Iterator[FlowCollector]:
    c = collector()
    try:
        yield c
    finally:
        c.close()


def median(values: list[int]) -> float:
    return sorted(values)[len(values) // 2]


def test_shaped_path_shows_queue_delay_and_network(coll: FlowCollector) -> None:
    with net() as n:
        plain = transfer(coll, n, "read", "bulk", 3)
    with net(shaped=True) as n:
        shaped = transfer(coll, n, "read", "bulk", 6)
    show("unshaped", plain)
    show("shaped", shaped)
    base = median([h["rtt_us"] for h in plain.live if h["rtt_us"]])
    peak = max(h["rtt_us"] or 0 for h in shaped.live)
    # a full queue adds QUEUE_BYTES / RATE (256 ms); CUBIC fills it until a
    # drop, then backs off by 30%: half of it is a floor the peak must pass
    assert peak >= QUEUE_DELAY_US // 2, (peak, QUEUE_DELAY_US)
    assert peak >= 20 * base, (peak, base)
    # sending as fast as the path allows: the network is the limit
    verdicts = [h["limited_by"] for h in shaped.live[2:]]
    assert verdicts.count("network") >= 0.8 * len(verdicts), verdicts
    assert shaped.close is not None
    assert shaped.close.limited_by == "network"
    assert shaped.close.network_limited_frac is not None
    assert shaped.close.network_limited_frac > 0.8
    # the shaper's rate, as the kernel's delivery rate sees it (within 30%)
    rates = [h["delivery_rate"] for h in shaped.live[2:]]
    assert 0.7 * RATE_BYTES <= median(rates) <= 1.3 * RATE_BYTES, rates


def test_receiver_that_stops_reading(coll: FlowCollector) -> None:
    with net() as n:
        r = transfer(coll, n, "stall", "bulk", 4)
    show("stalled receiver", r)
    last = r.live[-2:]
    assert last
    assert all(h["limited_by"] == "receiver" for h in last), last
    assert all(h["rwnd_limited_frac"] >= 0.9 for h in last), last
    assert r.last["snd_wnd"] == 0  # the peer advertises a closed window
    assert r.close is not None
    assert r.close.limited_by == "receiver"


def test_sender_with_small_writes_and_pauses(coll: FlowCollector) -> None:
    with net() as n:
        r = transfer(coll, n, "read", "chunks", 3)
    show("small writes", r)
    assert r.live
    assert all(h["limited_by"] == "app" for h in r.live), r.live
    assert median([h["app_limited_frac"] for h in r.live]) >= 0.9
    assert r.close is not None
    assert r.close.limited_by == "app"
    assert r.close.rtt_us is not None
    assert r.close.min_rtt_us is not None
    assert r.close.rtt_var_us is not None
    assert 0 < r.close.min_rtt_us <= r.close.rtt_us + r.close.rtt_var_us


def test_tiny_send_buffer(coll: FlowCollector) -> None:
    """SO_SNDBUF 4096 over the shaped path, GSO off on the client, a
    blocking writer: it sleeps in sendmsg while its few segments are in
    flight with room in cwnd. The kernel starts the sndbuf chrono in
    tcp_cwnd_validate (tcp_output.c) only after a transmission that leaves
    the write queue empty while SOCK_NOSPACE is set and the flow is not
    cwnd-limited, and stops it in tcp_check_space (tcp_input.c) when the
    writer is woken: a writer that polls (select, then send) was measured
    at 0 here, a blocking one at ~75 % (docs/flow-health.md)."""
    with net(shaped=True, one_segment_skbs=True) as n:
        r = transfer(coll, n, "read", "sndbuf", 4)
    show("tiny SO_SNDBUF", r)
    assert r.close is not None
    assert r.live, "no live reading of the flow"
    assert r.close.limited_by == "sndbuf", health_of(r.close)
    assert median([h["sndbuf_limited_frac"] for h in r.live]) >= 0.5, r.live
    assert r.close.sndbuf_limited_frac is not None
    assert r.close.sndbuf_limited_frac >= 0.5


# the values a connection keeps while idle: equal wherever they are read
EXACT = (
    "rtt_us", "rtt_var_us", "min_rtt_us", "cwnd", "ssthresh", "lost",
    "delivery_rate", "rcv_wnd", "snd_wnd", "retrans_bytes",
)  # fmt: skip


def attached(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    """Wait until a bpfscope process holds its BPF links (it is counting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        links = 0
        for fd in Path(f"/proc/{proc.pid}/fd").glob("*"):
            with suppress(OSError):  # fds come and go
                links += os.readlink(fd) == "anon_inode:bpf_link"
        if links >= 3:
            time.sleep(1.0)  # the remaining hooks and the first reading
            return
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    raise AssertionError("bpfscope flows never attached")


def test_same_health_in_flows_json_api_and_close_event(tmp_path: Path) -> None:
    """An idle connection (1000 bytes, then nothing, then an abortive close
    that exchanges no more segments) reads the same in `flows --json`,
    /api/v1/flows and its close event; fractions are interval shares live
    and lifetime shares at close, so those compare by verdict."""
    require("tp_btf")
    with net() as n, agent(tmp_path) as (url, _proc):
        server = Proc(n.server_ns, "server", SERVER, "read")
        client = None
        try:
            port = int(server.line()[1])
            # flows --json sees the connection start (an idle connection older
            # than the collector moves no counter, so it would not be listed)
            cli_proc = subprocess.Popen(
                [*BPFSCOPE, "flows", "--json", "--no-udp", "--port", str(port), "-d", "5"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            attached(cli_proc)
            client = Proc(n.client_ns, "client", SERVER, str(port), "idle", "0")
            lport = int(client.line()[1])
            assert int(client.line()[1]) == 1000
            time.sleep(1.0)  # delayed ACKs and the last RTT sample settle

            def api_flow() -> dict[str, Any] | None:
                items = httpx.get(url + "/api/v1/flows", params={"port": port}).json()["items"]
                mine = [f for f in items if f["pid"] == client.pid and f["lport"] == lport]
                if mine and mine[0]["limited_by"] is not None:
                    return dict(mine[0])
                return None

            api = wait_for(api_flow)
            assert api is not None, "the agent never showed the flow's health"
            out, err = cli_proc.communicate(timeout=60)
            assert cli_proc.returncode == 0, err
            cli = [
                f
                for f in map(json.loads, out.splitlines())
                if f["pid"] == client.pid and f["lport"] == lport
            ]
            assert len(cli) == 1, cli
            api_after = api_flow()  # still idle: nothing may have moved
            assert api_after is not None
            client.tell()

            def close_event() -> dict[str, Any] | None:
                items = httpx.get(
                    url + "/api/v1/connections", params={"port": port, "limit": 1000}
                ).json()["items"]
                mine = [
                    e
                    for e in items
                    if e["type"] == "close" and e["pid"] == client.pid and e["lport"] == lport
                ]
                return mine[0] if mine else None

            close = wait_for(close_event)
            assert close is not None, "no close event"
        finally:
            server.stop()
            if client is not None:
                client.stop()
    print("flows --json:", {k: cli[0][k] for k in HEALTH_FIELDS})
    print("/api/v1/flows:", {k: api[k] for k in HEALTH_FIELDS})
    print("close event:", {k: close[k] for k in HEALTH_FIELDS})
    for name in HEALTH_FIELDS:
        assert name in cli[0], name
        assert name in api, name
        assert name in close, name
    for name in EXACT:
        assert cli[0][name] == api[name] == api_after[name] == close[name], name
    assert api["rtt_us"] is not None
    assert api["rtt_us"] > 0
    assert api["delivery_rate"] > 0
    # idle: every live interval is all application time
    for live in (cli[0], api, api_after):
        assert live["limited_by"] == "app"
        assert live["app_limited_frac"] == 1.0
        assert live["network_limited_frac"] == live["rwnd_limited_frac"] == 0.0
    assert close["limited_by"] == "app"
    assert close["app_limited_frac"] > 0.9
    assert sum(close[f] for f in FRACTIONS) == pytest.approx(1.0, abs=1e-3)
