"""One set of flags for how often and how long (-i/--interval, -d/--duration,
-n/--count) and the same filter names across top, flows, conns and
syscalls: spelled and checked the same, and obeyed (with stand-in
collectors: no kernel needed)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from click.testing import CliRunner

from agent_helpers import FakeFlows, make_flow
from bpfscope.cli import cli
from bpfscope.clikit import RunLimits
from bpfscope.flows import cli as flows_cli
from bpfscope.flows.records import CollectorStats
from bpfscope.syscalls.cli import _report_loop
from bpfscope.syscalls.records import Drops, Snapshot
from bpfscope.syscalls.render import ViewOptions

FLAGS = {
    "top": ("-i, --interval", "-d, --duration", "-n, --count", "-c, --comm", "-p, --pid"),
    "flows": ("-d, --duration", "-c, --comm", "-p, --pid"),
    "conns": ("-d, --duration", "-n, --count", "-c, --comm", "-p, --pid"),
    "syscalls": ("-i, --interval", "-d, --duration", "-n, --count", "-c, --comm", "-p, --pid",
                 "--limit"),
    "history": ("-c, --comm", "-p, --pid", "--limit"),
}  # fmt: skip


@pytest.mark.parametrize("tool", sorted(FLAGS))
def test_every_tool_spells_the_shared_flags_the_same(tool: str) -> None:
    out = CliRunner().invoke(cli, [tool, "--help"], terminal_width=200)
    assert out.exit_code == 0, out.output
    for flag in FLAGS[tool]:
        assert flag in out.output, (tool, flag)
    if "-d, --duration" in FLAGS[tool] and tool != "flows":
        assert "Stop after this many seconds (default: until Ctrl-C)" in out.output


@pytest.mark.parametrize(
    "args",
    [["top", "-i", "0"], ["top", "-d", "0"], ["top", "-n", "0"], ["flows", "-d", "x"],
     ["conns", "-d", "-5"], ["conns", "-n", "x"], ["syscalls", "-i", "0.01"],
     ["syscalls", "-d", "0"], ["syscalls", "-n", "0"], ["conns", "-n", "0"]],
)  # fmt: skip
def test_bad_values_are_usage_errors_before_any_kernel_work(args: list[str]) -> None:
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 2, out.output
    assert "Invalid value" in out.output


def test_run_limits_stop_on_count_or_duration() -> None:
    now = [100.0]
    by_count = RunLimits(None, 2, clock=lambda: now[0])
    assert by_count.deadline(150.0) == 150.0
    by_count.add()
    assert not by_count.reached()
    by_count.add()
    assert by_count.reached()
    by_time = RunLimits(5.0, 0, clock=lambda: now[0])  # 0 reports: no limit
    assert by_time.deadline(150.0) == 105.0  # never sleeps past the end
    by_time.add(1000)
    assert not by_time.reached()
    now[0] = 105.0
    assert by_time.reached()


class Collector(FakeFlows):
    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_events(self, seconds: float) -> None:
        time.sleep(seconds)

    def stats(self) -> Any:
        return CollectorStats()


@pytest.fixture
def fake_collector(monkeypatch: pytest.MonkeyPatch) -> Collector:
    c = Collector([make_flow(i) for i in range(1, 4)])
    monkeypatch.setattr(flows_cli, "_collector", lambda *a, **k: c)
    return c


def reports(output: str) -> int:
    return len({json.loads(line)["time"] for line in output.splitlines()})


def test_top_stops_after_count_or_duration(fake_collector: Collector) -> None:
    out = CliRunner().invoke(cli, ["top", "--json", "--no-dns", "-i", "0.1", "-n", "2"])
    assert out.exit_code == 0, out.output
    assert reports(out.output) == 2
    t0 = time.monotonic()
    out = CliRunner().invoke(cli, ["top", "--json", "--no-dns", "-i", "0.2", "-d", "0.5"])
    took = time.monotonic() - t0
    assert out.exit_code == 0, out.output
    # reports at 0.2, 0.4 and the last one at the end (0.5)
    assert reports(out.output) == 3
    assert took < 3


def test_flows_prints_one_snapshot_after_duration(fake_collector: Collector) -> None:
    t0 = time.monotonic()
    out = CliRunner().invoke(cli, ["flows", "--json", "--no-dns", "-d", "0.3", "-c", "proc1"])
    assert out.exit_code == 0, out.output
    assert time.monotonic() - t0 >= 0.3
    assert [json.loads(line)["comm"] for line in out.output.splitlines()] == ["proc1"]


def test_conns_stops_after_duration(fake_collector: Collector) -> None:
    t0 = time.monotonic()
    out = CliRunner().invoke(cli, ["conns", "--json", "-d", "0.3"])
    assert out.exit_code == 0, out.output
    assert 0.3 <= time.monotonic() - t0 < 3


def test_syscalls_reports_stop_after_duration(capsys: pytest.CaptureFixture[str]) -> None:
    def poll() -> Snapshot:
        return Snapshot(time.time(), 0.1, (), (), Drops(), "sys_exit=tp_btf")

    opts = ViewOptions(by="syscall", sort="count", top=None, errnos=False, latency=False)
    _report_loop(poll, opts, 0.2, RunLimits(0.5, None), as_json=True)
    assert len(capsys.readouterr().out.splitlines()) == 3  # at 0.2, 0.4, and 0.5
    _report_loop(poll, opts, 0.05, RunLimits(None, 4), as_json=True)
    assert len(capsys.readouterr().out.splitlines()) == 4
