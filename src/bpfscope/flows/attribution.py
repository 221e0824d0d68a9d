"""Who a flow belongs to: pid -> command and command line; cgroup id ->
cgroup path -> container id (docker, containerd, cri-o, podman), systemd
unit, Kubernetes pod UID.

The cgroup id the kernel reports (``bpf_get_current_cgroup_id``) is the
inode number of the cgroup's directory in the cgroup v2 hierarchy, so a path
is found by asking the process (``/proc/PID/cgroup``) and checking the inode,
or else by walking the hierarchy once and caching. Lookups are cached with a
bounded size; processes that have exited keep what was learnt while they ran.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Generic, TypeVar

from .. import cgroups, system

__all__ = ["Attribution", "CgroupInfo", "ProcessInfo", "parse_cgroup_path"]

_HEX64: Final = r"([0-9a-f]{64})"

# (runtime, pattern) tried in order against each path component
_CONTAINER_PATTERNS: Final = (
    ("docker", re.compile(rf"^docker-{_HEX64}\.scope$")),
    ("containerd", re.compile(rf"^cri-containerd-{_HEX64}\.scope$")),
    ("cri-o", re.compile(rf"^crio-{_HEX64}\.scope$")),
    ("podman", re.compile(rf"^libpod-{_HEX64}\.scope$")),
    ("podman", re.compile(rf"^libpod-conmon-{_HEX64}\.scope$")),
)
_POD_SYSTEMD: Final = re.compile(
    r"^kubepods(?:-[a-z]+)*-pod([0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12})\.slice$"
)
_POD_CGROUPFS: Final = re.compile(
    r"^pod([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
)
_BARE_ID: Final = re.compile(rf"^{_HEX64}$")
_UNIT: Final = re.compile(r"^[^/]+\.(service|scope)$")


@dataclass(frozen=True)
class CgroupInfo:
    path: str | None  # relative to the cgroup v2 root, starting with "/"
    container: str | None = None  # full 64-hex container id
    runtime: str | None = None
    pod_uid: str | None = None
    unit: str | None = None  # innermost systemd service/scope

    @property
    def short_container(self) -> str | None:
        return self.container[:12] if self.container else None


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    comm: str | None
    cmdline: str | None


def parse_cgroup_path(path: str) -> CgroupInfo:
    """Container id, runtime, pod UID and unit from a cgroup v2 path."""
    container = runtime = pod = unit = None
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        m = _POD_SYSTEMD.match(part)
        if m:
            pod = m.group(1).replace("_", "-")
            continue
        m = _POD_CGROUPFS.match(part)
        if m:
            pod = m.group(1)
            continue
        for name, pattern in _CONTAINER_PATTERNS:
            m = pattern.match(part)
            if m:
                container, runtime = m.group(1), name
                break
        else:
            if _BARE_ID.match(part) and i > 0:
                # cgroupfs driver: /docker/<id>, /kubepods/.../<id>, /libpod_parent/...
                parent = parts[i - 1]
                container = part
                if parent == "docker":
                    runtime = "docker"
                elif parent.startswith("libpod"):
                    runtime = "podman"
                elif pod is not None:
                    runtime = "kubernetes"
                else:
                    runtime = runtime or "unknown"
            elif _UNIT.match(part):
                unit = part
    return CgroupInfo(path=path, container=container, runtime=runtime, pod_uid=pod, unit=unit)


K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    def __init__(self, size: int) -> None:
        self.size = size
        self.data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.size:
            self.data.popitem(last=False)


class Attribution:
    """Cached resolution of processes and cgroups."""

    def __init__(
        self,
        *,
        cgroup_root: str | None = None,
        proc: str = "/proc",
        cache_size: int = 65536,
    ) -> None:
        self.cgroup_root = cgroup_root if cgroup_root is not None else system.cgroup2_mount()
        self.proc = proc
        self._procs: _Lru[int, ProcessInfo] = _Lru(cache_size)
        self._cgroups: _Lru[int, CgroupInfo] = _Lru(cache_size)
        self._walked: dict[int, str] | None = None

    # processes -----------------------------------------------------------

    def process(self, pid: int, comm_hint: str | None = None) -> ProcessInfo:
        cached = self._procs.get(pid)
        if cached is not None and (comm_hint is None or cached.comm == comm_hint):
            return cached
        comm = _read(f"{self.proc}/{pid}/comm")
        raw = _read_bytes(f"{self.proc}/{pid}/cmdline")
        cmdline = raw.replace(b"\0", b" ").decode(errors="replace").strip() if raw else None
        info = ProcessInfo(pid, comm.strip() if comm else comm_hint, cmdline or None)
        if comm is None and comm_hint is not None:
            info = ProcessInfo(pid, comm_hint, None)  # gone: keep what the kernel said
        self._procs.put(pid, info)
        return info

    # cgroups --------------------------------------------------------------

    def cgroup(self, cgroup_id: int, pid: int | None = None) -> CgroupInfo:
        if cgroup_id == 0:
            return CgroupInfo(path=None)
        cached = self._cgroups.get(cgroup_id)
        if cached is not None:
            return cached
        path = None
        if pid:
            path = self._path_from_pid(pid, cgroup_id)
        if path is None:
            path = self._path_from_walk(cgroup_id)
        info = parse_cgroup_path(path) if path is not None else CgroupInfo(path=None)
        if path is not None:
            self._cgroups.put(cgroup_id, info)
        return info

    def _path_from_pid(self, pid: int, cgroup_id: int) -> str | None:
        text = _read(f"{self.proc}/{pid}/cgroup")
        if not text or self.cgroup_root is None:
            return None
        for line in text.splitlines():
            if line.startswith("0::"):
                rel = line[3:].strip()
                try:
                    if os.stat(Path(self.cgroup_root, rel.lstrip("/"))).st_ino == cgroup_id:
                        return rel
                except OSError:
                    return None
        return None

    def _path_from_walk(self, cgroup_id: int) -> str | None:
        if self.cgroup_root is None:
            return None
        if self._walked is None or cgroup_id not in self._walked:
            self._walked = cgroups.paths_by_id(self.cgroup_root)
        return self._walked.get(cgroup_id)


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _read_bytes(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(4096)
    except OSError:
        return None
