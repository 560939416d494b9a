"""``modeltel collect`` end to end: SDK events in over OTLP, drift gauges out on /metrics, state kept."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from modeltel_collector.state import StateDb
from tests.conftest import ROOT, telemetry_env
from tests.otlp_sink import free_port, wait_until

WINDOW_S = 2


def _config(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    ports = {"grpc": free_port(), "http": free_port(), "prometheus": free_port()}
    config = {
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": f"127.0.0.1:{ports['grpc']}"},
            "http": {"endpoint": f"127.0.0.1:{ports['http']}"},
        }}},
        "processors": {"drift": {"warmup": 300, "min_samples": 50}},
        "exporters": {"prometheus": {"endpoint": f"127.0.0.1:{ports['prometheus']}"}},
    }  # fmt: skip
    path = tmp_path / "modeltel.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, ports


def _collect(config: Path, data_dir: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "modeltel_collector.cli", "collect", "--config", str(config),
               "--data-dir", str(data_dir), "--window", f"{WINDOW_S}s"]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT)


def _gauge(text: str, metric: str, feature: str) -> float | None:
    pattern = rf'^{metric}\{{[^}}]*ml_feature_name="{feature}"[^}}]*\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else None


def _metrics(port: int) -> str:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return ""


def test_drift_detected_for_the_shifted_feature_only_and_restored_after_restart(tmp_path):
    config, ports = _config(tmp_path)
    data_dir = tmp_path / "data"
    collector = _collect(config, data_dir)
    try:
        wait_until(lambda: "target_info" in _metrics(ports["prometheus"]), 30, "the collector's /metrics")
        sender = [sys.executable, "-m", "tests.collector.drift_sender", "300", str(2 * WINDOW_S),
                  str(3 * WINDOW_S), "100"]  # fmt: skip
        env = telemetry_env(f"http://127.0.0.1:{ports['grpc']}", OTEL_TRACES_EXPORTER="none")
        subprocess.run(sender, env=env, cwd=ROOT, check=True, timeout=120)

        def drifted() -> str | None:
            text = _metrics(ports["prometheus"])
            return text if _gauge(text, "ml_drift_detected", "x") == 1.0 else None

        text = wait_until(drifted, 30, "ml_drift_detected for x")
        assert _gauge(text, "ml_drift_detected", "y") == 0.0
        assert _gauge(text, "ml_drift_detected", "city") == 0.0
        assert _gauge(text, "ml_drift_psi", "x") > 0.2
        assert _gauge(text, "ml_drift_ks_pvalue", "x") < 1e-6
        assert _gauge(text, "ml_feature_mean", "x") > 11.5
        predictions = re.search(r'^ml_predictions_total\{[^}]*ml_model_name="m"[^}]*\} (\S+)$', text, re.M)
        assert predictions is not None and float(predictions.group(1)) >= 300 + 100 * 5 * WINDOW_S * 0.8
    finally:
        collector.send_signal(signal.SIGTERM)
        assert collector.wait(60) == 0
    state = StateDb(data_dir)
    try:
        assert state.load() is not None, "a clean stop commits a checkpoint"
    finally:
        state.close()

    restarted = _collect(config, data_dir)
    try:
        text = wait_until(
            lambda: (
                _gauge(_metrics(ports["prometheus"]), "ml_drift_detected", "x") is not None
                and _metrics(ports["prometheus"])
            ),
            30,
            "gauges after the restart",
        )
        assert _gauge(text, "ml_drift_detected", "x") == 1.0, "the last reported window survives a restart"
    finally:
        restarted.send_signal(signal.SIGTERM)
        assert restarted.wait(60) == 0


def test_bad_configuration_is_refused_with_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("processors: {drift: {windw: 5m}}")
    result = subprocess.run(
        [sys.executable, "-m", "modeltel_collector.cli", "collect", "--config", str(bad)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "processors.drift.windw: unknown key" in result.stderr
