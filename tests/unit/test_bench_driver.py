"""The driver builds from its packaged source, is cached, and bad input is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bpfscope.bench import driver
from bpfscope.bench.runner import Options, validate
from bpfscope.errors import UserError
from bpfscope.sysnames import UnknownSyscall, syscall_nr


@pytest.fixture(scope="module")
def exe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")):
        pytest.skip("no C compiler")
    return driver.build(directory=tmp_path_factory.mktemp("cache"))


def test_build_is_cached(exe: Path) -> None:
    mtime = exe.stat().st_mtime_ns
    again = driver.build(directory=exe.parent)
    assert again == exe
    assert again.stat().st_mtime_ns == mtime


def test_no_compiler_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(UserError, match="no C compiler"):
        driver.find_compiler()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    with pytest.raises(UserError, match="not an executable compiler"):
        driver.find_compiler()


def test_broken_compiler_is_reported(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="building the benchmark driver"):
        driver.build(compiler=["false"], directory=tmp_path)


def test_run_times_and_parses(exe: Path) -> None:
    out = driver.run(exe, "getpid", syscall_nr("getpid"), 20_000)
    assert out.calls == 20_000
    assert out.ret == out.pid  # the first getpid() returned the driver's own pid
    assert out.errno == 0
    s = out.sample
    assert s.real > 0
    assert s.clock > 0
    assert s.real >= s.clock


def test_libc_path_and_missing_wrapper(exe: Path) -> None:
    out = driver.run(exe, "getppid", syscall_nr("getppid"), 1000, path="libc")
    assert out.calls == 1000
    assert out.ret > 0
    with pytest.raises(UserError, match="no libc wrapper for getcwd"):
        driver.run(exe, "getcwd", syscall_nr("getcwd"), 10, path="libc")


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        (Options(calls=0), "--calls must be a positive"),
        (Options(reps=-1), "--reps must be a positive"),
        (Options(works=("empty", "lots")), "unknown body lots"),
        (Options(probes=(1, 9)), "between 1 and 8"),
        (Options(syscalls=("pause",)), "refusing to benchmark pause"),
        (Options(syscalls=("getcwd",), path="libc"), "no libc wrapper"),
    ],
)
def test_validate(opts: Options, message: str) -> None:
    with pytest.raises(UserError, match=message):
        validate(opts)


def test_validate_unknown_syscall_lists_matches() -> None:
    with pytest.raises(UnknownSyscall, match="getpid"):
        validate(Options(syscalls=("getpidd",)))
