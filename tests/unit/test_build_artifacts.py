"""Generated and compiled artifacts are fresh and ship in the wheel."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bpfscope.sysnames import syscall_name, syscall_names, syscall_nr

ROOT = Path(__file__).resolve().parents[2]
OBJECTS = ROOT / "src" / "bpfscope" / "objects"


def test_syscall_table_knows_the_study_syscalls() -> None:
    for name, nr in {"getpid": 39, "getppid": 110, "getuid": 102, "times": 100}.items():
        assert syscall_nr(name, "x86_64") == nr
    assert syscall_nr("getpid", "aarch64") == 172
    assert syscall_name(39, "x86_64") == "getpid"
    assert len(syscall_names("x86_64")) > 300


@pytest.mark.skipif(
    not Path("/usr/include/x86_64-linux-gnu/asm/unistd_64.h").exists()
    or not Path("/usr/aarch64-linux-gnu/include/asm/unistd.h").exists(),
    reason="UAPI headers for x86_64 and arm64 not installed (linux-libc-dev, -arm64-cross)",
)
def test_syscall_table_is_fresh() -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_syscall_table.py"), "--check"], check=True
    )


@pytest.mark.skipif(shutil.which("clang") is None, reason="clang not installed")
def test_committed_bpf_objects_match_a_fresh_build() -> None:
    out = subprocess.run(
        ["make", "-s", "-C", str(ROOT), "check-bpf"], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.mark.slow
def test_wheel_ships_the_same_objects(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    [wheel] = tmp_path.glob("bpfscope-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {
            n.split("objects/", 1)[1]: _sha(zf.read(n))
            for n in zf.namelist()
            if "/objects/" in n and n.endswith(".bpf.o")
        }
        assert "bpfscope/py.typed" in zf.namelist()
        web = {n.rsplit("/", 1)[1] for n in zf.namelist() if "/web/static/" in n}
    # the web view's page and modules are package data too
    assert web == {p.name for p in (ROOT / "src" / "bpfscope" / "web" / "static").iterdir()}
    local = {str(p.relative_to(OBJECTS)): _sha(p.read_bytes()) for p in OBJECTS.rglob("*.bpf.o")}
    assert shipped == local
    assert shipped  # at least one object shipped
