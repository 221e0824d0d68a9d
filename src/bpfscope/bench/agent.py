"""Load benchmark of `bpfscope serve` (``bpfscope bench agent``), on this machine.

Starts a real agent, fills its kernel flow table with N real UDP flows on
loopback (one datagram to each of N ports), then measures:
  1. latency of GET /api/v1/flows?limit=100 (p50/p95 of R requests);
  2. time of a /metrics scrape;
  3. C concurrent clients hitting /api/v1/flows and /metrics for T seconds:
     errors, and whether the collector kept up (events dropped, poll time).

    sudo bpfscope bench agent [--flows 100000] [--clients 50] [--seconds 30]

The bars are absolute (latency, errors, drops), not ratios: each is one
measurement of the agent under load, not an overhead against a baseline.
"""

from __future__ import annotations

import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import EXIT_UNSUPPORTED, UserError

__all__ = ["bars_met", "run"]


def _httpx() -> Any:
    try:
        import httpx
    except ImportError:
        raise UserError(
            "bench agent needs httpx: pip install 'bpfscope[agent]'", EXIT_UNSUPPORTED
        ) from None
    return httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_agent(
    port: int, db: Path, max_flows: int, extra: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    httpx = _httpx()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "bpfscope.cli", "serve", "--listen", f"127.0.0.1:{port}",
            "--interval", "1s", "--db", str(db), "--no-dns", "--max-flows", str(max_flows),
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    err = proc.stderr.read().decode() if proc.stderr else ""
    raise UserError(f"agent did not start: {err.strip() or 'no output'}", EXIT_UNSUPPORTED)


def make_udp_flows(n: int) -> None:
    """One datagram from one socket to n distinct loopback ports."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for i in range(n):
        # 60k ports per loopback address; 127.0.0.0/8 is all loopback
        s.sendto(b"x", (f"127.0.0.{1 + i // 60000}", 1024 + i % 60000))
    s.close()


def percentile(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))]


def run(
    flows: int = 100_000, requests: int = 200, clients: int = 50, seconds: float = 30.0
) -> dict[str, Any]:
    """Run the load benchmark; the measurements as a flat dict."""
    httpx = _httpx()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        agent = start_agent(port, Path(tmp) / "h.db", max(262144, flows * 2))
        try:
            make_udp_flows(flows)
            deadline = time.monotonic() + 60
            total = 0
            while time.monotonic() < deadline:
                total = httpx.get(url + "/api/v1/flows", params={"limit": 1}, timeout=30).json()[
                    "total"
                ]
                if total >= flows:
                    break
                time.sleep(1)
            with httpx.Client(base_url=url, timeout=30) as c:
                lat = []
                for _ in range(requests):
                    t0 = time.perf_counter()
                    r = c.get("/api/v1/flows", params={"limit": 100})
                    lat.append(time.perf_counter() - t0)
                    r.raise_for_status()
                scrape = []
                for _ in range(10):
                    t0 = time.perf_counter()
                    c.get("/metrics").raise_for_status()
                    scrape.append(time.perf_counter() - t0)
                before = c.get("/api/v1/health").json()

            errors = 0
            done = 0
            lock = threading.Lock()
            stop = time.monotonic() + seconds

            def client(i: int) -> None:
                nonlocal errors, done
                with httpx.Client(base_url=url, timeout=30) as cc:
                    while time.monotonic() < stop:
                        path = "/metrics" if i % 5 == 0 else "/api/v1/flows"
                        try:
                            ok = (
                                cc.get(
                                    path, params={} if path == "/metrics" else {"limit": 100}
                                ).status_code
                                == 200
                            )
                        except httpx.HTTPError:
                            ok = False
                        with lock:
                            done += 1
                            errors += not ok

            threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            after = httpx.get(url + "/api/v1/health", timeout=30).json()
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=30)

    flows_health = after["collectors"]["flows"]
    result = {
        "flows_in_table": total,
        "flows_limit100_p50_ms": round(statistics.median(lat) * 1000, 1),
        "flows_limit100_p95_ms": round(percentile(lat, 95) * 1000, 1),
        "metrics_scrape_max_s": round(max(scrape), 3),
        "concurrent_clients": clients,
        "concurrent_seconds": seconds,
        "concurrent_requests": done,
        "concurrent_errors": errors,
        "events_dropped_during_load": flows_health["events_dropped"]
        - before["collectors"]["flows"]["events_dropped"],
        "collector_polls_during_load": flows_health["polls"]
        - before["collectors"]["flows"]["polls"],
        "last_poll_seconds": flows_health["poll_seconds"],
    }
    return result


def bars_met(result: dict[str, Any]) -> bool:
    """p95 of /api/v1/flows < 200 ms, a scrape < 1 s, no errors, no drops."""
    return bool(
        result["flows_limit100_p95_ms"] < 200
        and result["metrics_scrape_max_s"] < 1
        and result["concurrent_errors"] == 0
        and result["events_dropped_during_load"] == 0
    )
