"""``bpfscope syscalls`` end to end: filters reach the kernel, JSON comes out."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from bpfscope.syscalls import syscall_nr

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


def test_json_report_for_one_process_failed_close_only() -> None:
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
    assert [(r["pid"], r["syscall"]) for r in last["rows"]] == [(child.pid, "close")]
    row = last["rows"][0]
    assert row["count"] > 0
    assert row["errors"] == row["count"] == sum(row["latency_log2_ns"])
    # The child keeps calling between the reads of the two maps, so only the
    # exact-workload tests compare the errno count with the row count.
    assert [(e["syscall"], e["errno"]) for e in last["errnos"]] == [("close", "EBADF")]
    assert last["errnos"][0]["count"] > 0


def test_plain_report_when_not_a_terminal() -> None:
    done = subprocess.run(
        [*BPFSCOPE, "-i", "0.3", "-n", "1", "-e", "-L"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "calls in 0.3" in lines[0]
    assert "\x1b[" not in done.stdout  # no terminal control sequences in a pipe
