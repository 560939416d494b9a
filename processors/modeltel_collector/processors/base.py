"""The processor plugin interface, in the OpenTelemetry Collector's style.

A processor is created by a :class:`ProcessorFactory` from its typed config and a
:class:`ProcessorContext`. It receives whole columnar batches, registers its metrics
as OpenTelemetry instruments on the context's meter (observable gauges read its
state at collection time), closes its windows on ``tick`` and can checkpoint and
restore its state, and keep rows in the state database (:mod:`~modeltel_collector.state`),
which is committed with each checkpoint, so a crash loses nothing that was acknowledged.
"""

from __future__ import annotations

import builtins
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol

from opentelemetry.metrics import Meter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import BaseModel

from modeltel_collector.batch import LabelBatch, PredictionBatch
from modeltel_collector.config import ModelSettings
from modeltel_collector.state import StateDb
from modeltel_collector.store import Store

ENTRY_POINT_GROUP = "modeltel.processors"


@dataclass(frozen=True)
class ProcessorContext:
    """What every processor gets: where to put metrics and state, and the per-model settings."""

    meter: Meter
    data_dir: Path
    models: Mapping[str, ModelSettings] = field(default_factory=dict)
    clock: Callable[[], int] = time.time_ns
    """Now, in Unix nanoseconds (tests pass a controllable clock)."""
    store: Store | None = None
    """Versioned state (reference profiles, window history, configuration versions); ``None`` when
    not kept."""
    state: StateDb | None = None
    """The checkpointed state database, for processors that keep rows (:mod:`modeltel_collector.state`)."""

    def state_connection(self, processor: str) -> sqlite3.Connection:
        """The state database's connection; a clear error when the context has none."""
        if self.state is None:
            raise ValueError(f"the {processor} processor keeps rows in the state database: pass a StateDb")
        return self.state.connection


class Processor(Protocol):
    """Consumes batches; every method is called from one pipeline thread, never concurrently."""

    def process_predictions(self, batch: PredictionBatch) -> None: ...

    def process_labels(self, batch: LabelBatch) -> None: ...

    def process_spans(self, request: ExportTraceServiceRequest) -> None: ...

    def tick(self, now_unix_nano: int) -> None:
        """Close the windows that ended before ``now_unix_nano``."""

    def checkpoint(self) -> dict[str, Any]:
        """A JSON-serialisable snapshot of the state, committed with what the processor wrote to
        the state database since the last one (rows still in memory must be written now)."""

    def restore(self, state: dict[str, Any]) -> None:
        """Back to a checkpoint (the state database is already back to it); the pipeline then
        replays the requests that came after it."""

    def shutdown(self) -> None:
        """Write out what is buffered; a last :meth:`checkpoint` follows."""


@dataclass(frozen=True)
class ProcessorFactory:
    """Builds one kind of processor from its config section."""

    type: str
    config_type: builtins.type[BaseModel]
    create: Callable[[Any, ProcessorContext], Processor]


def available_factories() -> dict[str, ProcessorFactory]:
    """The processor factories installed, by type name (built-ins and third-party plugins)."""
    factories = {}
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        factory = entry_point.load()
        if not isinstance(factory, ProcessorFactory):
            raise TypeError(f"entry point {entry_point.value} is not a ProcessorFactory")
        factories[factory.type] = factory
    return factories
