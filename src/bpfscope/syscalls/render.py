"""Views of syscall snapshots: plain text, rich tables, JSON.

Views take :class:`~bpfscope.syscalls.records.Snapshot` records and know
nothing about libbpf. Plain text is for pipes and files (one block per
interval); the rich renderable is for a live terminal.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .aggregate import aggregate, aggregate_errnos, grouped_json, top
from .records import ErrnoStat, Snapshot, SyscallStat, bucket_bounds_ns

__all__ = [
    "BY_CHOICES",
    "SORT_CHOICES",
    "ViewOptions",
    "aggregate_errnos",
    "format_ns",
    "histogram_lines",
    "json_snapshot",
    "plain_snapshot",
    "rich_snapshot",
]

BY_CHOICES: Final = ("syscall", "process", "both")
SORT_CHOICES: Final = ("count", "time", "errors")
BAR_WIDTH: Final = 40


@dataclass(frozen=True)
class ViewOptions:
    by: str = "syscall"
    sort: str = "count"
    top: int | None = 10
    errnos: bool = False
    latency: bool = False  # calls were timed: TIME/MEAN columns, histograms


def format_ns(ns: float) -> str:
    """Human latency: 830ns, 1.2us, 20.1ms, 3.00s."""
    if ns < 1_000:
        return f"{ns:.0f}ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.1f}us"
    if ns < 1_000_000_000:
        return f"{ns / 1e6:.1f}ms"
    return f"{ns / 1e9:.2f}s"


def _bound(ns: int) -> str:
    """Powers of two the bpftrace way: 512, 1K, 32M, 1G (K = 1024)."""
    for unit, shift in (("T", 40), ("G", 30), ("M", 20), ("K", 10)):
        if ns >= 1 << shift:
            return f"{ns >> shift}{unit}"
    return str(ns)


def histogram_lines(hist: Sequence[int], width: int = BAR_WIDTH) -> list[str]:
    """bpftrace-style log2 histogram in ns, from the first to the last used
    slot (``[1K, 2K)`` is 1024 to 2047 ns)."""
    used = [i for i, v in enumerate(hist) if v]
    if not used:
        return []
    peak = max(hist)
    rows = []
    for i in range(used[0], used[-1] + 1):
        low, high = bucket_bounds_ns(i)
        label = f"[{_bound(low)}, {_bound(high)})" if high is not None else f"[{_bound(low)}, ...)"
        bar = "@" * (round(hist[i] * width / peak) if hist[i] else 0)
        rows.append(f"{label:>13} {hist[i]:>10} |{bar:<{width}}|")
    return rows


def _key_columns(by: str) -> list[str]:
    return {"process": ["PID", "COMM"], "syscall": ["SYSCALL"], "both": ["PID", "COMM", "SYSCALL"]}[
        by
    ]


def _key_values(s: SyscallStat | ErrnoStat, by: str) -> list[str]:
    if by == "process":
        return [str(s.tgid), s.comm]
    if by == "syscall":
        return [s.syscall]
    return [str(s.tgid), s.comm, s.syscall]


def _label(s: SyscallStat, by: str) -> str:
    if by == "process":
        return f"{s.comm} ({s.tgid})"
    if by == "syscall":
        return s.syscall
    return f"{s.comm} ({s.tgid}) {s.syscall}"


def _rows(snap: Snapshot, opts: ViewOptions) -> list[SyscallStat]:
    return top(aggregate(snap.stats, opts.by), opts.top, opts.sort)


def _errno_rows(snap: Snapshot, opts: ViewOptions) -> list[ErrnoStat]:
    errs = aggregate_errnos(snap.errnos, opts.by)
    return errs if opts.top is None else errs[: opts.top]


def _header(snap: Snapshot) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(snap.time))
    rate = snap.total_calls / snap.elapsed_s if snap.elapsed_s > 0 else 0.0
    text = (
        f"{stamp}  {snap.total_calls} calls in {snap.elapsed_s:.2f}s ({rate:,.0f}/s)"
        f"  filter: {snap.filter.describe()}  [{snap.mechanism}]"
    )
    if snap.drops.total:
        d = snap.drops
        text += (
            f"  LOST (since start): stats map full {d.stats_full}, "
            f"no task storage {d.inflight_nomem}, errno map full {d.errnos_full}, "
            f"skipped by the kernel {d.skipped}"
        )
    return text


def _stat_cells(s: SyscallStat, elapsed: float, latency: bool) -> list[str]:
    rate = s.count / elapsed if elapsed > 0 else 0.0
    cells = [str(s.count), f"{rate:,.0f}", str(s.errors)]
    if latency:
        timed = sum(s.hist)  # exit/exit_group are counted, not timed
        cells += [format_ns(s.total_ns) if timed else "-", format_ns(s.mean_ns) if timed else "-"]
    return cells


def _stat_columns(latency: bool) -> list[str]:
    return ["COUNT", "RATE/s", "ERRORS"] + (["TIME", "MEAN"] if latency else [])


def plain_snapshot(snap: Snapshot, opts: ViewOptions) -> str:
    """One interval as fixed-width text (for pipes, files, logs)."""
    rows = _rows(snap, opts)
    lines = [_header(snap)]
    if not rows:
        lines.append("  (no calls)")
        return "\n".join(lines) + "\n"
    header = _key_columns(opts.by) + _stat_columns(opts.latency)
    table = [header] + [
        _key_values(s, opts.by) + _stat_cells(s, snap.elapsed_s, opts.latency) for s in rows
    ]
    lines += _columns(table, numeric_from=len(_key_columns(opts.by)))
    if opts.errnos:
        errs = _errno_rows(snap, opts)
        lines.append("")
        if errs:
            eheader = [*_key_columns(opts.by), "ERRNO", "COUNT"]
            etable = [eheader] + [[*_key_values(e, opts.by), e.errno, str(e.count)] for e in errs]
            lines += _columns(etable, numeric_from=len(eheader) - 1)
        else:
            lines.append("  (no failed calls)")
    if opts.latency:
        for s in rows:
            hist = histogram_lines(s.hist)
            if hist:
                lines.append("")
                lines.append(f"latency of {_label(s, opts.by)} (ns, log2):")
                lines += [f"  {h}" for h in hist]
    return "\n".join(lines) + "\n"


def _columns(table: list[list[str]], numeric_from: int) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    out = []
    for row in table:
        cells = [
            cell.rjust(widths[i]) if i >= numeric_from else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        out.append("  " + "  ".join(cells).rstrip())
    return out


def rich_snapshot(snap: Snapshot, opts: ViewOptions) -> RenderableType:
    """One interval as rich tables (live terminal view)."""
    rows = _rows(snap, opts)
    parts: list[RenderableType] = [Text(_header(snap), style="bold")]
    key_cols = _key_columns(opts.by)
    table = Table(box=None, pad_edge=False, header_style="bold cyan")
    for col in key_cols:
        table.add_column(col, no_wrap=True)
    for col in _stat_columns(opts.latency):
        table.add_column(col, justify="right")
    for s in rows:
        cells = _stat_cells(s, snap.elapsed_s, opts.latency)
        style = "red" if s.errors else None
        table.add_row(*_key_values(s, opts.by), *cells, style=style)
    parts.append(table if rows else Text("(no calls)", style="dim"))
    if opts.errnos:
        errs = _errno_rows(snap, opts)
        et = Table(box=None, pad_edge=False, header_style="bold red", title="failed calls")
        for col in key_cols:
            et.add_column(col, no_wrap=True)
        et.add_column("ERRNO")
        et.add_column("COUNT", justify="right")
        for e in errs:
            et.add_row(*_key_values(e, opts.by), e.errno, str(e.count))
        parts.append(et if errs else Text("(no failed calls)", style="dim"))
    if opts.latency:
        for s in rows:
            hist = histogram_lines(s.hist)
            if hist:
                parts.append(Text(f"latency of {_label(s, opts.by)} (ns, log2):", style="bold"))
                parts.append(Text("\n".join(f"  {h}" for h in hist)))
    return Group(*parts)


def json_snapshot(snap: Snapshot, opts: ViewOptions) -> dict[str, Any]:
    """One interval as a JSON object (one per line with ``--json``).

    Rows carry ``total_ns``, ``mean_ns`` and ``latency_log2_ns`` (and the
    object ``latency_buckets``) only when calls were timed (``-L``)."""
    rows = _rows(snap, opts)
    errs = _errno_rows(snap, opts)
    out: dict[str, Any] = {
        "time": round(snap.time, 3),
        "interval_s": round(snap.elapsed_s, 3),
        "mechanism": snap.mechanism,
        "filter": snap.filter.describe(),
        "by": opts.by,
        "sort": opts.sort,
        "latency": opts.latency,
        "total_calls": snap.total_calls,
        "rows": [grouped_json(s.to_json(opts.latency), opts.by) for s in rows],
        "errnos": [grouped_json(e.to_json(), opts.by) for e in errs],
        "drops": snap.drops.to_json(),
    }
    if opts.latency:
        out["latency_buckets"] = (
            "slot i counts [2^i, 2^(i+1)) ns; slot 0 from 0; the last is unbounded"
        )
    return out
