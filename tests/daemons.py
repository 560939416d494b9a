"""Real daemons for the tests: Debian's Prometheus and Alertmanager, and ``modeltel collect``.

- :class:`Daemon`: a child process leading its own process group, its output in a log file,
  stopped with SIGTERM to the whole group (SIGKILL after a grace period).
- :func:`start_prometheus`: ``prometheus`` scraping targets and evaluating rule files every
  second, optionally alerting to an Alertmanager; its configuration checked by ``promtool`` first.
- :func:`start_alertmanager`: ``prometheus-alertmanager`` (clustering off), its configuration
  checked by ``amtool`` first.
- :func:`start_collector`: ``modeltel collect`` with a YAML configuration.
- :func:`require` and :func:`check_tool`: the Debian binaries, failing (never skipping) with the
  apt package to install when one is missing.

Each daemon listens on free loopback ports, keeps its files in the given work directory and is
returned once it answers; it is up to the caller to stop it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import yaml

from tests.conftest import ROOT
from tests.otlp_sink import free_port, wait_until

Tool = Literal["prometheus", "promtool", "prometheus-alertmanager", "amtool"]
_APT_PACKAGE: dict[Tool, str] = {
    "prometheus": "prometheus",
    "promtool": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
    "amtool": "prometheus-alertmanager",
}


def _path(tool: Tool) -> str:
    return shutil.which(tool) or f"/usr/bin/{tool}"


def require(*tools: Tool) -> None:
    """Fail (never skip) when a Debian binary the test needs is missing, naming its apt package."""
    missing = [tool for tool in tools if not Path(_path(tool)).exists()]
    if missing:
        packages = " ".join(dict.fromkeys(_APT_PACKAGE[tool] for tool in missing))
        raise AssertionError(
            f"not installed: {', '.join(missing)} (apt-get install {packages}; .ci/run does it)"
        )


def check_tool(tool: Tool, *args: str) -> str:
    """Run promtool or amtool; fail with its whole output unless it exits 0. Returns its stdout."""
    require(tool)
    result = subprocess.run([_path(tool), *args], capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{tool} {' '.join(args)} failed:\n{result.stdout}{result.stderr}")
    return result.stdout


class Daemon:
    """A child process leading its own process group, its stdout and stderr in ``log``."""

    def __init__(
        self,
        name: str,
        command: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            list(command),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.process.poll() is None

    def assert_running(self) -> None:
        if not self.running():
            raise AssertionError(f"{self.name} exited with {self.process.returncode}:\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, grace: float = 20.0) -> int:
        """SIGTERM to the process group, SIGKILL after ``grace`` seconds; the exit code."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()
        return self.process.returncode


def wait_for(condition: Callable[[], Any], timeout: float, what: str, daemons: Sequence[Daemon] = ()) -> Any:
    """:func:`wait_until`, failing at once if one of ``daemons`` exits, with their logs on timeout."""

    def check() -> Any:
        for daemon in daemons:
            daemon.assert_running()
        return condition()

    try:
        return wait_until(check, timeout, what)
    except AssertionError as error:
        logs = "".join(f"\n--- {d.name} log (tail):\n{d.tail(25)}" for d in daemons)
        raise AssertionError(f"{error}{logs}") from None


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _serve(
    name: str, command: Sequence[str], workdir: Path, ready_url: str, cwd: Path | None = None
) -> Daemon:
    """``command`` as a daemon logging to ``workdir/<name>.log``, once ``ready_url`` answers 200."""
    daemon = Daemon(name, command, workdir / f"{name}.log", cwd=cwd)
    try:
        wait_for(lambda: _http_ok(ready_url), 30, f"{name} at {ready_url}", [daemon])
    except BaseException:
        daemon.stop()
        raise
    return daemon


# --- Prometheus ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Prometheus:
    daemon: Daemon
    url: str

    def query_response(self, promql: str) -> httpx.Response:
        """``/api/v1/query`` as it answers: 200 with a result, or 400 with ``errorType: bad_data``."""
        return httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The result vector of an instant query, which must succeed."""
        response = self.query_response(promql)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (promql, body)
        return list(body["data"]["result"])


def start_prometheus(
    workdir: Path,
    *,
    targets: Sequence[str] = (),
    rule_files: Sequence[Path] = (),
    alertmanager: str | None = None,
) -> Prometheus:
    """``prometheus`` scraping ``targets`` (job ``modeltel``) and evaluating ``rule_files`` every
    second, alerting to the ``alertmanager`` address if given; its TSDB in ``workdir``."""
    require("prometheus", "promtool")
    workdir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}}
    if rule_files:
        config["rule_files"] = [str(path) for path in rule_files]
    if targets:
        config["scrape_configs"] = [{"job_name": "modeltel", "static_configs": [{"targets": list(targets)}]}]
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    path = workdir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    check_tool("promtool", "check", "config", str(path))
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        _path("prometheus"),
        f"--config.file={path}",
        f"--storage.tsdb.path={workdir / 'tsdb'}",
        f"--web.listen-address={url.removeprefix('http://')}",
    ]
    return Prometheus(_serve("prometheus", command, workdir, f"{url}/-/ready"), url)


# --- Alertmanager -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Alertmanager:
    daemon: Daemon
    url: str

    @property
    def address(self) -> str:
        """``host:port``, as Prometheus's configuration names it."""
        return self.url.removeprefix("http://")

    def alerts(self, **filters: str) -> list[dict[str, Any]]:
        """``/api/v2/alerts`` (active, silenced and inhibited), with ``label="value"`` filters."""
        matchers = [f'{name}="{value}"' for name, value in filters.items()]
        response = httpx.get(f"{self.url}/api/v2/alerts", params={"filter": matchers}, timeout=10)
        response.raise_for_status()
        return list(response.json())


def start_alertmanager(workdir: Path, config: Path) -> Alertmanager:
    """``prometheus-alertmanager`` with ``config`` (checked by amtool first), no clustering."""
    require("prometheus-alertmanager", "amtool")
    check_tool("amtool", "check-config", str(config))
    workdir.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        _path("prometheus-alertmanager"),
        f"--config.file={config}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--cluster.listen-address=",
    ]
    return Alertmanager(_serve("alertmanager", command, workdir, f"{url}/-/ready"), url)


# --- modeltel collect ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Collector:
    daemon: Daemon
    otlp_grpc: str
    """The OTLP/gRPC endpoint (``http://127.0.0.1:<port>``), for ``OTEL_EXPORTER_OTLP_ENDPOINT``."""
    metrics: str
    """The Prometheus exporter's ``host:port``, a scrape target."""

    def scrape(self) -> str:
        """The ``/metrics`` exposition; empty while it does not answer."""
        try:
            return httpx.get(f"http://{self.metrics}/metrics", timeout=5).text
        except httpx.TransportError:
            return ""


def start_collector(
    workdir: Path,
    *,
    processors: Mapping[str, Any],
    window_s: int,
    models: Mapping[str, Any] | None = None,
) -> Collector:
    """``modeltel collect`` with ``processors`` (and ``models``), ``window_s``-second windows, OTLP
    gRPC and HTTP receivers and the Prometheus exporter; its configuration and data in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    grpc, http, metrics = (f"127.0.0.1:{free_port()}" for _ in range(3))
    config: dict[str, Any] = {
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": grpc}, "http": {"endpoint": http}}}},
        "processors": dict(processors),
        "exporters": {"prometheus": {"endpoint": metrics}},
    }
    if models is not None:
        config["models"] = dict(models)
    path = workdir / "modeltel.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [
        sys.executable, "-m", "modeltel_collector.cli", "collect", "--config", str(path),
        "--data-dir", str(workdir / "data"), "--window", f"{window_s}s",
    ]  # fmt: skip
    daemon = _serve("collector", command, workdir, f"http://{metrics}/metrics", cwd=ROOT)
    return Collector(daemon, f"http://{grpc}", metrics)
