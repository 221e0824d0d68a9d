"""``bpfscope serve``: the long-running agent (JSON API, /metrics, history)."""

from __future__ import annotations

import contextlib
import logging
import signal
from pathlib import Path
from types import FrameType
from typing import Any

import click

from .errors import EXIT_USAGE, UserError
from .flows.programs import ATTACH_CHOICES
from .syscalls import COST_NS
from .system import require_privileges
from .units import parse_duration, parse_listen, parse_size

__all__ = ["serve"]

log = logging.getLogger("bpfscope.serve")


def _convert(kind: str, fn: Any, value: str) -> Any:
    try:
        return fn(value)
    except ValueError as exc:
        raise UserError(f"--{kind}: {exc}", EXIT_USAGE) from None


@click.command()
@click.option(
    "--listen",
    default="127.0.0.1:9464",
    show_default=True,
    help="HOST:PORT to serve on. Anything but loopback must be asked for explicitly.",
)
@click.option("--interval", default="1s", show_default=True, help="Collection interval.")
@click.option(
    "--db",
    "db_path",
    default=None,
    help="History file (default /var/lib/bpfscope/history.db as root).",
)
@click.option("--no-history", is_flag=True, help="Keep no history on disk.")
@click.option("--bucket", default="10s", show_default=True, help="History bucket length.")
@click.option("--retention", default="7d", show_default=True, help="Keep history this long.")
@click.option("--max-db-size", default="512MiB", show_default=True, help="Cap on the history file.")
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding a bearer token required on /api (and /metrics with --protect-metrics).",
)
@click.option("--protect-metrics", is_flag=True, help="Require the token on /metrics too.")
@click.option(
    "--metrics-labels",
    type=click.Choice(["default", "remote"]),
    default="default",
    show_default=True,
    help="'remote' adds remote address and port labels (bounded by --max-series).",
)
@click.option("--max-series", default=10_000, show_default=True, type=click.IntRange(min=1))
@click.option(
    "--ip-map",
    type=click.Path(dir_okay=False),
    default=None,
    help="Static 'CIDR NAME [CLASS]' mapping file.",
)
@click.option("--no-dns", is_flag=True, help="No reverse DNS lookups of remote addresses.")
@click.option(
    "--bpf-stats",
    is_flag=True,
    help="Turn on kernel run-time stats while serving (costs ~tens of ns per program run).",
)
@click.option(
    "--max-flows",
    default=262144,
    show_default=True,
    type=click.IntRange(min=1),
    help="Size of the kernel flow table.",
)
@click.option(
    "--syscalls",
    "with_syscalls",
    is_flag=True,
    help="Also count syscalls and errors of every process, on sys_exit "
    f"(adds ~{COST_NS['counts']} ns per syscall host-wide; see docs/syscalls.md).",
)
@click.option(
    "--syscall-latency",
    is_flag=True,
    help="Also time every syscall: bpfscope_syscall_latency_seconds (implies --syscalls; "
    f"adds ~{COST_NS['latency']} ns per syscall instead, sys_enter hooked too).",
)
@click.option(
    "--attach",
    "force",
    type=click.Choice(ATTACH_CHOICES),
    default=None,
    help="Force the flow monitor's hooks onto this mechanism (see `bpfscope doctor`).",
)
@click.option(
    "--kube",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="Name pod and service addresses from the Kubernetes API (auto: when running in a pod).",
)
@click.option("--kube-api", default=None, help="API server URL (default: in-cluster config).")
@click.option(
    "--kube-token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="Bearer token for --kube-api.",
)
@click.option(
    "--udp/--no-udp",
    "udp",
    default=True,
    show_default=True,
    help="Account UDP traffic (where UDP shares TCP's send/receive hooks, --no-udp "
    "leaves TCP with no bpfscope program per message; /api/v1/health says which).",
)
@click.option(
    "--drops/--no-drops",
    "with_drops",
    default=True,
    show_default=True,
    help="Count packet drops with the kernel's reason (skb:kfree_skb; costs per drop, "
    "not per packet; see docs/drops.md): /api/v1/drops, bpfscope_packet_drops_total.",
)
@click.option(
    "--otlp-endpoint",
    default=None,
    envvar="BPFSCOPE_OTLP_ENDPOINT",
    help="Also export flow records as OTLP logs to this OpenTelemetry Collector "
    "(http://HOST:4318; needs bpfscope[otlp]). Off by default.",
)
@click.pass_context
def serve(
    ctx: click.Context,
    listen: str,
    interval: str,
    db_path: str | None,
    no_history: bool,
    bucket: str,
    retention: str,
    max_db_size: str,
    token_file: str | None,
    protect_metrics: bool,
    metrics_labels: str,
    max_series: int,
    ip_map: str | None,
    no_dns: bool,
    bpf_stats: bool,
    max_flows: int,
    with_syscalls: bool,
    syscall_latency: bool,
    force: str | None,
    kube: str,
    kube_api: str | None,
    kube_token_file: str | None,
    udp: bool,
    with_drops: bool,
    otlp_endpoint: str | None,
) -> None:
    """Run the agent: collectors, JSON API, Prometheus /metrics and history."""
    host, port = _convert("listen", parse_listen, listen)
    interval_s = _convert("interval", parse_duration, interval)
    bucket_s = int(_convert("bucket", parse_duration, bucket))
    retention_s = _convert("retention", parse_duration, retention)
    max_bytes = _convert("max-db-size", parse_size, max_db_size)
    if bucket_s < 1:
        raise UserError("--bucket must be at least 1s", EXIT_USAGE)
    token = None
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise UserError(f"--token-file {token_file}: {exc.strerror}", EXIT_USAGE) from None
        if not token:
            raise UserError(f"--token-file {token_file} is empty", EXIT_USAGE)
    from .features import Mechanism

    mechanism = None
    if force is not None:
        mechanism = Mechanism(force)
    if otlp_endpoint is not None:
        from .otlp import logs_endpoint

        logs_endpoint(otlp_endpoint)  # a bad URL is a usage error before anything loads
    require_privileges()

    # Heavy imports only once the arguments are known to be good, and only
    # here: the agent's packages (FastAPI, uvicorn) are an optional extra, and
    # `bpfscope --help` imports this module to list the command.
    import uvicorn

    from .agent import Agent
    from .flows.collector import FOLD_AT, FlowCollector
    from .ipprofile import IpProfiler
    from .kube import KubeDirectory, KubeUnavailable, LocalContainers
    from .memory import tune_malloc
    from .metrics import FlowMetrics
    from .server import create_app
    from .store import Store, StoreError, default_path

    tune_malloc()  # before any thread starts: RSS near what the agent holds
    directory = None
    if kube != "off":
        try:
            if kube_api is not None:
                token = Path(kube_token_file).read_text().strip() if kube_token_file else ""
                directory = KubeDirectory(kube_api, token)
            else:
                directory = KubeDirectory.in_cluster()
        except (KubeUnavailable, OSError) as exc:
            if kube == "on":
                raise UserError(f"--kube on: {exc}", EXIT_USAGE) from None
    local = LocalContainers()
    names_from = [("container", local.lookup)]
    if directory is not None:
        names_from.insert(0, ("kubernetes", directory.lookup))
    try:
        profiler = IpProfiler.from_file(ip_map, dns=not no_dns, names_from=names_from)
    except ValueError as exc:
        raise UserError(f"--ip-map: {exc}", EXIT_USAGE) from None

    store = None
    store_error = None
    if not no_history:
        path = Path(db_path) if db_path else default_path()
        try:
            store = Store(
                path, bucket_seconds=bucket_s, retention_seconds=retention_s, max_bytes=max_bytes
            )
        except StoreError as exc:
            store_error = str(exc)
            click.echo(f"bpfscope: warning: {exc}; serving live data without history", err=True)

    # events in batches: counted per group, decoded only when read
    collector = FlowCollector(
        max_entries=max_flows,
        force=mechanism,
        btf_path=ctx.obj.get("btf"),
        udp=udp,
        events="batches",
        # churn costs per group, not per connection (a few short
        # connections per poll stay flows of their own)
        fold_closed=True,
        fold_at=FOLD_AT,
    )
    metrics = FlowMetrics(
        labels=metrics_labels,
        max_series=max_series,
        remote_class=lambda ip: profiler.profile(ip).remote_class,
    )
    syscalls = None
    if with_syscalls or syscall_latency:
        from .syscalls.collector import SyscallCollector

        syscalls = SyscallCollector(latency=syscall_latency, btf_path=ctx.obj.get("btf"))
    drops = None
    if with_drops:
        from .drops.collector import DropCollector

        drops = DropCollector(btf_path=ctx.obj.get("btf"))
    exporter = None
    if otlp_endpoint is not None:
        from .otlp import FlowExporter

        exporter = FlowExporter(otlp_endpoint)
    agent = Agent(
        flows=collector,
        syscalls=syscalls,
        drops=drops,
        interval=interval_s,
        store=store,
        store_error=store_error,
        profiler=profiler,
        metrics=metrics,
        bpf_stats=bpf_stats,
        local_containers=local,
        kube=directory,
        sinks=[exporter] if exporter is not None else [],
    )
    app = create_app(agent, token=token, protect_metrics=protect_metrics)
    with contextlib.ExitStack() as stack:
        if exporter is not None:
            stack.callback(exporter.close)  # runs last: flushes after the agent stopped
        stack.enter_context(agent)
        rungs = ", ".join(f"{k}={v or 'off'}" for k, v in collector.rungs().items())
        if syscalls is not None:
            rungs += f"; syscalls: {syscalls.mechanism}"
        if drops is not None and drops.attached is not None:
            rungs += f"; drops: {drops.attached.rungs_summary()}"
        shown = f"[{host}]" if ":" in host else host
        click.echo(f"bpfscope agent on http://{shown}:{port} (hooks: {rungs})", err=True)

        class _Server(uvicorn.Server):
            def handle_exit(self, sig: int, frame: FrameType | None) -> None:
                # uvicorn waits for open responses: end the event streams first
                app.state.stopping.set()
                super().handle_exit(sig, frame)

        config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False)
        server = _Server(config)
        # uvicorn re-raises the signal that stopped it once it has shut down.
        # With SIGTERM's default action the process would die right there,
        # before the stack below closes the agent (history bucket, exporter):
        # `docker stop` would lose the last interval. Leave through SystemExit.
        signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            server.run()
        except SystemExit:
            if not server.started:  # uvicorn exits 1 when it cannot bind
                raise UserError(f"cannot listen on {listen} (in use, or not allowed?)") from None
            raise  # SIGTERM/SIGINT after a clean shutdown: leave with its status


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)
