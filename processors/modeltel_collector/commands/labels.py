"""``modeltel labels import FILE``: ground-truth labels from a CSV or Parquet file into a running collector.

The file is read in chunks (CSV with pyarrow's streaming reader, Parquet batch by batch),
so memory stays bounded whatever its size; each chunk is POSTed, gzipped, to the
collector's ``/v1/labels`` (see :mod:`modeltel_collector.receivers.labels_http`), which
validates every row, joins the labels to their predictions and counts each prediction id
once, so importing a file twice changes nothing. ``429``/``503`` answers are retried after
their ``Retry-After``.

Against a secured collector (bearer tokens, TLS, mutual TLS) the command reads the standard
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_EXPORTER_OTLP_CERTIFICATE``,
``OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE`` and ``OTEL_EXPORTER_OTLP_CLIENT_KEY`` variables, as
the OpenTelemetry exporters do; ``--header``, ``--token-file``, ``--ca-file``,
``--client-cert`` and ``--client-key`` win over them. Header values (tokens) are never printed.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn
from urllib.parse import unquote

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from modeltel_collector.labels import LABELS_PATH, MAX_LABELS_PER_REQUEST, records_from_columns

app = typer.Typer(
    help="Ground-truth labels: import them into a running collector.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err_console = Console(stderr=True)

CSV_BLOCK_BYTES = 1 << 20
"""Bytes of CSV parsed at a time (the memory the reader needs, besides one chunk)."""
MAX_ATTEMPTS = 30
"""Tries per chunk while the collector answers 429/503 or cannot be reached."""
MAX_RETRY_AFTER_S = 30.0
ERRORS_SHOWN = 10
"""Rejected rows listed in the summary."""

CSV_SUFFIXES = (".csv", ".csv.gz")
PARQUET_SUFFIXES = (".parquet", ".pq")


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


# --- reading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """The file columns holding each label's prediction id, value and model (None: ``--model``)."""

    prediction_id: str
    value: str
    model: str | None

    @property
    def names(self) -> list[str]:
        return [self.prediction_id, self.value, *([self.model] if self.model else [])]


def _check_columns(path: Path, present: list[str], columns: Columns) -> None:
    options = {columns.prediction_id: "--id-column", columns.value: "--value-column"}
    if columns.model is not None:
        options[columns.model] = "--model-column"
    for name in columns.names:
        if name not in present:
            hint = f"name the right one with {options[name]}"
            if name == columns.model:
                hint += ", or give every row's model with --model"
            _fail(f"{path} has no column {name!r} ({hint}); its columns: {', '.join(present) or 'none'}")


def _value_type(type_: pa.DataType) -> pa.DataType:
    """What to read a label column as: numbers as float64, bools as bools, anything else as text."""
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_):
        return pa.float64()
    if pa.types.is_null(type_):  # empty in the first block: numbers are likelier than classes
        return pa.float64()
    if pa.types.is_boolean(type_):
        return pa.bool_()
    return pa.string()


def _as(column: pa.Array | pa.ChunkedArray, type_: pa.DataType) -> pa.Array | pa.ChunkedArray:
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column if column.type == type_ else pc.cast(column, type_)


class LabelFile:
    """Chunks of (model, prediction id, value) columns read from a CSV or Parquet file."""

    def __init__(self, path: Path, columns: Columns) -> None:
        self.path = path
        self.columns = columns
        name = path.name.lower()
        self.is_parquet = name.endswith(PARQUET_SUFFIXES)
        if not self.is_parquet and not name.endswith(CSV_SUFFIXES):
            _fail(f"{path}: unknown file type; name it *.csv, *.csv.gz, *.parquet or *.pq")
        self.size = path.stat().st_size
        self._raw: pa.NativeFile | None = None
        try:
            if self.is_parquet:
                self._parquet = pq.ParquetFile(path)
                schema = self._parquet.schema_arrow
                self.total_rows: int | None = self._parquet.metadata.num_rows
            else:
                schema = self._open_csv(None).schema  # parses the first block only
                self.total_rows = None
        except (pa.ArrowException, OSError) as error:
            _fail(f"cannot read {path}: {error}")
        _check_columns(path, schema.names, columns)
        self._value_type = _value_type(schema.field(columns.value).type)

    def _open_csv(self, convert: pacsv.ConvertOptions | None) -> pacsv.CSVStreamingReader:
        if self._raw is not None:
            self._raw.close()
        self._raw = pa.OSFile(str(self.path))
        stream: pa.NativeFile = self._raw
        if self.path.name.lower().endswith(".gz"):
            stream = pa.CompressedInputStream(self._raw, "gzip")
        return pacsv.open_csv(
            stream, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES), convert_options=convert
        )

    @property
    def bytes_read(self) -> int:
        """How far into the file the reader is (CSV progress)."""
        return self._raw.tell() if self._raw is not None and not self._raw.closed else self.size

    def batches(self, rows: int) -> Iterator[pa.RecordBatch]:
        """Record batches of at most ``rows`` rows, columns in the order of ``Columns.names``."""
        names = self.columns.names
        if self.is_parquet:
            source: Iterator[pa.RecordBatch] = self._parquet.iter_batches(batch_size=rows, columns=names)
        else:
            text = {self.columns.prediction_id: pa.string()}
            if self.columns.model is not None:
                text[self.columns.model] = pa.string()
            convert = pacsv.ConvertOptions(
                include_columns=names, column_types={**text, self.columns.value: self._value_type}
            )
            source = iter(self._open_csv(convert))
        try:
            for batch in source:
                for start in range(0, batch.num_rows, rows):
                    yield batch.slice(start, rows)
        except pa.ArrowException as error:
            _fail(f"cannot read {self.path}: {error}")
        finally:
            if self._raw is not None:
                self._raw.close()

    def records(self, batch: pa.RecordBatch, model: str | None) -> list[dict[str, Any]]:
        """The label records of one batch, as ``POST /v1/labels`` takes them."""
        ids = _as(batch.column(0), pa.string()).to_pylist()
        values = _as(batch.column(1), self._value_type).to_pylist()
        models: list[Any] | str = (
            model if model is not None else _as(batch.column(2), pa.string()).to_pylist()
        )
        return records_from_columns(models, ids, values)


# --- authentication and TLS --------------------------------------------------------------

HEADERS_VARIABLE = "OTEL_EXPORTER_OTLP_HEADERS"
CA_VARIABLE = "OTEL_EXPORTER_OTLP_CERTIFICATE"
CLIENT_CERT_VARIABLE = "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"
CLIENT_KEY_VARIABLE = "OTEL_EXPORTER_OTLP_CLIENT_KEY"
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
TOKEN_HINT = (
    "give it with --token-file PATH, --header 'authorization=Bearer <token>' or "
    f"{HEADERS_VARIABLE}=authorization=Bearer%20<token>"
)


def _check_header(name: str, value: str, origin: str) -> tuple[str, str]:
    """``(name lowercased, value)``; a bad one fails naming ``origin`` and the name, never the value."""
    name = name.strip().lower()
    if not _HEADER_NAME.match(name):
        _fail(f"{origin}: {name!r} is not a valid HTTP header name")
    value = value.strip()
    if any((ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F for char in value):
        _fail(f"{origin}: the value of header {name!r} contains control characters")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        _fail(f"{origin}: the value of header {name!r} is not Latin-1 text")
    return name, value


def headers_from_env(text: str) -> dict[str, str]:
    """``OTEL_EXPORTER_OTLP_HEADERS``: comma-separated ``name=value``, values URL-decoded."""
    headers: dict[str, str] = {}
    for number, entry in enumerate(text.split(","), start=1):
        if not entry.strip():
            continue
        name, sep, value = entry.partition("=")
        if not sep or not name.strip():
            _fail(f"{HEADERS_VARIABLE}: entry {number} is not name=value")
        key, decoded = _check_header(unquote(name), unquote(value), HEADERS_VARIABLE)
        headers[key] = decoded
    return headers


def headers_from_options(options: list[str]) -> dict[str, str]:
    """``--header NAME=VALUE`` options, values taken as they are."""
    headers: dict[str, str] = {}
    for option in options:
        name, sep, value = option.partition("=")
        if not sep or not name.strip():
            _fail(f"--header {name.strip()!r}...: expected NAME=VALUE")
        key, value = _check_header(name, value, "--header")
        headers[key] = value
    return headers


def read_token(path: Path) -> str:
    """The first line of ``path``, stripped; never shown."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        _fail(f"--token-file: cannot read {path}: {error.strerror}")
    except UnicodeDecodeError:
        _fail(f"--token-file: {path} is not UTF-8 text")
    lines = text.splitlines()
    token = lines[0].strip() if lines else ""
    if not token:
        _fail(f"--token-file: the first line of {path} is empty; put the token there")
    _check_header("authorization", f"Bearer {token}", "--token-file")
    return token


@dataclass(frozen=True)
class Security:
    """What the command sends to authenticate, and how it checks the collector's certificate.

    ``repr`` shows header names only."""

    headers: dict[str, str] = field(default_factory=dict)
    ca_file: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    ca_origin: str = "--ca-file"
    cert_origin: str = "--client-cert"

    def __repr__(self) -> str:
        names = sorted(self.headers)
        return f"Security(headers={names}, ca_file={self.ca_file}, client_cert={self.client_cert})"

    @property
    def has_token(self) -> bool:
        return "authorization" in self.headers

    def verify(self, endpoint: str) -> ssl.SSLContext | bool:
        """httpx's ``verify``: the system's trust (certifi) unless a CA or a client certificate is given."""
        if not endpoint.lower().startswith("https://") or (self.ca_file is None and self.client_cert is None):
            return True
        if self.ca_file is not None:
            try:
                context = ssl.create_default_context(cafile=str(self.ca_file))
            except (ssl.SSLError, OSError) as error:
                _fail(f"{self.ca_origin}: {self.ca_file} is not a readable PEM CA certificate: {error}")
        else:
            context = httpx.create_ssl_context()
        if self.client_cert is not None:
            try:
                key = str(self.client_key) if self.client_key is not None else None
                context.load_cert_chain(str(self.client_cert), key)
            except (ssl.SSLError, OSError) as error:
                _fail(
                    f"{self.cert_origin}: {self.client_cert} and {self.client_key or 'its key'} are not a "
                    f"readable PEM certificate and private key: {error}"
                )
        return context


def resolve_security(
    endpoint: str,
    header_options: list[str],
    token_file: Path | None,
    ca_file: Path | None,
    client_cert: Path | None,
    client_key: Path | None,
    environ: dict[str, str] | None = None,
) -> Security:
    """The options, else the ``OTEL_EXPORTER_OTLP_*`` variables (headers merge, options win)."""
    env = os.environ if environ is None else environ
    headers = headers_from_env(env.get(HEADERS_VARIABLE, ""))
    explicit = headers_from_options(header_options)
    if token_file is not None:
        if "authorization" in explicit:
            _fail("give the token either with --token-file or with --header authorization=..., not both")
        explicit["authorization"] = f"Bearer {read_token(token_file)}"
    headers.update(explicit)
    https = endpoint.lower().startswith("https://")
    given = [name for name, value in (("--ca-file", ca_file), ("--client-cert", client_cert),
                                      ("--client-key", client_key)) if value is not None]  # fmt: skip
    if given and not https:
        _fail(f"{', '.join(given)} need an https:// --endpoint (it is {endpoint})")
    if client_key is not None and client_cert is None and not env.get(CLIENT_CERT_VARIABLE):
        _fail("--client-key needs --client-cert")
    ca_origin, cert_origin = "--ca-file", "--client-cert"
    if ca_file is None and env.get(CA_VARIABLE):
        ca_file, ca_origin = Path(env[CA_VARIABLE]), CA_VARIABLE
    if client_cert is None and env.get(CLIENT_CERT_VARIABLE):
        client_cert, cert_origin = Path(env[CLIENT_CERT_VARIABLE]), CLIENT_CERT_VARIABLE
        if client_key is None and env.get(CLIENT_KEY_VARIABLE):
            client_key = Path(env[CLIENT_KEY_VARIABLE])
    return Security(headers, ca_file, client_cert, client_key, ca_origin, cert_origin)


# --- sending ----------------------------------------------------------------------------


@dataclass
class Totals:
    rows: int = 0
    accepted: int = 0
    rejected: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    """(1-based row of the file, not counting a CSV header; reason), the first ones."""


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:  # an HTTP date: rare; wait a second
        return 1.0


def _status_message(response: httpx.Response) -> str:
    try:
        return str(response.json().get("message") or response.text)
    except ValueError:
        return response.text.strip() or response.reason_phrase


class Sender:
    """POSTs label records to the collector, retrying while it is busy."""

    def __init__(self, endpoint: str, security: Security | None = None) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.url = self.endpoint + LABELS_PATH
        self.security = security if security is not None else Security()
        self.client = httpx.Client(
            timeout=60.0, headers=self.security.headers, verify=self.security.verify(self.endpoint)
        )

    def unreachable(self, error: Exception) -> NoReturn:
        https = self.endpoint.lower().startswith("https://")
        closed = isinstance(error, (httpx.RemoteProtocolError, httpx.ReadError))
        if isinstance(error.__context__ or error.__cause__, ssl.SSLError) or "SSL" in str(error):
            hint = (
                "check the CA (--ca-file or OTEL_EXPORTER_OTLP_CERTIFICATE) and, for mutual TLS, "
                "the client certificate (--client-cert/--client-key or OTEL_EXPORTER_OTLP_CLIENT_*)"
            )
            _fail(f"the TLS handshake with {self.endpoint} failed: {error}; {hint}")
        if https and closed:  # TLS 1.3: a missing client certificate shows only as a closed connection
            _fail(
                f"the TLS handshake with {self.endpoint} failed: the collector closed the connection "
                f"({error}); under mutual TLS it needs a client certificate signed by its CA "
                "(--client-cert/--client-key or OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE/_KEY)"
            )
        if not https and closed:
            _fail(
                f"{self.endpoint} closed the connection ({error}): if the collector serves TLS, "
                "use an https:// --endpoint"
            )
        _fail(f"no collector answers at {self.endpoint}: start `modeltel collect` first ({error})")

    def redact(self, text: str) -> str:
        """``text`` with any header value sent (a token, a proxy echoing it) masked."""
        for value in self.security.headers.values():
            for secret in {value, value.partition(" ")[2]}:
                if len(secret) >= 4:
                    text = text.replace(secret, "***")
        return text

    def refused(self, response: httpx.Response) -> NoReturn:
        """401/403: the token is missing or not accepted (never shown)."""
        reason = f"{response.status_code} {self.redact(_status_message(response))}"
        if not self.security.has_token:
            _fail(f"the collector refused the token: none was sent ({reason}); {TOKEN_HINT}")
        _fail(
            f"the collector refused the token: {reason}; check the token given with --token-file, "
            f"--header authorization=... or {HEADERS_VARIABLE}"
        )

    def post(self, records: list[dict[str, Any]], *, retry_unreachable: bool = True) -> dict[str, Any]:
        body = gzip.compress(json.dumps(records, separators=(",", ":")).encode(), compresslevel=1)
        headers = {"content-type": "application/json", "content-encoding": "gzip"}
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = self.client.post(self.url, content=body, headers=headers)
            except httpx.TransportError as error:
                if not retry_unreachable or attempt == MAX_ATTEMPTS:
                    self.unreachable(error)
                time.sleep(min(0.2 * attempt, 2.0))  # the collector may be restarting
                continue
            if response.status_code in (429, 503) and attempt < MAX_ATTEMPTS:
                time.sleep(_retry_after(response))
                continue
            if response.status_code in (401, 403):
                self.refused(response)
            if response.status_code == 404:
                _fail(
                    f"{self.endpoint} does not take labels (POST {LABELS_PATH} answered 404): "
                    "point --endpoint at a modeltel collector's OTLP/HTTP port"
                )
            if response.status_code != 200:
                _fail(
                    f"the collector refused the labels ({response.status_code}): "
                    f"{self.redact(_status_message(response))}"
                )
            answer: dict[str, Any] = response.json()
            return answer
        raise AssertionError("unreachable")  # the loop returns or fails

    def close(self) -> None:
        self.client.close()


def _progress(label_file: LabelFile) -> Progress:
    unit = MofNCompleteColumn() if label_file.is_parquet else DownloadColumn()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        unit,
        TextColumn("{task.fields[accepted]:,} accepted, {task.fields[rejected]:,} rejected"),
        TimeRemainingColumn(),
        console=err_console,
    )


def _summary(path: Path, totals: Totals) -> None:
    console.print(
        f"{path}: {totals.rows:,} rows read, [green]{totals.accepted:,} accepted[/], "
        f"[red]{totals.rejected:,} rejected[/]",
        highlight=False,
        soft_wrap=True,
    )
    if totals.errors:
        table = Table(title=f"first {len(totals.errors)} rejected rows", title_justify="left")
        table.add_column("row", justify="right")
        table.add_column("error")
        for row, error in totals.errors:
            table.add_row(str(row), error)
        console.print(table)


IMPORT_HELP = (
    "Send ground-truth labels from a CSV or Parquet file to a running collector.\n\n"
    "The labels go through the collector (POST /v1/labels on its OTLP/HTTP port), which joins "
    "them to their predictions, so this command takes no --data-dir: start `modeltel collect` first. "
    "Each prediction id is joined once: importing a file again is harmless.\n\n"
    "Numbers are regression targets; strings and true/false are classes. Rejected rows are "
    "reported by their 1-based row number (a CSV header not counted).\n\n"
    "A secured collector: the token and certificates come from OTEL_EXPORTER_OTLP_HEADERS "
    "(authorization=Bearer%20<token>), OTEL_EXPORTER_OTLP_CERTIFICATE, "
    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY, as for the "
    "OpenTelemetry exporters; --header, --token-file, --ca-file, --client-cert and --client-key "
    "win over them. An https:// --endpoint uses TLS."
)


@app.command("import", help=IMPORT_HELP)
def import_labels(
    file: Annotated[
        Path,
        typer.Argument(
            exists=True, dir_okay=False, readable=True, help="CSV (.csv, .csv.gz) or Parquet (.parquet) file."
        ),
    ],
    endpoint: Annotated[
        str, typer.Option(metavar="URL", help="The running collector's OTLP/HTTP address.")
    ] = "http://127.0.0.1:4318",
    model: Annotated[
        str | None,
        typer.Option(metavar="NAME", help="Model of every row (else read from --model-column)."),
    ] = None,
    id_column: Annotated[
        str, typer.Option(metavar="COLUMN", help="Column of prediction ids.")
    ] = "prediction_id",
    value_column: Annotated[str, typer.Option(metavar="COLUMN", help="Column of label values.")] = "label",
    model_column: Annotated[
        str, typer.Option(metavar="COLUMN", help="Column of model names (unless --model is given).")
    ] = "model",
    chunk_size: Annotated[
        int,
        typer.Option(min=1, max=MAX_LABELS_PER_REQUEST, metavar="ROWS", help="Rows per request."),
    ] = 5000,
    header: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME=VALUE",
            help="A header to send with every request (repeatable; value as given, not URL-decoded). "
            "Wins over OTEL_EXPORTER_OTLP_HEADERS.",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="Send 'Authorization: Bearer <the file's first line>' (wins over the variable's).",
        ),
    ] = None,
    ca_file: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="PEM CA to verify the collector's certificate (default: OTEL_EXPORTER_OTLP_CERTIFICATE, "
            "else the usual trust store).",
        ),
    ] = None,
    client_cert: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="PEM client certificate for mutual TLS (default: OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE).",
        ),
    ] = None,
    client_key: Annotated[
        Path | None,
        typer.Option(
            metavar="PATH",
            help="PEM private key of --client-cert (default: OTEL_EXPORTER_OTLP_CLIENT_KEY).",
        ),
    ] = None,
) -> None:
    """Send ground-truth labels from a file to a running collector (see ``IMPORT_HELP``)."""
    columns = Columns(id_column, value_column, None if model is not None else model_column)
    security = resolve_security(endpoint, header or [], token_file, ca_file, client_cert, client_key)
    label_file = LabelFile(file, columns)
    sender = Sender(endpoint, security)
    try:
        sender.post([], retry_unreachable=False)  # fail fast, before reading the file
        totals = _import(label_file, sender, model, chunk_size)
    finally:
        sender.close()
    _summary(file, totals)
    if totals.rows and not totals.accepted:
        _fail("no label was accepted")


def _import(label_file: LabelFile, sender: Sender, model: str | None, chunk_size: int) -> Totals:
    totals = Totals()
    with _progress(label_file) as progress:
        total = label_file.total_rows if label_file.is_parquet else label_file.size
        task = progress.add_task(label_file.path.name, total=total, accepted=0, rejected=0)
        for batch in label_file.batches(chunk_size):
            answer = sender.post(label_file.records(batch, model))
            for error in answer.get("errors", []):
                if len(totals.errors) < ERRORS_SHOWN:
                    totals.errors.append((totals.rows + int(error["index"]) + 1, str(error["error"])))
            totals.rows += batch.num_rows
            totals.accepted += int(answer.get("accepted", 0))
            totals.rejected += int(answer.get("rejected", 0))
            completed = totals.rows if label_file.is_parquet else label_file.bytes_read
            progress.update(task, completed=completed, accepted=totals.accepted, rejected=totals.rejected)
        progress.update(task, completed=total)
    return totals
