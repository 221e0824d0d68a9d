"""Shared test set-up.

Kernel tests (marker ``kernel``) load real BPF programs. They skip, saying
why, only when the machine cannot run BPF at all (not root) or when the
feature probe found the mechanism *unsupported*; ``kernel_require.require()`` fails the
test instead when the probe says the mechanism is available but the test
cannot use it, so a regression cannot hide behind a skip.
"""

from __future__ import annotations

import os

import pytest

from bpfscope import system


def _can_run_bpf() -> str | None:
    missing = system.missing_caps(names=("CAP_BPF", "CAP_PERFMON"))
    if missing:
        return f"kernel tests need root or {', '.join(missing)}"
    if not system.VMLINUX_BTF.is_file():
        return "kernel tests need kernel BTF (/sys/kernel/btf/vmlinux)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _can_run_bpf()
    if reason is None:
        return
    if os.environ.get("BPFSCOPE_REQUIRE_KERNEL_TESTS") == "1":
        # CI runs as root: a kernel test that cannot run there is a failure.
        raise pytest.UsageError(f"BPFSCOPE_REQUIRE_KERNEL_TESTS=1 but {reason}")
    for item in items:
        if "kernel" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session", autouse=True)
def _tracefs() -> None:
    if _can_run_bpf() is None:
        system.ensure_tracefs()
