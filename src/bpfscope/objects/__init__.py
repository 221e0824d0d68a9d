"""Compiled BPF CO-RE objects shipped with the package, one folder per arch.

Built by ``make bpf`` from ``bpfscope/bpf/*.bpf.c``; CI rebuilds them and
fails when the committed files differ (``make check-bpf``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import EXIT_UNSUPPORTED, BpfscopeError
from ..system import arch

__all__ = ["ObjectMissing", "available_objects", "object_bytes", "object_path"]


class ObjectMissing(BpfscopeError, FileNotFoundError):
    """No compiled object for this tool on this architecture."""

    exit_code = EXIT_UNSUPPORTED


def _root() -> Path:
    # Objects are plain files inside the installed package (wheel or editable).
    return Path(str(resources.files(__package__)))


def _arch_dir(machine: str | None = None) -> Path:
    return _root() / (machine or arch())


def object_path(tool: str, machine: str | None = None) -> Path:
    """Path of ``<tool>.bpf.o`` for this machine's architecture."""
    machine = machine or arch()
    path = _arch_dir(machine) / f"{tool}.bpf.o"
    if not path.is_file():
        built = sorted(
            p.name for p in _root().iterdir() if p.is_dir() and not p.name.startswith("_")
        )
        raise ObjectMissing(
            f"no compiled BPF object {tool}.bpf.o for {machine} "
            f"(this package has objects for: {', '.join(built) or 'none'}); "
            f"build them with `make bpf ARCH={machine}` from a source checkout"
        )
    return path


def object_bytes(tool: str, machine: str | None = None) -> bytes:
    return object_path(tool, machine).read_bytes()


def available_objects(machine: str | None = None) -> list[str]:
    d = _arch_dir(machine)
    if not d.is_dir():
        return []
    return sorted(p.name.removesuffix(".bpf.o") for p in d.glob("*.bpf.o"))
