"""Measure the agent image: size, `docker run` to the first healthy
/api/v1/health, and the agent's memory at idle and with 1,000 flows.

    sudo .venv/bin/python scripts/measure_image.py IMAGE [docker run options...]

Runs IMAGE with the given options (add the compose file's security options)
on the host's network, listening on a loopback port; makes 1,000 TCP
connections on loopback (2,000 flows: both ends are on this host); prints
one JSON object with the number of flows the agent held. Run it under
/tmp/bpfscope-kernel.lock on a shared machine: it loads BPF programs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def _docker(*args: str) -> str:
    return subprocess.run([DOCKER, *args], check=True, capture_output=True, text=True).stdout


def _memory(pid: int, name: str) -> dict[str, float | str]:
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f.read().splitlines())
    rss_kib = int(status["VmRSS"].split()[0])
    stats = _docker("stats", "--no-stream", "--format", "{{.MemUsage}}", name).split("/")[0]
    return {"rss_mib": round(rss_kib / 1024, 1), "container_mem": stats.strip()}


def _flows(n: int) -> list[socket.socket]:
    """n TCP connections on loopback with a few bytes each way, kept open."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(n)
    keep = [srv]
    for _ in range(n):
        c = socket.create_connection(srv.getsockname())
        a, _ = srv.accept()
        c.sendall(b"q" * 100)
        a.recv(100)
        keep += [c, a]
    return keep


def main() -> int:
    image, opts = sys.argv[1], sys.argv[2:]
    port = _free_port()
    name = f"bpfscope-measure-{os.getpid()}"
    size = int(_docker("image", "inspect", "-f", "{{.Size}}", image))
    t0 = time.monotonic()
    subprocess.run(
        [DOCKER, "run", "-d", "--name", name, "--network", "host", *opts, image,
         "serve", "--listen", f"127.0.0.1:{port}"],
        check=True, capture_output=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                urllib.request.urlopen(url + "/api/v1/health", timeout=2)
                break
            except OSError:
                if time.monotonic() - t0 > 60:
                    raise SystemExit("the agent did not become healthy in 60 s") from None
                time.sleep(0.05)
        healthy_s = time.monotonic() - t0
        pid = int(_docker("inspect", "-f", "{{.State.Pid}}", name))
        time.sleep(10)
        idle = _memory(pid, name)
        conns = _flows(1000)
        time.sleep(5)
        total = _get(url + "/api/v1/flows?limit=1")["total"]
        loaded = _memory(pid, name)
        for s in conns:
            s.close()
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True)
    print(
        json.dumps(
            {
                "image_mb": round(size / 1e6, 1),
                "run_to_healthy_s": round(healthy_s, 2),
                "idle": idle,
                "flows": total,
                "with_flows": loaded,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
