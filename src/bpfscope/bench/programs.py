"""BPF side of the overhead lab: which mechanisms can hook a syscall here,
and the loaded ``bench`` object whose programs are attached per run.

Every program exists in ``BENCH_MAX_COPIES`` identical copies (bench.bpf.c),
so the ``--probes K`` sweep attaches K distinct programs to one hook. The
count body bumps one per-CPU slot per copy and the hash body adds to one
shared per-pid value, so after a run userspace can check that K programs
really fired for every call.
"""

from __future__ import annotations

import logging
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from .. import features, libbpf, targets
from ..features import Mechanism
from ..ladder import Rung, target_missing
from ..objects import object_bytes

__all__ = [
    "MAX_COPIES",
    "MECHANISMS",
    "WORKS",
    "BenchObject",
    "Hookable",
    "detach",
    "hookable",
    "libc_path",
    "program_name",
    "stats_enabled_by_sysctl",
]

log = logging.getLogger("bpfscope.bench")

OBJECT: Final = "bench"
MAX_COPIES: Final = 8  # BENCH_MAX_COPIES in bench.h
WORKS: Final = ("empty", "count", "hash")
MECHANISMS: Final = (
    Mechanism.TRACEPOINT,
    Mechanism.RAW_TP,
    Mechanism.TP_BTF,
    Mechanism.FENTRY,
    Mechanism.KPROBE,
    Mechanism.UPROBE,
)
_PREFIX: Final = {
    Mechanism.TRACEPOINT: "tp",
    Mechanism.RAW_TP: "rawtp",
    Mechanism.TP_BTF: "tpbtf",
    Mechanism.FENTRY: "fentry",
    Mechanism.KPROBE: "kprobe",
    Mechanism.UPROBE: "uprobe",
}


def program_name(mechanism: Mechanism, work: str, copy: int) -> str:
    if work not in WORKS:
        raise ValueError(f"unknown work body {work!r}")
    if not 0 <= copy < MAX_COPIES:
        raise ValueError(f"copy {copy} out of range")
    return f"{_PREFIX[mechanism]}_{work}_{copy}"


@dataclass(frozen=True)
class Hookable:
    """Can ``mechanism`` hook ``syscall`` here? ``target`` if so, else why not."""

    mechanism: Mechanism
    target: str | None
    skipped: str | None

    @property
    def available(self) -> bool:
        return self.skipped is None


def _target(mechanism: Mechanism, syscall: str, path: str, libc: str | None) -> str:
    """The attach target, or raise ValueError with why there is none."""
    if mechanism is Mechanism.TRACEPOINT:
        return f"syscalls:sys_enter_{syscall}"
    if mechanism in (Mechanism.RAW_TP, Mechanism.TP_BTF):
        return "sys_enter"
    if mechanism in (Mechanism.FENTRY, Mechanism.KPROBE):
        entry = targets.syscall_entry_function(syscall)
        if entry is None:
            raise ValueError(f"no kernel entry function for {syscall} in the kernel's BTF")
        return entry
    if mechanism is Mechanism.UPROBE:
        if path != "libc":
            raise ValueError(
                "uprobe hooks the libc wrapper, which the raw syscall() path does not call "
                "(use --path libc)"
            )
        if libc is None:
            raise ValueError("cannot find the C library to place the uprobe in")
        return f"{libc}:{syscall}"
    raise ValueError(f"{mechanism} is not a syscall hook")


def hookable(
    mechanism: Mechanism,
    syscall: str,
    *,
    path: str = "raw",
    libc: str | None = None,
    verdict: Callable[[Mechanism], features.Verdict] = features.probe,
) -> Hookable:
    """Ask the feature probe, then whether this syscall's target exists."""
    try:
        target = _target(mechanism, syscall, path, libc)
    except ValueError as exc:
        return Hookable(mechanism, None, f"skipped: {exc}")
    v = verdict(mechanism)
    if not v.available:
        text = f"skipped: {v.detail}"
        if v.needs:
            text += f" (needs {v.needs})"
        return Hookable(mechanism, None, text)
    why = target_missing(Rung(mechanism, program_name(mechanism, "empty", 0), target))
    if why:
        return Hookable(mechanism, None, f"skipped: {why}")
    return Hookable(mechanism, target, None)


_FAILED_PROG = re.compile(r"prog '([^']+)': failed to load")


class BenchObject:
    """The ``bench`` object loaded for one syscall with the programs it needs.

    ``wanted`` maps (mechanism, work) to the number of copies to load;
    ``hooks`` maps each mechanism to its attach target. A mechanism whose
    program the kernel refuses at load is dropped and reported in
    ``refused`` (mechanism -> reason) instead of failing the whole run.
    """

    def __init__(
        self,
        nr: int,
        wanted: Mapping[tuple[Mechanism, str], int],
        hooks: Mapping[Mechanism, str],
        *,
        btf_path: str | None = None,
    ) -> None:
        self.nr = nr
        self.hooks = dict(hooks)
        self.refused: dict[Mechanism, str] = {}
        self.wanted = dict(wanted)
        self.obj = self._load(btf_path)

    def _names(self) -> dict[str, Mechanism]:
        out = {}
        for (m, work), k in self.wanted.items():
            if m in self.refused:
                continue
            for c in range(k):
                out[program_name(m, work, c)] = m
        return out

    def _load(self, btf_path: str | None) -> libbpf.BpfObject:
        while True:
            names = self._names()
            obj = libbpf.BpfObject.open_bytes(object_bytes(OBJECT), name=OBJECT, btf_path=btf_path)
            try:
                for name, prog in obj.programs.items():
                    prog.autoload = name in names
                    m = names.get(name)
                    if m in (Mechanism.FENTRY,):
                        prog.set_attach_target(self.hooks[m])
                obj.rodata["target_nr"] = self.nr
                obj.load()
                return obj
            except libbpf.BpfError as exc:
                obj.close()
                failed = {
                    names[g.group(1)]
                    for line in exc.libbpf_log
                    for g in [_FAILED_PROG.search(line)]
                    if g and g.group(1) in names
                }
                if not failed:
                    raise
                for m in failed:
                    self.refused[m] = f"skipped: the kernel refused to load the program: {exc}"
            except BaseException:
                obj.close()
                raise

    def programs(self, mechanism: Mechanism, work: str, k: int) -> list[libbpf.Program]:
        return [self.obj.program(program_name(mechanism, work, c)) for c in range(k)]

    def attach(self, mechanism: Mechanism, work: str, k: int) -> list[libbpf.Link]:
        """Attach copies 0..k-1 to the mechanism's hook; all or nothing."""
        links: list[libbpf.Link] = []
        target = self.hooks[mechanism]
        try:
            for prog in self.programs(mechanism, work, k):
                links.append(prog.attach_to(mechanism, target))
        except BaseException:
            detach(links)
            raise
        return links

    # -- evidence read after a run -----------------------------------------

    def copy_counts(self) -> list[int]:
        """Events per copy of the count body since the last reset."""
        m = self.obj.map("bench_counts")
        return [m.sum_percpu_u64(struct.pack("<I", c)) for c in range(MAX_COPIES)]

    def pid_count(self, pid: int) -> int:
        raw = self.obj.map("bench_pids").lookup(struct.pack("<I", pid))
        return 0 if raw is None else int(struct.unpack_from("<Q", raw)[0])

    def reset(self) -> None:
        counts = self.obj.map("bench_counts")
        zero = bytes(8 * libbpf.num_possible_cpus())
        for c in range(MAX_COPIES):
            counts.update(struct.pack("<I", c), zero)
        pids = self.obj.map("bench_pids")
        for key in list(pids.keys()):
            pids.delete(key)

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> BenchObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def detach(links: Iterable[libbpf.Link]) -> None:
    for link in links:
        link.destroy()


def stats_enabled_by_sysctl() -> bool | None:
    """kernel.bpf_stats_enabled as set by someone else (None if unreadable)."""
    try:
        with open("/proc/sys/kernel/bpf_stats_enabled") as f:
            return f.read().strip() == "1"
    except OSError:
        return None


def libc_path() -> str | None:
    return features.libc_path()
