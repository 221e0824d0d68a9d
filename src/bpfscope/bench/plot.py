"""The lab's figures, sized to be read at the width of a docs page.

* the summary (``FILE``): what each mechanism and body adds per call (the
  driver's clock(), ns), one bar per configuration at K = 1 (median over the
  syscalls, each syscall a dot), bpftrace's peer probe next to them; below
  it, what K identical programs add;
* the detail (``FILE-detail``): one panel per syscall, stacked, every
  configuration as a horizontal bar with the min-max over repetitions.

Kernel, machine and protocol are in each title.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, Final

from ..errors import EXIT_UNSUPPORTED, EXIT_USAGE, UserError
from ..features import Mechanism
from .report import BAR_METRIC
from .runner import BASELINE, BenchResult, Config, SyscallResult

__all__ = ["FORMATS", "check_path", "detail_path", "plot"]

FORMATS: Final = (".png", ".svg")
WIDTH_IN: Final = 8.0  # 880 px at the saved resolution: a docs page's width
DPI: Final = 110
_MECH_COLORS: Final = {
    "tracepoint": "#4c72b0",
    "raw_tp": "#55a868",
    "tp_btf": "#8172b2",
    "fentry": "#c44e52",
    "kprobe": "#dd8452",
    "uprobe": "#937860",
}
_BPFTRACE_COLOR: Final = "#7f7f7f"
_WORK_ALPHA: Final = {"empty": 0.45, "count": 0.75, "hash": 1.0}
_MARKERS: Final = "osD^v<>p*h"


def check_path(path: str) -> Path:
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise UserError(f"--plot {path}: the file name must end in .png or .svg", EXIT_USAGE)
    if not p.parent.exists():
        raise UserError(f"--plot {path}: directory {p.parent} does not exist", EXIT_USAGE)
    return p


def detail_path(path: Path) -> Path:
    """Where the per-syscall figure goes: ``name-detail.png`` next to ``name.png``."""
    return path.with_name(f"{path.stem}-detail{path.suffix}")


def _added_ns(res: SyscallResult, config: Config, calls: int) -> list[float]:
    """Added clock() ns per call in each repetition (against that repetition's baseline)."""
    row = res.row(config)
    if row is None or not row.samples:
        return []
    base = [s.metric(BAR_METRIC) for s in res.baseline.samples]
    mine = [s.metric(BAR_METRIC) for s in row.samples]
    return [(m - b) / calls * 1e9 for m, b in zip(mine, base, strict=False)]


def _title(result: BenchResult, what: str) -> str:
    env, o = result.env, result.options
    vm = ", VM" if env.get("hypervisor") else ""
    machine = f"{env.get('cpu_model')}, {env.get('cores')} cores{vm}"
    pinned = f", pinned to CPU {o.cpu}" if o.cpu is not None else ""
    bt = f", bpftrace {env['bpftrace']}" if env.get("bpftrace") else ""
    return (
        f"bpfscope bench syscalls: {what}\n"
        f"kernel {env.get('kernel')} on {machine}\n"
        f"N = {o.calls:,} calls x {o.reps} repetitions, {o.path} path{pinned}{bt}; "
        "median over repetitions"
    )


def _color(config: Config) -> str:
    if config.kind == "bpftrace" or config.mechanism is None:
        return _BPFTRACE_COLOR
    return _MECH_COLORS.get(str(config.mechanism), "#333333")


def _alpha(config: Config) -> float:
    return _WORK_ALPHA.get(config.work or "", 1.0)


def _summary(plt: Any, result: BenchResult, out: Path) -> None:
    calls = result.options.calls
    panels = [s for s in result.syscalls if s.baseline.samples and s.real_syscall is not False]
    configs: list[Config] = []
    for s in panels:
        for r in s.rows:
            c = r.config
            k1 = c.kind == "bpf" and c.probes == 1 and not c.bpf_stats
            if (k1 or c.kind == "bpftrace") and r.samples and c not in configs:
                configs.append(c)
    sweep = sorted(
        {
            (c.mechanism, c.probes)
            for s in panels
            for c in (r.config for r in s.rows if r.samples)
            if c.kind == "bpf" and c.work == result.options.sweep_work and not c.bpf_stats
        },
        key=lambda t: (str(t[0]), t[1]),
    )
    has_sweep = len({k for _, k in sweep}) > 1
    fig, axes = plt.subplots(
        2 if has_sweep else 1,
        1,
        figsize=(WIDTH_IN, 0.34 * len(configs) + (6.2 if has_sweep else 3.0)),
        squeeze=False,
        gridspec_kw={"height_ratios": [max(3, 0.34 * len(configs)), 2.6] if has_sweep else [1]},
    )
    ax = axes[0][0]
    y = list(range(len(configs)))[::-1]
    for yi, c in zip(y, configs, strict=True):
        per = [statistics.median(a) for s in panels if (a := _added_ns(s, c, calls))]
        if not per:
            continue
        ax.barh(yi, statistics.median(per), color=_color(c), alpha=_alpha(c), height=0.7)
        ax.text(max(per) + 2, yi, f"{statistics.median(per):+.0f}", va="center", fontsize=8)
        for j, s in enumerate(panels):
            a = _added_ns(s, c, calls)
            if a:
                ax.plot(
                    statistics.median(a),
                    yi,
                    _MARKERS[j % len(_MARKERS)],
                    color="black",
                    markersize=3.5,
                    fillstyle="none",
                    label=s.syscall if yi == y[0] else None,
                )
    ax.set_yticks(y)
    ax.set_yticklabels([c.label for c in configs], fontsize=9)
    ax.set_xlabel("added ns per call (driver clock(), vs nothing attached)", fontsize=9)
    ax.axvline(0, color="black", linewidth=0.6)
    ax.grid(axis="x", linewidth=0.3)
    ax.set_title("K = 1 program: bar = median over syscalls, markers = each syscall", fontsize=9)
    ax.legend(
        fontsize=8,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.16),
        ncol=len(panels) or 1,
        title="markers: each syscall's median",
        title_fontsize=8,
        frameon=False,
    )
    ax.set_xlim(left=min(0.0, ax.get_xlim()[0]), right=ax.get_xlim()[1] * 1.08)
    ax.tick_params(axis="x", labelsize=8)
    if has_sweep:
        ax2 = axes[1][0]
        for mi, m in enumerate(sorted({m for m, _ in sweep}, key=str)):
            ks = sorted(k for mm, k in sweep if mm == m)
            med = []
            for k in ks:
                c = Config("bpf", m, result.options.sweep_work, k)
                per = [statistics.median(a) for s in panels if (a := _added_ns(s, c, calls))]
                med.append(statistics.median(per) if per else float("nan"))
            color = _MECH_COLORS.get(str(m), "#333333") if isinstance(m, Mechanism) else "#333"
            ax2.plot(ks, med, "o-", color=color, label=str(m))
            ax2.annotate(f"{m} {med[-1]:+.0f}", (ks[-1], med[-1]), fontsize=8,
                         xytext=(6, 10 * mi - 10), textcoords="offset points",
                         va="center", color=color)  # fmt: skip
        ax2.set_xlabel(
            f"K identical programs on one hook ({result.options.sweep_work} body)", fontsize=9
        )
        ax2.set_ylabel("added ns per call", fontsize=9)
        ax2.set_xticks(sorted({k for _, k in sweep}))
        ax2.set_xlim(right=max(k for _, k in sweep) * 1.18)
        ax2.grid(linewidth=0.3)
        ax2.legend(fontsize=8)
        ax2.set_title("Program count: median over syscalls", fontsize=9)
        ax2.tick_params(labelsize=8)
    fig.suptitle(_title(result, "what tracing one syscall adds"), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=DPI)
    plt.close(fig)


def _detail(plt: Any, result: BenchResult, out: Path) -> None:
    calls = result.options.calls
    panels = [s for s in result.syscalls if s.baseline.samples]
    rows_max = max((len(s.rows) for s in panels), default=1)
    height = 1.4 + (0.22 * rows_max + 0.9) * max(1, len(panels))
    fig, axes = plt.subplots(
        len(panels) or 1,
        1,
        figsize=(WIDTH_IN, height),
        squeeze=False,
        sharex=True,
    )
    for idx, res in enumerate(panels):
        ax = axes[idx][0]
        rows = [r for r in res.rows if r.samples and r.config != BASELINE]
        y = list(range(len(rows)))[::-1]
        for yi, r in zip(y, rows, strict=True):
            a = _added_ns(res, r.config, calls)
            med = statistics.median(a)
            ax.barh(
                yi,
                med,
                xerr=[[med - min(a)], [max(a) - med]],
                color=_color(r.config),
                alpha=_alpha(r.config),
                height=0.75,
                error_kw={"elinewidth": 0.7, "capsize": 1.5},
            )
        ax.set_yticks(y)
        ax.set_yticklabels([r.config.label for r in rows], fontsize=7)
        ax.axvline(0, color="black", linewidth=0.6)
        ax.grid(axis="x", linewidth=0.3)
        base_ns = statistics.median(s.metric(BAR_METRIC) for s in res.baseline.samples)
        title = f"{res.syscall} ({res.path} path): baseline {base_ns / calls * 1e9:.0f} ns per call"
        if res.real_syscall is False:
            title += " - NOT a real syscall here (nothing to trace)"
        ax.set_title(title, fontsize=9, loc="left")
        ax.tick_params(axis="x", labelsize=8, labelbottom=True)
    axes[-1][0].set_xlabel(
        "added ns per call (driver clock(); bar = median, whisker = min-max over repetitions)",
        fontsize=9,
    )
    fig.suptitle(_title(result, "every configuration, per syscall"), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.75 / height))  # room for the three-line title
    fig.savefig(out, dpi=DPI)
    plt.close(fig)


def plot(result: BenchResult, path: str) -> Path:
    """Write the summary at ``path`` and the detail next to it
    (:func:`detail_path`); returns the summary's path."""
    out = check_path(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            "--plot needs matplotlib: pip install 'bpfscope[lab]'", EXIT_UNSUPPORTED
        ) from None
    _summary(plt, result, out)
    _detail(plt, result, detail_path(out))
    return out
