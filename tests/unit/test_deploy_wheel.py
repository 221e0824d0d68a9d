"""The wheel on its own: built from this checkout, installed with the
`agent` extra into a fresh virtualenv (dependencies from the package index,
no system site-packages), and run from a directory with no source checkout
on the path. This is the container's runtime stage without the container.

As root the installed agent also loads the wheel's own BPF objects: doctor
probes and resolves every tool, and `serve` starts and reports healthy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path
    cwd: Path

    @property
    def bin(self) -> Path:
        return self.venv / "bin"

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args), cwd=self.cwd, env=_clean_env(), capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin"
    return env


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    [wheel] = dist.glob("bpfscope-*.whl")
    venv = base / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
         f"{wheel}[agent]"],
        cwd=base, env=_clean_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if pip.returncode != 0 and "No matching distribution" in pip.stderr:
        pytest.skip(f"the package index is not reachable: {pip.stderr.strip()[-300:]}")
    assert pip.returncode == 0, pip.stderr[-3000:]
    cwd = base / "elsewhere"
    cwd.mkdir()
    return Installed(wheel, venv, cwd)


def _source_version() -> str:
    text = (ROOT / "src" / "bpfscope" / "__init__.py").read_text()
    m = re.search(r'^__version__ = "([^"]+)"$', text, re.M)
    assert m, "no __version__ in src/bpfscope/__init__.py"
    return m.group(1)


def test_version_comes_from_one_place(installed: Installed) -> None:
    version = _source_version()
    assert installed.wheel.name.startswith(f"bpfscope-{version}-")
    with zipfile.ZipFile(installed.wheel) as zf:
        [meta] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        assert f"\nVersion: {version}\n" in zf.read(meta).decode()
    out = installed.run(str(installed.bin / "bpfscope"), "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"bpfscope, version {version}"
    meta_version = installed.run(
        str(installed.bin / "python"),
        "-c",
        "import importlib.metadata as m; print(m.version('bpfscope'))",
    )
    assert meta_version.stdout.strip() == version


def test_installed_package_and_objects_come_from_the_wheel(installed: Installed) -> None:
    out = installed.run(
        str(installed.bin / "python"),
        "-c",
        "import json, bpfscope, bpfscope.objects as o; "
        "print(json.dumps([bpfscope.__file__, str(o.object_path('flows')), "
        "o.available_objects(), o.available_objects('aarch64'), "
        "str(o.object_path('flows', 'aarch64'))]))",
    )
    assert out.returncode == 0, out.stderr
    module, flows_obj, objects, arm64_objects, arm64_flows = json.loads(out.stdout)
    site = str(installed.venv / "lib")
    assert module.startswith(site)
    assert flows_obj.startswith(site)
    assert not module.startswith(str(ROOT / "src"))
    with zipfile.ZipFile(installed.wheel) as zf:
        shipped = {
            Path(n).name.removesuffix(".bpf.o") for n in zf.namelist() if n.endswith(".bpf.o")
        }
        arches = {Path(n).parent.name for n in zf.namelist() if n.endswith(".bpf.o")}
    assert set(objects) == shipped
    assert {"flows", "probe", "selftest"} <= shipped
    # One wheel for both architectures: objects/<uname -m>/ is chosen at run time.
    assert arches == {"x86_64", "aarch64"}
    assert set(arm64_objects) == shipped
    assert arm64_flows.startswith(site)
    assert arm64_flows.endswith("/aarch64/flows.bpf.o")


def test_no_compiler_is_needed_at_install(installed: Installed) -> None:
    # The wheel is pure Python plus data: it installs anywhere, builds nothing.
    assert installed.wheel.name.endswith("-py3-none-any.whl")


def test_doctor_runs_from_the_wheel(installed: Installed) -> None:
    out = installed.run(str(installed.bin / "bpfscope"), "doctor", "--json")
    report = json.loads(out.stdout)
    if os.geteuid() != 0:
        assert out.returncode == 3
        assert "CAP_BPF" in report["privileges"]["missing"]
        return
    assert out.returncode == 0, out.stderr[-2000:]
    assert report["ok"]
    assert report["libbpf"]["ok"]
    # Trial loads of the wheel's probe object ran on the kernel.
    assert report["mechanisms"]["tracepoint"]["status"] == "available"
    tools = {t["name"]: t for t in report["tools"]}
    assert tools["flows"]["runnable"]


def test_agent_serves_from_the_wheel(installed: Installed) -> None:
    if os.geteuid() != 0:
        pytest.skip("serving needs root (or CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [str(installed.bin / "bpfscope"), "serve", "--listen", f"127.0.0.1:{port}",
         "--no-history", "--no-dns"],
        cwd=installed.cwd, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                url = f"http://127.0.0.1:{port}/api/v1/health"
                with urllib.request.urlopen(url, timeout=2) as r:
                    health = json.loads(r.read())
                    break
            except OSError:
                time.sleep(0.2)
        assert health is not None, proc.stderr.read() if proc.poll() is not None else "timeout"
        assert health["ok"]
        assert any(health["collectors"]["flows"]["rungs"].values())
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=20)
    assert "Traceback" not in err
