"""The Grafana dashboard in deploy/ queries only metrics the server exports."""

from __future__ import annotations

import json
import pathlib
import re
import urllib.request

import torch

from tests.models import MLP, archive_of

DASHBOARD = pathlib.Path(__file__).resolve().parents[2] / "deploy/grafana/jacserve-dashboard.json"
_SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def _exported_families(port: int) -> set[str]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}


def _family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_dashboard_query_names_an_exported_metric(server, client):
    x = torch.randn(3, dtype=torch.float64)
    client.jacobian(archive_of(MLP(3, 4, 2, torch.float64), (x,), "torchscript"), x)
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {_family(m) for q in queries for m in re.findall(r"jacserve_[a-z_]+", q)}
    exported = {_family(name) for name in _exported_families(server.metrics_port)}
    assert used, "the dashboard queries no jacserve metric"
    assert used <= exported, f"not exported: {sorted(used - exported)}"
