"""``bpfscope doctor``: print the doctor report; ``--check`` also loads
every tool with its chosen rungs and runs the end-to-end self-test."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from . import ladder, selftest
from .doctor import DoctorReport, run_doctor
from .errors import EXIT_FAILURE, EXIT_PRIVILEGES, EXIT_UNSUPPORTED
from .features import Mechanism, Status
from .system import require_privileges
from .tools import registered_tools

__all__ = ["doctor"]

_STATUS_STYLE = {
    Status.AVAILABLE: "[green]available[/]",
    Status.UNSUPPORTED: "[red]not supported[/]",
    Status.INCONCLUSIVE: "[yellow]inconclusive[/]",
}


def _fmt_limit(n: int) -> str:
    return "unlimited" if n < 0 else f"{n // 1024} KiB"


def _render(report: DoctorReport, console: Console) -> None:
    k = report.kernel
    console.print(f"[bold]kernel[/]      {k['release']} ({k['machine']})")
    lib = report.libbpf
    console.print(
        f"[bold]libbpf[/]      {lib['version']}"
        if lib["ok"]
        else f"[bold]libbpf[/]      [red]{lib['error']}[/]"
    )
    btf = report.btf
    console.print(
        f"[bold]BTF[/]         {btf['path']} ({btf['size'] // 1024} KiB)"
        if btf["ok"]
        else f"[bold]BTF[/]         [red]{btf['error']}[/]"
    )
    priv = report.privileges
    if not priv["missing"]:
        console.print(f"[bold]privileges[/]  uid {priv['uid']}, all needed capabilities")
    else:
        for cap in priv["missing"]:
            style = "red" if cap in priv["blocking"] else "yellow"
            console.print(
                f"[bold]privileges[/]  [{style}]missing {cap}[/]: needed to {priv['why'][cap]}"
            )
    mem = report.memlock
    memcg = mem["memcg_accounting"]
    memcg_text = {
        True: "BPF memory is charged to the memory cgroup; memlock does not limit it",
        False: "BPF memory counts against RLIMIT_MEMLOCK: raise it or grant CAP_SYS_RESOURCE",
        None: "could not test whether memlock limits BPF",
    }[memcg]
    limits = f"soft {_fmt_limit(mem['soft'])}, hard {_fmt_limit(mem['hard'])}"
    console.print(f"[bold]memlock[/]     {limits}: {memcg_text}")
    fs = report.filesystems
    console.print(f"[bold]tracefs[/]     {fs['tracefs']['path'] or '-'} ({fs['tracefs']['state']})")
    others = ", ".join(
        f"{name} {fs[name] or 'not mounted'}" for name in ("debugfs", "bpffs", "cgroup2")
    )
    console.print(f"[bold]mounts[/]      {others}")

    table = Table(title="attach mechanisms and kernel features (probed by trial load)")
    table.add_column("mechanism")
    table.add_column("verdict")
    table.add_column("errno")
    table.add_column("detail", overflow="fold")
    for m, v in report.mechanisms.items():
        detail = v.detail + (f" [dim](needs {v.needs})[/]" if v.needs else "")
        table.add_row(str(m), _STATUS_STYLE[v.status], v.errno_name or "", detail)
    console.print(table)

    tools = Table(title="bpfscope tools")
    tools.add_column("tool")
    tools.add_column("core")
    tools.add_column("runs here")
    tools.add_column("hooks: rung (target)", overflow="fold")
    for t in report.tools:
        hooks = (
            "\n".join(
                f"{c['hook']}: {c['mechanism'] or 'off'}"
                + (f" ({c['target']})" if c["target"] else "")
                for c in t.choices
            )
            if t.runnable
            else f"[red]{t.error}[/]"
        )
        tools.add_row(
            t.name, "yes" if t.core else "", "[green]yes[/]" if t.runnable else "[red]no[/]", hooks
        )
    console.print(tools)
    verdict = "[green]OK[/]" if report.ok else "[red]NOT OK[/]"
    console.print(f"{verdict}: {report.summary()}")


UDP_SHARED_NOTE = "UDP accounting shares the TCP send/receive hooks on this kernel"


def flows_accounting(tool: ladder.AttachedObject) -> str:
    """How the flow monitor counts TCP with these rungs: from the kernel's
    socket counters, or per event in the flow table."""
    from .flows import programs as flows_programs

    return "counters" if flows_programs.COUNTERS_ITER in tool.extras.programs else "table"


def _check(btf: str | None, force: Mechanism | None, console: Console) -> list[dict[str, Any]]:
    """Load and attach every tool with its chosen rungs, then detach."""

    results: list[dict[str, Any]] = []
    for spec in registered_tools():
        entry: dict[str, Any] = {"tool": spec.name, "core": spec.core}
        try:
            if spec.module is selftest:
                r = selftest.run(1000, force=force, btf_path=btf)
                entry.update(
                    ok=r.ok,
                    mechanism=r.mechanism,
                    detail=(
                        f"{r.events_received}/{r.events_sent} ring buffer events, "
                        f"{r.calls_counted} counted, {r.dropped} dropped"
                    ),
                )
            else:
                with ladder.load_object(
                    spec.object, spec.hooks(), btf_path=btf, extras=spec.extras
                ) as tool:
                    detail = "loaded and attached"
                    if tool.extras.description:
                        detail += f"; {tool.extras.description}"
                    entry.update(ok=True, mechanism=tool.rungs_summary(), detail=detail)
                    if spec.name == "flows":
                        entry["tcp_accounting"] = flows_accounting(tool)
                        if tool.rungs().get("send") in ("tp_btf", "raw_tp", "tracepoint"):
                            entry["udp_note"] = UDP_SHARED_NOTE
                            entry["detail"] += f"; {UDP_SHARED_NOTE} (--no-udp avoids it)"
        except Exception as exc:  # reported per tool; the exit code carries it
            entry.update(ok=False, mechanism=None, detail=str(exc))
        results.append(entry)
        mark = "ok  " if entry["ok"] else "FAIL"
        console.print(
            f"check {mark} {spec.name}: {entry['mechanism'] or '-'}: {entry['detail']}",
            highlight=False,
        )
    return results


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable report.")
@click.option(
    "--check",
    is_flag=True,
    help="Also load and attach every tool with its chosen rungs and run the end-to-end self-test.",
)
@click.option(
    "--attach",
    "force",
    type=click.Choice([str(m) for m in selftest.MECHANISMS]),
    default=None,
    help="With --check: force the self-test onto this mechanism.",
)
@click.pass_context
def doctor(ctx: click.Context, as_json: bool, check: bool, force: str | None) -> None:
    """Report what this kernel allows and which bpfscope tools run here."""
    btf = ctx.obj.get("btf") if ctx.obj else None
    console = Console(stderr=as_json)
    if console.is_terminal and not as_json:
        with console.status("probing attach mechanisms…") as status:
            report = run_doctor(btf, progress=lambda m: status.update(f"probing {m}…"))
    else:
        report = run_doctor(btf)
    checks: list[dict[str, Any]] = []
    if check:
        require_privileges()
        checks = _check(
            btf, Mechanism(force) if force else None, Console(stderr=True) if as_json else console
        )
    if as_json:
        data = report.to_json()
        if check:
            data["checks"] = checks
        click.echo(json.dumps(data, indent=2))
    else:
        _render(report, console)
    if not report.privileges["ok"]:
        ctx.exit(EXIT_PRIVILEGES)
    if not report.ok:
        ctx.exit(EXIT_UNSUPPORTED)
    if any(not c["ok"] and c["core"] for c in checks):
        ctx.exit(EXIT_FAILURE)
