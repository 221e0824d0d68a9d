"""Remote names from a Kubernetes API server (a real HTTP server on
loopback serving the API's JSON) and from local containers' own flows."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from agent_helpers import make_flow
from bpfscope.ipprofile import IpProfiler, RemoteClass, parse_static_map
from bpfscope.kube import KubeDirectory, KubeUnavailable, LocalContainers

PODS = [
    {"metadata": {"namespace": "shop", "name": "web-1"}, "spec": {},
     "status": {"podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}, {"ip": "fd00:10::5"}]}},
    {"metadata": {"namespace": "kube-system", "name": "proxy"}, "spec": {"hostNetwork": True},
     "status": {"podIP": "192.168.0.10"}},
    {"metadata": {"namespace": "shop", "name": "db-0"}, "spec": {},
     "status": {"podIP": "10.244.2.9"}},
]  # fmt: skip
SERVICES = [
    {"metadata": {"namespace": "shop", "name": "web"}, "spec": {"clusterIP": "10.96.0.20"}},
    {"metadata": {"namespace": "shop", "name": "headless"}, "spec": {"clusterIP": "None"}},
]


class FakeApi(BaseHTTPRequestHandler):
    token = "sa-token"
    seen_auth: list[str] = []
    forbidden = False

    def do_GET(self) -> None:
        self.seen_auth.append(self.headers.get("Authorization", ""))
        if self.forbidden or self.headers.get("Authorization") != f"Bearer {self.token}":
            self.send_response(403)
            self.end_headers()
            return
        url = urlparse(self.path)
        q = parse_qs(url.query)
        items = PODS if url.path == "/api/v1/pods" else SERVICES
        # two pages of pods, to exercise `continue`
        if url.path == "/api/v1/pods" and "continue" not in q:
            body = {"items": items[:2], "metadata": {"continue": "page2"}}
        elif url.path == "/api/v1/pods":
            body = {"items": items[2:], "metadata": {}}
        else:
            body = {"items": items, "metadata": {}}
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    FakeApi.seen_auth = []
    FakeApi.forbidden = False
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_pods_and_services_are_named(api: str) -> None:
    d = KubeDirectory(api, "sa-token")
    assert d.refresh_now() == 4  # web-1 (v4 and v6), db-0, the web service
    assert d.lookup("10.244.1.5") == ("shop/web-1", RemoteClass.POD)
    assert d.lookup("fd00:10::5") == ("shop/web-1", RemoteClass.POD)
    assert d.lookup("10.244.2.9") == ("shop/db-0", RemoteClass.POD)  # from the second page
    assert d.lookup("10.96.0.20") == ("shop/web", RemoteClass.SERVICE)
    assert d.lookup("192.168.0.10") is None  # hostNetwork pods have the node's address
    assert set(FakeApi.seen_auth) == {"Bearer sa-token"}
    d.close()


def test_refused_listing_says_what_rbac_is_missing(api: str) -> None:
    FakeApi.forbidden = True
    d = KubeDirectory(api, "sa-token")
    with pytest.raises(KubeUnavailable, match="get/list on pods and services"):
        d.refresh_now()
    d.close()


def test_not_in_a_cluster_is_said_plainly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(KubeUnavailable, match="not running in a Kubernetes pod"):
        KubeDirectory.in_cluster()


def test_local_containers_from_their_flows() -> None:
    local = LocalContainers(host_netns=1)
    local.update(
        [
            make_flow(1, laddr="172.17.0.2", netns=77, container="3f2a9c"),
            make_flow(2, laddr="10.0.0.1", netns=1, container="hostnet-ctr"),  # host netns
            make_flow(3, laddr="172.17.0.3", netns=78, container=None),
        ]
    )
    assert local.lookup("172.17.0.2") == ("3f2a9c", RemoteClass.CONTAINER)
    assert local.lookup("10.0.0.1") is None
    assert local.lookup("172.17.0.3") is None


def test_profiler_order_static_then_kubernetes_then_containers(api: str) -> None:
    d = KubeDirectory(api, "sa-token")
    d.refresh_now()
    local = LocalContainers(host_netns=1)
    local.update([make_flow(1, laddr="10.244.1.5", netns=9, container="ctr")])
    p = IpProfiler(
        static=parse_static_map("10.96.0.0/12 svc-range service\n"),
        names_from=[("kubernetes", d.lookup), ("container", local.lookup)],
        dns=False,
    )
    assert p.profile("10.96.0.20").source == "static"
    assert p.profile("10.244.1.5").source == "kubernetes"
    assert p.profile("10.244.1.5").remote_class is RemoteClass.POD
    assert p.profile("8.8.8.8").remote_class is RemoteClass.PUBLIC
    assert p.profile("8.8.8.8").name is None
    d.close()
