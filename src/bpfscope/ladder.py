"""The attach ladder: per hook, the first candidate program that works here.

A tool declares each hook as an ordered list of rungs (for example fentry ->
tp_btf -> raw_tp -> tracepoint -> kprobe). Before load, the loader keeps the
first rung whose mechanism the feature probes found available and whose
target exists on this kernel, disables every other candidate, loads, and
attaches. If the kernel still refuses a chosen program at load time, that
rung is marked unusable and the next one is tried. The choice per hook is
recorded so that every view can say which rung it stands on.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import features, system, targets
from . import libbpf as bpf
from .errors import EXIT_UNSUPPORTED, BpfscopeError
from .features import Mechanism, Verdict
from .objects import object_bytes

__all__ = [
    "AttachedObject",
    "Choice",
    "Extras",
    "ExtrasFor",
    "Hook",
    "LadderError",
    "Rung",
    "choose",
    "chosen_parts",
    "load_object",
    "target_missing",
]

log = logging.getLogger("bpfscope.ladder")


@dataclass(frozen=True)
class Rung:
    """One candidate: ``program`` attached by ``mechanism`` to ``target``.

    Targets: tracepoint ``category:name``; raw_tp/tp_btf the tracepoint
    name; fentry/fexit/kprobe a kernel function; uprobe ``binary:function``;
    cgroup_skb a cgroup v2 directory.

    ``companions`` are further ``(program, target)`` pairs of the same
    mechanism that the rung needs together: where one tracepoint program
    sees every protocol, the function rungs need one program per function
    (``tcp_sendmsg``, ``udp_sendmsg``, ...). The rung is usable only if all
    its targets exist, and they load and attach as one.
    """

    mechanism: Mechanism
    program: str
    target: str
    companions: tuple[tuple[str, str], ...] = ()

    def describe(self) -> str:
        extra = f" (+{len(self.companions)} more)" if self.companions else ""
        return f"{self.mechanism} {self.target}{extra}"

    def parts(self) -> tuple[Rung, ...]:
        """This rung and each companion as single-program rungs."""
        return (
            Rung(self.mechanism, self.program, self.target),
            *(Rung(self.mechanism, p, t) for p, t in self.companions),
        )

    @property
    def programs(self) -> tuple[str, ...]:
        return tuple(r.program for r in self.parts())


@dataclass(frozen=True)
class Hook:
    name: str
    rungs: tuple[Rung, ...]
    required: bool = True


@dataclass(frozen=True)
class Choice:
    hook: Hook
    rung: Rung | None
    skipped: tuple[tuple[Rung, str], ...] = ()

    @property
    def mechanism(self) -> Mechanism | None:
        return self.rung.mechanism if self.rung else None

    def to_json(self) -> dict[str, Any]:
        return {
            "hook": self.hook.name,
            "mechanism": str(self.rung.mechanism) if self.rung else None,
            "program": self.rung.program if self.rung else None,
            "target": self.rung.target if self.rung else None,
            "companions": [list(c) for c in self.rung.companions] if self.rung else [],
            "skipped": [
                {"mechanism": str(r.mechanism), "target": r.target, "why": why}
                for r, why in self.skipped
            ],
        }


class LadderError(BpfscopeError, RuntimeError):
    """No usable rung for a required hook, or a forced rung is unavailable."""

    exit_code = EXIT_UNSUPPORTED


def target_missing(rung: Rung) -> str | None:
    """Why one of the rung's targets does not exist here, or None."""
    for part in rung.parts():
        why = _target_missing(part)
        if why:
            return why
    return None


def _target_missing(rung: Rung) -> str | None:
    m, target = rung.mechanism, rung.target
    if m is Mechanism.TRACEPOINT:
        category, _, name = target.partition(":")
        if system.tracefs_path() is None:
            return "tracefs is not mounted"
        if not targets.tracepoint_exists(category, name):
            return f"tracepoint {target} does not exist on this kernel"
    elif m in (Mechanism.RAW_TP, Mechanism.TP_BTF):
        if not targets.btf_tracepoint_exists(target):
            return f"no BTF for tracepoint {target} (missing on this kernel, or no BTF)"
    elif m in (Mechanism.FENTRY, Mechanism.FEXIT):
        if not targets.btf_func_exists(target):
            return f"kernel function {target} has no BTF (missing, inlined or renamed)"
    elif m in (Mechanism.KPROBE, Mechanism.KRETPROBE):
        if not targets.kprobe_target_exists(target):
            return f"kernel function {target} is not in kallsyms or cannot be probed"
    elif m in (Mechanism.UPROBE, Mechanism.URETPROBE):
        binary = target.partition(":")[0]
        if not os.path.exists(binary):
            return f"binary {binary} does not exist"
    elif m is Mechanism.CGROUP_SKB and not os.path.isdir(target):
        return f"cgroup {target} does not exist"
    return None


def _unavailable(v: Verdict) -> str:
    text = f"{v.mechanism} is {v.status} here: {v.detail}"
    if v.needs:
        text += f" (needs {v.needs})"
    return text


def choose(
    hooks: Sequence[Hook],
    *,
    verdict: Callable[[Mechanism], Verdict] = features.probe,
    missing: Callable[[Rung], str | None] = target_missing,
    force: Mechanism | None = None,
    excluded: frozenset[str] = frozenset(),
) -> list[Choice]:
    """Pick one rung per hook. ``force`` restricts hooks that have a rung of
    that mechanism to it; ``excluded`` names programs the kernel refused."""
    if force is not None and not any(r.mechanism is force for h in hooks for r in h.rungs):
        offered = sorted({str(r.mechanism) for h in hooks for r in h.rungs})
        raise LadderError(
            f"--attach {force}: this tool has no {force} programs (its rungs: {', '.join(offered)})"
        )
    choices = []
    for hook in hooks:
        rungs = hook.rungs
        forced = force is not None and any(r.mechanism is force for r in rungs)
        if forced:
            rungs = tuple(r for r in rungs if r.mechanism is force)
        skipped: list[tuple[Rung, str]] = []
        chosen = None
        for rung in rungs:
            if excluded.intersection(rung.programs):
                skipped.append((rung, "the kernel refused to load this program"))
                continue
            v = verdict(rung.mechanism)
            if not v.available:
                skipped.append((rung, _unavailable(v)))
                continue
            why = missing(rung)
            if why:
                skipped.append((rung, why))
                continue
            chosen = rung
            break
        # an optional hook without a rung of the forced mechanism stays optional
        if chosen is None and (hook.required or forced):
            reasons = "; ".join(f"{r.describe()}: {why}" for r, why in skipped)
            prefix = f"--attach {force}: " if force is not None else ""
            raise LadderError(f"{prefix}no usable rung for hook {hook.name!r}: {reasons}")
        choices.append(Choice(hook, chosen, tuple(skipped)))
    return choices


def chosen_parts(choices: Iterable[Choice]) -> Iterator[tuple[Choice, Rung]]:
    """Every program the chosen rungs load (companions included), with its choice."""
    for c in choices:
        for part in c.rung.parts() if c.rung else ():
            yield c, part


@dataclass(frozen=True)
class Extras:
    """What a tool adds once its rungs are known: settings that depend on
    them, and programs loaded but attached by the tool itself (iterators)."""

    rodata: Mapping[str, int | bytes] = field(default_factory=dict)
    programs: frozenset[str] = frozenset()
    description: str = ""  # what they turn on, for doctor --check


# A tool's extras for the chosen rungs.
ExtrasFor = Callable[[Sequence["Choice"]], Extras]


@dataclass
class AttachedObject:
    """A loaded, attached tool: its object and the rung of every hook."""

    tool: str
    obj: bpf.BpfObject
    choices: list[Choice]
    extras: Extras = field(default_factory=Extras)
    _extra: list[Any] = field(default_factory=list)

    def rung(self, hook: str) -> Rung | None:
        for c in self.choices:
            if c.hook.name == hook:
                return c.rung
        raise KeyError(hook)

    def rungs(self) -> dict[str, str | None]:
        """Hook name -> mechanism it stands on (None: optional hook off)."""
        return {c.hook.name: str(c.rung.mechanism) if c.rung else None for c in self.choices}

    def skipped_runs(self) -> int:
        """Runs of the attached programs that the kernel skipped: its
        per-CPU recursion guard drops a run when the same program is still
        running on that CPU (preempted mid-run, or its hook fired inside
        it). Events this tool never saw; 0 where the kernel does not say."""
        return sum(
            self.obj.program(part.program).info().recursion_misses
            for _, part in chosen_parts(self.choices)
        )

    def rungs_summary(self) -> str:
        return ", ".join(
            f"{c.hook.name}={c.rung.mechanism if c.rung else 'off'}" for c in self.choices
        )

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> AttachedObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_FAILED_PROG = re.compile(r"prog '([^']+)': failed to load")


def preallocate_hash_maps(obj: bpf.BpfObject) -> list[str]:
    """Make the object's run-time allocated hash maps preallocated.

    Before 6.1 (no BPF memory allocator) the verifier accepts a tracing
    program on a BPF_F_NO_PREALLOC hash map but fires a kernel WARN ("trace
    type programs with run-time allocated hash maps are unsafe"), which
    panics hosts with panic_on_warn. There the maps keep their full size
    from the start instead."""
    changed = []
    for name, m in obj.maps.items():
        if m.map_type == bpf.MapType.HASH and m.map_flags & bpf.BPF_F_NO_PREALLOC:
            m.map_flags = m.map_flags & ~bpf.BPF_F_NO_PREALLOC
            changed.append(name)
    return changed


def _open_configured(
    tool: str,
    choices: list[Choice],
    rodata: Mapping[str, int | bytes],
    max_entries: Mapping[str, int],
    btf_path: str | os.PathLike[str] | None,
    also_load: frozenset[str] = frozenset(),
) -> bpf.BpfObject:
    obj = bpf.BpfObject.open_bytes(object_bytes(tool), name=tool, btf_path=btf_path)
    try:
        wanted = {part.program: part for _, part in chosen_parts(choices)}
        for name, prog in obj.programs.items():
            prog.autoload = name in wanted or name in also_load
            rung = wanted.get(name)
            if rung and rung.mechanism in (Mechanism.FENTRY, Mechanism.FEXIT, Mechanism.TP_BTF):
                prog.set_attach_target(rung.target)
        for key, value in rodata.items():
            obj.rodata[key] = value
        for map_name, n in max_entries.items():
            obj.map(map_name).max_entries = n
        if not system.tracing_may_allocate():
            preallocate_hash_maps(obj)
    except BaseException:
        obj.close()
        raise
    return obj


def load_object(
    tool: str,
    hooks: Sequence[Hook],
    *,
    rodata: Mapping[str, int | bytes] | None = None,
    max_entries: Mapping[str, int] | None = None,
    force: Mechanism | None = None,
    btf_path: str | os.PathLike[str] | None = None,
    verdict: Callable[[Mechanism], Verdict] = features.probe,
    extras: ExtrasFor | None = None,
) -> AttachedObject:
    """Choose rungs, load the tool's object with only those programs, attach.

    ``extras`` adds rung-dependent settings and programs (see :class:`Extras`).
    On failure nothing stays loaded or attached.
    """
    system.btf_path(btf_path)  # clear error before libbpf's own
    if any(r.mechanism is Mechanism.TRACEPOINT for h in hooks for r in h.rungs):
        system.ensure_tracefs()
    excluded: set[str] = set()
    while True:
        choices = choose(hooks, verdict=verdict, force=force, excluded=frozenset(excluded))
        extra = extras(choices) if extras else Extras()
        obj = _open_configured(
            tool,
            choices,
            {**(rodata or {}), **extra.rodata},
            max_entries or {},
            btf_path,
            extra.programs,
        )
        try:
            obj.load()
        except bpf.BpfError as exc:
            obj.close()
            if extra != Extras():
                # the same rungs without the extras before giving up a rung
                log.info("kernel refused the %s extras (%s); loading without them", tool, exc)
                extras = None
                continue
            refused = {
                m.group(1) for line in exc.libbpf_log for m in [_FAILED_PROG.search(line)] if m
            }
            chosen = {p for c in choices if c.rung for p in c.rung.programs}
            retry = (refused & chosen) - excluded
            if force is None and retry:
                log.info("kernel refused %s; trying the next rung", ", ".join(sorted(retry)))
                excluded |= retry
                continue
            raise
        try:
            for _, part in chosen_parts(choices):
                obj.program(part.program).attach_to(part.mechanism, part.target)
        except BaseException:
            obj.close()
            raise
        for c in choices:
            log.debug(
                "%s: hook %s on %s", tool, c.hook.name, c.rung.describe() if c.rung else "off"
            )
        return AttachedObject(tool, obj, choices, extra)
