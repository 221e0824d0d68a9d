"""``require(mechanism)``: skip a kernel test only where the feature probe
found its mechanism unsupported on this kernel; fail it where the probe
was inconclusive. A plain module (not conftest.py) so that every test
directory imports the same function."""

from __future__ import annotations

import pytest

__all__ = ["require"]


def require(mechanism: str) -> None:
    """Skip if this kernel lacks ``mechanism`` (per the feature probe)."""
    from bpfscope.features import Mechanism, Status, probe

    v = probe(Mechanism(mechanism))
    if v.status is Status.AVAILABLE:
        return
    if v.status is Status.UNSUPPORTED:
        pytest.skip(f"{mechanism} unsupported on this kernel: {v.detail}")
    pytest.fail(f"{mechanism} probe was inconclusive: {v.detail}")
