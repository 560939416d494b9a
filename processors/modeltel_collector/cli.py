"""The ``modeltel`` command line."""

from __future__ import annotations

try:
    import httpx
    import typer
    from rich.console import Console, Group
    from rich.live import Live
    from rich.table import Table
    from rich.text import Text

    from modeltel_collector.collector import Collector
    from modeltel_collector.commands.alerts import app as alerts_app
    from modeltel_collector.commands.labels import app as labels_app
    from modeltel_collector.commands.reference import app as reference_app
    from modeltel_collector.config import (
        CollectorConfig,
        ConfigError,
        load_config,
        parse_config,
        parse_duration,
    )
    from modeltel_collector.demo import (
        LoadSnapshot,
        LoadStats,
        LoadTally,
        QualitySnapshot,
        quality_snapshot,
    )
except ModuleNotFoundError as exc:
    raise SystemExit(
        "modeltel's command line needs the collector extra: pip install 'modeltel[collector]'"
    ) from exc

import contextlib
import importlib
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import IO, Annotated, NoReturn

app = typer.Typer(
    help="modeltel: ML model monitoring on OpenTelemetry.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(reference_app, name="reference")
app.add_typer(labels_app, name="labels")
app.add_typer(alerts_app, name="alerts")
err_console = Console(stderr=True)

LOCALHOST = "127.0.0.1"
APP_START_TIMEOUT_S = 60.0
APP_STOP_TIMEOUT_S = 15.0
REFRESH_S = 0.5


def main() -> None:
    """Entry point of the ``modeltel`` console script."""
    app()


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(1)


def _print_version(value: bool) -> None:
    if not value:
        return
    try:
        typer.echo(f"modeltel {version('modeltel')}")
    except PackageNotFoundError:
        typer.echo("modeltel (not installed: running from a source tree)")
    raise typer.Exit()


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """modeltel: ML model monitoring on OpenTelemetry."""


# --- collect -----------------------------------------------------------------------


def _with_overrides(config: CollectorConfig, data_dir: Path | None, window: float | None) -> CollectorConfig:
    """The configuration with the command line's ``--data-dir`` and ``--window`` applied."""
    processors = config.processors
    if window is not None:
        updates = {
            name: section.model_copy(update={"window": window})
            for name, section in processors
            if section is not None and "window" in type(section).model_fields
        }
        processors = processors.model_copy(update=updates)
    return config.model_copy(
        update={"processors": processors, "data_dir": data_dir if data_dir is not None else config.data_dir}
    )


@app.command()
def collect(
    config_file: Annotated[
        Path | None,
        typer.Option("--config", metavar="FILE", help="Collector configuration (YAML); defaults if omitted."),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Where state lives (default ./modeltel-data).")
    ] = None,
    window: Annotated[
        str | None,
        typer.Option(
            metavar="DURATION", help="Drift and performance window, e.g. 10s or 5m (overrides the file)."
        ),
    ] = None,
) -> None:
    """Run the collector: OTLP in (gRPC :4317, HTTP :4318), model metrics out (Prometheus :9464)."""
    try:
        config = _with_overrides(
            load_config(config_file), data_dir, parse_duration(window) if window is not None else None
        )
        collector = Collector(config)
    except (ConfigError, ValueError) as error:
        _fail(str(error))
    stop = threading.Event()
    with _stop_on_sigterm(stop):
        try:
            collector.start()
        except OSError as error:
            collector.pipeline.shutdown()
            _fail(f"cannot listen: {error}")
        _print_endpoints(config)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    err_console.print("modeltel collect: stopping (processing what was accepted, saving state)")
    collector.stop()


def _print_endpoints(config: CollectorConfig) -> None:
    protocols = config.receivers.otlp.protocols
    lines = [f"modeltel collect: processors {', '.join(n for n, s in config.processors if s is not None)}"]
    if protocols.grpc is not None:
        lines.append(f"  OTLP/gRPC  {protocols.grpc.endpoint}")
    if protocols.http is not None:
        lines.append(f"  OTLP/HTTP  {protocols.http.endpoint}")
    if config.exporters.prometheus is not None:
        lines.append(f"  metrics    http://{config.exporters.prometheus.endpoint}/metrics")
    lines.append(f"  state      {config.data_dir}")
    err_console.print("\n".join(lines), highlight=False)


# --- demo --------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    """The ``demo`` command's options."""

    duration: float
    rate: float
    drift_at: float
    concept_drift_at: float
    drift_shift: float
    label_delay: float
    window: float
    app_port: int
    otlp_port: int
    metrics_port: int
    data_dir: Path | None
    seed: int

    @property
    def app_url(self) -> str:
        return f"http://{LOCALHOST}:{self.app_port}"

    @property
    def otlp_endpoint(self) -> str:
        return f"http://{LOCALHOST}:{self.otlp_port}"


@app.command()
def demo(
    duration: Annotated[
        float, typer.Option(min=0, metavar="SECONDS", help="How long to run; 0 runs until Ctrl-C.")
    ] = 60.0,
    rate: Annotated[float, typer.Option(min=0.1, metavar="N", help="Requests per second.")] = 20.0,
    drift_at: Annotated[float, typer.Option(min=0, metavar="SECONDS", help="When data drift starts.")] = 20.0,
    concept_drift_at: Annotated[
        float, typer.Option(min=0, metavar="SECONDS", help="When concept drift starts.")
    ] = 40.0,
    drift_shift: Annotated[
        float, typer.Option(metavar="YEARS", help="Years of experience data drift adds.")
    ] = 10.0,
    label_delay: Annotated[
        float, typer.Option(min=0, metavar="SECONDS", help="Delay from prediction to its label.")
    ] = 2.0,
    window: Annotated[
        str, typer.Option(metavar="DURATION", help="Drift and performance window of the collector.")
    ] = "10s",
    app_port: Annotated[int, typer.Option(min=1, max=65535, metavar="PORT", help="Example app port.")] = 8000,
    otlp_port: Annotated[
        int, typer.Option(min=1, max=65535, metavar="PORT", help="The collector's OTLP/gRPC port.")
    ] = 4317,
    metrics_port: Annotated[
        int, typer.Option(min=1, max=65535, metavar="PORT", help="The collector's Prometheus port.")
    ] = 9464,
    data_dir: Annotated[
        Path | None, typer.Option(metavar="DIR", help="Keep the collector's state here (default: temporary).")
    ] = None,
    seed: Annotated[int, typer.Option(metavar="INT", help="Seed of the synthetic traffic.")] = 0,
) -> None:
    """Run the collector, the instrumented example app and a load generator with drift; watch the result."""
    try:
        window_s = parse_duration(window)
    except ValueError as error:
        _fail(f"--window: {error}")
    options = DemoOptions(
        duration, rate, drift_at, concept_drift_at, drift_shift, label_delay, window_s,
        app_port, otlp_port, metrics_port, data_dir, seed,
    )  # fmt: skip
    root = _source_root()
    _ensure_free(otlp_port, "--otlp-port")
    _ensure_free(metrics_port, "--metrics-port")
    _ensure_free(app_port, "--app-port")
    # The labels this process sends must reach the demo receiver: configure OTLP before
    # anything creates modeltel's providers (on the first log_label).
    _configure_this_process(root, options)
    import modeltel

    # From the source checkout, at run time (it is no part of the installed package).
    loadgen = importlib.import_module("examples.salary.loadgen")
    console = Console()
    console.print(f"modeltel demo: starting the collector and the example app on {options.app_url} ...")
    with _embedded_collector(options) as collector, _example_app(root, options) as example:
        load = _run_load(loadgen.run, options, collector, example, console)
        modeltel.force_flush(10_000)
        collector.pipeline.drain()
        final = quality_snapshot(collector)
    console.print(_view("summary", options, load, final))


def _source_root() -> Path:
    """The source checkout this package runs from (the demo needs its ``examples/``)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / "examples" / "salary" / "app.py").is_file():
        _fail(
            "modeltel demo runs from a source checkout: examples/salary/app.py is not in "
            f"{root}. Clone the repository and run `pip install -e '.[collector]'` in it."
        )
    return root


def _ensure_free(port: int, option: str) -> None:
    """Fail clearly, before starting anything, when something already listens on ``port``."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # ignore TIME_WAIT leftovers
        try:
            sock.bind((LOCALHOST, port))
        except OSError as error:
            _fail(f"cannot listen on {LOCALHOST}:{port} ({error.strerror}); pick another {option}")


def _telemetry_env(options: DemoOptions, service: str) -> dict[str, str]:
    """``OTEL_*`` settings exporting to the demo receiver with short batching delays."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": options.otlp_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_SERVICE_NAME": service,
        "OTEL_METRIC_EXPORT_INTERVAL": "2000",
        "OTEL_BLRP_SCHEDULE_DELAY": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "500",
    }


def _without_otel(environ: dict[str, str]) -> dict[str, str]:
    """``environ`` minus inherited ``OTEL_*`` settings, which could send telemetry elsewhere."""
    return {key: value for key, value in environ.items() if not key.startswith("OTEL_")}


def _configure_this_process(root: Path, options: DemoOptions) -> None:
    """Point this process's telemetry (the load generator's labels) at the demo receiver."""
    for key in [key for key in os.environ if key.startswith("OTEL_")]:
        del os.environ[key]
    os.environ.update(_telemetry_env(options, "salary-labeller"))
    # Only the labels matter here; this process's own spans and metrics would be exported
    # once more at exit, after the receiver has stopped.
    os.environ.update(OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))


@contextmanager
def _embedded_collector(options: DemoOptions) -> Iterator[Collector]:
    """The collector in this process: OTLP/gRPC in, Prometheus out, state in a temporary folder."""
    warmup = max(50, int(options.rate * min(options.drift_at, options.concept_drift_at) * 0.5))
    # A window cut short (by the end of the demo) is not reported: its tests would be weak.
    min_samples = max(30, int(options.rate * options.window * 0.6))
    settings = {
        "receivers": {
            "otlp": {"protocols": {"grpc": {"endpoint": f"{LOCALHOST}:{options.otlp_port}"}, "http": None}}
        },
        "processors": {
            "drift": {"window": options.window, "warmup": warmup, "min_samples": min_samples},
            "performance": {"window": options.window},
        },
        "exporters": {"prometheus": {"endpoint": f"{LOCALHOST}:{options.metrics_port}"}},
        "models": {"salary": {"task": "regression", "acceptance": {"rmse": {"max": 7000}}}},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="modeltel-demo-") as temporary:
        settings["data_dir"] = str(options.data_dir or temporary)
        collector = Collector(parse_config(settings))
        try:
            collector.start()
        except OSError as error:
            collector.pipeline.shutdown()
            _fail(f"the collector cannot listen: {error}")
        try:
            yield collector
        finally:
            collector.stop()


class ExampleApp:
    """The example app's uvicorn process and the file its output goes to."""

    def __init__(self, process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
        self.process = process
        self.log = log

    def alive(self) -> bool:
        return self.process.poll() is None

    def fail(self, what: str) -> NoReturn:
        """Fail with the app's last output lines."""
        self.log.flush()
        self.log.seek(0)
        tail = b"".join(self.log.readlines()[-20:]).decode(errors="replace").rstrip()
        _fail(f"{what}\n{tail}" if tail else what)

    def wait_until_serving(self, url: str, timeout: float = APP_START_TIMEOUT_S) -> None:
        """Poll ``GET /health`` until it answers 200; fail if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    self.fail(f"the example app exited with code {self.process.returncode}:")
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        self.fail(f"the example app did not answer GET {url}/health within {timeout:.0f} s:")

    def stop(self) -> None:
        """SIGTERM (the app flushes its telemetry as it exits), then SIGKILL if it hangs."""
        if self.alive():
            self.process.terminate()
        try:
            self.process.wait(APP_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@contextmanager
def _example_app(root: Path, options: DemoOptions) -> Iterator[ExampleApp]:
    """``uvicorn examples.salary.app:app`` exporting to the demo receiver, stopped on exit."""
    env = _without_otel(dict(os.environ)) | _telemetry_env(options, "salary-api")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))
    command = [
        sys.executable, "-m", "uvicorn", "examples.salary.app:app",
        "--host", LOCALHOST, "--port", str(options.app_port), "--log-level", "warning",
    ]  # fmt: skip
    with tempfile.TemporaryFile() as log:
        # Its own session: Ctrl-C reaches only this process, which stops the load first.
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        example = ExampleApp(process, log)
        try:
            example.wait_until_serving(options.app_url)
            yield example
        finally:
            example.stop()


@contextmanager
def _stop_on_sigterm(stop: threading.Event) -> Iterator[None]:
    """While inside, SIGTERM ends the run as Ctrl-C does (the app and receiver still stop)."""

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_load(
    run: Callable[..., LoadStats],
    options: DemoOptions,
    collector: Collector,
    example: ExampleApp,
    console: Console,
) -> LoadSnapshot:
    """Run the load generator in a thread under a live view until it ends or Ctrl-C; its totals."""
    stop = threading.Event()
    done = threading.Event()  # not Thread.join: Ctrl-C during a join can break the thread's state
    outcome: list[LoadStats] = []
    tally = LoadTally()

    def work() -> None:
        try:
            outcome.append(
                run(
                    options.app_url,
                    rate=options.rate,
                    duration=options.duration or math.inf,
                    drift_at=options.drift_at,
                    concept_drift_at=options.concept_drift_at,
                    drift_shift=options.drift_shift,
                    label_delay=options.label_delay,
                    seed=options.seed,
                    stop=stop,
                    on_result=tally.record,
                )
            )
        finally:
            done.set()

    def view() -> Group:
        return _view("live", options, tally.snapshot(), quality_snapshot(collector))

    threading.Thread(target=work, name="modeltel-demo-load", daemon=True).start()
    with _stop_on_sigterm(stop), Live(view(), console=console, auto_refresh=False, transient=True) as live:
        try:
            while not done.wait(REFRESH_S) and example.alive():
                live.update(view(), refresh=True)
        except KeyboardInterrupt:
            console.print("stopping: sending the pending labels ...")
        stop.set()
        done.wait()
    if not example.alive():
        example.fail(f"the example app exited with code {example.process.returncode}:")
    if not outcome:
        _fail("the load generator failed (see the traceback above)")
    return LoadSnapshot.from_stats(outcome[0], tally.snapshot().phase)


# --- rendering ---------------------------------------------------------------------


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1e3:.1f} ms"


def _number(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def _pairs(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for name, value in rows:
        table.add_row(name, value)
    return table


def _load_table(load: LoadSnapshot) -> Table:
    phases = [(f"  {phase.replace('_', ' ')}", f"{n:,}") for phase, n in load.phases.items()]
    return _pairs(
        "load",
        [
            ("requests sent", f"{load.sent:,}"),
            *phases,
            ("ok / errors", f"{load.ok:,} / {load.errors:,}"),
            ("request rate", f"{load.rate:.1f}/s"),
            ("latency p50", _ms(load.p50)),
            ("latency p95", _ms(load.p95)),
        ],
    )


def _quality_table(quality: QualitySnapshot | None) -> Table:
    if quality is None:
        return _pairs("model quality", [("reference", "warming up ...")])
    metrics = quality.performance
    return _pairs(
        f"model quality (version {quality.version})",
        [
            ("RMSE", _number(metrics.get("rmse", math.nan), 0)),
            ("MAE", _number(metrics.get("mae", math.nan), 0)),
            ("R2", _number(metrics.get("r2", math.nan), 3)),
            ("features drifting", f"{sum(f.drifted for f in quality.features)} / {len(quality.features)}"),
        ],
    )


def _features_table(quality: QualitySnapshot | None) -> Table:
    table = Table(title="drift per feature (latest closed window)", title_justify="left")
    table.add_column("feature", style="bold")
    for heading in ("PSI", "KS p-value", "effect", "drift"):
        table.add_column(heading, justify="right")
    for row in quality.features if quality is not None else []:
        flag = "[bold red]yes[/]" if row.drifted else "no"
        pvalue = "-" if math.isnan(row.ks_pvalue) else f"{row.ks_pvalue:.1e}"
        table.add_row(row.name, _number(row.psi, 3), pvalue, _number(row.effect, 3), flag)
    return table


def _header(title: str, options: DemoOptions, load: LoadSnapshot) -> Text:
    total = _clock(options.duration) if options.duration else "until Ctrl-C"
    return Text.assemble(
        (f"modeltel demo {title}", "bold"),
        f"  {_clock(load.elapsed_s)} / {total}  phase: ",
        (load.phase.replace("_", " "), "bold green" if load.phase == "baseline" else "bold magenta"),
        (
            f"\ndata drift at {options.drift_at:g} s ({options.drift_shift:+g} years of experience),"
            f" concept drift at {options.concept_drift_at:g} s",
            "dim",
        ),
    )


def _view(title: str, options: DemoOptions, load: LoadSnapshot, quality: QualitySnapshot | None) -> Group:
    """The demo's screen: load, model quality, drift per feature, and where the metrics are."""
    side_by_side = Table.grid(padding=(0, 2))
    side_by_side.add_row(_load_table(load), _quality_table(quality))
    note = Text(
        f"metrics: http://{LOCALHOST}:{options.metrics_port}/metrics (ml_drift_*, ml_performance_*); "
        f"OTLP in at {LOCALHOST}:{options.otlp_port}; windows of {options.window:g} s",
        style="dim",
    )
    return Group(_header(title, options, load), side_by_side, _features_table(quality), note)


if __name__ == "__main__":
    main()
