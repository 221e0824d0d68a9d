"""Which processes hold which BPF programs, maps, links and stats fds.

The kernel says it in ``/proc/<pid>/fdinfo/<fd>`` (``prog_id:``,
``map_id:``, ``link_id:``); ``/proc/<pid>/fd/<fd>`` names the kind
(``anon_inode:bpf-prog``, ``bpf-map``, ``bpf_link``, ``bpf-stats``). A
program held only through a link counts the link's holder as its holder.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Holder",
    "Holders",
    "is_bpfscope",
    "parse_fdinfo",
    "scan",
]

PROC = Path("/proc")


@dataclass(frozen=True, order=True)
class Holder:
    pid: int
    comm: str
    bpfscope: bool = False

    def __str__(self) -> str:
        return f"{self.comm}({self.pid})"


@dataclass
class Holders:
    progs: dict[int, set[Holder]] = field(default_factory=lambda: defaultdict(set))
    maps: dict[int, set[Holder]] = field(default_factory=lambda: defaultdict(set))
    links: dict[int, set[Holder]] = field(default_factory=lambda: defaultdict(set))
    # processes holding a BPF_ENABLE_STATS fd (statistics on while open)
    stats: set[Holder] = field(default_factory=set)
    # set when some /proc entries could not be read (not root)
    partial: bool = False

    def of(self, kind: str, obj_id: int) -> list[Holder]:
        table = {"prog": self.progs, "map": self.maps, "link": self.links}[kind]
        return sorted(table.get(obj_id, ()))


def parse_fdinfo(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def is_bpfscope(pid: int, cmdline: list[str], own_pid: int | None = None) -> bool:
    """This process, or one whose command line runs bpfscope."""
    if pid == (os.getpid() if own_pid is None else own_pid):
        return True
    for arg in cmdline[:3]:
        base = os.path.basename(arg)
        if base == "bpfscope" or arg == "bpfscope.cli" or arg.startswith("bpfscope."):
            return True
    return False


def _cmdline(pid_dir: Path) -> list[str]:
    try:
        raw = (pid_dir / "cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _comm(pid_dir: Path) -> str:
    try:
        return (pid_dir / "comm").read_text().strip()
    except OSError:
        return "?"


_KINDS = {
    "anon_inode:bpf-prog": "prog",
    "anon_inode:bpf-map": "map",
    "anon_inode:bpf_link": "link",
    "anon_inode:bpf-link": "link",
    "anon_inode:bpf-stats": "stats",
}


def scan(proc: Path = PROC) -> Holders:
    """One pass over every process's fds (cheap: fdinfo is read only for
    BPF fds)."""
    out = Holders()
    own = os.getpid()
    try:
        entries = list(proc.iterdir())
    except OSError:
        out.partial = True
        return out
    for pid_dir in entries:
        if not pid_dir.name.isdigit():
            continue
        pid = int(pid_dir.name)
        try:
            fds = os.listdir(pid_dir / "fd")
        except OSError:
            out.partial = out.partial or pid_dir.exists()
            continue
        holder: Holder | None = None
        for fd in fds:
            try:
                target = os.readlink(pid_dir / "fd" / fd)
            except OSError:
                continue
            kind = _KINDS.get(target)
            if kind is None:
                continue
            if holder is None:
                holder = Holder(
                    pid, _comm(pid_dir), is_bpfscope(pid, _cmdline(pid_dir), own_pid=own)
                )
            if kind == "stats":
                out.stats.add(holder)
                continue
            try:
                info = parse_fdinfo((pid_dir / "fdinfo" / fd).read_text())
            except OSError:
                continue
            if kind == "prog" and info.get("prog_id", "").isdigit():
                out.progs[int(info["prog_id"])].add(holder)
            elif kind == "map" and info.get("map_id", "").isdigit():
                out.maps[int(info["map_id"])].add(holder)
            elif kind == "link":
                if info.get("link_id", "").isdigit():
                    out.links[int(info["link_id"])].add(holder)
                if info.get("prog_id", "").isdigit():
                    out.progs[int(info["prog_id"])].add(holder)
    return out


def fdinfo_of(fd: int) -> dict[str, str]:
    """fdinfo of one of our own fds (map memlock, prog run stats)."""
    try:
        return parse_fdinfo(Path(f"/proc/self/fdinfo/{fd}").read_text())
    except OSError:
        return {}
