"""The kernel tests pass on other kernels, booted in qemu by matrix/run.

Deselected by default (minutes per kernel under TCG); run with
``pytest -p no:cacheprovider -m matrix tests/matrix``. Which kernels and
which tests: ``BPFSCOPE_MATRIX_KERNELS`` (comma-separated names from
matrix/kernels.conf, or ``all``; default: the first one) and
``BPFSCOPE_MATRIX_TESTS`` (``core``, ``all`` or test paths, space-separated;
default ``core``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.matrix

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "matrix" / "run"


QEMU = {"x86_64": "qemu-system-x86_64", "aarch64": "qemu-system-aarch64"}


def _kernels() -> list[tuple[str, tuple[str, ...]]]:
    rows = []
    for line in (REPO / "matrix" / "kernels.conf").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _suite, _pkg, *rest = line.split()
            opts = dict(r.split("=", 1) for r in rest)
            expect = tuple(opts["expect"].split(",")) if "expect" in opts else ()
            ARCH[name] = opts.get("arch", "x86_64")
            rows.append((name, expect))
    return rows


ARCH: dict[str, str] = {}


def _selected() -> list[tuple[str, tuple[str, ...]]]:
    rows = _kernels()
    wanted = os.environ.get("BPFSCOPE_MATRIX_KERNELS", rows[0][0])
    if wanted == "all":
        return rows
    names = [w.strip() for w in wanted.split(",") if w.strip()]
    known = dict(rows)
    return [(n, known.get(n, ())) for n in names]


def _report(r: dict[str, Any]) -> str:
    lines = [f"{r['kernel']}: {r['status']} ({r.get('error')})"]
    for c in (r.get("tests") or {}).get("cases", []):
        if c["outcome"] in ("failed", "error"):
            lines.append(f"  {c['outcome']}: {c['test']}: {c['message'][:300]}")
    lines += [f"  | {x}" for x in r.get("log_tail", [])[-40:]]
    return "\n".join(lines)


@pytest.mark.parametrize(("kernel", "expect"), [pytest.param(k, e, id=k) for k, e in _selected()])
def test_kernel_suite_passes_in_guest(kernel: str, expect: tuple[str, ...], tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the kernel matrix runs qemu with a 9p export of / and needs root")
    qemu = QEMU[ARCH.get(kernel, "x86_64")]
    if shutil.which(qemu) is None:
        pytest.skip(f"{qemu} missing (apt-get install qemu-system-x86 / qemu-system-arm)")
    tests = os.environ.get("BPFSCOPE_MATRIX_TESTS", "core").split()
    proc = subprocess.run(
        [str(RUN), "-k", kernel, "--tests", *tests, "--json", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert proc.stdout, f"matrix/run printed nothing (exit {proc.returncode}): {proc.stderr}"
    (result,) = json.loads(proc.stdout)
    assert result["status"] == "passed", _report(result)
    assert proc.returncode == 0, proc.stderr

    doctor = result["doctor"]
    assert doctor is not None, _report(result)
    assert doctor["ok"], _report(result)
    for mechanism in expect:
        assert doctor["mechanisms"][mechanism] == "available", mechanism
    if "fentry" in expect:
        # Where trampolines work, the tools that prefer them must stand on them.
        assert doctor["tools"]["selftest"]["rungs"]["getpid"] == "fentry"
        assert doctor["tools"]["bench syscalls"]["rungs"]["getpid"] == "fentry"
    counts = result["tests"]["counts"]
    assert counts.get("passed", 0) > 0
    assert counts.get("failed", 0) == counts.get("error", 0) == 0
    # A skip that blames a mechanism this kernel has would hide a regression.
    for case in result["tests"]["cases"]:
        if case["outcome"] == "skipped":
            for mechanism in expect:
                assert f"{mechanism} unsupported" not in case["message"], case
