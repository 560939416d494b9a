"""Structure of the OTel Collector configurations (otelcol.yaml and otelcol-loadbalancing.yaml).

No otelcol-contrib binary is available here, so the checks are the ones its own config
validation starts with: every component a pipeline names is defined, every defined component
is used, each connector is an exporter in one pipeline and a receiver in another of a
compatible signal, extensions are enabled where they are referenced, `memory_limiter` comes
first and `batch` after it, and the routing table sends exactly the `ml.*` events to modeltel.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from modeltel import semconv
from tests.stack.stack_helpers import CONFIG, ROOT

CONFIGS = ["otelcol.yaml", "otelcol-loadbalancing.yaml"]
KINDS = ("receivers", "processors", "exporters", "connectors")


def _load(name: str) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((CONFIG / name).read_text())
    return config


def _signal(pipeline_id: str) -> str:
    return pipeline_id.split("/", 1)[0]


def _references(value: Any) -> list[str]:
    """Every ``storage:`` value anywhere under ``value`` (extensions referenced by components)."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "storage" and isinstance(item, str):
                found.append(item)
            else:
                found += _references(item)
    elif isinstance(value, list):
        for item in value:
            found += _references(item)
    return found


@pytest.mark.parametrize("name", CONFIGS)
def test_every_component_defined_and_used(name: str) -> None:
    config = _load(name)
    pipelines: dict[str, Any] = config["service"]["pipelines"]
    assert {_signal(p) for p in pipelines} <= {"traces", "metrics", "logs"}
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for pipeline_id, pipeline in pipelines.items():
        assert pipeline.get("receivers") and pipeline.get("exporters"), f"{pipeline_id} is incomplete"
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline.get(kind) or []:
                if kind != "processors" and component in (config.get("connectors") or {}):
                    used["connectors"].add(component)
                    continue
                assert component in (config.get(kind) or {}), (
                    f"{pipeline_id}: {kind} {component} is not defined"
                )
                used[kind].add(component)
    for kind in KINDS:
        defined = set(config.get(kind) or {})
        assert defined == used[kind], f"{kind} defined but unused: {sorted(defined - used[kind])}"

    extensions = set(config.get("extensions") or {})
    enabled = set(config["service"].get("extensions") or [])
    assert enabled <= extensions, f"enabled but not defined: {sorted(enabled - extensions)}"
    assert extensions <= enabled, f"defined but not enabled: {sorted(extensions - enabled)}"
    for kind in KINDS:
        for component_id, component in (config.get(kind) or {}).items():
            for storage in _references(component):
                assert storage in enabled, f"{component_id} uses storage {storage}, which is not enabled"


@pytest.mark.parametrize("name", CONFIGS)
def test_connectors_join_pipelines_of_compatible_signals(name: str) -> None:
    config = _load(name)
    pipelines: dict[str, Any] = config["service"]["pipelines"]
    for connector_id, connector in (config.get("connectors") or {}).items():
        as_exporter = {p for p, spec in pipelines.items() if connector_id in (spec.get("exporters") or [])}
        as_receiver = {p for p, spec in pipelines.items() if connector_id in (spec.get("receivers") or [])}
        assert as_exporter, f"{connector_id} is no pipeline's exporter"
        assert as_receiver, f"{connector_id} is no pipeline's receiver"
        assert not as_exporter & as_receiver, f"{connector_id} loops within a pipeline"
        if connector_id.split("/", 1)[0] == "routing":
            # Same signal in and out; every routed-to pipeline receives from this connector.
            signals = {_signal(p) for p in as_exporter | as_receiver}
            assert len(signals) == 1, signals
            targets = set(connector.get("default_pipelines") or [])
            for route in connector["table"]:
                targets |= set(route["pipelines"])
            assert targets == as_receiver, (targets, as_receiver)


@pytest.mark.parametrize("name", CONFIGS)
def test_memory_limiter_first_then_batch(name: str) -> None:
    config = _load(name)
    for pipeline_id, pipeline in config["service"]["pipelines"].items():
        processors = pipeline.get("processors") or []
        if "otlp" in pipeline["receivers"]:
            assert processors[:2] == ["memory_limiter", "batch"], pipeline_id
        elif processors:
            assert "memory_limiter" not in processors[1:], pipeline_id


@pytest.mark.parametrize("name", CONFIGS)
def test_ml_events_are_routed_to_modeltel(name: str) -> None:
    """The routing condition matches both ml.* event names, on event_name or the legacy attribute."""
    config = _load(name)
    (route,) = config["connectors"]["routing"]["table"]
    assert route["context"] == "log"
    condition = route["condition"]
    assert "log.event_name" in condition and 'log.attributes["event.name"]' in condition
    patterns = set(re.findall(r'IsMatch\([^,]+,\s*"((?:[^"\\]|\\.)*)"\)', condition))
    assert len(patterns) == 1
    # The YAML value holds an OTTL string literal: unescape it as OTTL does, then use it as RE2 would.
    regex = re.compile(patterns.pop().encode().decode("unicode_escape"))
    for event in (semconv.PREDICTION_EVENT, semconv.LABEL_EVENT):
        assert regex.search(event), event
    for other in ("", "app.started", "mlx.prediction", "http.request"):
        assert not regex.search(other), other
    pipelines = config["service"]["pipelines"]
    (modeltel_pipeline,) = route["pipelines"]
    (exporter,) = pipelines[modeltel_pipeline]["exporters"]
    spec = config["exporters"][exporter]
    if exporter.startswith("load_balancing"):
        assert spec["routing_key"] == "attributes"
        assert spec["routing_attributes"] == [semconv.MODEL_NAME]
        assert spec["resolver"]["dns"]["hostname"] == "modeltel"
        assert "endpoint" not in spec["protocol"]["otlp"]
    else:
        assert exporter.startswith("otlp_grpc") and spec["endpoint"] == "modeltel:4317"
    queue = spec["sending_queue"]
    assert queue["enabled"] and queue["storage"] == "file_storage"


@pytest.mark.parametrize("name", CONFIGS)
def test_backends_are_services_of_the_stack(name: str) -> None:
    """Every host an exporter sends to is a docker-compose service (or alias)."""
    config = _load(name)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    hosts = set(compose["services"])
    for exporter_id, spec in config["exporters"].items():
        endpoint = spec.get("endpoint") or spec.get("resolver", {}).get("dns", {}).get("hostname")
        if endpoint is None:
            continue  # debug
        host = re.sub(r"^\w+://", "", endpoint).split(":")[0].split("/")[0]
        assert host in hosts, f"{exporter_id} sends to {host}, not a service of docker-compose.yml"
    remote_write = config["exporters"]["prometheus_remote_write"]
    assert remote_write["endpoint"] == "http://prometheus:9090/api/v1/write"
    assert remote_write["resource_to_telemetry_conversion"]["enabled"] is True
    readers = config["service"]["telemetry"]["metrics"]["readers"]
    assert readers[0]["pull"]["exporter"]["prometheus"] == {"host": "0.0.0.0", "port": 8888}


def test_image_version_is_the_documented_one() -> None:
    """Component names and routing_key support are version-specific: the image is the one documented."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    image = compose["services"]["otel-collector"]["image"]
    version = image.rsplit(":", 1)[1]
    for name in CONFIGS:
        assert f"contrib {version}" in (CONFIG / name).read_text().splitlines()[0], name
    assert version in Path(ROOT / "docs" / "stack.md").read_text()
