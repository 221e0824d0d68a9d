"""The benchmark driver: a small C program built at first use and cached.

``driver.c`` ships inside the package. It is compiled with the system C
compiler (``$CC``, else cc, gcc or clang) into a cache directory, keyed by a
hash of the source and the compiler, so an edited driver or another compiler
gets a fresh binary. :func:`run` times one execution the way ``time`` does
(wall clock around the child, user/sys from ``wait4``) and parses the
driver's own ``clock()`` reading.
"""

from __future__ import annotations

import hashlib
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

from ..errors import EXIT_UNSUPPORTED, EXIT_USAGE, UserError
from .pinning import pinned
from .stats import Sample

__all__ = [
    "LIBC_WRAPPERS",
    "UNSAFE_SYSCALLS",
    "DriverOutput",
    "build",
    "build_c",
    "cache_dir",
    "find_compiler",
    "run",
    "source",
]

# Syscalls the driver can call through a libc wrapper (see driver.c).
LIBC_WRAPPERS: Final = frozenset(
    {
        "getpid",
        "getppid",
        "getuid",
        "geteuid",
        "getgid",
        "getegid",
        "gettid",
        "times",
        "gettimeofday",
        "time",
        "sched_yield",
    }
)

# Called with zero arguments these would block, end or replace the driver.
UNSAFE_SYSCALLS: Final[dict[str, str]] = {
    **dict.fromkeys(("exit", "exit_group"), "ends the process"),
    **dict.fromkeys(("fork", "vfork", "clone", "clone3"), "creates processes"),
    **dict.fromkeys(("execve", "execveat"), "replaces the process"),
    **dict.fromkeys(
        ("pause", "rt_sigsuspend", "select", "pselect6", "ppoll", "wait4", "waitid"),
        "blocks",
    ),
    "rt_sigreturn": "corrupts the process state",
    **dict.fromkeys(("reboot", "kexec_load", "kexec_file_load", "vhangup"), "acts on the host"),
    **dict.fromkeys(("sync", "syncfs"), "writes back every dirty page"),
}

_OUTPUT = re.compile(
    r"calls=(?P<calls>\d+) clock=(?P<clock>-?\d+) clocks_per_sec=(?P<cps>\d+) "
    r"ret=(?P<ret>-?\d+) errno=(?P<errno>\d+)"
)


def source() -> bytes:
    return resources.files(__package__).joinpath("driver.c").read_bytes()


def find_compiler() -> list[str]:
    """``$CC`` if set, else the first of cc, gcc, clang on PATH."""
    cc = os.environ.get("CC")
    if cc:
        argv = shlex.split(cc)
        if argv and shutil.which(argv[0]):
            return argv
        raise UserError(
            f"CC={cc!r} is not an executable compiler; unset CC or point it at one",
            EXIT_UNSUPPORTED,
        )
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return [path]
    raise UserError(
        "no C compiler to build the benchmark driver (looked for $CC, cc, gcc, clang); "
        "install one (e.g. `apt install gcc`, `dnf install gcc`, `apk add build-base`)",
        EXIT_UNSUPPORTED,
    )


def _writable(path: Path) -> bool:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path, os.W_OK | os.X_OK)


def cache_dir() -> Path:
    """Where built drivers live: $BPFSCOPE_CACHE_DIR, $XDG_CACHE_HOME/bpfscope,
    ~/.cache/bpfscope, /var/cache/bpfscope, else the temp directory."""
    candidates = []
    if os.environ.get("BPFSCOPE_CACHE_DIR"):
        candidates.append(Path(os.environ["BPFSCOPE_CACHE_DIR"]))
    if os.environ.get("XDG_CACHE_HOME"):
        candidates.append(Path(os.environ["XDG_CACHE_HOME"], "bpfscope"))
    candidates.append(Path.home() / ".cache" / "bpfscope")
    candidates.append(Path("/var/cache/bpfscope"))
    for c in candidates:
        if _writable(c):
            return c
    fallback = Path(tempfile.gettempdir(), f"bpfscope-{os.getuid()}")
    fallback.mkdir(mode=0o700, exist_ok=True)
    return fallback


def build(*, compiler: list[str] | None = None, directory: Path | None = None) -> Path:
    """Path of the compiled driver, building it if this source/compiler pair
    has not been built into the cache yet."""
    return build_c(source(), "driver", compiler=compiler, directory=directory)


def build_c(
    src: bytes,
    name: str,
    *,
    compiler: list[str] | None = None,
    directory: Path | None = None,
) -> Path:
    """The lab's one build cache: ``src`` compiled as ``name-<hash>``, the
    hash over source, compiler and machine, so an edited workload or another
    compiler gets a fresh binary. Features hand their workloads' C source
    here (the flow monitor's netbench, the syscall driver)."""
    cc = compiler if compiler is not None else find_compiler()
    key = hashlib.sha256(src + b"\0" + " ".join(cc).encode() + os.uname().machine.encode())
    directory = directory if directory is not None else cache_dir()
    exe = directory / f"{name}-{key.hexdigest()[:16]}"
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        c_file = Path(tmp, f"{name}.c")
        c_file.write_bytes(src)
        out = Path(tmp, name)
        try:
            proc = subprocess.run(
                [*cc, "-O2", "-Wall", "-o", str(out), str(c_file)],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UserError(
                f"could not run the C compiler {cc[0]}: {exc}", EXIT_UNSUPPORTED
            ) from None
        if proc.returncode != 0 or not out.is_file():
            tail = "\n  ".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
            what = "the benchmark driver" if name == "driver" else name
            raise UserError(
                f"building {what} with {' '.join(cc)} failed (exit {proc.returncode}):\n  {tail}",
                EXIT_UNSUPPORTED,
            )
        os.replace(out, exe)  # atomic: a concurrent build never sees half a file
    return exe


@dataclass(frozen=True)
class DriverOutput:
    """What one driver run printed and how long it took."""

    pid: int
    calls: int
    sample: Sample
    ret: int  # the first call's return value
    errno: int  # the first call's errno (0: success)


def _argv(exe: Path, path: str, syscall: str, nr: int, calls: int) -> list[str]:
    if path == "libc":
        if syscall not in LIBC_WRAPPERS:
            raise UserError(
                f"--path libc: the driver has no libc wrapper for {syscall} "
                f"(it has: {', '.join(sorted(LIBC_WRAPPERS))}); use --path raw",
                EXIT_USAGE,
            )
        return [str(exe), "libc", syscall, str(calls)]
    return [str(exe), "raw", str(nr), str(calls)]


def run(
    exe: Path,
    syscall: str,
    nr: int,
    calls: int,
    *,
    path: str = "raw",
    timeout: float | None = None,
    cpu: int | None = None,
) -> DriverOutput:
    """Run the driver once; time it from outside (wall, wait4) and inside.
    ``cpu``: pin the driver to that CPU (see :mod:`.pinning`)."""
    argv = _argv(exe, path, syscall, nr, calls)
    if timeout is None:
        timeout = 30.0 + calls * 50e-6  # 50 µs per call is far beyond any hook
    r, w = os.pipe()
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, w, 1),
        (os.POSIX_SPAWN_DUP2, w, 2),
        (os.POSIX_SPAWN_CLOSE, r),
    ]
    pid = 0
    status = 0
    chunks: list[bytes] = []
    try:
        t0 = time.perf_counter()
        with pinned(cpu):  # the child inherits this thread's affinity
            pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
        os.close(w)
        w = -1
        deadline = t0 + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise UserError(f"the driver calling {syscall} did not finish in {timeout:.0f} s")
            ready, _, _ = select.select([r], [], [], left)
            if not ready:
                continue
            data = os.read(r, 4096)
            if not data:
                break
            chunks.append(data)
        _, status, usage = os.wait4(pid, 0)
        t1 = time.perf_counter()
        pid_done = pid
        pid = 0
    finally:
        if w >= 0:
            os.close(w)
        os.close(r)
        if pid:  # interrupted or timed out: never leave the child behind
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    text = b"".join(chunks).decode(errors="replace").strip()
    code = os.waitstatus_to_exitcode(status)
    m = _OUTPUT.search(text)
    if code != 0 or m is None:
        raise UserError(f"the benchmark driver failed (exit {code}): {text or 'no output'}")
    clock = int(m["clock"]) / int(m["cps"])
    sample = Sample(real=t1 - t0, user=usage.ru_utime, sys=usage.ru_stime, clock=clock)
    return DriverOutput(
        pid=pid_done, calls=int(m["calls"]), sample=sample, ret=int(m["ret"]), errno=int(m["errno"])
    )
