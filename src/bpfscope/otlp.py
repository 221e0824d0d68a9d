"""Optional export of flow records to an OpenTelemetry Collector over OTLP.

Off by default. With ``bpfscope serve --otlp-endpoint URL`` every flow that
carried traffic in a collection interval becomes one OTLP log record (event
name ``bpfscope.flow``): the interval's bytes as attributes, the 5-tuple
and the owner (process, container, pod) as attributes, the node as resource
attributes. The Collector then routes them wherever the fleet already keeps
such data; bpfscope runs no aggregation service of its own.

Export goes through the OpenTelemetry SDK's batch processor (a background
thread with a bounded queue), so a slow or absent Collector never stalls the
agent's collection loop; what the queue cannot hold is dropped by the SDK.
The SDK is an optional dependency: ``pip install 'bpfscope[otlp]'``.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from . import __version__
from .errors import EXIT_USAGE, UserError
from .flows.records import FlowRecord

__all__ = [
    "DEFAULT_MAX_PER_INTERVAL",
    "EVENT_NAME",
    "FlowExporter",
    "OtlpUnavailable",
    "flow_attributes",
    "flow_body",
    "logs_endpoint",
    "resource_attributes",
]

EVENT_NAME: Final = "bpfscope.flow"
DEFAULT_MAX_PER_INTERVAL: Final = 10_000

AttrValue = str | int | float | bool


class OtlpUnavailable(UserError):
    """The OpenTelemetry SDK or its OTLP exporter is not installed."""

    def __init__(self, missing: str) -> None:
        super().__init__(
            f"OTLP export needs the OpenTelemetry SDK ({missing} is not installed): "
            "pip install 'bpfscope[otlp]'",
            EXIT_USAGE,
        )


class _Changes(Protocol):
    """What the agent hands its sinks at each poll (bpfscope.sinks.PollChanges)."""

    @property
    def flows(self) -> Iterable[FlowRecord]: ...


def logs_endpoint(url: str) -> str:
    """The OTLP/HTTP logs URL for ``url`` (``/v1/logs`` added to a bare base).

    Raises UserError for anything but an http(s) URL with a host.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(
            f"--otlp-endpoint {url!r}: expected http(s)://HOST[:PORT][/PATH] "
            "(OTLP over HTTP, for example http://otel-collector:4318)",
            EXIT_USAGE,
        )
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise UserError(f"--otlp-endpoint {url!r}: {exc}", EXIT_USAGE) from None
    if parts.path in ("", "/"):
        return f"{parts.scheme}://{parts.netloc}/v1/logs"
    return url


def resource_attributes(environ: Mapping[str, str] | None = None) -> dict[str, AttrValue]:
    """Who is exporting: service, host, and (in Kubernetes) node and pod.

    NODE_NAME, POD_NAME and POD_NAMESPACE come from the DaemonSet's
    downward API environment.
    """
    env = os.environ if environ is None else environ
    attrs: dict[str, AttrValue] = {
        "service.name": "bpfscope",
        "service.version": __version__,
        "host.name": env.get("NODE_NAME") or socket.gethostname(),
    }
    for var, key in (
        ("NODE_NAME", "k8s.node.name"),
        ("POD_NAME", "k8s.pod.name"),
        ("POD_NAMESPACE", "k8s.namespace.name"),
    ):
        if env.get(var):
            attrs[key] = env[var]
    return attrs


def flow_attributes(rec: FlowRecord) -> dict[str, AttrValue]:
    """OTLP attributes of one flow interval (semantic-convention names where
    one exists, ``bpfscope.*`` for the rest; absent values are left out)."""
    attrs: dict[str, Any] = {
        "network.transport": rec.proto,
        "network.type": rec.family,
        "network.local.address": rec.laddr,
        "network.local.port": rec.lport,
        "network.peer.address": rec.raddr,
        "network.peer.port": rec.rport,
        "process.pid": rec.pid,
        "process.command": rec.comm,
        "process.command_line": rec.cmdline,
        "container.id": rec.container,
        "container.runtime": rec.runtime,
        "k8s.pod.uid": rec.pod_uid,
        "bpfscope.cgroup.id": rec.cgroup_id,
        "bpfscope.cgroup.path": rec.cgroup,
        "bpfscope.netns": rec.netns,
        "bpfscope.flow.tx_bytes": rec.tx_delta,
        "bpfscope.flow.rx_bytes": rec.rx_delta,
        "bpfscope.flow.tx_bytes_total": rec.tx_bytes,
        "bpfscope.flow.rx_bytes_total": rec.rx_bytes,
        "bpfscope.flow.retransmits": rec.retransmits,
        "bpfscope.flow.resets_sent": rec.resets_sent,
        "bpfscope.flow.resets_received": rec.resets_received,
        "bpfscope.flow.state": rec.state,
        "bpfscope.flow.direction": rec.direction,
        "bpfscope.flow.first_seen": rec.first_seen,
        "bpfscope.flow.closed": rec.closed,
    }
    return {k: v for k, v in attrs.items() if v is not None and v != ""}


def flow_body(rec: FlowRecord) -> str:
    peer = "-" if rec.raddr is None else f"{rec.raddr}:{rec.rport}"
    return (
        f"{rec.proto} {rec.laddr}:{rec.lport} -> {peer} "
        f"tx={rec.tx_delta} rx={rec.rx_delta} pid={rec.pid} comm={rec.comm}"
    )


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise OtlpUnavailable(module) from None


@dataclass
class ExportStats:
    exported: int = 0
    skipped: int = 0  # over the per-interval cap
    intervals: int = 0


class FlowExporter:
    """Turns each interval's flows into OTLP log records.

    ``exporter`` (an SDK ``LogRecordExporter``) replaces the OTLP/HTTP one,
    and ``batch=False`` exports synchronously; both are for tests.
    """

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        max_per_interval: int = DEFAULT_MAX_PER_INTERVAL,
        environ: Mapping[str, str] | None = None,
        exporter: Any = None,
        batch: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_per_interval < 1:
            raise ValueError("max_per_interval must be at least 1")
        sdk_logs = _import("opentelemetry.sdk._logs")
        sdk_export = _import("opentelemetry.sdk._logs.export")
        sdk_resources = _import("opentelemetry.sdk.resources")
        api_logs = _import("opentelemetry._logs")
        if exporter is None:
            if endpoint is None:
                raise ValueError("an endpoint or an exporter is needed")
            http = _import("opentelemetry.exporter.otlp.proto.http._log_exporter")
            exporter = http.OTLPLogExporter(
                endpoint=logs_endpoint(endpoint), headers=dict(headers or {}), timeout=timeout
            )
        self.endpoint = logs_endpoint(endpoint) if endpoint else None
        self.max_per_interval = max_per_interval
        self.stats = ExportStats()
        self._clock = clock
        self._record_cls = api_logs.LogRecord
        self._severity = api_logs.SeverityNumber.INFO
        resource = sdk_resources.Resource.create(resource_attributes(environ))
        self._provider = sdk_logs.LoggerProvider(resource=resource)
        processor = (
            sdk_export.BatchLogRecordProcessor(exporter)
            if batch
            else sdk_export.SimpleLogRecordProcessor(exporter)
        )
        self._provider.add_log_record_processor(processor)
        self._logger = self._provider.get_logger("bpfscope.flows", __version__)
        self._closed = False

    def export(self, flows: Iterable[FlowRecord]) -> int:
        """Emit one record per flow with traffic in the last interval."""
        if self._closed:
            return 0
        now_ns = int(self._clock() * 1e9)
        sent = 0
        for rec in flows:
            if not (rec.tx_delta or rec.rx_delta):
                continue
            if sent >= self.max_per_interval:
                self.stats.skipped += 1
                continue
            self._logger.emit(
                self._record_cls(
                    timestamp=int(rec.last_seen * 1e9) if rec.last_seen else now_ns,
                    observed_timestamp=now_ns,
                    severity_number=self._severity,
                    severity_text="INFO",
                    body=flow_body(rec),
                    attributes=flow_attributes(rec),
                    event_name=EVENT_NAME,
                )
            )
            sent += 1
        self.stats.exported += sent
        self.stats.intervals += 1
        return sent

    def consume(self, changes: _Changes) -> None:
        """A sink of the agent: export the flows that changed at this poll."""
        self.export(changes.flows)

    def flush(self, timeout_ms: int = 10_000) -> bool:
        return bool(self._provider.force_flush(timeout_ms))

    def close(self) -> None:
        """Flush what is queued and stop the export thread."""
        if self._closed:
            return
        self._closed = True
        self._provider.shutdown()

    def __enter__(self) -> FlowExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
