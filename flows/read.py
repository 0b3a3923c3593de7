"""Stage 3 — read: a delivered CSV file, in its site's dialect, every column as text.

Nothing is interpreted here, so nothing can be lost in parsing: values stay the exact strings
the site sent, each record keeps the line it starts on, and personal-data and unknown columns
are never read into memory at all. Arrow parses a file whole, on every core, up to
`WHOLE_FILE_BYTES`, and a larger one in streamed batches, so memory is bounded either way.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from flows.registry import Source
from flows.scratch import drop_temporary
from flows.verify import Rejected, VerifiedTransfer, text_encoding
from schemas.datasets import PERSONAL_DATA_COLUMNS, Dataset, datasets_of

ROW = "_row"  # the line (or sheet row) a record starts on: lineage
RECORD = "_record"  # a delivered record's identity; one source row may hold several records
BLOCK_SIZE = 16 << 20
# A file up to this size is parsed whole, by all cores (4 MB blocks each); a larger one streams
# block by block so that memory stays flat whatever a site sends.
WHOLE_FILE_BYTES = 64 << 20
WHOLE_FILE_BLOCK = 4 << 20
HEADER_PEEK = 1 << 16


@dataclass(frozen=True)
class MalformedRecord:
    """A record whose field count differs from the header: quarantined as UNPARSEABLE."""

    line: int
    fields: int
    expected: int


@dataclass
class ReadFile:
    """A delivered file, ready to stream: which columns it holds and what was set aside."""

    dataset: Dataset
    path: Path
    columns: list[str]  # delivered columns the dataset knows, in file order
    personal_data: list[str]
    ignored: list[str]
    encoding: str
    delimiter: str
    malformed: list[MalformedRecord] = field(default_factory=list)
    records: int = 0  # data records delivered, malformed ones included; known once streamed
    needs_exact_lines: bool = False
    error: str | None = None
    physical_lines: int | None = None  # known from verify; counted here otherwise


def read_header(path: Path, encoding: str, delimiter: str) -> list[str]:
    with open(path, "rb") as fh:
        head = fh.read(HEADER_PEEK)
    try:
        # a peek may end inside a multi-byte character; the whole file is decoded by verify anyway
        text = head.decode(encoding, errors="strict" if len(head) < HEADER_PEEK else "ignore")
    except UnicodeDecodeError as exc:
        raise Rejected(f"{path.name} cannot be decoded as {encoding}: {exc.reason}") from None
    try:
        return next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except StopIteration:
        raise Rejected(f"{path.name} is empty: it has no header") from None
    except csv.Error as exc:
        raise Rejected(f"{path.name}: the header cannot be read as CSV with delimiter {delimiter!r}: {exc}") from None


@dataclass
class RawDataset:
    """One dataset of a transfer, loaded as text into a DuckDB table, whatever the format.

    The table holds the delivered `columns` (named as the dataset or its unit alternatives know
    them), `_row` (lineage: the line or sheet row), `_record` (identity) and any `passthrough`
    columns a format adds (a REDCap form status).
    """

    dataset: Dataset
    table: str
    source_file: str  # lineage: the file, or `workbook!sheet`
    columns: list[str]
    records: int  # delivered records, malformed ones included
    malformed: list[MalformedRecord] = field(default_factory=list)
    personal_data: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    passthrough: tuple[str, ...] = ()

    def warnings(self) -> list[str]:
        notes = []
        if self.personal_data:
            notes.append(f"personal data received: {self.source_file} held column(s) "
                         f"{', '.join(self.personal_data)}, dropped and never stored")
        if self.ignored:
            notes.append(f"{self.source_file}: extra column(s) {', '.join(self.ignored)} ignored")
        return notes


def reject_duplicate_columns(label: str, header: list[str], blank_ok: bool = False) -> set[str]:
    """The header's names; a name given twice rejects the transfer (DTS §2.1)."""
    seen: set[str] = set()
    for name in header:
        if name in seen and not (blank_ok and name == ""):
            raise Rejected(f"{label}: column {name!r} appears twice in the header")
        seen.add(name)
    return seen


def check_dataset_header(label: str, header: list[str], dataset: Dataset, blank_ok: bool = False) -> set[str]:
    """The names a dataset reads from this header; a duplicated name or a missing required
    column (or its unit alternative) rejects the transfer."""
    seen = reject_duplicate_columns(label, header, blank_ok)
    for column in dataset.header_required:
        alternative = dataset.alternatives.get(column, (None, 0.0))[0]
        if column not in seen and alternative not in seen:
            also = f" (or {alternative})" if alternative else ""
            raise Rejected(f"{label} lacks the required column {column}{also}")
    return {c.name for c in dataset.columns} | {alt for alt, _ in dataset.alternatives.values()}


def inspect_file(path: Path, dataset: Dataset, source: Source) -> ReadFile:
    """Check a file's header against its dataset; reject what cannot be read as that dataset."""
    encoding = text_encoding(source, path.name) or "utf-8"
    delimiter = source.delimiter or ","
    header = read_header(path, encoding, delimiter)
    wanted = check_dataset_header(path.name, header, dataset)
    return ReadFile(
        dataset=dataset,
        path=path,
        columns=[c for c in header if c in wanted],
        personal_data=[c for c in header if c.lower() in PERSONAL_DATA_COLUMNS],
        ignored=[c for c in header if c not in wanted and c.lower() not in PERSONAL_DATA_COLUMNS],
        encoding=encoding,
        delimiter=delimiter,
    )


def count_newlines(path: Path) -> tuple[int, bool]:
    """Newline characters in the file, and whether it ends with one."""
    count, last = 0, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(BLOCK_SIZE):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count, last == b"\n"


def _schema(columns: list[str]) -> pa.Schema:
    return pa.schema([(c, pa.string()) for c in columns] + [(ROW, pa.int64()), (RECORD, pa.int64())])


def _line_numbers(first: int, count: int) -> pa.Array:
    return pa.array(np.arange(first, first + count, dtype=np.int64))


def _open_options(rf: ReadFile, block_size: int, malformed: list[int]) -> dict[str, object]:
    """Arrow's reading of a dataset file: its dialect, its known columns as exact text, and a
    record with the wrong number of fields noted (the caller falls back to the exact reader)."""

    def on_invalid(row: pacsv.InvalidRow) -> str:
        malformed.append(row.actual_columns)
        return "skip"

    # Arrow decodes UTF-8 natively (skipping a byte-order mark); other codecs go through Python.
    native = codecs.lookup(rf.encoding).name in ("utf-8", "utf-8-sig")
    return {
        "read_options": pacsv.ReadOptions(encoding="utf8" if native else rf.encoding, block_size=block_size),
        "parse_options": pacsv.ParseOptions(delimiter=rf.delimiter, newlines_in_values=True,
                                            invalid_row_handler=on_invalid),
        "convert_options": pacsv.ConvertOptions(
            column_types=dict.fromkeys(rf.columns, pa.string()),
            include_columns=rf.columns,
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    }


def _read_whole(rf: ReadFile) -> pa.Table | None:
    """Arrow's multi-threaded reader over the whole file. Line numbers are exact only when every
    record sits on one line; None (and `needs_exact_lines`) when a record is malformed."""
    malformed: list[int] = []
    data = pacsv.read_csv(rf.path, **_open_options(rf, WHOLE_FILE_BLOCK, malformed))
    if malformed:
        rf.needs_exact_lines = True
        return None
    rf.records = data.num_rows
    lines = _line_numbers(2, data.num_rows)  # the header is line 1
    return pa.Table.from_arrays([*data.columns, lines, lines], schema=_schema(rf.columns))


def _stream_fast(rf: ReadFile) -> Iterator[pa.RecordBatch]:
    """Arrow's streaming reader, for a file too large to parse whole: as `_read_whole`, batch by batch."""
    malformed: list[int] = []
    reader = pacsv.open_csv(rf.path, **_open_options(rf, BLOCK_SIZE, malformed))
    line = 2  # the header is line 1
    for batch in reader:
        if malformed:
            rf.needs_exact_lines = True
            return
        lines = _line_numbers(line, batch.num_rows)
        yield pa.RecordBatch.from_arrays([*batch.columns, lines, lines], schema=_schema(rf.columns))
        line += batch.num_rows
    rf.needs_exact_lines = bool(malformed)
    rf.records = line - 2


def _stream_exact(rf: ReadFile, batch_rows: int = 200_000) -> Iterator[pa.RecordBatch]:
    """Python's csv reader: exact starting lines for multi-line records, blank lines and
    records with the wrong number of fields (those become malformed records)."""
    rf.malformed.clear()
    with open(rf.path, encoding=rf.encoding, newline="") as fh:
        reader = csv.reader(fh, delimiter=rf.delimiter)
        header = next(reader)
        index = [header.index(c) for c in rf.columns]
        buffers: list[list[str]] = [[] for _ in rf.columns]
        lines: list[int] = []
        records = 0
        previous_end = reader.line_num
        for record in reader:
            start, previous_end = previous_end + 1, reader.line_num
            if not record:
                continue  # a blank line is not a record
            records += 1
            if len(record) != len(header):
                rf.malformed.append(MalformedRecord(start, len(record), len(header)))
                continue
            for buf, i in zip(buffers, index, strict=True):
                buf.append(record[i])
            lines.append(start)
            if len(lines) >= batch_rows:
                yield _batch(rf, buffers, lines)
                buffers, lines = [[] for _ in rf.columns], []
        yield _batch(rf, buffers, lines)
    rf.records = records


def _batch(rf: ReadFile, buffers: list[list[str]], lines: list[int]) -> pa.RecordBatch:
    starts = pa.array(lines, pa.int64())
    return pa.RecordBatch.from_arrays([*(pa.array(b, pa.string()) for b in buffers), starts, starts],
                                      schema=_schema(rf.columns))


READ_ERRORS = (pa.ArrowInvalid, UnicodeDecodeError, csv.Error)


def _read_error(rf: ReadFile, exc: Exception) -> str:
    return (f"{rf.path.name} cannot be read as CSV in the declared dialect ({rf.encoding}, "
            f"delimiter {rf.delimiter!r}): {exc}")


def _guarded(rf: ReadFile, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """Keep a read error for the caller: raised inside a scan, it would come back wrapped."""
    try:
        yield from batches
    except READ_ERRORS as exc:
        rf.error = _read_error(rf, exc)


def _create_from(con: duckdb.DuckDBPyConnection, table: str, data: pa.RecordBatchReader | pa.Table) -> None:
    """The records under the name `table`. A file read whole is registered as the Arrow table it
    is, which DuckDB scans in place (a copy into a table of its own was a pass over every record);
    a stream can be read only once, so it is copied into a temporary table."""
    drop_temporary(con, table)
    if isinstance(data, pa.Table):
        con.register(table, data)
        return
    con.register(f"{table}_stream", data)
    try:
        con.execute(f"create temp table {table} as select * from {table}_stream")
    finally:
        con.unregister(f"{table}_stream")


def load_file(con: duckdb.DuckDBPyConnection, rf: ReadFile, table: str) -> None:
    """Read the file into a DuckDB table of text columns plus `_row`, the line each record
    starts on. One pass in the usual case; a second, exact pass only for files whose records
    span lines or break the header's shape."""
    if rf.physical_lines is None:
        newlines, trailing = count_newlines(rf.path)
        rf.physical_lines = newlines + (0 if trailing else 1)
    physical_lines = rf.physical_lines
    schema = _schema(rf.columns)
    if rf.path.stat().st_size <= WHOLE_FILE_BYTES:
        try:
            whole = _read_whole(rf)
        except READ_ERRORS as exc:
            rf.error, whole = _read_error(rf, exc), None
        if whole is not None:
            _create_from(con, table, whole)
    else:
        _create_from(con, table, pa.RecordBatchReader.from_batches(schema, _guarded(rf, _stream_fast(rf))))
    # Arrow cannot say where records start when they span lines, nor read some shapes that are
    # valid CSV (a header without a final newline): Python's reader decides those.
    if rf.error is not None or rf.needs_exact_lines or rf.records + 1 != physical_lines:
        rf.error = None
        _create_from(con, table, pa.RecordBatchReader.from_batches(schema, _guarded(rf, _stream_exact(rf))))
    if rf.error is not None:
        raise Rejected(rf.error)


def expected_rows(transfer: VerifiedTransfer, file_name: str) -> int:
    rows = transfer.files[file_name].rows
    if not isinstance(rows, int) or isinstance(rows, bool):
        raise Rejected(f"manifest rows of {file_name} must be a number for a CSV file")
    return rows


def read_csv_datasets(con: duckdb.DuckDBPyConnection, transfer: VerifiedTransfer) -> dict[str, RawDataset]:
    """One CSV file per dataset (`dts-csv`'s five, IWRS's list): every header checked before any
    file is parsed, then each file streamed into `raw_<dataset>`, its record count held against
    the manifest."""
    files = {name: inspect_file(transfer.files[d.file].path, d, transfer.source)
             for name, d in datasets_of(transfer.format).items()}
    raw = {}
    for name, rf in files.items():
        rf.physical_lines = transfer.files[rf.path.name].lines
        load_file(con, rf, f"raw_{name}")
        if rf.records != expected_rows(transfer, rf.path.name):
            raise Rejected(f"{rf.path.name} holds {rf.records} data rows; the manifest says "
                           f"{expected_rows(transfer, rf.path.name)}")
        raw[name] = RawDataset(rf.dataset, f"raw_{name}", rf.path.name, rf.columns, rf.records, rf.malformed,
                               rf.personal_data, rf.ignored)
    return raw
