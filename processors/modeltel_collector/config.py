"""The collector's configuration: one YAML file in the OpenTelemetry Collector's style.

``receivers``, ``processors`` and ``exporters`` each name components with a typed
config and defaults; ``models`` holds per-model settings. Every key is checked: an
unknown or misspelt key, or a value of the wrong kind, is refused with a sentence that
names the key, the value and what would be accepted.

>>> config = parse_config({"processors": {"drift": {"window": "10s"}}})
>>> config.processors.drift.window
10.0
>>> parse_config({"processors": {"drift": {"windw": "10s"}}})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
modeltel_collector.config.ConfigError: invalid collector configuration:
  processors.drift.windw: unknown key; known keys: window, warmup, min_samples, alpha, ...
"""

from __future__ import annotations

import math
import re
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, ValidationError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: Any) -> float:
    """``"30s"``, ``"5m"``, ``"1h"``, ``"7d"``, ``"250ms"`` or a number of seconds, as seconds.

    >>> parse_duration("5m"), parse_duration(90), parse_duration("250ms")
    (300.0, 90.0, 0.25)
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as 30s, 5m, 1h, 7d")
    shown = f"{str(value)[:40]}..." if len(str(value)) > 40 else repr(value)
    try:
        if isinstance(value, (int, float)):
            seconds = float(value)
        else:
            match = _DURATION.match(str(value))
            if match is None:
                raise ValueError(f"{shown} is not a duration; use e.g. 30s, 5m, 1h or 7d")
            seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{shown} is not a positive, finite duration")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class ConfigError(ValueError):
    """The configuration has problems; the message lists each one."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class GrpcProtocol(_Section):
    endpoint: str = "0.0.0.0:4317"


class HttpProtocol(_Section):
    endpoint: str = "0.0.0.0:4318"


class OtlpProtocols(_Section):
    grpc: GrpcProtocol | None = GrpcProtocol()
    http: HttpProtocol | None = HttpProtocol()


class ReceiverAuth(_Section):
    """Bearer-token authentication on both protocols (``/v1/labels`` included): requests without
    ``authorization: Bearer <token>`` for one of the tokens get ``UNAUTHENTICATED`` / 401."""

    bearer_tokens: tuple[SecretStr, ...] = ()
    """Accepted tokens (never logged, nor recorded with the configuration)."""
    bearer_token_file: Path | None = None
    """A file of accepted tokens, one per line (``#`` comments and blank lines ignored), read
    when the collector starts; added to ``bearer_tokens``."""


class ReceiverTls(_Section):
    """TLS on both protocols; with ``client_ca_file``, mutual TLS (client certificates required)."""

    cert_file: Path
    """The server's certificate (chain), PEM."""
    key_file: Path
    """Its private key, PEM."""
    client_ca_file: Path | None = None
    """CA certificate(s), PEM, that client certificates must chain to; clients without one are refused."""


class OtlpReceiver(_Section):
    protocols: OtlpProtocols = OtlpProtocols()
    max_queue_batches: int = Field(default=1024, gt=0)
    """Batches waiting for processing; past this, exports get UNAVAILABLE / 429 with a retry delay."""
    auth: ReceiverAuth | None = None
    """Off unless given."""
    tls: ReceiverTls | None = None
    """Plain text unless given."""


class Receivers(_Section):
    otlp: OtlpReceiver = OtlpReceiver()


class FeatureDrift(_Section):
    """Per-feature override of the drift decision."""

    method: Literal["default", "psi", "ks", "js", "wasserstein", "chi2"] = "default"
    threshold: float | None = None
    """For ``psi``/``js``/``wasserstein``: the value above which the feature drifts;
    for ``ks``/``chi2``: the p-value below which it drifts."""


class DriftProcessor(_Section):
    window: Duration = 300.0
    warmup: int = Field(default=1000, gt=0)
    """Predictions of a version that form its reference when the store holds no profile for it
    (profiles come from ``modeltel reference build --data-dir``)."""
    min_samples: int = Field(default=100, gt=0)
    """A window with fewer events is not reported (gauges keep the last reported window)."""
    alpha: float = Field(default=0.05, gt=0, lt=1)
    """Significance level before the Bonferroni correction across features."""
    max_categories: int = Field(default=1000, gt=0)
    """Distinct categories per categorical feature counted one by one, in a warm-up reference
    and in each window (categories unseen in the reference); the rest are pooled as
    ``__other__``, so memory stays bounded whatever a client sends."""
    features: dict[str, FeatureDrift] = {}


class PerformanceProcessor(_Section):
    window: Duration = 300.0
    label_ttl: Duration = 7 * 86400.0
    """How long predictions wait for their label, and labels for their prediction."""


class ServiceProcessor(_Section):
    forward_endpoint: str | None = None
    """OTLP endpoint to forward received traces and metrics to, if any."""


class AuditProcessor(_Section):
    flush_rows: int = Field(default=50_000, gt=0)
    """Rows buffered per (model, day) before a Parquet file is written."""
    flush_interval: Duration = 60.0
    """Buffered rows are written at least this often (and at every checkpoint)."""


class Processors(_Section):
    """The built-in processors, typed here; a plugin's section (any other key) is validated
    against its factory's config type when the collector starts."""

    model_config = ConfigDict(extra="allow", frozen=True)

    drift: DriftProcessor | None = DriftProcessor()
    performance: PerformanceProcessor | None = PerformanceProcessor()
    service: ServiceProcessor | None = ServiceProcessor()
    audit: AuditProcessor | None = AuditProcessor()


class PrometheusExporter(_Section):
    endpoint: str = "0.0.0.0:9464"


class OtlpExporter(_Section):
    """Push the metrics over OTLP (every ``OTEL_METRIC_EXPORT_INTERVAL`` ms, 60 s by default)."""

    endpoint: str
    """``grpc``: e.g. ``http://otel-collector:4317``; ``http/protobuf``: the base URL, e.g.
    ``http://otel-collector:4318`` (``/v1/metrics`` is appended unless already there)."""
    protocol: Literal["grpc", "http/protobuf"] = "grpc"
    headers: dict[str, str] = {}


class Exporters(_Section):
    prometheus: PrometheusExporter | None = PrometheusExporter()
    otlp: OtlpExporter | None = None


class Limits(_Section):
    """Cardinality guards, so one misbehaving client cannot exhaust the collector's memory.

    Models, versions and features are admitted as they first arrive (labels for a model
    admit it too) and remembered in the checkpoint; past a limit, the records of a refused
    model or version are rejected (partial success naming the limit) and features beyond a
    model's limit are dropped from the records, which are kept. Categories per feature are
    bounded by the drift processor's ``max_categories``.
    """

    max_models: int = Field(default=100, gt=0)
    """Distinct ``ml.model.name`` values."""
    max_versions_per_model: int = Field(default=50, gt=0)
    """Distinct ``ml.model.version`` values of one model."""
    max_features_per_model: int = Field(default=500, gt=0)
    """Distinct ``ml.feature.*`` names of one model (all its versions together)."""


class Durability(_Section):
    """The write-ahead log and checkpoints: an acknowledged request is never lost (docs/reliability.md)."""

    checkpoint_interval: Duration = 5.0
    """How often the processors' state is committed; after a crash, the requests acknowledged
    since are replayed from the write-ahead log."""
    dedupe_window: Duration = 3600.0
    """How long a request's digest is kept to recognise a retried export (not applied twice)."""
    sync: bool = True
    """``fdatasync`` the write-ahead log before acknowledging; without it an acknowledged
    request survives a crash of the collector but not of the machine."""


class Band(_Section):
    """An acceptance band: the metric must stay within [min, max]."""

    min: float | None = None
    max: float | None = None


class ModelSettings(_Section):
    task: Literal["regression", "classification"] | None = None
    window: Duration | None = None
    """Overrides the drift and performance window for this model."""
    features: dict[str, FeatureDrift] = {}
    acceptance: dict[str, Band] = {}
    """Acceptance bands per performance metric, e.g. ``rmse: {max: 7000}``."""


class AlertingRetry(_Section):
    """Retry of a notification that met a connection error, a 5xx or a 429 (``Retry-After`` honoured)."""

    initial_interval: Duration = 1.0
    """Wait after the first failure; doubled after each further one."""
    max_interval: Duration = 60.0
    max_elapsed_time: Duration = 600.0
    """Give up on a message this long after it was first tried."""


class Alerting(_Section):
    """Embedded alerting: the collector evaluates the alert policies on its own metrics and
    delivers the notifications itself (Slack, PagerDuty, the generic webhook)."""

    policies: Path
    """The alert policies (``collector-config/alerts.yaml``), also rendered for Prometheus."""
    interval: Duration | None = None
    """Evaluation interval; default the policies' ``evaluation_interval``."""
    cooldown: Duration | None = None
    """Wait before notifying a still-firing alert again; default the policies'
    ``notifications.repeat_interval``."""
    incidents_dir: Path | None = None
    """Write ``YYYY-MM-DD-{slug}.md`` here for each alert that starts firing."""
    receivers: tuple[Literal["slack", "pagerduty", "webhook"], ...] = ("slack", "pagerduty", "webhook")
    """Receiver kinds notified (routed by model, owner and severity as in ``alerts.yaml``)."""
    webhook_url: str | None = None
    """Overrides the policies' ``notifications.webhook_url``."""
    pagerduty_url: str | None = None
    """PagerDuty Events API v2 endpoint; default the policies' ``notifications.pagerduty_url`` if
    set, else PagerDuty's (https://events.pagerduty.com/v2/enqueue)."""
    timeout: Duration = 10.0
    """Timeout of one HTTP request to a receiver."""
    retry: AlertingRetry = AlertingRetry()


class CollectorConfig(_Section):
    receivers: Receivers = Receivers()
    processors: Processors = Processors()
    exporters: Exporters = Exporters()
    models: dict[str, ModelSettings] = {}
    limits: Limits = Limits()
    durability: Durability = Durability()
    alerting: Alerting | None = None
    """Off unless given."""
    data_dir: Path = Path("modeltel-data")


def _section_at(location: tuple[Any, ...]) -> type[BaseModel] | None:
    """The config class that the value at ``location`` is validated as, if any."""
    annotation: Any = CollectorConfig
    for part in location:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(str(part))
            if field is None:
                return None
            annotation = field.annotation
        elif getattr(annotation, "__origin__", None) is dict:
            annotation = annotation.__args__[1]
        else:
            return None
        # ``Section | None``: the section.
        options = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
        if getattr(annotation, "__origin__", None) is not dict and len(options) == 1:
            annotation = options[0]
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


MAX_PROBLEMS_SHOWN = 20
"""Validation problems listed in a :class:`ConfigError`; the others are counted."""
_INPUT = reprlib.Repr()
_INPUT.maxlevel, _INPUT.maxstring, _INPUT.maxother = 2, 80, 80
_INPUT.maxdict = _INPUT.maxlist = _INPUT.maxtuple = _INPUT.maxset = 4


def _shown(value: Any) -> str:
    """``value`` as written in an error: bounded, whatever its size or nesting."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"an integer of {len(str(value)) if value.bit_length() < 13_000 else 'over 4000'} digits"
    return _INPUT.repr(value)


def shown_key(part: Any) -> str:
    """A key as written in an error: as it is if printable and short, else quoted and cut."""
    text = str(part)
    return text if text.isprintable() and len(text) <= 80 else _INPUT.repr(text)


def _describe(error: Any) -> str:
    location = ".".join(shown_key(part) for part in error["loc"]) or "the configuration"
    if error["type"] == "extra_forbidden":
        section = _section_at(tuple(error["loc"][:-1]))
        keys = ", ".join(section.model_fields) if section else "none"
        return f"{location}: unknown key; known keys: {keys}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if "bearer_tokens" in error["loc"]:  # a secret, even when mistyped
        return f"{location}: {message}"
    return f"{location}: {message} (got {_shown(error['input'])})"


def parse_config(data: Any) -> CollectorConfig:
    """Validate a parsed YAML document; ``None`` (an empty file) gives the defaults."""
    try:
        return CollectorConfig.model_validate({} if data is None else data)
    except ValidationError as error:
        errors = error.errors()
        problems = [f"  {_describe(e)}" for e in errors[:MAX_PROBLEMS_SHOWN]]
        if len(errors) > MAX_PROBLEMS_SHOWN:
            problems.append(f"  and {len(errors) - MAX_PROBLEMS_SHOWN} more problems")
        raise ConfigError("invalid collector configuration:\n" + "\n".join(problems)) from None


def read_yaml(path: Path, error: type[Exception]) -> Any:
    """The YAML document in ``path``; ``error`` naming the file if it cannot be read or parsed."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as cause:
        raise error(f"cannot read {path}: {cause.strerror}") from None
    except UnicodeDecodeError as cause:
        raise error(f"{path} is not UTF-8 text (byte {cause.start})") from None
    except yaml.YAMLError as cause:
        raise error(f"{path} is not valid YAML: {cause}") from None
    except RecursionError:
        raise error(f"{path} is nested too deeply to be a configuration") from None
    except ValueError as cause:  # a value YAML cannot convert: a date out of range, a huge integer
        raise error(f"{path} holds a value that cannot be read: {cause}") from None


def load_config(path: Path | None) -> CollectorConfig:
    """The configuration in ``path``, or the defaults when ``path`` is None."""
    if path is None:
        return CollectorConfig()
    data = read_yaml(path, ConfigError)
    try:
        return parse_config(data)
    except ConfigError as error:
        raise ConfigError(str(error).replace("configuration:", f"configuration in {path}:", 1)) from None
