"""deploy/: the compose file, the Prometheus config and the Kubernetes
manifests parse and carry what least privilege and operations need.

No cluster or Docker engine here: these checks read the files. The
capability lists are compared with the set the kernel test proved
(tests/kernel/test_least_privilege.py); here they must agree with each
other, and the agent's arguments must be ones `bpfscope serve` accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML (dev extra) is needed to read the manifests")

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
HOST_PATHS = ("/sys/kernel/btf", "/sys/fs/cgroup", "/sys/kernel/tracing")
HEALTH = "/api/v1/health"
LIVE = "/api/v1/live"


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in _docs(path):
            if doc.get("kind") == "Kustomization":
                continue
            key = f"{doc['kind']}/{doc['metadata']['name']}"
            assert key not in out, f"{key} defined twice"
            out[key] = doc
    return out


@pytest.fixture(scope="module")
def daemonset(k8s: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return k8s["DaemonSet/bpfscope"]


@pytest.fixture(scope="module")
def container(daemonset: dict[str, Any]) -> dict[str, Any]:
    [ctr] = daemonset["spec"]["template"]["spec"]["containers"]
    return dict(ctr)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def _walk(node: Any) -> list[tuple[str, Any]]:
    """Every (key, value) pair anywhere in a parsed document."""
    out: list[tuple[str, Any]] = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append((k, v))
            out += _walk(v)
    elif isinstance(node, list):
        for v in node:
            out += _walk(v)
    return out


# -- Kubernetes ------------------------------------------------------------------


def test_every_object_is_there_and_namespaced(k8s: dict[str, dict[str, Any]]) -> None:
    assert set(k8s) == {
        "Namespace/bpfscope",
        "ServiceAccount/bpfscope",
        "ClusterRole/bpfscope-reader",
        "ClusterRoleBinding/bpfscope-reader",
        "DaemonSet/bpfscope",
        "Service/bpfscope",
        "ServiceMonitor/bpfscope",
    }
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    for key, doc in k8s.items():
        assert doc["apiVersion"], key
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == "bpfscope", key


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files
    assert kust["namespace"] == "bpfscope"


def test_rbac_is_read_only_for_pods_services_nodes(k8s: dict[str, dict[str, Any]]) -> None:
    role = k8s["ClusterRole/bpfscope-reader"]
    [rule] = role["rules"]
    assert rule["apiGroups"] == [""]
    assert set(rule["resources"]) == {"pods", "services", "nodes"}
    assert set(rule["verbs"]) == {"get", "list", "watch"}
    binding = k8s["ClusterRoleBinding/bpfscope-reader"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "bpfscope-reader",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "bpfscope", "namespace": "bpfscope"}
    ]


def test_daemonset_runs_on_every_node_in_the_host_pid_namespace(
    daemonset: dict[str, Any],
) -> None:
    spec = daemonset["spec"]
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert pod["hostPID"] is True
    assert pod.get("hostNetwork", False) is False
    assert pod["serviceAccountName"] == "bpfscope"
    assert {"operator": "Exists"} in pod["tolerations"]


def test_nothing_is_privileged(k8s: dict[str, dict[str, Any]], compose: dict[str, Any]) -> None:
    for key, doc in k8s.items():
        assert ("privileged", True) not in _walk(doc), key
    assert ("privileged", True) not in _walk(compose)


def test_container_security_context_is_least_privilege(container: dict[str, Any]) -> None:
    sc = container["securityContext"]
    assert sc["privileged"] is False
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    added = set(sc["capabilities"]["add"])
    assert {"BPF", "PERFMON"} <= added
    assert "SYS_ADMIN" not in added
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}


def test_node_name_comes_from_the_downward_api(container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_probes_use_liveness_and_health_on_the_served_port(container: dict[str, Any]) -> None:
    """Readiness on /api/v1/health (503 when degraded: out of the Service);
    liveness and startup on /api/v1/live, so an overloaded agent is not
    restarted."""
    [port] = container["ports"]
    listen = container["args"][container["args"].index("--listen") + 1]
    assert listen == f"0.0.0.0:{port['containerPort']}"
    want = {"livenessProbe": LIVE, "startupProbe": LIVE, "readinessProbe": HEALTH}
    for probe, path in want.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert get["port"] in (port["name"], port["containerPort"]), probe


def test_the_probe_paths_are_routes_of_the_agent() -> None:
    from agent_helpers import FakeFlows
    from bpfscope.agent import Agent
    from bpfscope.server import create_app

    app = create_app(Agent(flows=FakeFlows([])))
    paths = {getattr(r, "path", None) for r in app.routes}
    assert {LIVE, HEALTH} <= paths


def test_resources_have_requests_and_limits(container: dict[str, Any]) -> None:
    res = container["resources"]
    for kind in ("requests", "limits"):
        assert set(res[kind]) == {"cpu", "memory"}, kind
    # The agent's RSS (~75 MiB) plus its BPF maps (~80 MiB with the default
    # --max-flows, charged to the pod's memory cgroup) must fit the limit.
    assert _mib(res["limits"]["memory"]) >= 384
    assert _mib(res["requests"]["memory"]) <= _mib(res["limits"]["memory"])


def _mib(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * factor
    return float(quantity) / 2**20


def test_host_paths_are_mounted_read_only(daemonset: dict[str, Any]) -> None:
    pod = daemonset["spec"]["template"]["spec"]
    [ctr] = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    for path in HOST_PATHS:
        mount = mounts[path]
        assert mount.get("readOnly") is True, path
        assert volumes[mount["name"]]["hostPath"]["path"] == path
    history = mounts["/var/lib/bpfscope"]
    assert not history.get("readOnly", False)
    # every hostPath except the history is mounted read-only
    for name, vol in volumes.items():
        if "hostPath" in vol and vol["hostPath"]["path"] != "/var/lib/bpfscope":
            [m] = [m for m in ctr["volumeMounts"] if m["name"] == name]
            assert m.get("readOnly") is True, name


def test_service_and_servicemonitor_reach_the_agent(
    k8s: dict[str, dict[str, Any]], daemonset: dict[str, Any], container: dict[str, Any]
) -> None:
    svc = k8s["Service/bpfscope"]
    labels = daemonset["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    [port] = svc["spec"]["ports"]
    assert port["targetPort"] in (
        container["ports"][0]["name"],
        container["ports"][0]["containerPort"],
    )
    sm = k8s["ServiceMonitor/bpfscope"]
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    [endpoint] = sm["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["path"] == "/metrics"


def test_agent_arguments_are_accepted_by_serve(
    container: dict[str, Any], compose: dict[str, Any]
) -> None:
    from bpfscope.serve_cli import serve

    for args in (container["args"], compose["services"]["bpfscope"]["command"]):
        assert args[0] == "serve"
        ctx = serve.make_context("serve", list(args[1:]))
        assert ctx.params["listen"] == "0.0.0.0:9464"


# -- compose and Prometheus ------------------------------------------------------


def test_compose_grants_named_caps_and_host_pid(compose: dict[str, Any]) -> None:
    svc = compose["services"]["bpfscope"]
    assert svc["pid"] == "host"
    assert svc["cap_drop"] == ["ALL"]
    assert {"BPF", "PERFMON"} <= set(svc["cap_add"])
    assert "SYS_ADMIN" not in svc["cap_add"]
    assert "no-new-privileges:true" in svc["security_opt"]
    assert (DEPLOY / svc["build"]["dockerfile"].removeprefix("deploy/")).is_file()
    assert (DEPLOY / svc["build"]["context"]).resolve() == ROOT


def test_compose_mounts_host_paths_read_only_and_keeps_history(compose: dict[str, Any]) -> None:
    svc = compose["services"]["bpfscope"]
    binds = {v["target"]: v for v in svc["volumes"]}
    for path in HOST_PATHS:
        assert binds[path] == {
            "type": "bind",
            "source": path,
            "target": path,
            "read_only": True,
        }
    history = binds["/var/lib/bpfscope"]
    assert history["type"] == "volume"
    assert history["source"] in compose["volumes"]


def test_compose_and_daemonset_grant_the_same_caps(
    compose: dict[str, Any], container: dict[str, Any]
) -> None:
    assert sorted(compose["services"]["bpfscope"]["cap_add"]) == sorted(
        container["securityContext"]["capabilities"]["add"]
    )


def test_prometheus_scrapes_the_compose_agent(compose: dict[str, Any]) -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    [job] = [j for j in prom["scrape_configs"] if j["job_name"] == "bpfscope"]
    assert job["metrics_path"] == "/metrics"
    [target] = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    assert host in compose["services"]
    listen = compose["services"]["bpfscope"]["command"]
    assert listen[listen.index("--listen") + 1].endswith(f":{port}")
    mounts = {v["target"]: v for v in compose["services"]["prometheus"]["volumes"]}
    assert mounts["/etc/prometheus/prometheus.yml"]["source"] == "./prometheus.yml"


def test_the_old_engine_compose_file_differs_only_in_its_capabilities(
    compose: dict[str, Any],
) -> None:
    """deploy/docker-compose.docker20.yml (Docker < 23 knows neither CAP_BPF
    nor CAP_PERFMON) must stay the main file with CAP_SYS_ADMIN in their
    place; tests/kernel/test_container_image.py proves it on such an engine."""
    old: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.docker20.yml").read_text())
    assert "name" not in old  # Debian 12's docker-compose 1.29 rejects the key
    main = {k: v for k, v in compose.items() if k != "name"}
    assert old["services"]["bpfscope"]["cap_add"] == ["SYS_ADMIN"]
    old["services"]["bpfscope"]["cap_add"] = compose["services"]["bpfscope"]["cap_add"]
    assert old == main
