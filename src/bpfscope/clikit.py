"""What the command-line views share: the options for how often and how long
(``-i/--interval``, ``-d/--duration``, ``-n/--count``), defined once so every
tool spells and means them the same; validators for the options every tool
takes (``--pid``, ``--cgroup``); and the loop that stops cleanly on Ctrl-C or
SIGTERM, so that the last report is printed and everything is detached."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from . import cgroups, system
from .errors import EXIT_USAGE, UserError

__all__ = [
    "RunLimits",
    "comm_option",
    "count_option",
    "duration_option",
    "interval_option",
    "parse_cgroup",
    "sleep_until",
    "stop_on_signals",
    "validate_pid",
]

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def interval_option(what: str = "reports") -> Decorator:
    """-i/--interval: seconds between reports (or refreshes)."""
    return click.option(
        "-i",
        "--interval",
        type=click.FloatRange(0.1),
        default=1.0,
        show_default=True,
        help=f"Seconds between {what}.",
    )


def duration_option(default: float | None = None, help: str | None = None) -> Decorator:
    """-d/--duration: stop after this many seconds (default: until Ctrl-C)."""
    return click.option(
        "-d",
        "--duration",
        type=click.FloatRange(0.1),
        default=default,
        show_default=default is not None,
        help=help or "Stop after this many seconds (default: until Ctrl-C).",
    )


def count_option(what: str = "reports") -> Decorator:
    """-n/--count: stop after N reports (or events)."""
    return click.option(
        "-n",
        "--count",
        type=click.IntRange(1),
        default=None,
        help=f"Stop after N {what} (default: until Ctrl-C or --duration).",
    )


def comm_option(help: str = "Only processes with this command name.") -> Decorator:
    """-c/--comm: the process's command name."""
    return click.option("-c", "--comm", metavar="NAME", help=help)


class RunLimits:
    """When a tool stops: after ``duration`` seconds, after ``count`` reports
    (or events), or on Ctrl-C, whichever comes first."""

    def __init__(
        self,
        duration: float | None,
        count: int | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.end = clock() + duration if duration else None
        self.count = count or None
        self.done = 0

    def deadline(self, wanted: float) -> float:
        """``wanted`` (monotonic), or the end of the run if that comes first."""
        return wanted if self.end is None else min(wanted, self.end)

    def add(self, n: int = 1) -> None:
        self.done += n

    def reached(self) -> bool:
        if self.count is not None and self.done >= self.count:
            return True
        return self.end is not None and self._clock() >= self.end


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
