"""OTLP export of flow records: attribute mapping, the SDK pipeline with an
in-memory exporter, and a real OTLP/HTTP receiver on loopback decoding the
protobuf the exporter sends."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bpfscope.errors import UserError
from bpfscope.flows.records import FlowRecord
from bpfscope.otlp import (
    EVENT_NAME,
    OtlpUnavailable,
    flow_attributes,
    flow_body,
    logs_endpoint,
    resource_attributes,
)


def _flow(**kw: Any) -> FlowRecord:
    base: dict[str, Any] = dict(
        pid=4242, comm="curl", cgroup_id=77, netns=4026531833, family="ipv4", proto="tcp",
        laddr="10.0.0.5", lport=51234, raddr="93.184.216.34", rport=443,
        tx_bytes=1000, rx_bytes=50_000, tx_delta=100, rx_delta=5_000,
        state="ESTABLISHED", direction="active", first_seen=1_700_000_000.0,
        last_seen=1_700_000_010.5, cmdline="curl https://example.org",
        cgroup="/kubepods/pod1234/abcd", container="abcd" * 16, runtime="containerd",
        pod_uid="1234",
    )  # fmt: skip
    base.update(kw)
    return FlowRecord(**base)


# -- pure mapping ------------------------------------------------------------------


def test_flow_attributes_use_semantic_names_and_drop_absent_values() -> None:
    attrs = flow_attributes(_flow(container=None, runtime=None, pod_uid=None, closed=None))
    assert attrs["network.transport"] == "tcp"
    assert attrs["network.type"] == "ipv4"
    assert attrs["network.local.address"] == "10.0.0.5"
    assert attrs["network.local.port"] == 51234
    assert attrs["network.peer.address"] == "93.184.216.34"
    assert attrs["network.peer.port"] == 443
    assert attrs["process.pid"] == 4242
    assert attrs["process.command_line"] == "curl https://example.org"
    assert attrs["bpfscope.flow.tx_bytes"] == 100
    assert attrs["bpfscope.flow.rx_bytes"] == 5_000
    assert attrs["bpfscope.flow.rx_bytes_total"] == 50_000
    for absent in ("container.id", "container.runtime", "k8s.pod.uid", "bpfscope.flow.closed"):
        assert absent not in attrs
    assert all(v is not None for v in attrs.values())


def test_unconnected_udp_has_no_peer() -> None:
    rec = _flow(proto="udp", raddr=None, rport=None, state=None, direction=None)
    attrs = flow_attributes(rec)
    assert "network.peer.address" not in attrs
    assert "network.peer.port" not in attrs
    assert flow_body(rec).startswith("udp 10.0.0.5:51234 -> - ")


def test_resource_names_the_node_from_the_downward_api() -> None:
    attrs = resource_attributes(
        {"NODE_NAME": "node-7", "POD_NAME": "bpfscope-x1", "POD_NAMESPACE": "bpfscope"}
    )
    assert attrs["service.name"] == "bpfscope"
    assert attrs["host.name"] == "node-7"
    assert attrs["k8s.node.name"] == "node-7"
    assert attrs["k8s.pod.name"] == "bpfscope-x1"
    assert attrs["k8s.namespace.name"] == "bpfscope"
    plain = resource_attributes({})
    assert "k8s.node.name" not in plain
    assert plain["host.name"]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://collector:4318", "http://collector:4318/v1/logs"),
        ("http://collector:4318/", "http://collector:4318/v1/logs"),
        ("https://otel.example/custom/logs", "https://otel.example/custom/logs"),
        ("http://[::1]:4318", "http://[::1]:4318/v1/logs"),
    ],
)
def test_logs_endpoint(url: str, expected: str) -> None:
    assert logs_endpoint(url) == expected


@pytest.mark.parametrize(
    "url", ["collector:4318", "grpc://collector:4317", "http://", "http://h:x"]
)
def test_bad_endpoints_are_usage_errors(url: str) -> None:
    with pytest.raises(UserError) as info:
        logs_endpoint(url)
    assert info.value.exit_code == 2
    assert "--otlp-endpoint" in str(info.value)


def test_missing_sdk_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from bpfscope.otlp import FlowExporter

    monkeypatch.setitem(sys.modules, "opentelemetry.sdk._logs", None)
    with pytest.raises(OtlpUnavailable) as info:
        FlowExporter("http://127.0.0.1:4318")
    assert "bpfscope[otlp]" in str(info.value)
    assert info.value.exit_code == 2


# -- through the SDK ---------------------------------------------------------------


@pytest.fixture
def sdk_export() -> Any:
    return pytest.importorskip(
        "opentelemetry.sdk._logs.export", reason="OpenTelemetry SDK not installed (bpfscope[otlp])"
    )


def test_only_flows_with_traffic_in_the_interval_are_exported(sdk_export: Any) -> None:
    from bpfscope.otlp import FlowExporter

    memory = sdk_export.InMemoryLogRecordExporter()
    exp = FlowExporter(exporter=memory, batch=False, environ={"NODE_NAME": "node-7"})
    flows = [
        _flow(),
        _flow(lport=1, tx_delta=0, rx_delta=0),  # idle this interval
        _flow(lport=2, tx_delta=0, rx_delta=9),
    ]
    assert exp.export(flows) == 2
    exp.close()
    logs = memory.get_finished_logs()
    assert len(logs) == 2
    first = logs[0].log_record
    assert first.event_name == EVENT_NAME
    assert first.body == flow_body(flows[0])
    assert first.attributes["bpfscope.flow.rx_bytes"] == 5_000
    assert first.timestamp == int(1_700_000_010.5 * 1e9)
    assert logs[1].log_record.attributes["network.local.port"] == 2
    resource = logs[0].resource.attributes
    assert resource["k8s.node.name"] == "node-7"
    assert resource["service.name"] == "bpfscope"
    assert exp.stats.exported == 2
    assert exp.export(flows) == 0  # closed: nothing more goes out


def test_per_interval_cap_counts_what_it_skips(sdk_export: Any) -> None:
    from bpfscope.otlp import FlowExporter

    memory = sdk_export.InMemoryLogRecordExporter()
    exp = FlowExporter(exporter=memory, batch=False, max_per_interval=3)
    assert exp.export([_flow(lport=p) for p in range(1, 11)]) == 3
    exp.close()
    assert len(memory.get_finished_logs()) == 3
    assert exp.stats.skipped == 7


def test_as_a_sink_it_exports_the_flows_that_changed_at_the_poll(sdk_export: Any) -> None:
    from bpfscope.otlp import FlowExporter

    class FakeChanges:
        flows = [_flow(), _flow(lport=9, rx_delta=0, tx_delta=0)]

    memory = sdk_export.InMemoryLogRecordExporter()
    with FlowExporter(exporter=memory, batch=False) as exp:
        exp.consume(FakeChanges())
    assert len(memory.get_finished_logs()) == 1


# -- over the wire -----------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    bodies: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:  # the OTLP/HTTP logs endpoint
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.bodies.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    _Receiver.bodies = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Receiver.bodies
    finally:
        server.shutdown()
        server.server_close()


def test_records_reach_an_otlp_http_receiver(
    receiver: tuple[str, list[tuple[str, str, bytes]]],
) -> None:
    pytest.importorskip(
        "opentelemetry.exporter.otlp.proto.http",
        reason="OTLP/HTTP exporter not installed (bpfscope[otlp])",
    )
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from bpfscope.otlp import FlowExporter

    url, bodies = receiver
    exp = FlowExporter(url, environ={"NODE_NAME": "node-7"}, timeout=5)
    assert exp.endpoint == url + "/v1/logs"
    assert exp.export([_flow(), _flow(lport=60000, tx_delta=1, rx_delta=2)]) == 2
    exp.close()  # flushes the batch

    assert bodies, "nothing reached the receiver"
    records = []
    resources = []
    for path, ctype, body in bodies:
        assert path == "/v1/logs"
        assert ctype == "application/x-protobuf"
        req = ExportLogsServiceRequest()
        req.ParseFromString(body)
        for rl in req.resource_logs:
            resources.append({a.key: a.value.string_value for a in rl.resource.attributes})
            for sl in rl.scope_logs:
                assert sl.scope.name == "bpfscope.flows"
                records += list(sl.log_records)
    assert len(records) == 2
    assert resources[0]["k8s.node.name"] == "node-7"
    by_port = {
        {a.key: a for a in r.attributes}["network.local.port"].value.int_value: r for r in records
    }
    attrs = {a.key: a.value for a in by_port[51234].attributes}
    assert attrs["bpfscope.flow.tx_bytes"].int_value == 100
    assert attrs["bpfscope.flow.rx_bytes"].int_value == 5_000
    assert attrs["network.peer.address"].string_value == "93.184.216.34"
    assert by_port[51234].event_name == EVENT_NAME
    assert by_port[60000].body.string_value.startswith("tcp 10.0.0.5:60000 -> ")
