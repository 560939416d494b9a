"""collector-config/alerts.yaml: what it holds, how bad files are refused, the PromQL it gives."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeltel_collector.alerting.policy import (
    AlertPolicies,
    Condition,
    LabelMatcher,
    PolicyError,
    load_policies,
    parse_policies,
)
from modeltel_collector.alerting.promql import alert_expr, expression, recording_rules
from modeltel_collector.alerting.promtool_tests import example_matching
from modeltel_collector.alerting.text import (
    fill,
    humanize,
    humanize_duration,
    humanize_percentage,
)
from tests.conftest import ROOT

POLICIES = ROOT / "collector-config" / "alerts.yaml"
RUNBOOK = ROOT / "docs" / "runbook.md"


@pytest.fixture(scope="module")
def config() -> AlertPolicies:
    return load_policies(POLICIES)


def _raw() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(POLICIES.read_text())
    return data


def _problems(data: dict[str, Any]) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policies(data)
    return str(caught.value)


def _with_policy(alert: str, **changes: Any) -> dict[str, Any]:
    """The committed file with one policy's keys replaced (``None`` deletes a key)."""
    data = copy.deepcopy(_raw())
    for policy in data["policies"]:
        if policy["alert"] == alert:
            for key, value in changes.items():
                if value is None:
                    policy.pop(key, None)
                else:
                    policy[key] = value
    return data


# --- the committed policies -------------------------------------------------------------------------


def test_salary_rmse_is_critical_above_7000_and_warns_lower(config: AlertPolicies) -> None:
    policy = config.policy("ModelRmseHigh")
    assert policy.static is not None and policy.static.operator == ">"
    assert policy.static.critical == 7000
    assert policy.static.warning is not None and policy.static.warning < 7000
    assert policy.condition.labels["ml_model_name"] == LabelMatcher(op="=", value="salary")
    assert alert_expr(policy, 7000) == (
        'max by (ml_model_name) (ml_performance_rmse{ml_model_name="salary"}) > 7000'
    )


def test_every_kpi_of_the_playbook_has_a_policy(config: AlertPolicies) -> None:
    exprs = {p.alert: [alert_expr(p, level) for _, level in p.levels()] for p in config.policies}
    assert "min by (ml_model_name) (ml_performance_r2) < 0.6" in exprs["ModelR2Low"]
    assert exprs["FeatureDriftPsiHigh"] == ["max by (ml_model_name, ml_feature_name) (ml_drift_psi) > 0.2"]
    assert exprs["FeatureDriftDetected"] == [
        "max by (ml_model_name, ml_feature_name) (ml_drift_detected) == 1"
    ]
    assert (
        "histogram_quantile(0.95, sum by (le, service_name, http_route) "
        "(rate(http_server_request_duration_seconds_bucket[5m]))) > 0.5"
    ) in exprs["LatencyP95High"]
    assert exprs["ErrorRateHigh"][0] == (
        "sum by (service_name, http_route) "
        '(rate(http_server_request_duration_seconds_count{error_type!=""}[5m]))'
        " / sum by (service_name, http_route) (rate(http_server_request_duration_seconds_count[5m])) > 0.01"
    )
    assert (
        "sum by (signal) (rate(modeltel_receiver_rejected_total[5m])) > 0.1"
        in exprs["CollectorRejectingRecords"]
    )
    assert "max(modeltel_receiver_queue_depth) > 900" in exprs["CollectorQueueBacklog"]
    adaptive = {p.alert for p in config.policies if p.adaptive is not None}
    assert {"ModelRmseAnomalous", "PredictionRateAnomalous"} <= adaptive
    severities = {severity for p in config.policies for severity, _ in p.levels()}
    assert severities == {"warning", "critical"}


def test_adaptive_policies_record_their_value_mean_and_deviation(config: AlertPolicies) -> None:
    policy = config.policy("PredictionRateAnomalous")
    assert recording_rules(policy) == [
        {
            "record": "modeltel:prediction_rate_anomalous:value",
            "expr": "sum by (ml_model_name) (rate(ml_predictions_total[5m]))",
        },
        {
            "record": "modeltel:prediction_rate_anomalous:avg_over_time_1d",
            "expr": "avg_over_time(modeltel:prediction_rate_anomalous:value[1d])",
        },
        {
            "record": "modeltel:prediction_rate_anomalous:stddev_over_time_1d",
            "expr": "stddev_over_time(modeltel:prediction_rate_anomalous:value[1d])",
        },
    ]
    expr = alert_expr(policy, 3)
    assert (
        "modeltel:prediction_rate_anomalous:value > modeltel:prediction_rate_anomalous:avg_over_time_1d"
        in expr
    )
    assert (
        "modeltel:prediction_rate_anomalous:value < modeltel:prediction_rate_anomalous:avg_over_time_1d"
        in expr
    )
    assert "clamp_min(modeltel:prediction_rate_anomalous:stddev_over_time_1d, 0.05)" in expr
    assert expr.endswith("and count_over_time(modeltel:prediction_rate_anomalous:value[1d]) >= 120")


def test_links_point_at_the_dashboards_and_the_runbook(config: AlertPolicies) -> None:
    assert set(config.dashboards) == {
        "modeltel-service",
        "modeltel-model-quality",
        "modeltel-drift",
        "modeltel-collector",
    }
    psi = config.policy("FeatureDriftPsiHigh")
    labels = {"ml_model_name": "salary", "ml_feature_name": "years_experience"}
    assert config.dashboard_url(psi, labels) == (
        "http://localhost:3000/d/modeltel-drift?viewPanel=1&var-model=salary&var-feature=years_experience"
    )
    latency = config.policy("LatencyP95High")
    url = config.dashboard_url(latency, {"service_name": "salary-api", "http_route": "/predict"})
    assert url.endswith("var-service=salary-api&var-route=%2Fpredict")
    assert config.runbook_link(psi) == f"{config.runbook_url}#featuredriftpsihigh"


def _github_anchor(heading: str) -> str:
    """The fragment GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_runbook_has_a_section_per_alert(config: AlertPolicies) -> None:
    text = RUNBOOK.read_text()
    sections: dict[str, str] = {}
    for block in re.split(r"^## ", text, flags=re.MULTILINE)[1:]:
        heading, _, body = block.partition("\n")
        sections[_github_anchor(heading)] = body
    for policy in config.policies:
        body = sections.get(policy.runbook_anchor)
        assert body is not None, f"docs/runbook.md has no section #{policy.runbook_anchor}"
        for part in ("What it means", "Triage", "Mitigation", "Escalation"):
            assert f"**{part}" in body, f"#{policy.runbook_anchor} lacks {part}"
        assert "```promql" in body or "`" in body


# --- validation ----------------------------------------------------------------------------------


def test_an_unknown_key_is_named_with_its_policy() -> None:
    data = _with_policy("ModelRmseHigh", severity="critical")
    assert _problems(data) == "invalid alert policies:\n  policies.ModelRmseHigh.severity: unknown key"


def test_a_misspelt_condition_key_and_a_bad_value_are_both_reported() -> None:
    data = _with_policy(
        "LatencyP95High",
        condition={"metric": "http_server_request_duration_seconds_bucket", "aggregation": "p95", "bye": []},
    )
    message = _problems(data)
    assert "policies.LatencyP95High.condition.aggregation: Input should be 'max', 'min'" in message
    assert "(got 'p95')" in message
    assert "policies.LatencyP95High.condition.bye: unknown key" in message


def test_a_bad_duration_names_the_key_and_the_value() -> None:
    message = _problems(_with_policy("ModelRmseHigh", **{"for": "ten minutes"}))
    assert (
        "policies.ModelRmseHigh.for: 'ten minutes' is not a duration; use e.g. 30s, 5m, 1h or 7d" in message
    )


def test_a_missing_key_is_reported() -> None:
    message = _problems(_with_policy("ModelRmseHigh", owner=None))
    assert "policies.ModelRmseHigh.owner: missing" in message


def test_undefined_teams_and_dashboards_are_refused() -> None:
    data = _with_policy("ModelR2Low", owner="ml-platfrom", dashboard={"uid": "modeltel-quality", "panel": 2})
    message = _problems(data)
    assert (
        "policies.ModelR2Low.owner: no team 'ml-platfrom' in teams; teams: ml-platform, salary-ml, sre"
        in message
    )
    assert "policies.ModelR2Low.dashboard.uid: no dashboard 'modeltel-quality' in dashboards" in message
    data = copy.deepcopy(_raw())
    data["models"]["salary"]["owner"] = "nobody"
    assert "models.salary.owner: no team 'nobody' in teams" in _problems(data)


def test_levels_in_the_wrong_order_are_refused() -> None:
    message = _problems(
        _with_policy("ModelRmseHigh", static={"operator": ">", "warning": 8000, "critical": 7000})
    )
    assert "policies.ModelRmseHigh.static.warning: must be below critical (7000) (got 8000.0)" in message
    message = _problems(_with_policy("ModelR2Low", static={"operator": "<", "warning": 0.5, "critical": 0.6}))
    assert "policies.ModelR2Low.static.warning: must be above critical (0.6) (got 0.5)" in message


def test_a_policy_needs_exactly_one_threshold() -> None:
    both = _with_policy(
        "ModelRmseHigh",
        adaptive={"direction": "above", "window": "1d", "warning": 3, "min_stddev": 0},
    )
    assert "policies.ModelRmseHigh: give exactly one of static and adaptive" in _problems(both)
    neither = _with_policy("ModelRmseHigh", static=None)
    assert "policies.ModelRmseHigh: give exactly one of static and adaptive" in _problems(neither)
    empty = _with_policy("ModelRmseHigh", static={"operator": ">"})
    assert "policies.ModelRmseHigh.static: give a warning or a critical level (or both)" in _problems(empty)


def test_an_adaptive_history_too_short_for_min_samples_is_refused() -> None:
    adaptive = {"direction": "outside", "window": "1h", "warning": 3, "min_stddev": 0.05, "min_samples": 500}
    message = _problems(_with_policy("PredictionRateAnomalous", adaptive=adaptive))
    assert (
        "policies.PredictionRateAnomalous.adaptive.min_samples: the window holds at most 120 evaluations"
        " (one per evaluation_interval) (got 500)"
    ) in message


def test_an_adaptive_window_that_absorbs_a_change_before_it_can_fire_is_refused() -> None:
    # for 15m + rate range 5m = 1200 s; k=3 fires only while the change fills under 9% of the window.
    adaptive = {"direction": "outside", "window": "3h", "warning": 3, "min_stddev": 0.05, "min_samples": 10}
    message = _problems(_with_policy("PredictionRateAnomalous", adaptive=adaptive))
    assert (
        "policies.PredictionRateAnomalous.adaptive.window: too short: a sustained change is absorbed into"
        " the mean and standard deviation before it can fire (k=3 needs a window of at least 13090 s"
        " for a for+range of 1200 s) (got 10800.0)"
    ) in message


def test_unknown_placeholders_are_refused() -> None:
    message = _problems(_with_policy("ModelRmseHigh", summary="RMSE of {model} is {value}"))
    assert (
        "policies.ModelRmseHigh.summary: unknown placeholder {model}; known: {ml_model_name}, {severity}"
        in message
    )


def test_condition_checks_name_the_field() -> None:
    data = _with_policy(
        "LatencyP95High",
        condition={
            "metric": "http_server_request_duration_seconds",
            "aggregation": "quantile",
            "by": ["service_name", "http_route"],
            "numerator": {"status": {"=~": "5(("}},
        },
    )
    message = _problems(data)
    where = "policies.LatencyP95High.condition"
    assert f"{where}.quantile: quantile needs a quantile between 0 and 1" in message
    assert f"{where}.metric: quantile reads a histogram's *_bucket series" in message
    assert f"{where}.numerator.status: not a regular expression" in message
    assert f"{where}.numerator: only ratio takes a numerator, not quantile" in message


def test_a_label_matcher_must_be_a_string_or_one_operator() -> None:
    data = _with_policy(
        "ModelRmseHigh",
        condition={"metric": "ml_performance_rmse", "labels": {"ml_model_name": {"~": "sal.*"}}},
    )
    message = _problems(data)
    assert "policies.ModelRmseHigh.condition.labels.ml_model_name: a label matcher is a string" in message


def test_dashboard_variables_must_come_from_kept_labels() -> None:
    link = {"uid": "modeltel-drift", "panel": 1, "variables": {"feature": "ml_feature_name"}}
    message = _problems(_with_policy("ModelRmseHigh", dashboard=link))
    assert (
        "policies.ModelRmseHigh.dashboard.variables.feature: not a label of condition.by (the alert lacks it)"
    ) in message


def test_files_that_cannot_be_read_or_parsed(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"cannot read .*missing.yaml"):
        load_policies(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies: [\n")
    with pytest.raises(PolicyError, match="is not valid YAML"):
        load_policies(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(POLICIES.read_text().replace("for: 10m", "for: soon", 1))
    with pytest.raises(PolicyError, match=rf"invalid alert policies in {re.escape(str(wrong))}:"):
        load_policies(wrong)


# --- PromQL and text -------------------------------------------------------------------------------


def test_expressions_per_aggregation() -> None:
    assert expression(Condition(metric="up", labels={"job": LabelMatcher(op="=", value="modeltel")})) == (
        'max(up{job="modeltel"})'
    )
    assert expression(Condition(metric="x_total", aggregation="rate", by=("a",), range=60.0)) == (
        "sum by (a) (rate(x_total[1m]))"
    )
    ratio = Condition(
        metric="c_count",
        aggregation="ratio",
        labels={"r": LabelMatcher(op="!~", value='a"b')},
        numerator={"s": LabelMatcher(op="=~", value="5..")},
    )
    assert expression(ratio) == (
        'sum(rate(c_count{r!~"a\\"b", s=~"5.."}[5m])) / sum(rate(c_count{r!~"a\\"b"}[5m]))'
    )


def test_conditions_select_series_as_prometheus_matchers_do(config: AlertPolicies) -> None:
    errors = config.policy("ErrorRateHigh").condition
    ok = {"service_name": "salary-api", "http_route": "/predict", "http_response_status_code": "200"}
    failed = {**ok, "http_response_status_code": "500", "error_type": "500"}
    assert errors.selects(ok) and errors.selects(failed)
    assert errors.selects(failed, numerator=True) and not errors.selects(ok, numerator=True)
    rmse = config.policy("ModelRmseHigh").condition
    assert rmse.selects({"ml_model_name": "salary"}) and not rmse.selects({"ml_model_name": "churn"})


def test_humanize_ports_match_prometheus() -> None:
    assert [humanize(v) for v in (0, 7000, 32373.75, 0.2, 1234567, -2500)] == [
        "0",
        "7k",
        "32.37k",
        "200m",
        "1.235M",
        "-2.5k",
    ]
    assert [humanize_duration(v) for v in (0.5, 1.5, 90, 3725, 90061, 0)] == [
        "500ms",
        "1.5s",
        "1m 30s",
        "1h 2m 5s",
        "1d 1h 1m 1s",
        "0s",
    ]
    assert humanize_percentage(0.0312) == "3.12%"


def test_texts_fill_in_labels_value_and_threshold(config: AlertPolicies) -> None:
    policy = config.policy("LatencyP95High")
    labels = {"service_name": "salary-api", "http_route": "/predict"}
    assert fill(policy.summary, policy, "critical", 0.5, labels, 0.75) == (
        "p95 latency of salary-api /predict is 750ms, above 500ms"
    )
    rate = config.policy("PredictionRateAnomalous")
    assert fill(rate.summary, rate, "warning", 3, {"ml_model_name": "salary"}, 0) == (
        "Prediction rate of model salary is 0/s, outside mean ± 3\u03c3 over 1d"
    )


def test_regex_examples_for_test_series() -> None:
    assert example_matching("5..") == "500"
    assert example_matching("(GET|POST)/[a-z]+") == "GET/a"
    assert example_matching(r"\d{3}") == "000"
