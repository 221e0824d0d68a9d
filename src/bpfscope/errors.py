"""User-facing errors: one clear message and an exit code, never a traceback.

Everything a user can cause or fix (privileges, missing BTF or libbpf, an
attach type the kernel refuses, bad input) is turned into ``explain()``'s
message by the CLI's top level.
"""

from __future__ import annotations

from typing import Final

from . import system

__all__ = [
    "EXIT_FAILURE",
    "EXIT_PRIVILEGES",
    "EXIT_UNSUPPORTED",
    "EXIT_USAGE",
    "UserError",
    "explain",
    "require_privileges",
]

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_PRIVILEGES: Final = 3
EXIT_UNSUPPORTED: Final = 4


class UserError(Exception):
    """Something the user can fix; ``str()`` is the whole message."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def require_privileges(extra: tuple[str, ...] = ()) -> None:
    """Fail early, naming the capabilities that are missing."""
    names = (*system.CORE_CAPS, *extra)
    missing = system.missing_caps(names=names)
    if missing:
        needs = "; ".join(f"{c}: {system.REQUIRED_CAPS.get(c, '')}" for c in missing)
        raise UserError(
            f"bpfscope needs root or these capabilities, which are missing: {needs}. "
            "Run with sudo, or grant them (e.g. setcap / container capabilities).",
            EXIT_PRIVILEGES,
        )


def explain(exc: BaseException) -> tuple[str, int] | None:
    """Message and exit code for an error the user should see plainly."""
    from . import libbpf
    from .ladder import LadderError
    from .objects import ObjectMissing
    from .syscalls import UnknownSyscall

    if isinstance(exc, UserError):
        return str(exc), exc.exit_code
    if isinstance(exc, libbpf.LibbpfUnavailable):
        return str(exc), EXIT_UNSUPPORTED
    if isinstance(exc, system.BtfMissing):
        return str(exc), EXIT_UNSUPPORTED
    if isinstance(exc, LadderError):
        return str(exc), EXIT_UNSUPPORTED
    if isinstance(exc, ObjectMissing):
        return str(exc), EXIT_UNSUPPORTED
    if isinstance(exc, UnknownSyscall):
        return str(exc), EXIT_USAGE
    if isinstance(exc, libbpf.BpfError):
        text = str(exc)
        if exc.libbpf_log:
            tail = "\n  ".join(exc.libbpf_log[-8:])
            text += f"\nlibbpf said:\n  {tail}"
        code = EXIT_PRIVILEGES if exc.errno == 1 else EXIT_FAILURE
        return text, code
    if isinstance(exc, PermissionError):
        return f"{exc} (run as root?)", EXIT_PRIVILEGES
    return None
