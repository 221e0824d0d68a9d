"""User-facing errors: one clear message and an exit code, never a traceback.

Everything a user can cause or fix (privileges, missing BTF or libbpf, an
attach type the kernel refuses, bad input) raises a :class:`BpfscopeError`
that carries its own exit code; the CLI's top level prints ``explain()``'s
message. This module is the ground floor: it imports nothing of bpfscope, so
every layer can raise these errors.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "EXIT_FAILURE",
    "EXIT_PRIVILEGES",
    "EXIT_UNSUPPORTED",
    "EXIT_USAGE",
    "BpfscopeError",
    "UserError",
    "explain",
]

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_PRIVILEGES: Final = 3
EXIT_UNSUPPORTED: Final = 4


class BpfscopeError(Exception):
    """An error the user should see as a message and an exit code.

    Subclasses set ``exit_code`` (a class attribute or a property) and may
    override ``user_message`` when the message needs more than ``str()``.
    """

    exit_code: int = EXIT_FAILURE

    def user_message(self) -> str:
        return str(self)


class UserError(BpfscopeError):
    """Something the user can fix; ``str()`` is the whole message."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def explain(exc: BaseException) -> tuple[str, int] | None:
    """Message and exit code for an error the user should see plainly."""
    if isinstance(exc, BpfscopeError):
        return exc.user_message(), exc.exit_code
    if isinstance(exc, PermissionError):
        return f"{exc} (run as root?)", EXIT_PRIVILEGES
    return None
