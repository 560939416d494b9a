"""docker-compose.yml and its scale-out override, validated by Debian's docker-compose 1.29.2.

``docker-compose config`` needs no Docker engine: it parses, interpolates (here with a ``.env``
built from ``.env.example``), merges the override and validates against the Compose
Specification. The merged configuration it prints is then checked for what the stack relies
on: pinned images, healthchecks behind every ``service_healthy`` condition, declared volumes,
bind-mounted files that exist, and the scale-out wiring.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.stack.stack_helpers import ROOT

DOCKER_COMPOSE = shutil.which("docker-compose") or "/usr/bin/docker-compose"
BASE = ["docker-compose.yml"]
SCALE = ["docker-compose.yml", "docker-compose.scale.yml"]
RENDERED_ELSEWHERE = {ROOT / "collector-config" / "alertmanager"}
"""Bind-mount sources that `modeltel alerts render` writes (not part of the stack files)."""


def _compose(tmp_path: Path, files: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    if not Path(DOCKER_COMPOSE).exists():
        pytest.fail("docker-compose is not installed (apt-get install docker-compose)")
    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / ".env.example").read_text())
    command = [DOCKER_COMPOSE, "--project-directory", str(ROOT), "--env-file", str(env_file)]
    for name in files:
        command += ["-f", str(ROOT / name)]
    return subprocess.run([*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def _volume(spec: str | dict[str, Any]) -> dict[str, Any]:
    """A service volume in the long syntax (docker-compose 1.29 prints the short one, v2 the long)."""
    if isinstance(spec, dict):
        return spec
    source, target, *_ = spec.split(":")
    kind = "bind" if source.startswith(("/", ".")) else "volume"
    return {"type": kind, "source": source, "target": target}


def _merged(tmp_path: Path, files: list[str]) -> dict[str, Any]:
    result = _compose(tmp_path, files, "config")
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = yaml.safe_load(result.stdout)
    for service in config["services"].values():
        service["volumes"] = [_volume(v) for v in service.get("volumes", [])]
    return config


@pytest.mark.parametrize("files", [BASE, SCALE], ids=["base", "scale"])
def test_docker_compose_config_is_valid(tmp_path: Path, files: list[str]) -> None:
    result = _compose(tmp_path, files, "config", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr  # no warning either (e.g. an unset variable)


def test_no_version_key_and_every_variable_documented() -> None:
    """Compose Specification (no ``version:``), and every ``${VAR}`` has a line in .env.example."""
    text = (ROOT / "docker-compose.yml").read_text() + (ROOT / "docker-compose.scale.yml").read_text()
    for name in ("docker-compose.yml", "docker-compose.scale.yml"):
        assert "version" not in yaml.safe_load((ROOT / name).read_text())
    import re

    used = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)", text))
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert used <= documented, f"undocumented in .env.example: {sorted(used - documented)}"


@pytest.mark.parametrize("files", [BASE, SCALE], ids=["base", "scale"])
def test_services_are_pinned_checked_and_wired(tmp_path: Path, files: list[str]) -> None:
    config = _merged(tmp_path, files)
    services: dict[str, Any] = config["services"]
    expected = {
        "otel-collector", "modeltel", "salary-api", "loadgen", "jaeger", "tempo",
        "prometheus", "alertmanager", "grafana", "init",
    }  # fmt: skip
    assert expected <= set(services)
    declared_volumes = set(config.get("volumes", {}))
    for name, service in services.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and "/" not in tag, f"{name}: unpinned image {image}"
        for condition_on, dependency in service.get("depends_on", {}).items():
            assert condition_on in services, f"{name} depends on unknown {condition_on}"
            condition = dependency["condition"]
            assert condition in {"service_started", "service_healthy", "service_completed_successfully"}
            if condition == "service_healthy":
                assert "healthcheck" in services[condition_on], f"{name} waits for {condition_on}'s health"
        for volume in service.get("volumes", []):
            if volume["type"] == "volume":
                assert volume["source"] in declared_volumes, f"{name}: undeclared volume {volume['source']}"
            elif volume["type"] == "bind":
                source = Path(volume["source"])
                if source not in RENDERED_ELSEWHERE:
                    assert source.exists(), f"{name}: missing bind source {source}"
    long_running = expected - {"init", "loadgen", "otel-collector"}
    for name in long_running:
        assert "healthcheck" in services[name], f"{name} has no healthcheck"

    prometheus = " ".join(services["prometheus"]["command"])
    for flag in ("--web.enable-remote-write-receiver", "--enable-feature=exemplar-storage"):
        assert flag in prometheus
    modeltel = services["modeltel"]
    assert modeltel["command"][:5] == [
        "collect",
        "--config",
        "/etc/modeltel/modeltel.yaml",
        "--data-dir",
        "/data",
    ]
    assert any(v["target"] == "/data" and v["type"] == "volume" for v in modeltel["volumes"])
    grafana_targets = {v["target"] for v in services["grafana"]["volumes"]}
    assert {"/etc/grafana/provisioning", "/var/lib/grafana/dashboards"} <= grafana_targets


def test_scale_out_variant(tmp_path: Path) -> None:
    """Replicas with their own state, all under the `modeltel` alias, and the load-balancing config."""
    services = _merged(tmp_path, SCALE)["services"]
    collector = services["otel-collector"]
    mounts = {v["target"]: v for v in collector["volumes"]}
    source = Path(mounts["/etc/otelcol-contrib/config.yaml"]["source"])
    assert source == ROOT / "collector-config" / "otelcol-loadbalancing.yaml"
    replicas = {
        name: service
        for name, service in services.items()
        if (service.get("command") or [None])[0] == "collect"
    }
    assert len(replicas) >= 3, sorted(replicas)
    data_volumes = set()
    for name, replica in replicas.items():
        aliases = (replica.get("networks") or {}).get("default", {}).get("aliases") or []
        assert name == "modeltel" or "modeltel" in aliases, f"{name} is not reachable as modeltel"
        (data,) = [v["source"] for v in replica["volumes"] if v["target"] == "/data"]
        data_volumes.add(data)
        assert collector["depends_on"][name]["condition"] == "service_healthy"
    assert len(data_volumes) == len(replicas), "each replica needs its own state volume"
    base = _merged(tmp_path, BASE)["services"]["otel-collector"]
    base_mounts = {v["target"]: v for v in base["volumes"]}
    assert Path(base_mounts["/etc/otelcol-contrib/config.yaml"]["source"]).name == "otelcol.yaml"


def test_dockerfile_installs_the_collector_and_runs_collect() -> None:
    text = (ROOT / "Dockerfile").read_text()
    (base,) = [line.split()[1] for line in text.splitlines() if line.startswith("FROM ")]
    assert base.startswith("python:") and "slim" in base and base.split(":")[1][0].isdigit()
    assert 'pip install --constraint constraints.txt ".[collector]"' in text
    assert '"collect", "--config", "/etc/modeltel/modeltel.yaml", "--data-dir", "/data"' in text
    assert "HEALTHCHECK" in text and "USER modeltel" in text
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if not line.startswith("#")]
    assert rules[0] == "*", "everything excluded unless listed (no .env, no state, no .git)"
    included = [rule[1:] for rule in rules if rule.startswith("!")]
    assert all(not rule.startswith((".env", ".git", "modeltel-data", ".venv")) for rule in included)
    copied = [
        source for line in text.splitlines() if line.startswith("COPY ") for source in line.split()[1:-1]
    ]
    assert copied and set(copied) <= set(included), "the Dockerfile copies only what .dockerignore lets in"
