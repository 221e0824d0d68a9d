"""What packet-drop counting costs (``python -m bpfscope.bench.drops``).

1. A workload without drops (loopback TCP 1-byte request/response and
   bulk stream, the flow lab's ``netbench``) with the drop collector off
   and on (loaded, polled every second), interleaved round by round; the
   ratio of each round, on work per CPU second, as the flow lab reports.
   How many times the drop program ran during the "on" rounds is read
   from the kernel (bpf_stats): it runs per drop, not per packet.
2. A workload made of drops (UDP datagrams to a loopback port nobody
   listens on): the program's average run time per drop.

Compare ratios within one run; absolute numbers depend on the machine.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

from .. import libbpf as bpf
from ..drops.collector import DropCollector
from .flows import netbench, polled, run_netbench
from .pinning import bench_cpu, interleave
from .verdict import judge, paired_ratios

__all__ = ["main", "run"]

CONFIGS = ("off", "drops")


@contextmanager
def _drops(runs: list[int]) -> Iterator[None]:
    """The collector as the agent runs it; appends how many times its
    program ran meanwhile (drops counted + consumed skbs skipped, from the
    program's own counters: no bpf_stats needed)."""
    with DropCollector() as collector:
        try:
            with polled(collector):
                yield
        finally:
            collector.poll()
            stats = collector.stats()
            runs.append(stats.seen + stats.consumed_skipped)


def _on_tp_btf(collector: DropCollector) -> bool:
    return collector.tool.rungs().get("drop") == "tp_btf"


def no_drop_workload(seconds: float, rounds: int, cpu: int | None) -> dict[str, Any]:
    exe = netbench()
    out: dict[str, Any] = {}
    for mode in ("rr", "stream"):
        samples: dict[str, list[float]] = {c: [] for c in CONFIGS}
        runs: list[int] = []
        for _, config in interleave(CONFIGS, rounds):
            monitor = _drops(runs) if config == "drops" else nullcontext()
            with monitor:
                _wall, per_cpu = run_netbench(exe, mode, seconds, cpu)
            samples[config].append(per_cpu)
        ratios = paired_ratios(samples["drops"], samples["off"])
        verdict = judge(ratios)
        out[mode] = {
            "per_cpu_second": samples,
            "ratios": ratios,
            "verdict": verdict.to_json(),
            "verdict_text": verdict.text(3),
            "drop_program_runs_per_round": runs,
        }
    return out


def per_drop_cost(datagrams: int = 200_000) -> dict[str, Any]:
    """Average run time of the drop program over datagrams to a closed port."""
    with bpf.enable_run_time_stats(), DropCollector() as collector:
        prog = collector.tool.obj.program("drop_tp_btf" if _on_tp_btf(collector) else "drop_raw_tp")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()  # a port nobody listens on now
            before = prog.info()
            t0 = time.perf_counter()
            for _ in range(datagrams):
                s.sendto(b"x", ("127.0.0.1", port))
            elapsed = time.perf_counter() - t0
            after = prog.info()
        runs = after.run_cnt - before.run_cnt
        ns = after.run_time_ns - before.run_time_ns
        collector.poll()
        counted = sum(r.count for r in collector.snapshot() if r.dport == port)
    return {
        "datagrams": datagrams,
        "program_runs": runs,
        "counted_for_port": counted,
        "avg_ns_per_drop": round(ns / runs, 1) if runs else None,
        "send_loop_ns_per_datagram": round(elapsed / datagrams * 1e9, 1),
    }


def run(seconds: float = 2.0, rounds: int = 5, pin: bool = True) -> dict[str, Any]:
    cpu = bench_cpu() if pin else None
    return {
        "seconds": seconds,
        "rounds": rounds,
        "pinned_cpu": cpu,
        "no_drops": no_drop_workload(seconds, rounds, cpu),
        "per_drop": per_drop_cost(),
    }


def report(r: dict[str, Any]) -> str:
    lines = [f"drops on vs off, workload without drops ({r['rounds']} rounds of {r['seconds']}s):"]
    for mode, res in r["no_drops"].items():
        lines.append(
            f"  {mode:<6} on/off work per CPU second: {res['verdict_text']}; "
            f"drop program runs per round: {res['drop_program_runs_per_round']}"
        )
    d = r["per_drop"]
    lines.append(
        f"per drop: {d['avg_ns_per_drop']} ns in the program ({d['program_runs']} runs for "
        f"{d['datagrams']} datagrams to a closed port; {d['counted_for_port']} counted)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    result = run()
    print(json.dumps(result, indent=2) if "--json" in args else report(result))


if __name__ == "__main__":
    main()
