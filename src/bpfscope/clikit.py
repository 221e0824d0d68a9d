"""What the command-line views share: validators for the options every tool
takes (``--pid``, ``--cgroup``) and the loop that stops cleanly on Ctrl-C or
SIGTERM, so that the last report is printed and everything is detached."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import cgroups, system
from .errors import EXIT_USAGE, UserError

__all__ = ["parse_cgroup", "sleep_until", "stop_on_signals", "validate_pid"]


def validate_pid(pid: int, proc: str = "/proc") -> int:
    """``pid`` must be a live process (a thread id names its process)."""
    try:
        with open(f"{proc}/{pid}/status") as f:
            status = f.read()
    except FileNotFoundError:
        raise UserError(f"no process with pid {pid}", EXIT_USAGE) from None
    except OSError as exc:
        raise UserError(f"cannot read process {pid}: {exc.strerror}", EXIT_USAGE) from None
    for line in status.splitlines():
        if line.startswith("Tgid:"):
            tgid = int(line.split()[1])
            if tgid != pid:
                raise UserError(
                    f"{pid} is a thread of process {tgid}; use --pid {tgid}", EXIT_USAGE
                )
    return pid


def parse_cgroup(value: str, mount: str | None = None) -> int:
    """A cgroup v2 id, given as the id or as a directory (absolute, or
    relative to the cgroup2 mount)."""
    if value.isdigit():
        return int(value)
    root = mount or system.cgroup2_mount()
    if root is None and not value.startswith("/"):
        raise UserError("no cgroup v2 mount; give the cgroup's id", EXIT_USAGE)
    try:
        return cgroups.cgroup_id(value, root)
    except OSError as exc:
        where = exc.filename or value
        raise UserError(
            f"cgroup {value!r}: no such cgroup directory ({where})", EXIT_USAGE
        ) from None


@contextmanager
def stop_on_signals() -> Iterator[list[bool]]:
    """Ctrl-C / SIGTERM set ``stopped[0]`` instead of aborting: the loop ends,
    prints its last report, and the context managers detach everything."""
    stopped = [False]

    def handler(signum: int, frame: Any) -> None:
        stopped[0] = True

    old_int = signal.signal(signal.SIGINT, handler)
    old_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield stopped
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def sleep_until(
    deadline: float,
    stopped: list[bool],
    wait: Callable[[float], object] = time.sleep,
    step: float = 0.1,
) -> None:
    """Wait until ``deadline`` (monotonic) or a stop, in ``wait`` calls of at
    most ``step`` seconds (a collector passes its event-draining wait)."""
    while not stopped[0]:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        wait(min(left, step))
