"""Shared pieces of the flow monitor's kernel tests: network namespaces
joined by veth (created and removed by the tests, private addresses only),
subprocess peers, and a recorder that accumulates what the collector sees."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from bpfscope.flows import ConnEvent, FlowCollector, FlowRecord

PEER = str(Path(__file__).with_name("flows_peer.py"))


def run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@dataclass(frozen=True)
class NetnsPair:
    """Two namespaces a and b joined by a veth pair."""

    a: str
    b: str
    a4: str = "10.231.7.1"
    b4: str = "10.231.7.2"
    a6: str = "fd00:bf5c::1"
    b6: str = "fd00:bf5c::2"

    def inode(self, ns: str) -> int:
        return os.stat(f"/run/netns/{ns}").st_ino

    def addr(self, side: str, family: str) -> str:
        return {("a", "4"): self.a4, ("b", "4"): self.b4, ("a", "6"): self.a6, ("b", "6"): self.b6}[
            (side, family)
        ]


@contextmanager
def netns_pair() -> Iterator[NetnsPair]:
    tag = f"{os.getpid() % 100000}"
    pair = NetnsPair(a=f"bpfsflows{tag}a", b=f"bpfsflows{tag}b")
    va, vb = f"bfa{tag}", f"bfb{tag}"
    try:
        run("ip", "netns", "add", pair.a)
        run("ip", "netns", "add", pair.b)
        run("ip", "link", "add", va, "netns", pair.a, "type", "veth", "peer", vb, "netns", pair.b)
        for ns, dev, v4, v6 in ((pair.a, va, pair.a4, pair.a6), (pair.b, vb, pair.b4, pair.b6)):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            run("ip", "-n", ns, "-6", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")
        yield pair
    finally:
        for ns in (pair.a, pair.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


class Peer:
    """A subprocess peer, optionally inside a network namespace."""

    def __init__(self, *args: str, netns: str | None = None, cgroup: str | None = None) -> None:
        cmd = [sys.executable, PEER, *args]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        preexec = None
        if cgroup:
            procs = os.path.join(cgroup, "cgroup.procs")

            def preexec() -> None:
                with open(procs, "w") as f:
                    f.write(str(os.getpid()))

        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=preexec,
        )
        self.pid = self.proc.pid  # `ip netns exec` execs in place: same pid

    def line(self) -> str:
        assert self.proc.stdout is not None
        text = self.proc.stdout.readline().strip()
        if not text:
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"peer said nothing: {err}")
        return text

    def tell(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text + "\n")
        self.proc.stdin.flush()

    def port(self) -> int:
        word, port = self.line().split()
        assert word == "ready"
        return int(port)

    def finish(self, timeout: float = 20) -> str:
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, f"peer failed: {err}"
        return out


@dataclass
class Recorder:
    """Polls a collector and keeps the latest record of every flow and all events."""

    collector: FlowCollector
    flows: dict[tuple[object, ...], FlowRecord] = field(default_factory=dict)
    events: list[ConnEvent] = field(default_factory=list)

    def poll(self) -> None:
        for r in self.collector.poll(0.05):
            if isinstance(r, FlowRecord):
                key = (r.pid, r.proto, r.laddr, r.lport, r.raddr, r.rport, r.netns)
                self.flows[key] = r
            else:
                self.events.append(r)

    def flows_of(self, pid: int) -> list[FlowRecord]:
        return [f for f in self.flows.values() if f.pid == pid]

    def events_of(self, pid: int) -> list[ConnEvent]:
        return [e for e in self.events if e.pid == pid]

    def wait(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            if cond():
                return
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the collector to see it")
            time.sleep(0.05)
