"""Registry of bpfscope's tools (what a user runs), for doctor and ``--check``.

Each tool's programs module exposes ``OBJECT`` (its BPF object's name),
``DESCRIPTION``, ``CORE`` (whether doctor's verdict depends on it),
``hooks()`` returning its attach ladder and, optionally, ``EXTRAS``
(rung-dependent settings and programs, see :class:`bpfscope.ladder.Extras`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Final

from .ladder import ExtrasFor, Hook

__all__ = ["TOOL_MODULES", "ToolSpec", "registered_tools"]

# Order is the order doctor prints.
TOOL_MODULES: Final = (
    "bpfscope.flows.programs",
    "bpfscope.syscalls.programs",
    "bpfscope.drops.programs",
    "bpfscope.bench.tool",
    "bpfscope.selftest",
)


@dataclass(frozen=True)
class ToolSpec:
    name: str
    object: str
    description: str
    core: bool
    module: ModuleType

    def hooks(self) -> list[Hook]:
        hooks: list[Hook] = self.module.hooks()
        return hooks

    @property
    def extras(self) -> ExtrasFor | None:
        extras: ExtrasFor | None = getattr(self.module, "EXTRAS", None)
        return extras


def registered_tools() -> list[ToolSpec]:
    out = []
    for path in TOOL_MODULES:
        mod = importlib.import_module(path)
        out.append(
            ToolSpec(
                name=getattr(mod, "NAME", mod.OBJECT),
                object=mod.OBJECT,
                description=mod.DESCRIPTION,
                core=getattr(mod, "CORE", False),
                module=mod,
            )
        )
    return out
