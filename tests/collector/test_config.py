"""The collector configuration: the shipped file, defaults, and errors that name the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict

from modeltel_collector import collector as collector_module
from modeltel_collector.collector import Collector
from modeltel_collector.config import CollectorConfig, ConfigError, load_config, parse_config
from modeltel_collector.processors.base import ProcessorContext, ProcessorFactory, available_factories

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
        (  # references come from the store (`modeltel reference build --data-dir`), not the config
            {"models": {"salary": {"reference": "ref.parquet"}}},
            "models.salary.reference: unknown key; known keys: task, window, features, acceptance",
        ),
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


def test_processor_sections_name_an_installed_processor(tmp_path):
    config = parse_config({"processors": {"drfit": {"window": "5m"}}, "data_dir": str(tmp_path)})
    with pytest.raises(
        ConfigError, match=r"processors\.drfit: no such processor is installed \(installed: .*drift"
    ):
        Collector(config)


class _PluginConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: int = 1


class _Plugin:
    def __init__(self, config: _PluginConfig, context: ProcessorContext) -> None:
        self.config = config

    def process_predictions(self, batch): ...
    def process_labels(self, batch): ...
    def process_spans(self, request): ...
    def tick(self, now_unix_nano): ...
    def checkpoint(self):
        return {}

    def restore(self, state): ...
    def shutdown(self): ...


def test_a_plugin_section_is_validated_against_its_config_type(tmp_path, monkeypatch):
    plugins = {**available_factories(), "custom": ProcessorFactory("custom", _PluginConfig, _Plugin)}
    monkeypatch.setattr(collector_module, "available_factories", lambda: plugins)
    collector = Collector(parse_config({"processors": {"custom": {"level": 3}}, "data_dir": str(tmp_path)}))
    try:
        assert collector.pipeline.processors["custom"].config.level == 3  # type: ignore[attr-defined]
    finally:
        collector.pipeline.shutdown()
    with pytest.raises(ConfigError, match=r"processors\.custom\.levle: Extra inputs are not permitted"):
        Collector(parse_config({"processors": {"custom": {"levle": 3}}, "data_dir": str(tmp_path)}))
