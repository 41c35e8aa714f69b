"""The shipped Grafana dashboard and Prometheus config: valid, and naming only real metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from raystream.metrics import METRICS, exposed_names

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\b(raystream_[a-z0-9_]+)\b")


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "raystream.json").read_text())


def expressions(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            exprs.append(query["query"])
    return exprs


def test_dashboard_is_a_grafana_dashboard_with_well_formed_panels() -> None:
    dash = dashboard()
    assert dash["title"] and dash["uid"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    taken: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        cells = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & taken, f"panel {p['title']!r} overlaps another"
        taken |= cells
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs))
    names = {v["name"] for v in dash["templating"]["list"]}
    for e in expressions(dash):
        for var in re.findall(r"\$(\w+)", e):
            assert var in names, f"{e}: undefined variable ${var}"


def test_dashboard_queries_name_only_metrics_the_endpoint_exposes() -> None:
    exposed = exposed_names()
    used = {name for e in expressions(dashboard()) for name in METRIC.findall(e)}
    unknown = sorted(used - exposed)
    assert not unknown, f"the dashboard uses metrics raystream does not expose: {unknown}"
    # Histograms are queried through their buckets, counters through _total.
    for name in used:
        assert not any(name == m.name for m in METRICS if m.kind != "gauge"), name


def test_dashboard_covers_what_operators_watch() -> None:
    used = {name for e in expressions(dashboard()) for name in METRIC.findall(e)}
    for needed in (
        "raystream_consumer_lag",
        "raystream_task_records_in_total",
        "raystream_task_records_out_total",
        "raystream_end_to_end_seconds_bucket",
        "raystream_dead_letters_total",
        "raystream_worker_restarts_total",
        "raystream_commit_seconds_bucket",
        "raystream_state_bytes",
        "raystream_broker_up",
    ):
        assert needed in used, needed


def test_prometheus_example_scrapes_the_metrics_path() -> None:
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    job = jobs["raystream"]
    assert job["metrics_path"] == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    assert targets and all(re.fullmatch(r"[\w.-]+:\d+", t) for t in targets)
