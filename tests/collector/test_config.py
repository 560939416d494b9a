"""The collector configuration: the shipped file, defaults, and errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from modeltel_collector.config import CollectorConfig, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_file_is_valid_and_matches_the_defaults_it_documents():
    config = load_config(ROOT / "collector-config" / "modeltel.yaml")
    defaults = CollectorConfig()
    assert config.receivers == defaults.receivers
    assert config.processors == defaults.processors
    assert config.exporters == defaults.exporters
    assert config.models["salary"].acceptance["rmse"].max == 7000


def test_no_file_and_an_empty_file_give_the_defaults(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(None) == load_config(empty) == CollectorConfig()


def test_durations():
    config = parse_config({"processors": {"drift": {"window": "10s"}, "performance": {"label_ttl": "2h"}}})
    assert config.processors.drift is not None and config.processors.drift.window == 10.0
    assert config.processors.performance is not None and config.processors.performance.label_ttl == 7200.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"exporterz": {}}, "exporterz: unknown key; known keys: receivers, processors, exporters, models"),
        (
            {"models": {"salary": {"acceptance": {"rmse": {"maxx": 1}}}}},
            "models.salary.acceptance.rmse.maxx: unknown key; known keys: min, max",
        ),
        (
            {"models": {"salary": {"window": "5 minutes"}}},
            "models.salary.window: '5 minutes' is not a duration; use e.g. 30s, 5m, 1h or 7d",
        ),
        ({"processors": {"drift": {"alpha": 2}}}, "processors.drift.alpha: Input should be less than 1"),
        (
            {"receivers": {"otlp": {"protocols": {"grpc": {"endpont": "x"}}}}},
            "receivers.otlp.protocols.grpc.endpont: unknown key; known keys: endpoint",
        ),
        ([1, 2], "the configuration: Input should be a valid dictionary"),
    ],
)
def test_errors_name_the_key_and_value(data, message):
    with pytest.raises(ConfigError, match="invalid collector configuration") as error:
        parse_config(data)
    assert message in str(error.value)


def test_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("processors: {drift: {window: [}")
    with pytest.raises(ConfigError, match=r"bad\.yaml is not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("processors: {drift: {windw: 5m}}")
    with pytest.raises(ConfigError, match=r"in .*wrong\.yaml:\n  processors\.drift\.windw: unknown key"):
        load_config(wrong)
    with pytest.raises(ConfigError, match=r"cannot read .*missing\.yaml: No such file"):
        load_config(tmp_path / "missing.yaml")
