"""Names for remote addresses from the Kubernetes API and local containers.

``KubeDirectory`` lists pods and services through the API server with the
pod's service account (read-only: list pods and services), refreshes in the
background, and answers ``ip -> (namespace/name, pod|service)`` from
memory, so profiling an address never waits on the network.
``LocalContainers`` maps addresses that containers on this host use (seen as
local addresses of flows in other network namespaces) to the container.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

import httpx

from .ipprofile import RemoteClass

__all__ = ["SERVICE_ACCOUNT", "KubeDirectory", "KubeUnavailable", "LocalContainers"]

log = logging.getLogger("bpfscope.kube")

SERVICE_ACCOUNT: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PAGE: Final = 500


class KubeUnavailable(RuntimeError):
    """Not in a cluster, or the API cannot be reached with what we have."""


class KubeDirectory:
    """Pod and service addresses of the cluster, refreshed every ``refresh``
    seconds on a background thread."""

    def __init__(
        self,
        api: str,
        token: str,
        *,
        ca_file: str | None = None,
        refresh: float = 30.0,
        timeout: float = 5.0,
    ) -> None:
        self.api = api.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if ca_file else True
        )
        self._client = httpx.Client(verify=verify, timeout=timeout, headers=self._headers)
        self.refresh = refresh
        self._names: dict[str, tuple[str, RemoteClass]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.refreshes = 0

    @classmethod
    def in_cluster(cls, **kwargs: Any) -> KubeDirectory:
        """From the environment a pod gets (service host/port, token, CA)."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token_file = SERVICE_ACCOUNT / "token"
        if not host or not token_file.is_file():
            raise KubeUnavailable("not running in a Kubernetes pod (no service host or token)")
        shown = f"[{host}]" if ":" in host else host
        ca = SERVICE_ACCOUNT / "ca.crt"
        return cls(
            f"https://{shown}:{port}",
            token_file.read_text().strip(),
            ca_file=str(ca) if ca.is_file() else None,
            **kwargs,
        )

    def _list(self, path: str) -> Iterable[Mapping[str, Any]]:
        params: dict[str, Any] = {"limit": PAGE}
        while True:
            r = self._client.get(self.api + path, params=params)
            if r.status_code in (401, 403):
                raise KubeUnavailable(
                    f"the API server refused {path} ({r.status_code}): the service account "
                    "needs get/list on pods and services (see deploy/kubernetes/rbac.yaml)"
                )
            r.raise_for_status()
            body = r.json()
            yield from body.get("items", [])
            cont = body.get("metadata", {}).get("continue")
            if not cont:
                return
            params = {"limit": PAGE, "continue": cont}

    def refresh_now(self) -> int:
        """One full listing; returns how many addresses are known."""
        names: dict[str, tuple[str, RemoteClass]] = {}
        for pod in self._list("/api/v1/pods"):
            meta, status = pod.get("metadata", {}), pod.get("status", {})
            if pod.get("spec", {}).get("hostNetwork"):
                continue  # its address is the node's, not the pod's
            name = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
            ips = [p.get("ip") for p in status.get("podIPs", [])] or [status.get("podIP")]
            for ip in filter(None, ips):
                names[ip] = (name, RemoteClass.POD)
        for svc in self._list("/api/v1/services"):
            meta, spec = svc.get("metadata", {}), svc.get("spec", {})
            name = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
            ips = spec.get("clusterIPs") or [spec.get("clusterIP")]
            for ip in ips:
                if ip and ip != "None":
                    names[ip] = (name, RemoteClass.SERVICE)
        with self._lock:
            self._names = names
        self.refreshes += 1
        self.last_error = None
        return len(names)

    def lookup(self, ip: str) -> tuple[str, RemoteClass] | None:
        with self._lock:
            return self._names.get(ip)

    def start(self) -> KubeDirectory:
        self._thread = threading.Thread(target=self._loop, name="bpfscope-kube", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                n = self.refresh_now()
                log.debug("kubernetes: %d pod and service addresses", n)
            except (httpx.HTTPError, KubeUnavailable, ValueError) as exc:
                self.last_error = str(exc)
                log.warning("kubernetes lookup failed: %s", exc)
            self._stop.wait(self.refresh)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._client.close()


class _FlowLike(Protocol):
    @property
    def laddr(self) -> str: ...
    @property
    def netns(self) -> int: ...
    @property
    def container(self) -> str | None: ...


class LocalContainers:
    """Addresses of containers on this host, learnt from their own flows."""

    def __init__(self, host_netns: int | None = None) -> None:
        if host_netns is None:
            try:
                host_netns = os.stat("/proc/1/ns/net").st_ino
            except OSError:
                host_netns = os.stat("/proc/self/ns/net").st_ino
        self.host_netns = host_netns
        self._names: dict[str, str] = {}
        self._lock = threading.Lock()

    def update(self, flows: Iterable[_FlowLike]) -> None:
        names = {
            f.laddr: f.container
            for f in flows
            # containers sharing the host's network have the host's addresses
            if f.container and f.netns != self.host_netns
        }
        with self._lock:
            self._names = names

    def lookup(self, ip: str) -> tuple[str, RemoteClass] | None:
        with self._lock:
            name = self._names.get(ip)
        return (name, RemoteClass.CONTAINER) if name else None
