"""``bpfscope syscalls`` end to end: filters reach the kernel, JSON comes out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from bpfscope.sysnames import syscall_nr

pytestmark = pytest.mark.kernel

BPFSCOPE = [sys.executable, "-m", "bpfscope.cli", "syscalls"]

# Fails close(-1) and succeeds getppid() until stdin closes.
LOOP = textwrap.dedent(
    f"""
    import ctypes, select, sys
    libc = ctypes.CDLL(None)
    print("ready", flush=True)
    while not select.select([sys.stdin], [], [], 0)[0]:
        for _ in range(100):
            libc.syscall({syscall_nr("close")}, -1)
            libc.syscall({syscall_nr("getppid")})
    """
)


def _report_failed_close(*extra: str) -> tuple[int, list[dict[str, Any]]]:
    """Two JSON reports of one process's failed close/getppid calls."""
    child = subprocess.Popen(
        [sys.executable, "-c", LOOP], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        done = subprocess.run(
            [
                *BPFSCOPE,
                "-p",
                str(child.pid),
                "-s",
                "close,getppid",
                "--failed",
                "--by",
                "both",
                "-i",
                "0.5",
                "-n",
                "2",
                "--json",
                *extra,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        child.kill()
        child.wait()
    assert done.returncode == 0, done.stderr
    reports = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(reports) == 2
    last = reports[-1]
    assert last["filter"] == f"pid {child.pid}, 2 syscall(s), failed calls only"
    assert ("sys_enter=" in last["mechanism"]) == ("-L" in extra)  # the default: sys_exit alone
    assert [(r["pid"], r["syscall"]) for r in last["rows"]] == [(child.pid, "close")]
    # The child keeps calling between the reads of the two maps, so only the
    # exact-workload tests compare the errno count with the row count.
    assert [(e["syscall"], e["errno"]) for e in last["errnos"]] == [("close", "EBADF")]
    assert last["errnos"][0]["count"] > 0
    return child.pid, reports


def test_json_report_default_mode_has_no_latency_fields() -> None:
    _pid, reports = _report_failed_close()
    last = reports[-1]
    assert last["latency"] is False
    assert "latency_buckets" not in last
    row = last["rows"][0]
    assert row["errors"] == row["count"] > 0
    assert not {"total_ns", "mean_ns", "latency_log2_ns"} & set(row)


def test_json_report_with_latency() -> None:
    _pid, reports = _report_failed_close("-L", "--sort", "time")
    last = reports[-1]
    assert last["latency"] is True
    assert last["sort"] == "time"
    assert "latency_buckets" in last
    row = last["rows"][0]
    assert row["errors"] == row["count"] == sum(row["latency_log2_ns"]) > 0
    assert row["total_ns"] > 0


@pytest.mark.parametrize(
    ("extra", "columns"),
    [
        ((), ["SYSCALL", "COUNT", "RATE/s", "ERRORS"]),
        (("-L",), ["SYSCALL", "COUNT", "RATE/s", "ERRORS", "TIME", "MEAN"]),
    ],
)
def test_plain_report_when_not_a_terminal(extra: tuple[str, ...], columns: list[str]) -> None:
    done = subprocess.run(
        [*BPFSCOPE, "-i", "0.3", "-n", "1", "-e", *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "calls in 0.3" in lines[0]
    assert lines[1].split() == columns
    assert ("latency of " in done.stdout) == bool(extra)
    assert "\x1b[" not in done.stdout  # no terminal control sequences in a pipe


SHORT_CALLS = 5000
# Makes SHORT_CALLS getppid calls and exits (Python's start-up makes none).
SHORT = textwrap.dedent(
    f"""
    import ctypes
    libc = ctypes.CDLL(None)
    for _ in range({SHORT_CALLS}):
        libc.syscall({syscall_nr("getppid")})
    """
)


def _wait_attached(proc: subprocess.Popen[str], timeout: float = 30.0) -> None:
    """Until ``proc`` holds a BPF link: its programs are attached."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
            if any(os.readlink(f"/proc/{proc.pid}/fd/{fd}") == "anon_inode:bpf_link" for fd in fds):
                return
        except FileNotFoundError:  # an fd closed while listed
            pass
        time.sleep(0.05)
    raise AssertionError("bpfscope syscalls did not attach")


@pytest.mark.parametrize("stop", ["-n", "SIGINT", "SIGTERM"])
def test_a_process_that_exits_in_the_last_interval_is_in_the_last_report(stop: str) -> None:
    """A process that runs and exits inside the only interval (``-n 1``), or
    before Ctrl-C or SIGTERM ends tracing, is in that report with its exact
    count: the last report drains everything counted up to the stop."""
    args = ["-s", "getppid", "--by", "both", "-T", "0", "--json"]
    # -n: one interval long enough for the child to start, run and exit in
    # it on a loaded machine (checked below, so a slow start fails as such).
    args += ["-i", "8", "-n", "1"] if stop == "-n" else ["-i", "60"]
    cli = subprocess.Popen(
        [*BPFSCOPE, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        _wait_attached(cli)
        child = subprocess.Popen([sys.executable, "-c", SHORT])
        assert child.wait(timeout=30) == 0
        assert cli.poll() is None, "the interval ended before the child exited"
        if stop != "-n":
            cli.send_signal(getattr(signal, stop))
        out, err = cli.communicate(timeout=30)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, err
    reports = [json.loads(line) for line in out.splitlines()]
    assert len(reports) == 1
    mine = [(r["syscall"], r["count"]) for r in reports[0]["rows"] if r["pid"] == child.pid]
    assert mine == [("getppid", SHORT_CALLS)]
