"""``modeltel labels import FILE``: ground-truth labels from a CSV or Parquet file into a running collector.

The file is read in chunks (CSV with pyarrow's streaming reader, Parquet batch by batch),
so memory stays bounded whatever its size; each chunk is POSTed, gzipped, to the
collector's ``/v1/labels`` (see :mod:`modeltel_collector.receivers.labels_http`), which
validates every row, joins the labels to their predictions and counts each prediction id
once, so importing a file twice changes nothing. ``429``/``503`` answers are retried after
their ``Retry-After``.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import typer
from rich.console import Console
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
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
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

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.url = self.endpoint + LABELS_PATH
        self.client = httpx.Client(timeout=60.0)

    def unreachable(self, error: Exception) -> NoReturn:
        _fail(f"no collector answers at {self.endpoint}: start `modeltel collect` first ({error})")

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
            if response.status_code == 404:
                _fail(
                    f"{self.endpoint} does not take labels (POST {LABELS_PATH} answered 404): "
                    "point --endpoint at a modeltel collector's OTLP/HTTP port"
                )
            if response.status_code != 200:
                _fail(
                    f"the collector refused the labels ({response.status_code}): {_status_message(response)}"
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
    "reported by their 1-based row number (a CSV header not counted)."
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
) -> None:
    """Send ground-truth labels from a file to a running collector (see ``IMPORT_HELP``)."""
    columns = Columns(id_column, value_column, None if model is not None else model_column)
    label_file = LabelFile(file, columns)
    sender = Sender(endpoint)
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
