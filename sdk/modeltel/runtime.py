"""The process-wide telemetry modeltel emits through: providers, event sink, counters.

Created once, on the first ``instrument``, ``log_prediction`` or ``log_label`` call,
so a labelling job that never serves HTTP gets the same pipeline as the app.
"""

from __future__ import annotations

import threading
from importlib.metadata import PackageNotFoundError, version

from modeltel import semconv
from modeltel._otlp import LogsRequestFramer
from modeltel.events import (
    BatchEventProcessor,
    EventCounters,
    EventSink,
    LoggerEventSink,
    OTLPEventSink,
)
from modeltel.providers import Providers, resolve_providers, sdk_disabled, signal_exporter
from modeltel.stats import FeatureStatistics, StatisticsExporter

try:
    SDK_VERSION = version("modeltel")
except PackageNotFoundError:  # running from a source tree without an install
    SDK_VERSION = "0.0.0"


class Runtime:
    """Providers, the sink ``ml.*`` events go to, and the feature statistics' export."""

    def __init__(self, providers: Providers, protocol: str | None = None) -> None:
        self.providers = providers
        self.counters = EventCounters(providers.meter_provider)
        self.sink = self._make_sink(providers)
        self.statistics = FeatureStatistics()
        metric_exporter = None if sdk_disabled() else signal_exporter("metrics", protocol)
        self._statistics_export = (
            StatisticsExporter(self.statistics, metric_exporter, providers.resource, SDK_VERSION)
            if metric_exporter is not None
            else None
        )

    def _make_sink(self, providers: Providers) -> EventSink:
        if not providers.owns_logger_provider:
            logger = providers.logger_provider.get_logger(semconv.SCOPE_NAME, SDK_VERSION)
            return LoggerEventSink(logger, providers.logger_provider)
        from modeltel._transports import GrpcEventTransport, HttpEventTransport

        transport = GrpcEventTransport() if providers.logs_protocol == "grpc" else HttpEventTransport()
        framer = LogsRequestFramer(providers.resource, semconv.SCOPE_NAME, SDK_VERSION)
        return OTLPEventSink(BatchEventProcessor(transport, framer, self.counters))

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        """Export everything buffered: events, spans, metrics and logs."""
        flushed = self.sink.force_flush(timeout_millis)
        if self._statistics_export is not None:
            flushed = self._statistics_export.force_flush(timeout_millis) and flushed
        for provider in (
            self.providers.tracer_provider,
            self.providers.meter_provider,
            self.providers.logger_provider,
        ):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flushed = bool(flush(timeout_millis)) and flushed
        return flushed


_runtime: Runtime | None = None
_lock = threading.Lock()


def get_runtime(protocol: str | None = None) -> Runtime:
    """The process's runtime, created on first use (``protocol`` applies only then)."""
    global _runtime
    with _lock:
        if _runtime is None:
            _runtime = Runtime(resolve_providers(protocol), protocol)
        return _runtime
