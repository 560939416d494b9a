"""``modeltel demo``: the real command end to end."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

from tests.otlp_sink import free_port

SCRIPT = Path(sys.executable).with_name("modeltel")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "modeltel_collector.cli"]


def modeltel(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the command line; ``COLUMNS`` wide enough that rich never wraps a table row."""
    return subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, COLUMNS="200"),
    )


def cell(output: str, label: str) -> int:
    """The number in the table cell next to ``label``."""
    match = re.search(rf"{re.escape(label)}[\s│]+([\d,]+)", output)
    assert match, f"no {label!r} row in:\n{output}"
    return int(match.group(1).replace(",", ""))


def test_help_and_version() -> None:
    top = modeltel("--help")
    assert top.returncode == 0, top.stderr
    assert "demo" in top.stdout
    demo = modeltel("demo", "--help")
    assert demo.returncode == 0, demo.stderr
    assert "--drift-at" in demo.stdout
    version = modeltel("--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith("modeltel ")


def test_demo_runs_the_collector_and_shows_drift_and_accuracy() -> None:
    result = modeltel(
        "demo",
        "--duration", "20",
        "--rate", "30",
        "--drift-at", "6",
        "--drift-shift", "20",  # KS D = 0.5: p < 1e-6 for 3-s windows at 30/s (+10 years: ~0.02)
        "--concept-drift-at", "14",
        "--label-delay", "0.5",
        "--window", "3s",
        "--app-port", str(free_port()),
        "--otlp-port", str(free_port()),
        "--metrics-port", str(free_port()),
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    _, marker, summary = result.stdout.partition("modeltel demo summary")
    assert marker, result.stdout + result.stderr

    assert cell(summary, "requests sent") > 0
    assert cell(summary, "concept drift") > 0  # every phase was reached
    assert cell(summary, "RMSE") > 10_000  # under concept drift the model is far off
    assert re.search(r"years_experience.*│\s+yes\s+│", summary), summary
    for feature in ("education", "location", "role"):
        assert re.search(rf"{feature}.*│\s+no\s+│", summary), summary
    assert "Traceback" not in result.stderr


def test_demo_refuses_a_port_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        result = modeltel("demo", "--otlp-port", port, "--app-port", str(free_port()))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in result.stderr
    assert "--otlp-port" in result.stderr
