"""Nothing stays attached however bpfscope exits, and the first errors a
user meets are clear messages, never tracebacks."""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bpfscope import libbpf as bpf

pytestmark = pytest.mark.kernel

BPFSCOPE = [sys.executable, "-m", "bpfscope.cli"]

HOLDER = """
import os, signal, sys, time
from bpfscope import selftest
from bpfscope.cli import _exit_on_sigterm
signal.signal(signal.SIGTERM, _exit_on_sigterm)
tool = selftest.load()
with tool:
    ids = [p.info().id for p in tool.obj.programs.values() if p.autoload]
    links = [l.fd for l in tool.obj.links]
    print(" ".join(map(str, ids)), flush=True)
    {ending}
"""

ENDINGS = {
    "return": "pass",
    "exception": "raise RuntimeError('boom')",
    "SIGINT": "time.sleep(60)",
    "SIGTERM": "time.sleep(60)",
    "SIGKILL": "time.sleep(60)",
}


def _alive(prog_ids: list[int]) -> list[int]:
    return [i for i in prog_ids if bpf.prog_info_by_id(i) is not None]


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_no_program_stays_loaded_after_exit(ending: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(ending=ENDINGS[ending])],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    ids = [int(x) for x in line.split()]
    assert ids, proc.stderr.read() if proc.stderr else "no ids"
    if ending in ("SIGINT", "SIGTERM", "SIGKILL"):
        assert _alive(ids) == ids  # loaded while the holder runs
        proc.send_signal(getattr(signal, ending))
    proc.wait(timeout=20)
    deadline = time.monotonic() + 5  # programs are freed after an RCU grace period
    while _alive(ids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _alive(ids) == []


def _run(*args: str, env: dict[str, str] | None = None, prefix: list[str] | None = None):  # type: ignore[no-untyped-def]
    return subprocess.run(
        [*(prefix or []), *BPFSCOPE, *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_doctor_json_on_this_kernel() -> None:
    out = _run("doctor", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["ok"] is True
    mech = report["mechanisms"]
    for m in ("tracepoint", "raw_tp", "tp_btf", "uprobe"):
        assert mech[m]["status"] == "available"
    assert any(t["name"] == "selftest" and t["runnable"] for t in report["tools"])


def test_doctor_check_runs_the_selftest_and_force_fails_cleanly() -> None:
    ok = _run("doctor", "--check")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "check ok" in ok.stdout
    report = json.loads(_run("doctor", "--json").stdout)
    refused = [m for m in ("fentry", "kprobe") if report["mechanisms"][m]["status"] != "available"]
    if not refused:
        pytest.skip("fentry and kprobe both work here: nothing to refuse")
    bad = _run("doctor", "--check", "--attach", refused[0])
    assert bad.returncode != 0
    assert f"--attach {refused[0]}" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def test_missing_btf_file_is_a_clear_error() -> None:
    out = _run("--btf", "/nonexistent/vmlinux.btf", "doctor", "--check")
    assert out.returncode != 0
    assert "/nonexistent/vmlinux.btf does not exist" in out.stdout + out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing")
def test_unprivileged_user_is_told_which_capabilities_are_missing() -> None:
    drop = [
        "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all",
    ]  # fmt: skip
    out = _run("doctor", env={"HOME": "/tmp"}, prefix=drop)
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert "missing CAP_BPF" in text
    assert "missing CAP_PERFMON" in text
    assert "Traceback" not in text
    check = _run("doctor", "--check", env={"HOME": "/tmp"}, prefix=drop)
    assert check.returncode == 3  # EXIT_PRIVILEGES
    assert "CAP_BPF" in check.stderr
    assert "Traceback" not in check.stderr


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) missing")
def test_missing_libbpf_names_the_package(tmp_path: Path) -> None:
    # Debian's multiarch directory: x86_64-linux-gnu, aarch64-linux-gnu
    lib = Path(f"/usr/lib/{platform.machine()}-linux-gnu/libbpf.so.1")
    if not lib.exists():
        pytest.skip("libbpf.so.1 is not at the Debian path on this machine")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    script = f"mount --bind {empty} {lib.resolve()} && exec {' '.join(BPFSCOPE)} doctor"
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "apt install libbpf1" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) missing")
def test_doctor_mounts_tracefs_when_missing() -> None:
    """In a private mount namespace without tracefs, doctor mounts it and
    tracepoints work."""
    script = (
        "umount /sys/kernel/tracing 2>/dev/null; umount /sys/kernel/debug 2>/dev/null; "
        f"! grep -q tracefs /proc/self/mounts && exec {' '.join(BPFSCOPE)} doctor --json"
    )
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (
        "was not mounted; mounted at /sys/kernel/tracing"
        in report["filesystems"]["tracefs"]["state"]
    )
    assert report["mechanisms"]["tracepoint"]["status"] == "available"


@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare (util-linux) missing")
def test_kernel_without_btf_is_explained() -> None:
    """Hide /sys/kernel/btf/vmlinux in a private mount namespace: doctor
    says what the kernel needs and that --btf exists, exit status 4."""
    script = (
        "mount --bind /dev/null /sys/kernel/btf/vmlinux && "
        f"exec {' '.join(BPFSCOPE)} doctor --check"
    )
    out = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = out.stdout + out.stderr
    assert out.returncode == 4, text
    assert "CONFIG_DEBUG_INFO_BTF=y" in text
    assert "--btf" in text
    assert "Traceback" not in text
