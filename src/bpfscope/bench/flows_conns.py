"""Collector CPU per poll with many open TCP connections
(``bpfscope bench flows-conns``).

On the counters path every poll walks every TCP socket with ``iter/tcp``,
so the collector's cost grows with the number of open connections, moving
or not. This holds N idle loopback connections open (2N sockets: both ends
are on this host) in helper processes, starts the collector as the agent
runs it (polled every ``interval`` seconds), and measures its CPU (user +
system of this process: the iterator runs inside its ``read``) over
``seconds`` after two warm-up polls. Each helper holds at most
:data:`PER_WORKER` connections on a listener of its own (ephemeral ports
are unique per destination) and raises its own RLIMIT_NOFILE as far as it
may.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Final

from ..errors import EXIT_UNSUPPORTED, UserError
from ..flows.collector import FlowCollector

__all__ = ["PER_WORKER", "ConnsResult", "conns_bench", "main", "map_memory", "report"]

# 2 fds per connection: under this machine's hard RLIMIT_NOFILE of 20,000
# (no CAP_SYS_RESOURCE here, so not even root may raise it)
PER_WORKER: Final = 5_000
DEFAULT_COUNTS: Final = (1_000, 10_000, 50_000)
# the bar: collector CPU at a 1 s interval with 10,000 open connections
BAR_CONNECTIONS: Final = 10_000
BAR_PERCENT: Final = 2.0

# One helper: a listener, n connections to it, both ends held open, idle.
_WORKER: Final = r"""
import resource, socket, sys, time
n = int(sys.argv[1])
want = 2 * n + 64
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if soft < want:
    try:  # above the hard limit needs CAP_SYS_RESOURCE (up to fs.nr_open)
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen(4096)
port = srv.getsockname()[1]
held = []
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    s, _ = srv.accept()
    held.append((c, s))
print("ready", flush=True)
sys.stdin.read()  # until the bench closes our stdin
"""


@dataclass
class ConnsResult:
    connections: int
    sockets_walked: int  # TCP sockets the last counters pass saw (both ends, listeners, others)
    interval: float
    seconds: float
    cpu_seconds: float
    polls: int
    poll_ms: list[float]  # wall time of each poll
    counters_ms: float  # the last iter/tcp pass
    drain_ms: float  # the last flow-table read
    flows_in_map: int
    map_bytes: int  # kernel memory of the collector's BPF maps (memlock), at the end

    @property
    def percent_of_core(self) -> float:
        return 100.0 * self.cpu_seconds / self.seconds

    @property
    def cpu_ms_per_poll(self) -> float:
        return 1e3 * self.cpu_seconds / self.polls if self.polls else 0.0


def map_memory(pid: int | None = None) -> int:
    """Bytes of kernel memory charged for the BPF maps a process holds open
    (the sum of ``memlock`` in its fdinfo: what the kernel accounts per map,
    on 6.4+ the memory actually in use)."""
    base = f"/proc/{pid or 'self'}"
    total = 0
    for fd in os.listdir(f"{base}/fd"):
        try:
            with open(f"{base}/fdinfo/{fd}") as f:
                info = f.read()
        except OSError:
            continue
        if "map_type:" in info:
            for line in info.splitlines():
                if line.startswith("memlock:"):
                    total += int(line.split()[1])
    return total


def _tcp_sockets() -> int:
    """TCP sockets in use on this host (/proc/net/sockstat, IPv4)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                fields = line.split()
                return int(fields[fields.index("alloc") + 1])
    return 0


def _open(connections: int) -> list[subprocess.Popen[str]]:
    workers = []
    left = connections
    try:
        while left > 0:
            n = min(PER_WORKER, left)
            left -= n
            w = subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(n)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                start_new_session=True,
            )
            workers.append(w)
        for w in workers:
            assert w.stdout is not None
            if w.stdout.readline().strip() != "ready":
                raise UserError(
                    f"a helper could not hold {PER_WORKER:,} connections"
                    " (RLIMIT_NOFILE, fs.nr_open, or memory?)",
                    EXIT_UNSUPPORTED,
                )
    except BaseException:
        _close(workers)
        raise
    return workers


def _close(workers: Sequence[subprocess.Popen[str]]) -> None:
    for w in workers:
        w.kill()
    for w in workers:
        w.wait()


def conns_bench(connections: int, seconds: float = 10.0, interval: float = 1.0) -> ConnsResult:
    """The collector's CPU with ``connections`` idle loopback connections open."""
    workers = _open(connections)
    try:
        with FlowCollector() as collector:
            for _ in range(2):  # warm up: the first passes adopt and decode every flow
                collector.poll()
            polls: list[float] = []
            t0, c0 = time.monotonic(), time.process_time()
            while time.monotonic() - t0 < seconds:
                time.sleep(interval)
                p0 = time.monotonic()
                collector.poll()
                polls.append(time.monotonic() - p0)
            cpu = time.process_time() - c0
            wall = time.monotonic() - t0
            s = collector.stats()
            walked = _tcp_sockets()
            memory = map_memory()
    finally:
        _close(workers)
    return ConnsResult(
        connections=connections,
        sockets_walked=walked,
        interval=interval,
        seconds=wall,
        cpu_seconds=cpu,
        polls=len(polls),
        poll_ms=[1e3 * p for p in polls],
        counters_ms=1e3 * s.counters_seconds,
        drain_ms=1e3 * s.drain_seconds,
        flows_in_map=s.flows_in_map,
        map_bytes=memory,
    )


def report(results: Sequence[ConnsResult]) -> str:
    lines = ["collector CPU per poll with idle open TCP connections (loopback: 2 sockets each):"]
    for r in results:
        lines.append(
            f"  {r.connections:>7,} connections: {r.percent_of_core:5.2f}% of one core at"
            f" {r.interval:g}s ({r.cpu_ms_per_poll:.1f} ms CPU per poll, poll wall median"
            f" {statistics.median(r.poll_ms):.1f} ms; last iter/tcp pass {r.counters_ms:.1f} ms,"
            f" table read {r.drain_ms:.1f} ms; {r.flows_in_map:,} flows in the table,"
            f" {r.sockets_walked:,} TCP sockets on the host; BPF map memory"
            f" {r.map_bytes / 2**20:.1f} MiB)"
        )
    for r in results:
        if r.connections == BAR_CONNECTIONS and r.interval == 1.0:
            ok = r.percent_of_core < BAR_PERCENT
            lines.append(
                f"  bar: < {BAR_PERCENT:g}% of one core with {BAR_CONNECTIONS:,} connections"
                f" at 1s: {'met' if ok else 'MISSED'} ({r.percent_of_core:.2f}%)"
            )
    lines.append(
        f"note: host {os.uname().release}, {os.cpu_count()} CPUs; RLIMIT_NOFILE here"
        f" {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}; helpers raise their own"
    )
    return "\n".join(lines)


def main(
    counts: Sequence[int] = DEFAULT_COUNTS,
    seconds: float = 10.0,
    interval: float = 1.0,
    as_json: bool = False,
) -> list[ConnsResult]:
    results = [conns_bench(n, seconds, interval) for n in counts]
    if as_json:
        out: list[dict[str, Any]] = [
            {
                **asdict(r),
                "percent_of_core": r.percent_of_core,
                "cpu_ms_per_poll": r.cpu_ms_per_poll,
            }
            for r in results
        ]
        print(json.dumps(out, indent=2))
    else:
        print(report(results))
    return results
