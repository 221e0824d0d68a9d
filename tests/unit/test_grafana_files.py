"""deploy/grafana/: the dashboards parse, use only the provisioned
datasource variable, and the compose file mounts what provisioning reads.
(tests/kernel/test_grafana_dashboards.py runs their queries for real.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
GRAFANA = DEPLOY / "grafana"


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        p.name: json.loads(p.read_text()) for p in sorted((GRAFANA / "dashboards").glob("*.json"))
    }


def test_dashboards_parse_with_unique_uids_and_panel_ids() -> None:
    dash = dashboards()
    assert dash, "no dashboards in deploy/grafana/dashboards"
    uids = [d["uid"] for d in dash.values()]
    assert len(uids) == len(set(uids))
    for name, d in dash.items():
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in d["panels"]:
            if p["type"] == "row":
                continue
            assert p["datasource"]["uid"] == "${datasource}", (name, p["title"])
            assert p["targets"], (name, p["title"])
            for t in p["targets"]:
                assert t["expr"].strip(), (name, p["title"])


def test_compose_mounts_what_provisioning_reads() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    grafana = compose["services"]["grafana"]
    mounts = {m["target"]: DEPLOY / m["source"] for m in grafana["volumes"]}
    assert all(m["read_only"] for m in grafana["volumes"])
    assert mounts["/etc/grafana/provisioning"] == DEPLOY / "grafana" / "provisioning"
    assert all(src.is_dir() for src in mounts.values())
    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/bpfscope.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert mounts[path] == GRAFANA / "dashboards"
    datasource = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert "prometheus" in compose["services"]
    assert all(p.startswith("127.0.0.1:") for p in grafana["ports"])
