"""The figure, laid out like the study's: one panel per syscall, grouped
bars of real/user/sys per configuration, the baseline marked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Final

from ..errors import EXIT_UNSUPPORTED, EXIT_USAGE, UserError
from .env import summary_line
from .report import derive
from .runner import BASELINE, BenchResult

__all__ = ["FORMATS", "check_path", "plot"]

FORMATS: Final = (".png", ".svg")
_COLORS: Final = {"real": "#4c72b0", "user": "#55a868", "sys": "#c44e52"}


def check_path(path: str) -> Path:
    p = Path(path)
    if p.suffix.lower() not in FORMATS:
        raise UserError(f"--plot {path}: the file name must end in .png or .svg", EXIT_USAGE)
    if not p.parent.exists():
        raise UserError(f"--plot {path}: directory {p.parent} does not exist", EXIT_USAGE)
    return p


def plot(result: BenchResult, path: str) -> Path:
    """Write the figure; returns its path."""
    out = check_path(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError(
            "--plot needs matplotlib: pip install 'bpfscope[lab]'", EXIT_UNSUPPORTED
        ) from None
    panels = [s for s in result.syscalls if s.baseline.samples]
    n = max(1, len(panels))
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    labels_max = max((len(s.rows) for s in panels), default=1)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(max(4.5, 0.55 * labels_max + 1.5) * cols, 4.6 * rows),
        squeeze=False,
    )
    calls = result.options.calls
    for idx, res in enumerate(panels):
        ax = axes[idx // cols][idx % cols]
        ders = derive(res, calls)
        x = list(range(len(ders)))
        width = 0.27
        for j, metric in enumerate(("real", "user", "sys")):
            med = [d.spreads[metric].median for d in ders]
            lo = [d.spreads[metric].median - d.spreads[metric].min for d in ders]
            hi = [d.spreads[metric].max - d.spreads[metric].median for d in ders]
            ax.bar(
                [i + (j - 1) * width for i in x],
                med,
                width,
                yerr=[lo, hi],
                capsize=2,
                color=_COLORS[metric],
                label=metric,
                error_kw={"elinewidth": 0.8},
            )
        base = next(d for d in ders if d.config == BASELINE)
        ax.axhline(
            base.spreads["real"].median,
            color=_COLORS["real"],
            linestyle="--",
            linewidth=0.9,
            label="baseline real",
        )
        ax.axhline(
            base.spreads["sys"].median,
            color=_COLORS["sys"],
            linestyle=":",
            linewidth=0.9,
            label="baseline sys",
        )
        ax.set_xticks(x)
        ax.set_xticklabels([d.config.label for d in ders], rotation=60, ha="right", fontsize=7)
        title = f"{res.syscall} ({res.path}, N={calls:,})"
        if res.real_syscall is False:
            title += " - not a real syscall"
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("seconds (median, min-max)")
        ax.tick_params(axis="y", labelsize=7)
        if idx == 0:
            ax.legend(fontsize=7)
    for idx in range(len(panels), rows * cols):
        axes[idx // cols][idx % cols].set_visible(False)
    fig.suptitle(f"bpfscope bench syscalls - {summary_line(result.env)}", fontsize=8, wrap=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
