"""Set-up for the kernel-matrix tests (marker ``matrix``).

They boot other kernels in qemu (matrix/run) and take minutes, so they are
deselected unless the marker expression names them: ``pytest -m matrix``.
The marker is registered here until pyproject.toml registers it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

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


# tests/ directories are not packages, so pytest imports every conftest.py as
# the module "conftest" and this one replaces tests/conftest.py there; test
# modules collected later do `from conftest import require`, so re-export it.
def _top_conftest_require() -> object:
    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("bpfscope_tests_top_conftest", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.require


require = _top_conftest_require()
