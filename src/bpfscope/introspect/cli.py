"""``bpfscope progs``, ``bpfscope maps`` (and ``maps dump``), ``bpfscope links``.

Views only: the records come from ``inventory``, ``stats`` and ``dump``.
Rich tables on a terminal, aligned plain text in pipes, ``--json`` always.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

import click

from ..errors import EXIT_USAGE, UserError
from . import holders as holders_mod
from .decode import format_value
from .dump import DumpResult, dump_map
from .inventory import (
    collect_links,
    collect_maps,
    collect_progs,
    require_introspection_privileges,
)
from .stats import (
    SORT_KEYS,
    StatsSession,
    StatsSnapshot,
    cached_cost,
    measure_cost,
    stats_enabled,
)

__all__ = ["links", "maps", "progs"]


def _tty() -> bool:
    return sys.stdout.isatty()


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _human_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return str(n)  # pragma: no cover


def plain_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Aligned columns separated by two spaces; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *[list(r) for r in rows]]:
        cells = [c.ljust(widths[i]) if i < len(row) - 1 else c for i, c in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _print_table(
    title: str, headers: Sequence[str], rows: Sequence[Sequence[str]], footer: str = ""
) -> None:
    if _tty():
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title, title_justify="left", caption=footer or None)
        for h in headers:
            table.add_column(h, overflow="fold")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
        return
    click.echo(plain_table(headers, rows))
    if footer:
        click.echo(footer)


_OWN_NOTE = "* bpfscope's own (held by a bpfscope process)"


def _holders_text(hs: Sequence[holders_mod.Holder]) -> str:
    if not hs:
        return "-"
    text = ",".join(str(h) for h in hs[:2])
    return text + (f",+{len(hs) - 2}" if len(hs) > 2 else "")


# --------------------------------------------------------------------------
# progs


def _stats_note() -> str:
    cost = cached_cost()
    if cost:
        return (
            f"statistics add ~{cost['added_ns_per_run']:.0f} ns to every program run on "
            "this machine (measured by `bpfscope progs --stats-cost`)"
        )
    return (
        "statistics add a cost to every program run while on; measure it here "
        "with `bpfscope progs --stats-cost`"
    )


def _stats_rows(snap: StatsSnapshot, limit: int | None) -> list[list[str]]:
    rows = []
    for p in snap.progs[:limit] if limit else snap.progs:
        rows.append(
            [
                str(p.id),
                p.type,
                p.name + (" *" if p.bpfscope else ""),
                f"{p.runs}",
                f"{p.avg_ns:.0f}" if p.runs else "-",
                f"{p.cpu_pct:.3f}",
                f"{p.run_cnt_total}",
            ]
        )
    return rows


_STATS_HEADERS = ("ID", "TYPE", "NAME", "RUNS", "NS/RUN", "CPU%", "TOTAL RUNS")


def _stats_title(snap: StatsSnapshot) -> str:
    return (
        f"BPF programs, last {snap.interval_s:.1f}s: {snap.total_runs} runs, "
        f"{snap.total_cpu_pct:.3f}% of one CPU ({len(snap.progs)} programs)"
    )


def _run_stats(
    interval: float, count: int | None, sort: str, limit: int | None, as_json: bool
) -> None:
    note = _stats_note()
    others = sorted(holders_mod.scan().stats)
    if stats_enabled() or others:
        who = ", ".join(str(h) for h in others) or "kernel.bpf_stats_enabled=1"
        note += f"; statistics were already on ({who}), so they stay on after bpfscope exits"
    session = StatsSession()
    with session:
        live = _tty() and not as_json
        n = 0
        if live:
            from rich.console import Group
            from rich.live import Live
            from rich.table import Table
            from rich.text import Text

            rows_fit = max(shutil.get_terminal_size().lines - 8, 5)
            with Live(Text("waiting for the first interval..."), auto_refresh=False) as view:
                while count is None or n < count:
                    time.sleep(interval)
                    snap = session.sample(sort)
                    table = Table(title=_stats_title(snap), title_justify="left")
                    for h in _STATS_HEADERS:
                        table.add_column(
                            h, justify="right" if h not in ("TYPE", "NAME") else "left"
                        )
                    for row in _stats_rows(snap, limit or rows_fit):
                        table.add_row(*row)
                    view.update(
                        Group(table, Text(f"* bpfscope's own. {note}. Ctrl-C quits.")),
                        refresh=True,
                    )
                    n += 1
            return
        if not as_json:
            click.echo(f"# {note}")
        while count is None or n < count:
            time.sleep(interval)
            snap = session.sample(sort)
            if as_json:
                click.echo(json.dumps(snap.to_json()))
            else:
                click.echo(_stats_title(snap))
                click.echo(plain_table(_STATS_HEADERS, _stats_rows(snap, limit)))
                click.echo("")
            sys.stdout.flush()
            n += 1


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--stats",
    is_flag=True,
    help="Turn run-time statistics on for the window and show runs, ns/run and CPU share.",
)
@click.option(
    "--interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    help="Seconds between --stats snapshots.",
)
@click.option(
    "--count",
    type=click.IntRange(min=1),
    default=None,
    help="Stop after this many --stats snapshots (default: until Ctrl-C).",
)
@click.option(
    "--sort",
    type=click.Choice(sorted(SORT_KEYS)),
    default="cpu",
    show_default=True,
    help="Order of --stats rows.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Show at most N rows.")
@click.option(
    "--stats-cost",
    is_flag=True,
    help="Measure what statistics add per program run on this machine, then exit.",
)
@click.option(
    "--calls",
    type=click.IntRange(min=1000),
    default=100_000,
    show_default=True,
    help="getpid() calls per round for --stats-cost.",
)
def progs(
    as_json: bool,
    stats: bool,
    interval: float,
    count: int | None,
    sort: str,
    limit: int | None,
    stats_cost: bool,
    calls: int,
) -> None:
    """Every BPF program loaded on this host (not just bpfscope's).

    Shows id, type, name, tag, where it is attached, load time, owner uid,
    translated/JIT size, verified instructions, maps, BTF id and the
    processes holding it (* marks bpfscope's own). With --stats, a live
    top of run counts and cost per program.
    """
    require_introspection_privileges()
    if stats_cost:
        btf = click.get_current_context().find_root().obj
        cost = measure_cost(calls=calls, btf_path=(btf or {}).get("btf"))
        if as_json:
            _emit_json(cost.to_json())
            return
        click.echo(
            f"raw getpid() with an empty tracepoint program attached, {cost.rounds} rounds "
            f"of {cost.calls} calls each way, fastest round (thread CPU time):\n"
            f"  statistics off: {cost.off_ns_per_call:.1f} ns/call\n"
            f"  statistics on:  {cost.on_ns_per_call:.1f} ns/call\n"
            f"  BPF programs on the getpid path: {cost.programs_on_path}\n"
            f"  => statistics add {cost.added_ns:.1f} ns per program run "
            f"({cost.added_ns_per_call:.1f} ns per call)"
        )
        if cost.programs_on_path > 1:
            click.echo(
                "  note: other tools' programs also run on getpid() here, so the "
                "result is less precise; rerun on a quiet machine"
            )
        return
    if stats:
        _run_stats(interval, count, sort, limit, as_json)
        return
    records = collect_progs()
    if as_json:
        _emit_json([r.to_json() for r in records])
        return
    rows = []
    shown = records[:limit] if limit else records
    for r in shown:
        rows.append(
            [
                str(r.id),
                r.type,
                r.name + (" *" if r.bpfscope else ""),
                r.tag,
                r.target or "-",
                r.loaded_at.replace("+00:00", "Z"),
                str(r.uid),
                str(r.xlated_len),
                str(r.jited_len),
                str(r.verified_insns),
                ",".join(map(str, r.map_ids)) or "-",
                str(r.btf_id or "-"),
                _holders_text(r.holders),
            ]
        )
    headers = (
        "ID", "TYPE", "NAME", "TAG", "ATTACHED TO", "LOADED", "UID",
        "XLATED", "JITED", "VERIFIED", "MAPS", "BTF", "HELD BY",
    )  # fmt: skip
    _print_table(
        f"{len(records)} BPF programs",
        headers,
        rows,
        _OWN_NOTE if any(r.bpfscope for r in records) else "",
    )


# --------------------------------------------------------------------------
# maps


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def maps(ctx: click.Context, as_json: bool) -> None:
    """Every BPF map on this host; `maps dump ID` prints one map's entries."""
    if ctx.invoked_subcommand is not None:
        return
    require_introspection_privileges()
    records = collect_maps()
    if as_json:
        _emit_json([r.to_json() for r in records])
        return
    rows = [
        [
            str(r.id),
            r.type,
            r.name + (" *" if r.bpfscope else ""),
            r.key_type or "-",
            r.value_type or "-",
            str(r.key_size),
            str(r.value_size),
            str(r.max_entries),
            hex(r.flags),
            _human_bytes(r.memlock),
            str(r.btf_id or "-"),
            ",".join(map(str, r.prog_ids)) or "-",
            _holders_text(r.holders),
        ]
        for r in records
    ]
    headers = (
        "ID", "TYPE", "NAME", "KEY", "VALUE", "KEY B", "VALUE B", "MAX",
        "FLAGS", "MEMORY", "BTF", "PROGS", "HELD BY",
    )  # fmt: skip
    _print_table(
        f"{len(records)} BPF maps",
        headers,
        rows,
        _OWN_NOTE if any(r.bpfscope for r in records) else "",
    )


def _render_dump(result: DumpResult) -> str:
    lines = [
        f"map {result.map_id} {result.name} ({result.type}): "
        f"key {result.key_type}, value {result.value_type}" + (", per CPU" if result.percpu else "")
    ]
    for e in result.entries:
        if result.percpu and isinstance(e.value, list):
            lines.append(f"key {format_value(e.key)}:")
            for cpu, v in enumerate(e.value):
                lines.append(f"  cpu{cpu}: {format_value(v)}")
        else:
            lines.append(f"key {format_value(e.key)}: {format_value(e.value)}")
    shown = len(result.entries)
    first = result.skip
    if result.more:
        lines.append(
            f"-- entries {first}..{first + shown - 1} shown; more follow: "
            f"--skip {first + shown} for the next page"
        )
    else:
        lines.append(f"-- {first + shown} entries" if shown or first else "-- map is empty")
    return "\n".join(lines)


@maps.command()
@click.argument("map_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Entries to print (0: all).",
)
@click.option("--skip", type=click.IntRange(min=0), default=0, help="Entries to skip (paging).")
@click.option("--hex", "as_hex", is_flag=True, help="Raw bytes only, even with BTF.")
def dump(map_id: int, as_json: bool, limit: int, skip: int, as_hex: bool) -> None:
    """Entries of map MAP_ID, decoded through its BTF (hex without BTF)."""
    if map_id <= 0:
        raise UserError("map id must be a positive number (see `bpfscope maps`)", EXIT_USAGE)
    result = dump_map(map_id, skip=skip, limit=limit or None)
    if as_hex:
        for e in result.entries:
            e.key, e.value = e.key_hex, e.value_hex
        result.key_type = "hex"
        result.value_type = "hex"
    if as_json:
        _emit_json(result.to_json())
        return
    text = _render_dump(result)
    if _tty() and text.count("\n") > shutil.get_terminal_size().lines:
        click.echo_via_pager(text + "\n")
    else:
        click.echo(text)


# --------------------------------------------------------------------------
# links


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def links(as_json: bool) -> None:
    """Every BPF link on this host: its program and where it is attached."""
    require_introspection_privileges()
    records = collect_links()
    if as_json:
        _emit_json([r.to_json() for r in records])
        return
    rows = [
        [
            str(r.id),
            r.type,
            str(r.prog_id),
            r.prog_name + (" *" if r.bpfscope else ""),
            r.target or "-",
            _holders_text(r.holders),
        ]
        for r in records
    ]
    headers = ("ID", "TYPE", "PROG", "PROG NAME", "TARGET", "HELD BY")
    _print_table(
        f"{len(records)} BPF links",
        headers,
        rows,
        _OWN_NOTE if any(r.bpfscope for r in records) else "",
    )
