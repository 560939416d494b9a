"""The process-wide telemetry modeltel emits through: providers, event sink, counters.

Created once, on the first ``instrument``, ``log_prediction`` or ``log_label`` call,
so a labelling job that never serves HTTP gets the same pipeline as the app.
"""

from __future__ import annotations

import threading
import time
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
        """Export everything buffered (events, spans, metrics, logs) within ``timeout_millis`` in all.

        The SDK's batch processors ignore the timeout given to ``force_flush``: they export every
        queued batch, each retried up to its own export timeout, and with the collector down the
        exporters' warnings refill the log queue as it drains, so a flush (on shutdown: the ASGI
        lifespan) never ended. The flushes run in a daemon thread, left behind at the deadline.
        """
        deadline = time.monotonic() + timeout_millis / 1000
        outcome: list[bool] = []
        worker = threading.Thread(
            target=lambda: outcome.append(self._flush_all(deadline)), name="modeltel-flush", daemon=True
        )
        worker.start()
        worker.join(max(0.0, deadline - time.monotonic()))
        return bool(outcome and outcome[0])

    def _flush_all(self, deadline: float) -> bool:
        def remaining() -> int:
            return max(1, int((deadline - time.monotonic()) * 1000))

        flushed = self.sink.force_flush(remaining())
        if self._statistics_export is not None:
            flushed = self._statistics_export.force_flush(remaining()) and flushed
        for provider in (
            self.providers.tracer_provider,
            self.providers.meter_provider,
            self.providers.logger_provider,
        ):
            flush = getattr(provider, "force_flush", None)
            if flush is not None:
                flushed = bool(flush(remaining())) and flushed
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
