"""Plan and run the overhead lab: configurations, verification, interleaving.

For each syscall the runner measures a baseline (nothing attached) and every
configuration against it: each available mechanism with each work body
(K = 1), the ``--probes`` sweep (K identical programs on one hook), and
bpftrace doing the study's probe. One warm-up round, then R repetitions; in
each repetition every configuration of every syscall runs once, in an order
rotated from one repetition to the next, so slow drift on the machine hits
all configurations alike.

Before measuring, a counting program checks how many real system calls the
driver makes for N calls; a libc wrapper answered by the vDSO (glibc's
gettimeofday, time) makes none, and the report says so.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from .. import features, libbpf
from ..errors import EXIT_USAGE, UserError
from ..features import Mechanism
from ..sysnames import syscall_nr
from . import driver, peer, programs
from .pinning import rotated
from .programs import MAX_COPIES, MECHANISMS, WORKS, BenchObject, Hookable
from .stats import Sample, Spread, spread

__all__ = [
    "PRESETS",
    "STUDY_SYSCALLS",
    "BenchResult",
    "Config",
    "Options",
    "Row",
    "SyscallResult",
    "plan_configs",
    "run",
    "validate",
]

log = logging.getLogger("bpfscope.bench")

# The study's set (it used getuid and gettimeofday interchangeably as "the
# cheapest call"; both are here).
STUDY_SYSCALLS: Final = ("getuid", "getpid", "getppid", "times", "gettimeofday")

PRESETS: Final[dict[str, dict[str, Any]]] = {
    # CI: under 30 s for the study's five syscalls on a 2-core VM.
    "quick": {"calls": 300_000, "reps": 3, "works": ("empty", "count"), "probes": (1, 2)},
    # About 5 minutes on a quiet 2-core VM (a run's fixed cost, attaching
    # and starting the driver, is about half of it at these call counts).
    # 9 repetitions: the fewest with which a syscall's interval (order
    # statistics of the per-repetition ratios, see verdict.py) leaves out
    # the most extreme repetition on each side; the bar's verdicts pool the
    # five syscalls' repetitions (45 per hook), which is what makes them
    # repeat from run to run (report.pooled_bar).
    "default": {"calls": 500_000, "reps": 9, "works": WORKS, "probes": (1, 2, 4, 8)},
    # The study's protocol: 50M calls, 10 repetitions (hours, not minutes).
    "paper": {"calls": 50_000_000, "reps": 10, "works": WORKS, "probes": (1, 2, 4, 8)},
}

VERIFY_CALLS: Final = 10_000


@dataclass(frozen=True)
class Config:
    kind: str  # "baseline" | "bpf" | "bpftrace"
    mechanism: Mechanism | None = None
    work: str | None = None
    probes: int = 1
    bpf_stats: bool = False

    @property
    def label(self) -> str:
        if self.kind == "baseline":
            return "baseline"
        if self.kind == "bpftrace":
            return "bpftrace @=count()"
        text = f"{self.mechanism}/{self.work}"
        if self.probes > 1:
            text += f" x{self.probes}"
        if self.bpf_stats:
            text += " +bpf_stats"
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "mechanism": str(self.mechanism) if self.mechanism else None,
            "work": self.work,
            "probes": self.probes,
            "bpf_stats": self.bpf_stats,
        }


BASELINE: Final = Config("baseline")
BPFTRACE: Final = Config("bpftrace")


@dataclass(frozen=True)
class Options:
    syscalls: tuple[str, ...] = STUDY_SYSCALLS
    calls: int = PRESETS["default"]["calls"]
    reps: int = PRESETS["default"]["reps"]
    warmup: bool = True
    path: str = "raw"  # "raw" (syscall()) or "libc" (the wrapper)
    mechanisms: tuple[Mechanism, ...] | None = None  # None: every bench mechanism
    works: tuple[str, ...] = WORKS
    probes: tuple[int, ...] = (1, 2, 4, 8)
    bpftrace: bool = True
    bpf_stats: bool = False
    preset: str = "default"
    btf_path: str | None = None
    cpu: int | None = None  # pin the driver to this CPU (None: not pinned)

    @property
    def sweep_work(self) -> str:
        """Body used for K > 1: count if measured, else the first body asked for."""
        return "count" if "count" in self.works else self.works[0]

    def to_json(self) -> dict[str, Any]:
        return {
            "syscalls": list(self.syscalls),
            "calls": self.calls,
            "reps": self.reps,
            "warmup": self.warmup,
            "path": self.path,
            "mechanisms": [str(m) for m in self.mechanisms] if self.mechanisms else None,
            "works": list(self.works),
            "probes": list(self.probes),
            "sweep_work": self.sweep_work,
            "bpftrace": self.bpftrace,
            "bpf_stats": self.bpf_stats,
            "preset": self.preset,
            "pinned_cpu": self.cpu,
        }


def validate(opts: Options) -> None:
    """Bad input fails here, before anything is built, loaded or run."""
    if opts.calls <= 0:
        raise UserError(
            f"--calls must be a positive number of calls (got {opts.calls})", EXIT_USAGE
        )
    if opts.reps <= 0:
        raise UserError(
            f"--reps must be a positive number of repetitions (got {opts.reps})", EXIT_USAGE
        )
    if not opts.syscalls:
        raise UserError("no syscall to benchmark", EXIT_USAGE)
    if opts.path not in ("raw", "libc"):
        raise UserError(f"--path must be raw or libc (got {opts.path!r})", EXIT_USAGE)
    bad_work = [w for w in opts.works if w not in WORKS]
    if bad_work or not opts.works:
        raise UserError(
            f"--work: unknown body {', '.join(bad_work) or '(none)'} "
            f"(choose from {', '.join(WORKS)})",
            EXIT_USAGE,
        )
    bad_k = [k for k in opts.probes if not 1 <= k <= MAX_COPIES]
    if bad_k or not opts.probes:
        raise UserError(
            f"--probes: each count must be between 1 and {MAX_COPIES} "
            f"(got {', '.join(map(str, opts.probes)) or 'nothing'})",
            EXIT_USAGE,
        )
    for name in opts.syscalls:
        syscall_nr(name)  # UnknownSyscall lists close matches
        why = driver.UNSAFE_SYSCALLS.get(name)
        if why:
            raise UserError(
                f"refusing to benchmark {name}: called in a loop with zero arguments it {why}",
                EXIT_USAGE,
            )
        if opts.path == "libc" and name not in driver.LIBC_WRAPPERS:
            raise UserError(
                f"--path libc: the driver has no libc wrapper for {name} "
                f"(it has: {', '.join(sorted(driver.LIBC_WRAPPERS))}); use --path raw",
                EXIT_USAGE,
            )


def plan_configs(opts: Options, available: Sequence[Mechanism], bpftrace: bool) -> list[Config]:
    """Every configuration measured for one syscall, baseline first."""
    configs = [BASELINE]
    for m in available:
        configs.extend(Config("bpf", m, w, 1) for w in opts.works)
        configs.extend(Config("bpf", m, opts.sweep_work, k) for k in opts.probes if k > 1)
        if opts.bpf_stats:
            configs.extend(Config("bpf", m, w, 1, bpf_stats=True) for w in opts.works)
    if bpftrace:
        configs.append(BPFTRACE)
    return configs


@dataclass
class Row:
    config: Config
    samples: list[Sample] = field(default_factory=list)

    def spread(self, metric: str) -> Spread:
        return spread(s.metric(metric) for s in self.samples)


@dataclass
class SyscallResult:
    syscall: str
    nr: int
    path: str
    rows: list[Row] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)
    notes: list[str] = field(default_factory=list)
    verify_calls: int = 0
    verified_syscalls: int | None = None  # real syscalls counted for verify_calls calls
    verify_mechanism: str | None = None
    first_ret: int | None = None
    first_errno: int | None = None

    @property
    def real_syscall(self) -> bool | None:
        if self.verified_syscalls is None:
            return None
        return self.verified_syscalls >= self.verify_calls

    def row(self, config: Config) -> Row | None:
        for r in self.rows:
            if r.config == config:
                return r
        return None

    @property
    def baseline(self) -> Row:
        row = self.row(BASELINE)
        assert row is not None
        return row


@dataclass
class BenchResult:
    options: Options
    env: dict[str, Any]
    syscalls: list[SyscallResult]
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def measured_tracing(self) -> bool:
        """Did any configuration other than the baseline get measured?"""
        return any(r.samples and r.config.kind != "baseline" for s in self.syscalls for r in s.rows)


# --------------------------------------------------------------------------
# one syscall's set-up


@dataclass
class _Session:
    result: SyscallResult
    configs: list[Config]
    obj: BenchObject | None
    bpftrace: peer.Bpftrace | None
    verify_mechanism: Mechanism | None


_VERIFY_ORDER: Final = (Mechanism.RAW_TP, Mechanism.TP_BTF, Mechanism.TRACEPOINT)


def _prepare(
    name: str,
    opts: Options,
    bt: peer.Bpftrace | None,
    stack: ExitStack,
    verdict: Callable[[Mechanism], features.Verdict] | None,
) -> _Session:
    nr = syscall_nr(name)
    res = SyscallResult(name, nr, opts.path)
    libc = programs.libc_path()
    probe_fn = verdict or features.probe

    def check(m: Mechanism) -> Hookable:
        return programs.hookable(m, name, path=opts.path, libc=libc, verdict=probe_fn)

    hooks: dict[Mechanism, str] = {}
    for m in opts.mechanisms or MECHANISMS:
        h = check(m)
        if h.available and h.target is not None:
            hooks[m] = h.target
        else:
            res.skipped.append((str(m), h.skipped or "skipped"))
    # The syscall-counting check needs one sys_enter-style hook, asked for or not.
    verify_m, verify_target = None, None
    for m in _VERIFY_ORDER:
        h = check(m)
        if h.available and h.target is not None:
            verify_m, verify_target = m, h.target
            break
    obj = None
    wanted: dict[tuple[Mechanism, str], int] = {}
    for m in hooks:
        for w in opts.works:
            wanted[(m, w)] = 1
        sweep_k = max(opts.probes)
        wanted[(m, opts.sweep_work)] = max(wanted.get((m, opts.sweep_work), 1), sweep_k)
    all_hooks = dict(hooks)
    if verify_m is not None and verify_target is not None:
        wanted.setdefault((verify_m, "hash"), 1)
        all_hooks.setdefault(verify_m, verify_target)
    if wanted:
        obj = stack.enter_context(BenchObject(nr, wanted, all_hooks, btf_path=opts.btf_path))
        for m, why in obj.refused.items():
            hooks.pop(m, None)
            res.skipped.append((str(m), why))
            if m == verify_m:
                verify_m = None
        # A trial attach per mechanism: a hook that loads but cannot attach
        # (say, a libc symbol libbpf cannot resolve) is skipped, not fatal.
        for m in list(hooks):
            try:
                with libbpf.quiet_libbpf():
                    programs.detach(obj.attach(m, opts.works[0], 1))
            except libbpf.BpfError as exc:
                hooks.pop(m)
                res.skipped.append((str(m), f"skipped: attach failed: {exc}"))
    use_bt = False
    if opts.bpftrace:
        from .. import targets

        if bt is None:
            res.skipped.append(("bpftrace", "skipped: bpftrace is not installed (peer column)"))
        elif not targets.tracepoint_exists("syscalls", f"sys_enter_{name}"):
            res.skipped.append(
                ("bpftrace", f"skipped: tracepoint syscalls:sys_enter_{name} does not exist")
            )
        else:
            use_bt = True
    available = [m for m in MECHANISMS if m in hooks]
    configs = plan_configs(opts, available, use_bt)
    res.rows = [Row(c) for c in configs]
    return _Session(res, configs, obj, bt if use_bt else None, verify_m)


def _verify(sess: _Session, exe: Path, opts: Options) -> None:
    """Count the real syscalls the driver makes for VERIFY_CALLS calls."""
    res = sess.result
    calls = min(VERIFY_CALLS, opts.calls)
    out = driver.run(exe, res.syscall, res.nr, calls, path=opts.path, cpu=opts.cpu)
    res.first_ret, res.first_errno = out.ret, out.errno
    res.verify_calls = calls
    if sess.obj is None or sess.verify_mechanism is None:
        res.notes.append("could not count real syscalls: no counting mechanism works here")
        return
    m = sess.verify_mechanism
    sess.obj.reset()
    links = sess.obj.attach(m, "hash", 1)
    try:
        out = driver.run(exe, res.syscall, res.nr, calls, path=opts.path, cpu=opts.cpu)
    finally:
        programs.detach(links)
    res.verified_syscalls = sess.obj.pid_count(out.pid)
    res.verify_mechanism = str(m)
    if res.verified_syscalls == 0:
        res.notes.append(
            f"not a real syscall: {calls} calls of {res.syscall} through the {opts.path} path "
            "entered the kernel 0 times (answered in user space, e.g. by the vDSO); "
            "tracing cannot see them and their overhead is ~0"
        )
    elif res.verified_syscalls < calls:
        res.notes.append(
            f"only {res.verified_syscalls} of {calls} calls entered the kernel as {res.syscall}"
        )
    if out.errno:
        import errno as errno_mod

        res.notes.append(
            f"{res.syscall} fails here with {errno_mod.errorcode.get(out.errno, out.errno)}: "
            "the loop measures the failing path"
        )


# --------------------------------------------------------------------------
# one timed run


def _measure(sess: _Session, config: Config, exe: Path, opts: Options, calls: int) -> Sample:
    res = sess.result
    if config.kind == "baseline":
        return driver.run(exe, res.syscall, res.nr, calls, path=opts.path, cpu=opts.cpu).sample
    if config.kind == "bpftrace":
        assert sess.bpftrace is not None
        with sess.bpftrace.attached(res.syscall) as bt_run:
            out = driver.run(exe, res.syscall, res.nr, calls, path=opts.path, cpu=opts.cpu)
        return replace(out.sample, events=bt_run.count)
    assert sess.obj is not None
    assert config.mechanism is not None
    assert config.work is not None
    obj, m, work, k = sess.obj, config.mechanism, config.work, config.probes
    obj.reset()
    progs = obj.programs(m, work, k)
    with libbpf.enable_run_time_stats() if config.bpf_stats else contextlib.nullcontext():
        before = [p.info() for p in progs] if config.bpf_stats else []
        links = obj.attach(m, work, k)
        try:
            out = driver.run(exe, res.syscall, res.nr, calls, path=opts.path, cpu=opts.cpu)
        finally:
            programs.detach(links)
        after = [p.info() for p in progs] if config.bpf_stats else []
    sample = out.sample
    if work == "count":
        counts = obj.copy_counts()[:k]
        sample = replace(
            sample, events=sum(counts), copies_fired=sum(1 for c in counts if c >= out.calls)
        )
    elif work == "hash":
        events = obj.pid_count(out.pid)
        sample = replace(sample, events=events, copies_fired=events // out.calls)
    if config.bpf_stats:
        pairs = list(zip(after, before, strict=True))
        sample = replace(
            sample,
            prog_run_ns=sum(a.run_time_ns - b.run_time_ns for a, b in pairs),
            prog_run_cnt=sum(a.run_cnt - b.run_cnt for a, b in pairs),
        )
    return sample


def schedule(sessions: Sequence[Any], reps: int, warmup: bool) -> Iterator[tuple[int, int, Config]]:
    """(rep, session index, config) in run order; rep -1 is the warm-up."""
    for rep in range(-1 if warmup else 0, reps):
        for i, sess in enumerate(sessions):
            for c in rotated(sess.configs, max(rep, 0)):
                yield rep, i, c


def run(
    opts: Options,
    *,
    env: dict[str, Any],
    progress: Callable[[int, int, str], None] | None = None,
    bt: peer.Bpftrace | None = None,
    exe: Path | None = None,
    verdict: Callable[[Mechanism], features.Verdict] | None = None,
) -> BenchResult:
    """Run the whole lab. ``progress(done, total, label)`` before each run."""
    validate(opts)
    t0 = time.monotonic()
    exe = exe if exe is not None else driver.build()
    result = BenchResult(opts, env, [])
    if opts.bpftrace and bt is None:
        result.notes.append("bpftrace is not installed: the peer column is skipped")
    if opts.bpf_stats and programs.stats_enabled_by_sysctl():
        result.notes.append(
            "kernel.bpf_stats_enabled is already 1 (set by someone else): every BPF "
            "configuration carries the statistics' cost"
        )
    with ExitStack() as stack:
        sessions = [_prepare(name, opts, bt, stack, verdict) for name in opts.syscalls]
        for sess in sessions:
            _verify(sess, exe, opts)
        plan = list(schedule(sessions, opts.reps, opts.warmup))
        warm_calls = max(1000, opts.calls // 10)
        for done, (rep, i, config) in enumerate(plan):
            sess = sessions[i]
            if progress is not None:
                what = "warm-up" if rep < 0 else f"rep {rep + 1}/{opts.reps}"
                progress(done, len(plan), f"{sess.result.syscall} {config.label} ({what})")
            calls = warm_calls if rep < 0 else opts.calls
            sample = _measure(sess, config, exe, opts, calls)
            if rep >= 0:
                row = sess.result.row(config)
                assert row is not None
                row.samples.append(sample)
        if progress is not None:
            progress(len(plan), len(plan), "done")
        result.syscalls = [s.result for s in sessions]
    result.seconds = time.monotonic() - t0
    env["loadavg_end"] = _loadavg()
    return result


def _loadavg() -> str | None:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return None
