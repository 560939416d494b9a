"""collector-config/prometheus/prometheus.yml, checked by Debian's promtool."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.daemons import check_tool
from tests.stack.stack_helpers import CONFIG

PROMETHEUS_DIR = CONFIG / "prometheus"


def test_promtool_check_config() -> None:
    assert "SUCCESS" in check_tool("promtool", "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))


def test_rule_files_are_the_rendered_rules(tmp_path: Path) -> None:
    """``rule_files`` is relative to the config: rules/*.yml beside it (in the repo and in the
    container, where collector-config/prometheus is mounted at /etc/prometheus), so promtool
    checks the rendered rules, and a broken rule file fails the config check."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert config["rule_files"] == ["rules/*.yml"]
    copy = tmp_path / "prometheus"
    (copy / "rules").mkdir(parents=True)
    shutil.copy(PROMETHEUS_DIR / "prometheus.yml", copy / "prometheus.yml")
    (copy / "rules" / "modeltel-alerts.yml").write_text(
        "groups:\n- name: g\n  rules:\n  - alert: Broken\n    expr: rate(x[5m]\n"
    )
    with pytest.raises(AssertionError, match=" failed:\n") as failed:  # promtool exited non-zero
        check_tool("promtool", "check", "config", str(copy / "prometheus.yml"))
    assert "modeltel-alerts.yml" in str(failed.value).split(" failed:\n", 1)[1]


def test_scrape_and_alerting_targets() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    (modeltel,) = jobs["modeltel"]["dns_sd_configs"]
    assert modeltel["names"] == ["modeltel"] and modeltel["port"] == 9464
    assert jobs["otel-collector"]["static_configs"][0]["targets"] == ["otel-collector:8888"]
    assert jobs["alertmanager"]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]
