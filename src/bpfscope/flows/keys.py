"""Single key presses on a terminal (top's view switch), without Enter.

The terminal is put in cbreak mode for the duration and restored however
the block ends; off a terminal no key ever arrives.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager

__all__ = ["keypresses"]


@contextmanager
def keypresses() -> Iterator[Callable[[], str | None]]:
    """Yields a reader returning the next key pressed, or None (never blocks)."""
    if not sys.stdin.isatty():
        yield lambda: None
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def read() -> str | None:
        if select.select([fd], [], [], 0)[0]:
            return os.read(fd, 1).decode(errors="ignore") or None
        return None

    try:
        tty.setcbreak(fd)
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
