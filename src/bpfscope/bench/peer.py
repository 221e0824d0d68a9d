"""bpftrace as the peer, the lab's one bpftrace runner: a script started
fresh for each run and timed only once it is attached.

Every script gets a BEGIN probe that prints a marker: bpftrace runs BEGIN
after every other probe is attached, so timing starts only once the probes
are live. The syscall sweep's script is the study's own probe,
``tracepoint:syscalls:sys_enter_<name> { @ = count(); }``; the tracer and
flow benchmarks bring their equivalents of bpfscope's programs. On exit (SIGINT)
bpftrace prints ``@: <count>``, which is kept as evidence that it saw the
calls.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

from ..errors import UserError

__all__ = ["Bpftrace", "BpftraceRun", "find_bpftrace", "program_text", "with_marker"]

READY = "bpfscope-ready"
SETTLE_S = 0.2
_COUNT = re.compile(r"^@: (\d+)\s*$", re.MULTILINE)
_VERSION = re.compile(r"v?(\d+\.\d+(?:\.\d+)?)")


def with_marker(script: str) -> str:
    """``script`` plus the BEGIN probe that says every probe is attached."""
    return f'{script} BEGIN {{ printf("{READY}\\n"); }}'


def program_text(syscall: str) -> str:
    return with_marker(f"tracepoint:syscalls:sys_enter_{syscall} {{ @ = count(); }}")


@dataclass
class BpftraceRun:
    """One attached bpftrace; ``count`` is filled in after it exits."""

    proc: subprocess.Popen[bytes]
    count: int | None = None
    output: list[str] = field(default_factory=list)


class Bpftrace:
    def __init__(self, exe: str) -> None:
        self.exe = exe
        self.version = _version(exe)

    def attached(
        self, syscall: str, *, timeout: float = 60.0
    ) -> AbstractContextManager[BpftraceRun]:
        """bpftrace counting ``syscall``, attached; stopped when the block ends."""
        return self.running(program_text(syscall), timeout=timeout)

    @contextmanager
    def running(self, program: str, *, timeout: float = 60.0) -> Iterator[BpftraceRun]:
        """bpftrace running ``program`` (with :func:`with_marker`'s BEGIN
        probe), attached; stopped with SIGINT when the block ends."""
        proc = subprocess.Popen(
            [self.exe, "-e", program],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BPFTRACE_NO_USER_SYMBOLS": "1"},
        )
        run = BpftraceRun(proc)
        try:
            _wait_ready(run, timeout)
            yield run
        finally:
            _stop(run)


def _read_lines(run: BpftraceRun, timeout: float) -> bool:
    """Read what bpftrace printed within ``timeout``; False at EOF."""
    assert run.proc.stdout is not None
    fd = run.proc.stdout.fileno()
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return True
    data = os.read(fd, 65536)
    if not data:
        return False
    text = data.decode(errors="replace")
    if run.output and not run.output[-1].endswith("\n"):
        run.output[-1] += text
    else:
        run.output.append(text)
    return True


def _wait_ready(run: BpftraceRun, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while READY not in "".join(run.output):
        left = deadline - time.monotonic()
        if left <= 0:
            raise UserError(f"bpftrace did not attach within {timeout:.0f} s")
        if not _read_lines(run, min(left, 0.5)):
            text = "".join(run.output).strip().splitlines()
            tail = "\n  ".join(text[-5:]) or "no output"
            raise UserError(f"bpftrace exited before attaching:\n  {tail}")


def _stop(run: BpftraceRun) -> None:
    proc = run.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + 15
    try:
        while time.monotonic() < deadline and _read_lines(run, 0.5):
            pass
    except (OSError, ValueError):
        pass
    try:
        proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
    m = _COUNT.search("".join(run.output))
    run.count = int(m.group(1)) if m else None
    # Let the kernel finish tearing bpftrace's programs and perf events down
    # (deferred work on the other CPUs) before the next timed run.
    time.sleep(SETTLE_S)


def _version(exe: str) -> str | None:
    try:
        out = subprocess.run(
            [exe, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION.search(out)
    return m.group(1) if m else (out.strip() or None)


def find_bpftrace() -> Bpftrace | None:
    exe = shutil.which("bpftrace")
    return Bpftrace(exe) if exe else None
