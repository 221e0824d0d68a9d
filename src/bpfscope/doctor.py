"""``bpfscope doctor``: can bpfscope run here, and on which rungs?

Collects kernel, libbpf, BTF, privilege, memlock and filesystem facts, runs
every feature probe, resolves each registered tool's attach ladder and
decides whether the core tools can run. Rendering lives in doctor_cli.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import features, ladder, system
from . import libbpf as bpf
from .features import Mechanism, Status, Verdict
from .tools import registered_tools

__all__ = ["DoctorReport", "ToolReadiness", "memcg_accounting", "run_doctor"]


@dataclass
class ToolReadiness:
    name: str
    description: str
    core: bool
    runnable: bool
    choices: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def summary(self) -> str:
        if not self.runnable:
            return f"{self.name}: cannot run ({self.error})"
        rungs = sorted({c["mechanism"] for c in self.choices if c["mechanism"]})
        return f"{self.name}: {'/'.join(rungs) or 'no hooks'}"


@dataclass
class DoctorReport:
    kernel: dict[str, str]
    libbpf: dict[str, Any]
    btf: dict[str, Any]
    privileges: dict[str, Any]
    memlock: dict[str, Any]
    filesystems: dict[str, Any]
    mechanisms: dict[Mechanism, Verdict]
    tools: list[ToolReadiness]

    @property
    def ok(self) -> bool:
        """Core tools can run here."""
        core = [t for t in self.tools if t.core]
        return (
            self.libbpf["ok"]
            and self.btf["ok"]
            and self.privileges["ok"]
            and bool(core)
            and all(t.runnable for t in core)
        )

    def summary(self) -> str:
        works = [str(m) for m, v in self.mechanisms.items() if v.available]
        fails = [str(m) for m, v in self.mechanisms.items() if v.status is Status.UNSUPPORTED]
        unsure = [str(m) for m, v in self.mechanisms.items() if v.status is Status.INCONCLUSIVE]
        parts = [f"works: {', '.join(works) or 'nothing'}"]
        if fails:
            parts.append(f"not here: {', '.join(fails)}")
        if unsure:
            parts.append(f"inconclusive: {', '.join(unsure)}")
        tools = "; ".join(t.summary() for t in self.tools)
        return f"{' | '.join(parts)}. Tools: {tools}."

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "summary": self.summary(),
            "kernel": self.kernel,
            "libbpf": self.libbpf,
            "btf": self.btf,
            "privileges": self.privileges,
            "memlock": self.memlock,
            "filesystems": self.filesystems,
            "mechanisms": {str(m): v.to_json() for m, v in self.mechanisms.items()},
            "tools": [
                {
                    "name": t.name,
                    "description": t.description,
                    "core": t.core,
                    "runnable": t.runnable,
                    "error": t.error,
                    "hooks": t.choices,
                }
                for t in self.tools
            ],
        }


def memcg_accounting() -> bool | None:
    """Does this kernel charge BPF memory to the memory cgroup (5.11+)?

    Found by trying: a child process drops RLIMIT_MEMLOCK to zero and
    creates a small map. Success means memlock no longer limits BPF, so
    CAP_SYS_RESOURCE is not needed. None when the trial cannot run.
    """
    try:
        pid = os.fork()
    except OSError:
        return None
    if pid == 0:  # child: never return into the caller's stack
        code = 2
        try:
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
            with bpf.create_map(bpf.MapType.ARRAY, 4, 8, 1, "bpfscope_memlk"):
                code = 0
        except bpf.BpfError:
            code = 1
        except BaseException:
            code = 2
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {0: True, 1: False}.get(code)


def _kernel() -> dict[str, str]:
    k = system.kernel_info()
    return {"release": k.release, "version": k.version, "machine": k.machine}


def _libbpf() -> dict[str, Any]:
    try:
        return {"ok": True, "version": bpf.libbpf_version(), "error": None}
    except bpf.LibbpfUnavailable as exc:
        return {"ok": False, "version": None, "error": str(exc)}


def _btf(custom: str | None) -> dict[str, Any]:
    try:
        path = system.btf_path(custom)
    except system.BtfMissing as exc:
        return {"ok": False, "path": custom or str(system.VMLINUX_BTF), "error": str(exc)}
    return {"ok": True, "path": str(path), "size": path.stat().st_size, "error": None}


def _privileges(memcg: bool | None) -> dict[str, Any]:
    """Missing capabilities, and which of them stop bpfscope here.

    CAP_SYS_RESOURCE only matters where BPF memory counts against memlock;
    CAP_NET_ADMIN only for cgroup/network program types no tool uses yet.
    """
    missing = system.missing_caps()
    blocking = [c for c in missing if c in system.CORE_CAPS]
    if memcg is False and "CAP_SYS_RESOURCE" in missing:
        blocking.append("CAP_SYS_RESOURCE")
    why = {c: system.REQUIRED_CAPS[c] for c in missing}
    if memcg is True and "CAP_SYS_RESOURCE" in why:
        why["CAP_SYS_RESOURCE"] += "; not needed on this kernel"
    return {
        "uid": os.geteuid(),
        "missing": missing,
        "blocking": blocking,
        "why": why,
        "ok": not blocking,
    }


def _memlock(memcg: bool | None) -> dict[str, Any]:
    soft, hard = system.memlock_limit()
    return {"soft": soft, "hard": hard, "memcg_accounting": memcg}


def _filesystems() -> dict[str, Any]:
    path, state = system.ensure_tracefs()
    return {
        "tracefs": {"path": path, "state": state},
        "debugfs": system.debugfs_mount(),
        "bpffs": system.bpffs_mount(),
        "cgroup2": system.cgroup2_mount(),
    }


def _tool_readiness(verdict: Callable[[Mechanism], Verdict]) -> list[ToolReadiness]:
    out = []
    for spec in registered_tools():
        try:
            choices = ladder.choose(spec.hooks(), verdict=verdict)
        except ladder.LadderError as exc:
            out.append(ToolReadiness(spec.name, spec.description, spec.core, False, error=str(exc)))
            continue
        out.append(
            ToolReadiness(
                spec.name,
                spec.description,
                spec.core,
                True,
                choices=[c.to_json() for c in choices],
            )
        )
    return out


def run_doctor(
    btf: str | None = None, progress: Callable[[Mechanism], None] | None = None
) -> DoctorReport:
    lib = _libbpf()
    can_load = lib["ok"] and not system.missing_caps(names=system.CORE_CAPS)
    memcg = memcg_accounting() if can_load else None
    privileges = _privileges(memcg)
    filesystems = _filesystems() if privileges["ok"] else _filesystems_readonly()
    if lib["ok"]:
        verdicts = features.probe_all(progress=progress)
        tools = _tool_readiness(features.probe)
    else:
        verdicts = {
            m: Verdict(m, Status.INCONCLUSIVE, "libbpf.so.1 is not available") for m in Mechanism
        }
        tools = []
    return DoctorReport(
        kernel=_kernel(),
        libbpf=lib,
        btf=_btf(btf),
        privileges=privileges,
        memlock=_memlock(memcg),
        filesystems=filesystems,
        mechanisms=verdicts,
        tools=tools,
    )


def _filesystems_readonly() -> dict[str, Any]:
    path = system.tracefs_path()
    return {
        "tracefs": {"path": path, "state": "mounted" if path else "not mounted (needs root)"},
        "debugfs": system.debugfs_mount(),
        "bpffs": system.bpffs_mount(),
        "cgroup2": system.cgroup2_mount(),
    }
