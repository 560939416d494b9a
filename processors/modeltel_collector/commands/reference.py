"""``modeltel reference build``: a reference profile from a CSV or Parquet training sample.

The file is streamed in chunks of ``--chunk-size`` rows (pyarrow's streaming CSV reader,
or ``ParquetFile.iter_batches``), so memory stays bounded whatever its size: each chunk
is converted to numpy (numeric columns as float64 with NaN for nulls, string and bool
columns as object arrays with ``None`` for nulls and bools as ``"true"``/``"false"``, as
the collector's extraction sees them) and fed to a
:class:`~modeltel_collector.drift.profile.ModelProfileBuilder`. Chunks have exactly
``--chunk-size`` rows (the last one excepted) whatever the reader's own batching, so the
same data gives the same profile, and the same content hash, from CSV or Parquet.

Every column is a feature unless it is the ``--target`` or named by ``--exclude``. The
profile is saved to the store in ``--data-dir``, where the collector's drift processor
finds it the first time it sees that model version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from modeltel_collector.config import CollectorConfig
from modeltel_collector.drift.columns import FeatureKind
from modeltel_collector.drift.profile import DEFAULT_BINS, ModelProfile, ModelProfileBuilder
from modeltel_collector.store import Store

DEFAULT_CHUNK_SIZE = 65_536
FORMATS = {".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet"}
"""File name endings understood, and their format."""

_SNIFF_BYTES = 1 << 16
_MIN_BLOCK = 1 << 18
_MAX_BLOCK = 1 << 24

app = typer.Typer(help="Reference profiles that drift is measured against.", no_args_is_help=True)
err_console = Console(stderr=True)


class SourceError(ValueError):
    """The data file cannot be profiled; the message says why."""


def file_format(path: Path) -> str:
    """``"csv"`` or ``"parquet"``, from the file name's ending.

    Examples
    --------
    >>> file_format(Path("train.CSV")), file_format(Path("train.csv.gz")), file_format(Path("t.parquet"))
    ('csv', 'csv', 'parquet')
    >>> try:
    ...     file_format(Path("train.xlsx"))
    ... except SourceError as error:
    ...     print(error)
    train.xlsx: unsupported file type; use .csv, .csv.gz, .parquet, .pq

    """
    name = path.name.lower()
    for ending, kind in sorted(FORMATS.items(), key=lambda item: -len(item[0])):
        if name.endswith(ending):
            return kind
    raise SourceError(f"{path}: unsupported file type; use {', '.join(FORMATS)}")


def feature_kind(data_type: pa.DataType) -> FeatureKind:
    """Integers, floats and decimals are numeric; anything else (strings, bools, dates) categorical."""
    numeric = pa.types.is_integer(data_type) or pa.types.is_floating(data_type)
    return "numeric" if numeric or pa.types.is_decimal(data_type) else "categorical"


def column_values(column: pa.ChunkedArray | pa.Array, kind: FeatureKind) -> npt.NDArray[Any]:
    """A column as the drift code takes it: float64 with NaN, or object with ``None``.

    Examples
    --------
    >>> column_values(pa.array([1, None, 3]), "numeric")
    array([ 1., nan,  3.])
    >>> column_values(pa.array([True, None, False]), "categorical")
    array(['true', None, 'false'], dtype=object)

    """
    if kind == "numeric":
        values: npt.NDArray[Any] = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
        return values
    if pa.types.is_boolean(column.type):
        column = pc.if_else(column, "true", "false")
    elif not pa.types.is_string(column.type):
        column = pc.cast(column, pa.string())
    strings: npt.NDArray[Any] = column.to_numpy(zero_copy_only=False)
    return strings.astype(object, copy=False)


def rechunk(batches: Iterable[pa.RecordBatch], size: int) -> Iterator[pa.Table]:
    """Tables of exactly ``size`` rows (the last may have fewer), whatever the input batching.

    Examples
    --------
    >>> batches = [pa.record_batch({"x": list(range(n))}) for n in (3, 0, 4, 2)]
    >>> [table.num_rows for table in rechunk(batches, 4)]
    [4, 4, 1]

    """
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        rows += batch.num_rows
        if rows < size:
            continue
        table = pa.Table.from_batches(pending)
        start = 0
        while rows - start >= size:
            yield table.slice(start, size)
            start += size
        rest = table.slice(start)
        pending, rows = rest.to_batches(), rest.num_rows
    if rows:
        yield pa.Table.from_batches(pending)


class Source:
    """A CSV or Parquet file read in batches, with its columns, types and read position."""

    def __init__(self, path: Path, chunk_size: int) -> None:
        self.format = file_format(path)
        if not path.is_file():
            raise SourceError(f"{path}: no such file")
        self.path = path
        self.size = path.stat().st_size
        self.chunk_size = chunk_size
        self.total_rows: int | None = None
        self._rows_read = 0
        self._raw: pa.NativeFile | None = None
        self._block_size = _MIN_BLOCK
        try:
            if self.format == "parquet":
                self._parquet = pq.ParquetFile(path)
                self.schema: pa.Schema = self._parquet.schema_arrow
                self.total_rows = self._parquet.metadata.num_rows
            else:
                self._block_size = self._csv_block_size()
                try:
                    with self._open_csv(None) as reader:
                        self.schema = reader.schema
                finally:
                    self._close_raw()
        except (pa.ArrowException, OSError) as error:
            raise SourceError(f"{path}: cannot read it as {self.format.upper()}: {error}") from None

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def kinds(self, columns: Sequence[str]) -> dict[str, FeatureKind]:
        return {name: feature_kind(self.schema.field(name).type) for name in columns}

    def _csv_block_size(self) -> int:
        """Bytes per CSV block: about ``chunk_size`` rows, estimated from the file's start."""
        with pa.input_stream(str(self.path), compression="detect") as stream:
            head = stream.read(_SNIFF_BYTES)
        per_row = len(head) / max(1, head.count(b"\n"))
        return int(min(_MAX_BLOCK, max(_MIN_BLOCK, per_row * self.chunk_size)))

    def _open_csv(self, columns: Sequence[str] | None) -> pa_csv.CSVStreamingReader:
        self._raw = pa.OSFile(str(self.path))
        stream: pa.NativeFile = self._raw
        if self.path.name.lower().endswith(".gz"):
            stream = pa.CompressedInputStream(self._raw, "gzip")
        convert = pa_csv.ConvertOptions(strings_can_be_null=True)
        if columns is not None:
            # Types are inferred from the first block; numbers are read as float64 throughout
            # (an integer column with a decimal further down still parses) and a column
            # with no value in the first block as strings.
            types = {}
            for name in columns:
                data_type = self.schema.field(name).type
                if feature_kind(data_type) == "numeric":
                    types[name] = pa.float64()
                elif pa.types.is_null(data_type):
                    types[name] = pa.string()
            convert = pa_csv.ConvertOptions(
                strings_can_be_null=True, include_columns=list(columns), column_types=types
            )
        return pa_csv.open_csv(
            stream, read_options=pa_csv.ReadOptions(block_size=self._block_size), convert_options=convert
        )

    def chunks(self, columns: Sequence[str]) -> Iterator[pa.Table]:
        """The file's ``columns`` in tables of ``chunk_size`` rows."""
        self._rows_read = 0
        if self.format == "parquet":
            batches: Iterable[pa.RecordBatch] = self._parquet.iter_batches(
                batch_size=self.chunk_size, columns=list(columns)
            )
            yield from self._counted(rechunk(batches, self.chunk_size))
        else:
            try:
                with self._open_csv(columns) as reader:
                    yield from self._counted(rechunk(reader, self.chunk_size))
            finally:
                self._close_raw()

    def _close_raw(self) -> None:
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def _counted(self, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        try:
            for table in tables:
                self._rows_read += table.num_rows
                yield table
        except pa.ArrowException as error:
            raise SourceError(
                f"{self.path}: cannot read past row {self._rows_read:,}: {error}"
                + (" (column types are inferred from the start of the file)" if self.format == "csv" else "")
            ) from None

    @property
    def bytes_read(self) -> int:
        """How far into the file reading got (estimated from rows for Parquet)."""
        if self.format == "parquet":
            return self.size * self._rows_read // max(1, self.total_rows or 1)
        return min(self.size, self._raw.tell()) if self._raw is not None else self.size


@dataclass(frozen=True)
class BuildResult:
    """A built profile and how much was read to build it."""

    profile: ModelProfile
    rows: int
    columns: list[str]


def select_features(columns: Sequence[str], target: str | None, exclude: Sequence[str]) -> list[str]:
    """Every column but the target and the excluded ones; unknown names are an error.

    Examples
    --------
    >>> select_features(["age", "city", "salary"], "salary", [])
    ['age', 'city']
    >>> try:
    ...     select_features(["age", "salary"], "income", [])
    ... except SourceError as error:
    ...     print(error)
    --target 'income' is not a column; the file's columns are: age, salary

    """
    known = set(columns)
    listing = ", ".join(columns)
    if target is not None and target not in known:
        raise SourceError(f"--target {target!r} is not a column; the file's columns are: {listing}")
    unknown = [name for name in exclude if name not in known]
    if unknown:
        names = ", ".join(repr(name) for name in unknown)
        raise SourceError(f"--exclude {names}: not a column; the file's columns are: {listing}")
    dropped = {*exclude, *([target] if target is not None else [])}
    features = [name for name in columns if name not in dropped]
    if not features:
        raise SourceError(f"no feature left once the target and excluded columns are dropped ({listing})")
    return features


def build_profile(
    source: Source,
    model: str,
    version: str,
    *,
    target: str | None = None,
    exclude: Sequence[str] = (),
    bins: int = DEFAULT_BINS,
    on_chunk: Callable[[int], None] | None = None,
) -> BuildResult:
    """Stream ``source`` into a :class:`ModelProfile`; ``on_chunk(rows)`` after each chunk."""
    features = select_features(source.columns, target, exclude)
    kinds = source.kinds(features)
    builder = ModelProfileBuilder(model, version, kinds=kinds, bins=bins)
    rows = 0
    for table in source.chunks(features):
        builder.update({name: column_values(table.column(name), kinds[name]) for name in features})
        rows += table.num_rows
        if on_chunk is not None:
            on_chunk(table.num_rows)
    if rows == 0:
        raise SourceError(f"{source.path}: no rows to build a reference from")
    return BuildResult(builder.build(), rows, features)


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _summary(result: BuildResult) -> Table:
    profile = result.profile
    table = Table(
        title=f"reference {profile.model} {profile.version}: {result.rows:,} rows", title_justify="left"
    )
    table.add_column("feature", style="bold")
    table.add_column("kind")
    table.add_column("count", justify="right")
    table.add_column("missing", justify="right")
    table.add_column("bins / categories", justify="right")
    for name in result.columns:
        feature = profile.features[name]
        if feature.kind == "numeric":
            shape = f"{feature.edges.size + 1} bins"
        else:
            shape = f"{len(feature.categories)} categories"
            if feature.other_count:
                shape += f" + {feature.other_count:,} other"
        table.add_row(name, feature.kind, f"{feature.count:,}", f"{feature.missing_share:.1%}", shape)
    return table


@app.callback()
def _reference() -> None:
    """Reference profiles that drift is measured against."""


@app.command()
def build(
    data: Annotated[Path, typer.Argument(metavar="DATA", help="Training sample: .csv, .csv.gz or .parquet.")],
    model: Annotated[str, typer.Option(metavar="NAME", help="Model name (ml.model.name).")],
    version: Annotated[str, typer.Option(metavar="V", help="Model version (ml.model.version).")],
    target: Annotated[
        str | None, typer.Option(metavar="COL", help="The label column: not a feature.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(metavar="COL", help="A column that is not a feature (repeatable).")
    ] = None,
    data_dir: Annotated[
        Path,
        typer.Option(metavar="DIR", help="Where state lives (the collector's --data-dir)."),
    ] = CollectorConfig.model_fields["data_dir"].default,
    chunk_size: Annotated[
        int, typer.Option(min=1, metavar="N", help="Rows read at a time (bounds memory).")
    ] = DEFAULT_CHUNK_SIZE,
    bins: Annotated[
        int, typer.Option(min=2, metavar="N", help="Quantile bins per numeric feature.")
    ] = DEFAULT_BINS,
) -> None:
    """Build the reference profile of a model version from a CSV or Parquet file and store it."""
    try:
        source = Source(data, chunk_size)
        select_features(source.columns, target, exclude or [])
        progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[rows]:,} rows"),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        with progress:
            task = progress.add_task(f"reading {data.name}", total=source.size, rows=0)
            seen = 0

            def advance(rows: int) -> None:
                nonlocal seen
                seen += rows
                progress.update(task, completed=source.bytes_read, rows=seen)

            result = build_profile(
                source, model, version, target=target, exclude=exclude or [], bins=bins, on_chunk=advance
            )
    except SourceError as error:
        _fail(str(error))
    with Store(data_dir) as store:
        digest = result.profile.content_hash()
        known = store.load_profile(model, version, digest) is not None
        store.save_profile(result.profile)
        path = store.path
    console = Console()
    console.print(_summary(result))
    note = " (already stored; now current)" if known else ""
    console.print(f"profile hash: {digest}{note}", highlight=False, soft_wrap=True)
    console.print(f"stored in:    {path}", highlight=False, soft_wrap=True)
