"""The Grafana dashboards and provisioning: structure, datasource uids, and PromQL that parses.

Every query (panel targets and template variables, with Grafana's variables expanded) is sent
to a real Prometheus (Debian's, empty TSDB): a syntax error answers 400 ``bad_data``, a valid
query 200 even with no data. tests/alerting/test_alerting_end_to_end.py then checks that each
one returns data from a Prometheus scraping a live collector.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.daemons import Prometheus, start_prometheus
from tests.stack.stack_helpers import (
    DASHBOARD_UIDS,
    DASHBOARDS,
    PROVISIONING,
    ROOT,
    dashboard_queries,
    load_dashboards,
    panels,
    provisioned_datasource_uids,
)


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    server = start_prometheus(tmp_path_factory.mktemp("prometheus"))
    yield server
    server.daemon.stop()


def test_dashboards_are_json_with_the_expected_uids() -> None:
    dashboards = load_dashboards()
    uids = [board["uid"] for board in dashboards.values()]
    assert sorted(uids) == sorted(DASHBOARD_UIDS), uids
    for name, board in dashboards.items():
        assert name == f"{board['uid']}.json"
        assert board["schemaVersion"] >= 39
        assert board["title"].startswith("modeltel / ")
        assert "modeltel" in board["tags"]
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"


def test_every_panel_queries_a_provisioned_datasource() -> None:
    datasources = provisioned_datasource_uids()
    for name, board in load_dashboards().items():
        for variable in board.get("templating", {}).get("list", []):
            if variable["type"] == "query":
                assert datasources.get(variable["datasource"]["uid"]) == variable["datasource"]["type"]
        for panel in panels(board):
            where = f"{name}: {panel['title']!r}"
            assert panel.get("description"), f"{where} has no description"
            assert datasources.get(panel["datasource"]["uid"]) == panel["datasource"]["type"], where
            targets = panel.get("targets") or []
            assert targets, f"{where} has no target"
            for target in targets:
                assert target.get("expr", "").strip(), f"{where} {target.get('refId')}: empty expr"
                assert target["datasource"]["uid"] in datasources, where
            ref_ids = [target["refId"] for target in targets]
            assert len(ref_ids) == len(set(ref_ids)), where


def test_dashboard_contents() -> None:
    """What each dashboard is for, by the metrics its panels query."""
    exprs: dict[str, str] = {}
    for query in dashboard_queries():
        exprs[query.dashboard] = exprs.get(query.dashboard, "") + "\n" + query.expr
    service = exprs["modeltel-service"]
    duration = "http_server_request_duration_seconds"
    quantiles = ["histogram_quantile(0.5,", "histogram_quantile(0.95,", "histogram_quantile(0.99,"]
    for needle in (f"{duration}_count", f"{duration}_bucket", *quantiles, "http_route", 'error_type!=""'):
        assert needle in service, needle
    quality = exprs["modeltel-model-quality"]
    for needle in ("ml_performance_rmse", "ml_performance_(r2|accuracy)", "ml_performance_acceptance"):
        assert needle in quality, needle
    drift = exprs["modeltel-drift"]
    for needle in ("ml_drift_psi", "ml_drift_ks_statistic", "ml_drift_detected"):
        assert needle in drift, needle
    collector = exprs["modeltel-collector"]
    for needle in ("modeltel_receiver_accepted_total", "modeltel_receiver_rejected_total",
                   "modeltel_receiver_queue_depth"):  # fmt: skip
        assert needle in collector, needle
    exemplar_targets = [
        target
        for panel in panels(load_dashboards()["modeltel-service.json"])
        for target in panel["targets"]
        if target.get("exemplar")
    ]
    assert exemplar_targets, "the Service dashboard shows exemplars"
    for board in load_dashboards().values():
        variables = {v["name"] for v in board["templating"]["list"]}
        if board["uid"] in {"modeltel-model-quality", "modeltel-drift"}:
            assert {"model", "version"} <= variables


def test_every_query_parses(prometheus: Prometheus) -> None:
    queries = dashboard_queries()
    assert len(queries) > 30
    for query in queries:
        response = prometheus.query_response(query.promql)
        assert response.status_code == 200, (
            f"{query.dashboard} {query.where}: {query.promql}\n{response.text}"
        )


def test_parse_check_catches_errors(prometheus: Prometheus) -> None:
    """The check above is real: Prometheus refuses broken PromQL with 400."""
    response = prometheus.query_response("sum by (le (rate(x[1m]))")
    assert response.status_code == 400 and response.json()["errorType"] == "bad_data"


def test_datasource_provisioning() -> None:
    (datasources_file,) = (PROVISIONING / "datasources").glob("*.yaml")
    sources = {s["uid"]: s for s in yaml.safe_load(datasources_file.read_text())["datasources"]}
    assert {"prometheus": "prometheus", "tempo": "tempo", "jaeger": "jaeger"}.items() <= {
        uid: s["type"] for uid, s in sources.items()
    }.items()
    assert sources["prometheus"]["url"] == "http://prometheus:9090"
    assert sources["tempo"]["url"] == "http://tempo:3200"
    assert sources["jaeger"]["url"] == "http://jaeger:16686"
    destinations = sources["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {d["datasourceUid"] for d in destinations} == {"tempo", "jaeger"}
    assert {d["name"] for d in destinations} == {"trace_id"}
    assert [s["uid"] for s in sources.values() if s.get("isDefault")] == ["prometheus"]


def test_dashboard_provider_points_at_the_mounted_folder() -> None:
    (provider_file,) = (PROVISIONING / "dashboards").glob("*.yaml")
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    compose: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    mounts = {}
    for volume in compose["services"]["grafana"]["volumes"]:
        source, target, *_ = volume.split(":")
        mounts[source] = target
    assert provider["options"]["path"] == mounts["./collector-config/grafana/dashboards"]
    assert (ROOT / "collector-config/grafana/dashboards") == DASHBOARDS
    assert mounts["./collector-config/grafana/provisioning"] == "/etc/grafana/provisioning"
