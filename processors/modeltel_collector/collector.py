"""The collector as a whole: receivers, pipeline, processors and metric exporters from one config."""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import CollectorRegistry, start_http_server
from pydantic import ValidationError

from modeltel import semconv
from modeltel_collector.alerting.embedded import EmbeddedAlerting
from modeltel_collector.alerting.evaluator import RegistrySource
from modeltel_collector.alerting.policy import AlertPolicies, PolicyError, load_policies
from modeltel_collector.config import CollectorConfig, ConfigError, OtlpReceiver
from modeltel_collector.pipeline import Pipeline
from modeltel_collector.processors.base import Processor, ProcessorContext, available_factories
from modeltel_collector.receivers import GrpcReceiver, http_receiver_app
from modeltel_collector.receivers.security import (
    BearerTokens,
    SecurityConfigError,
    TlsFiles,
    load_bearer_tokens,
)
from modeltel_collector.state import StateDb
from modeltel_collector.store import Store
from modeltel_collector.wal import WriteAheadLog

_logger = logging.getLogger(__name__)
WAL_DIR = "wal"
FORMER_STATE_FILES = ("checkpoint.json", "labels.sqlite")
"""State files of earlier versions, replaced by the write-ahead log and ``state.sqlite``."""
OTLP_HTTP_METRICS_PATH = "/v1/metrics"


def _host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host or "0.0.0.0", int(port)


def otlp_http_metrics_url(endpoint: str) -> str:
    """The OTLP/HTTP metrics URL for a configured endpoint: a base URL gets ``/v1/metrics``.

    As the OpenTelemetry Collector's ``otlphttp`` exporter, ``endpoint`` is the base URL
    of the receiver; one that already ends in ``/v1/metrics`` is used as it is.

    >>> otlp_http_metrics_url("http://otel-collector:4318")
    'http://otel-collector:4318/v1/metrics'
    >>> otlp_http_metrics_url("https://example.com/otlp/")
    'https://example.com/otlp/v1/metrics'
    >>> otlp_http_metrics_url("http://localhost:4318/v1/metrics")
    'http://localhost:4318/v1/metrics'
    """
    parts = urlsplit(endpoint)
    if parts.path.rstrip("/").endswith(OTLP_HTTP_METRICS_PATH):
        return endpoint
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + OTLP_HTTP_METRICS_PATH))


def _otlp_metric_reader(config: CollectorConfig) -> MetricReader | None:
    """A reader pushing the metrics to ``exporters.otlp`` every ``OTEL_METRIC_EXPORT_INTERVAL`` ms
    (60 s by default), or None when no OTLP exporter is configured."""
    otlp = config.exporters.otlp
    if otlp is None:
        return None
    exporter: MetricExporter
    if otlp.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as Grpc

        exporter = Grpc(endpoint=otlp.endpoint, headers=otlp.headers)
    else:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as Http

        exporter = Http(endpoint=otlp_http_metrics_url(otlp.endpoint), headers=otlp.headers)
    return PeriodicExportingMetricReader(exporter)


def _receiver_security(receiver: OtlpReceiver) -> tuple[BearerTokens | None, TlsFiles | None]:
    """The receivers' tokens (the token file read now) and TLS files, checked: a
    :class:`ConfigError` naming the key when a file is missing, unreadable or unusable."""
    try:
        tokens = None
        if receiver.auth is not None:
            tokens = load_bearer_tokens(
                (token.get_secret_value() for token in receiver.auth.bearer_tokens),
                receiver.auth.bearer_token_file,
            )
        tls = None
        if receiver.tls is not None:
            tls = TlsFiles(receiver.tls.cert_file, receiver.tls.key_file, receiver.tls.client_ca_file)
            tls.read()
    except SecurityConfigError as error:
        raise ConfigError(f"invalid collector configuration: {error}") from None
    return tokens, tls


class Collector:
    """Builds and runs everything the configuration names; ``start`` then ``stop``."""

    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        policies: AlertPolicies | None = None
        if config.alerting is not None:  # refused before anything starts
            try:
                policies = load_policies(config.alerting.policies)
            except PolicyError as error:
                raise ConfigError(f"alerting.policies: {error}") from None
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._registry = CollectorRegistry()
        readers: list[MetricReader] = []
        if config.exporters.prometheus is not None:
            readers.append(PrometheusMetricReader(registry=self._registry))
        if (otlp := _otlp_metric_reader(config)) is not None:
            readers.append(otlp)
        alerting_source: RegistrySource | None = None
        if config.alerting is not None:  # its own reader: the metrics as Prometheus would see them
            alerting_source = RegistrySource()
            readers.append(alerting_source.reader)
        self.meter_provider = MeterProvider(
            resource=Resource.create({"service.name": "modeltel-collector"}), metric_readers=readers
        )
        meter = self.meter_provider.get_meter(semconv.SCOPE_NAME)
        self.store = Store(config.data_dir)
        for former in FORMER_STATE_FILES:
            if (config.data_dir / former).exists():
                _logger.warning("modeltel: %s is from an earlier version and not read; delete it", former)
        state = StateDb(config.data_dir)
        context = ProcessorContext(
            meter=meter, data_dir=config.data_dir, models=config.models, store=self.store, state=state
        )
        durability = config.durability
        self.pipeline = Pipeline(  # restores the last checkpoint and replays the log after it
            self._processors(context),
            meter,
            wal=WriteAheadLog(config.data_dir / WAL_DIR, sync=durability.sync),
            state=state,
            max_queue_batches=config.receivers.otlp.max_queue_batches,
            checkpoint_seconds=durability.checkpoint_interval,
            dedupe_seconds=durability.dedupe_window,
            limits=config.limits,
        )
        self.alerting: EmbeddedAlerting | None = None
        if policies is not None and config.alerting is not None and alerting_source is not None:
            self.alerting = EmbeddedAlerting(
                policies, config.alerting, alerting_source, meter, state_dir=config.data_dir
            )
        self._grpc: GrpcReceiver | None = None
        self._http: uvicorn.Server | None = None
        self._threads: list[threading.Thread] = []
        self._prometheus: Any = None

    def _processors(self, context: ProcessorContext) -> dict[str, Processor]:
        """One processor per configured section, built by the installed factory of that name."""
        factories = available_factories()
        processors: dict[str, Processor] = {}
        for name, section in self.config.processors:
            if section is None:
                continue
            factory = factories.get(name)
            if factory is None:
                raise ConfigError(
                    f"processors.{name}: no such processor is installed "
                    f"(installed: {', '.join(sorted(factories)) or 'none'})"
                )
            if not isinstance(section, factory.config_type):  # a plugin's section: validate it now
                try:
                    section = factory.config_type.model_validate(section)
                except ValidationError as error:
                    problems = "; ".join(
                        f"processors.{name}.{'.'.join(map(str, e['loc']))}: {e['msg']}"
                        for e in error.errors()
                    )
                    raise ConfigError(f"invalid collector configuration: {problems}") from None
            processors[name] = factory.create(section, context)
        return processors

    def start(self) -> Collector:
        policies = self.alerting.policies if self.alerting is not None else None
        applied = {"alert_policies": policies.model_dump(mode="json")} if policies is not None else None
        config_hash = self.store.record_config(self.config, applied)
        _logger.info("modeltel: applying configuration %s", config_hash[:12])
        receiver = self.config.receivers.otlp
        protocols = receiver.protocols
        tokens, tls = _receiver_security(receiver)
        if protocols.grpc is not None:
            self._grpc = GrpcReceiver(self.pipeline, protocols.grpc.endpoint, tokens=tokens, tls=tls).start()
        if protocols.http is not None:
            host, port = _host_port(protocols.http.endpoint)
            server_config = uvicorn.Config(
                http_receiver_app(self.pipeline, tokens=tokens),
                host=host,
                port=port,
                log_level="warning",
                **(tls.uvicorn_options() if tls is not None else {}),
            )
            self._http = uvicorn.Server(server_config)
            self._threads.append(threading.Thread(target=self._http.run, name="otlp-http", daemon=True))
        if self.config.exporters.prometheus is not None:
            host, port = _host_port(self.config.exporters.prometheus.endpoint)
            self._prometheus, _ = start_http_server(port, host, registry=self._registry)
        for thread in self._threads:
            thread.start()
        if self.alerting is not None:
            self.alerting.start()
        return self

    @property
    def grpc_port(self) -> int | None:
        return self._grpc.port if self._grpc is not None else None

    def stop(self) -> None:
        """Stop receiving, apply what was accepted, checkpoint, stop exporting."""
        if self._grpc is not None:
            self._grpc.stop(grace=5.0)
        if self._http is not None:
            self._http.should_exit = True
        for thread in self._threads:
            thread.join(10)
        self.pipeline.shutdown()
        if self.alerting is not None:
            self.alerting.stop()
        if self._prometheus is not None:
            self._prometheus.shutdown()
        self.meter_provider.shutdown()
        self.store.close()
