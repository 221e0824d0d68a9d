"""Connection churn against a real agent (``bpfscope bench agent --churn``).

nginx (the distribution's, started with a temporary configuration on a
loopback port) answers; ``churn.c`` makes TCP connections to it at fixed
rates (each an HTTP/1.0 request, the server closing first), and a fresh
``bpfscope serve`` watches each rate. Per rate: connections made (the
generator's count), opens and closes the agent counted (its /metrics),
events lost (its health), its CPU and peak RSS, its longest poll and the
longest gap between two polls, and history rows per bucket against the
distinct (process, peer, service port) groups. Bars from the issue that
asked for it; every number comes from the run it reports.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Final

from ..errors import EXIT_UNSUPPORTED, UserError
from .agent import _httpx, free_port, start_agent
from .driver import build_c

__all__ = ["DEFAULT_RATES", "RateResult", "bars", "run", "table"]

DEFAULT_RATES: Final = (1000, 5000, 10000, 20000, 0)  # 0: as fast as the generator can
COMM: Final = "bpfscope-churn"  # the generator's command name (<= 15 bytes)
RSS_BAR_MB: Final = 150
CPU_BAR_PERCENT: Final = 25.0
CPU_BAR_RATE: Final = 10000

_NGINX_CONF: Final = """worker_processes 2;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "ok\\n"; }} }}
}}
"""


@dataclass
class RateResult:
    rate: int  # asked for (0: as fast as possible)
    seconds: float
    made: int  # connections the generator completed
    failed: int
    opens_active: int  # counted by the agent (the generator's side)
    opens_passive: int  # (nginx's side)
    closes: int  # the generator's side
    events_lost: int
    cpu_percent: float  # of one core, over the run
    longest_poll: float
    longest_gap: float  # most seconds between two completed polls
    interval: float
    rss_peak_mb: float
    history_rows_max: int  # rows in the fullest history bucket
    history_groups: int  # distinct (process, peer, service port) in the history
    history_opened: int = 0  # the generator's connections the history counted opened
    history_closed: int = 0  # ... and closed

    @property
    def achieved(self) -> float:
        return self.made / self.seconds if self.seconds else 0.0


def _generator() -> Path:
    src = resources.files(__package__).joinpath("churn.c").read_bytes()
    return build_c(src, COMM)


def _nginx(tmp: Path, port: int) -> subprocess.Popen[bytes]:
    exe = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(exe, os.X_OK):
        raise UserError(
            "bench agent --churn needs nginx (apt install nginx-light)", EXIT_UNSUPPORTED
        )
    conf = tmp / "nginx.conf"
    conf.write_text(_NGINX_CONF.format(tmp=tmp, port=port))
    proc = subprocess.Popen(
        [exe, "-c", str(conf), "-e", str(tmp / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    import socket

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise UserError("nginx did not start", EXIT_UNSUPPORTED)


_SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def _counter(text: str, name: str, **want: str) -> int:
    """Sum of a counter's samples whose labels include ``want``."""
    total = 0.0
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m or m["name"] != name:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        if all(labels.get(k) == v for k, v in want.items()):
            total += float(m["value"])
    return int(total)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _history(db: Path, services: tuple[int, ...]) -> tuple[int, int, int, int]:
    """Of the churn's own rows (the generator and nginx, on ``services``,
    the ports listening here): rows in the fullest bucket, distinct
    (process, peer, service port), a process being a pid as in the
    history's key; and the generator's connections opened and closed."""
    known = ",".join(str(p) for p in services)
    with sqlite3.connect(db) as con:
        # the churn's own rows: the agent sees the whole host, and other
        # work on it (a shared machine) would count here too
        mine = f"comm IN ('{COMM}', 'nginx') AND (lport IN ({known}) OR rport IN ({known}))"
        rows = con.execute(
            "SELECT coalesce(max(c), 0) FROM"
            f" (SELECT count(*) c FROM flow_buckets WHERE {mine} GROUP BY bucket_start)"
        ).fetchone()[0]
        groups = con.execute(
            "SELECT count(*) FROM (SELECT DISTINCT pid, comm, raddr,"
            f" CASE WHEN lport IN ({known}) THEN lport ELSE rport END"
            f" FROM flow_buckets WHERE {mine})"
        ).fetchone()[0]
        opened, closed = con.execute(
            "SELECT coalesce(sum(opened), 0), coalesce(sum(closed), 0) FROM flow_buckets"
            " WHERE comm = ? AND direction = 'active'",
            (COMM,),
        ).fetchone()
    return int(rows), int(groups), int(opened), int(closed)


def _one_rate(
    exe: Path,
    nginx_port: int,
    rate: int,
    seconds: float,
    procs: int,
    serve_args: tuple[str, ...] = (),
) -> RateResult:
    httpx = _httpx()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    interval = 1.0
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "history.db"
        agent = start_agent(port, db, 262144, serve_args)
        try:
            with httpx.Client(base_url=url, timeout=30) as c:
                time.sleep(2 * interval)  # a poll or two before the load
                before = c.get("/metrics").text
                cpu0, t0 = _cpu_seconds(agent.pid), time.monotonic()
                gen = subprocess.run(
                    [str(exe), "127.0.0.1", str(nginx_port), str(rate), str(seconds), str(procs)],
                    capture_output=True,
                    text=True,
                    timeout=seconds + 60,
                )
                cpu1, t1 = _cpu_seconds(agent.pid), time.monotonic()
                m = re.search(r"made=(\d+) failed=(\d+) seconds=([\d.]+)", gen.stdout)
                if gen.returncode != 0 or m is None:
                    raise UserError(f"load generator failed: {gen.stderr.strip()}")
                # two completed polls after the load: every event counted
                polls = c.get("/api/v1/health").json()["collectors"]["flows"]["polls"]
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    health = c.get("/api/v1/health").json()["collectors"]["flows"]
                    if health["polls"] >= polls + 2:
                        break
                    time.sleep(0.2)
                after = c.get("/metrics").text
            rss = _rss_peak_mb(agent.pid)
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=60)
        rows, groups, h_opened, h_closed = _history(db, (nginx_port, port))

    def delta(name: str, **labels: str) -> int:
        return _counter(after, name, **labels) - _counter(before, name, **labels)

    return RateResult(
        rate=rate,
        seconds=float(m[3]),
        made=int(m[1]),
        failed=int(m[2]),
        opens_active=delta("bpfscope_tcp_connections_opened_total", comm=COMM, direction="active"),
        opens_passive=delta(
            "bpfscope_tcp_connections_opened_total", comm="nginx", direction="passive"
        ),
        closes=delta("bpfscope_tcp_connections_closed_total", comm=COMM),
        events_lost=int(health["events_dropped"]) + int(health.get("events_skipped", 0)),
        cpu_percent=100 * (cpu1 - cpu0) / max(t1 - t0, 1e-9),
        longest_poll=float(health["longest_poll_seconds"]),
        longest_gap=float(health["longest_gap_seconds"]),
        interval=interval,
        rss_peak_mb=rss,
        history_rows_max=rows,
        history_groups=groups,
        history_opened=h_opened,
        history_closed=h_closed,
    )


def run(
    rates: tuple[int, ...] = DEFAULT_RATES,
    seconds: float = 20.0,
    procs: int = 8,
    progress: Any = None,
    serve_args: tuple[str, ...] = (),
) -> list[RateResult]:
    exe = _generator()
    nginx_port = free_port()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        nginx = _nginx(Path(tmp), nginx_port)
        try:
            for rate in rates:
                if progress is not None:
                    progress(f"{rate or 'max'} connections/s for {seconds:g} s ...")
                results.append(_one_rate(exe, nginx_port, rate, seconds, procs, serve_args))
        finally:
            nginx.send_signal(signal.SIGQUIT)
            try:
                nginx.wait(timeout=10)
            except subprocess.TimeoutExpired:
                nginx.kill()
    return results


def bars(r: RateResult) -> dict[str, bool]:
    """The issue's bars for one rate."""
    out = {
        "no event lost": r.events_lost == 0,
        "every connection counted": r.opens_active == r.made
        and r.opens_passive == r.made
        and r.closes == r.made,
        "no poll late by more than one interval": r.longest_gap <= 2 * r.interval,
        f"RSS <= {RSS_BAR_MB} MB": r.rss_peak_mb <= RSS_BAR_MB,
        "history rows per bucket <= groups": r.history_rows_max <= r.history_groups,
    }
    if r.rate == CPU_BAR_RATE:
        out[f"CPU <= {CPU_BAR_PERCENT:g}% of a core"] = r.cpu_percent <= CPU_BAR_PERCENT
    return out


def table(results: list[RateResult]) -> str:
    """A Markdown table of the results, and each rate's bars."""
    head = (
        "| rate asked | made (/s) | opens counted (client/server) | closes counted | "
        "events lost | agent CPU | longest poll | longest gap | peak RSS | "
        "history rows/bucket (groups) | bars |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in results:
        b = bars(r)
        failed = [k for k, ok in b.items() if not ok]
        lines.append(
            f"| {r.rate or 'max'} | {r.made} ({r.achieved:,.0f}) | "
            f"{r.opens_active}/{r.opens_passive} | {r.closes} | {r.events_lost} | "
            f"{r.cpu_percent:.0f}% | {r.longest_poll:.2f} s | {r.longest_gap:.2f} s | "
            f"{r.rss_peak_mb:.0f} MB | {r.history_rows_max} ({r.history_groups}) | "
            f"{'pass' if not failed else 'FAIL: ' + ', '.join(failed)} |"
        )
    return head + "\n".join(lines)


def as_json(results: list[RateResult]) -> list[dict[str, Any]]:
    return [{**asdict(r), "achieved": r.achieved, "bars": bars(r)} for r in results]
