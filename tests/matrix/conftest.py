"""Set-up for the kernel-matrix tests (marker ``matrix``).

They boot other kernels in qemu (matrix/run) and take minutes, so they are
deselected unless the marker expression names them: ``pytest -m matrix``.
The marker is registered here until pyproject.toml registers it.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "matrix: boots other kernels in qemu (matrix/run); only with -m matrix"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "matrix" in (config.option.markexpr or ""):
        return
    # The marker, not i.keywords: keywords also hold parent names (this dir).
    dropped = [i for i in items if i.get_closest_marker("matrix") is not None]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i.get_closest_marker("matrix") is None]
