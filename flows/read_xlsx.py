"""Stage 3 for `dts-xlsx` transfers: one workbook, one sheet per dataset, every cell as text (DTS §2, §2.1, §3, §7).

A workbook is a zip of XML parts, so before anything parses it the archive itself is checked
from its zip directory and then streamed once: it must be an `.xlsx` package, hold no DTD in
any part, and inflate to a sane size (no zip bomb). openpyxl then reads each sheet in
read-only mode, row by row, into a DuckDB table of text through Arrow batches.

Each cell becomes the text a CSV site would have sent, so that conform reads both alike:
dates in the site's `date_format`, times as `HH:MM`, numbers with `.` and integral floats as
integers, strings exactly as they are. Nothing is guessed: a value that is not plainly what a
CSV site would write (a date with a time of day, a time with seconds, a boolean) stays text
that conform quarantines as UNPARSEABLE or OUT_OF_RANGE.
"""

from __future__ import annotations

import math
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa

from flows.conform import quote_ident
from flows.read import RECORD, ROW, RawDataset, check_dataset_header
from flows.verify import Rejected, VerifiedTransfer
from schemas.datasets import DATASETS, PERSONAL_DATA_COLUMNS, Dataset

if TYPE_CHECKING:  # openpyxl is imported where a workbook is read: most runs read none
    from openpyxl.workbook.workbook import Workbook
    from openpyxl.worksheet._read_only import ReadOnlyWorksheet

WORKBOOK = "export.xlsx"
# The parts every SpreadsheetML package has (ECMA-376: the content types and the workbook).
REQUIRED_PARTS = ("[Content_Types].xml", "xl/workbook.xml")
MAX_INFLATED = 1 << 30  # 1 GiB of XML is far beyond any trial export: a larger workbook is a zip bomb
MAX_RATIO = 200  # real sheets compress 5–50:1; a bomb compresses 1000:1
RATIO_MIN_SIZE = 1 << 20  # a small part may compress well; a bomb needs volume, so only large parts are judged
EXCEL_MAX_ROWS = 1_048_576  # beyond Excel's own limits a sheet is not a workbook Excel wrote
EXCEL_MAX_COLUMNS = 16_384
SCAN_CHUNK = 1 << 20
BATCH_ROWS = 20_000  # rows per Arrow batch: memory stays bounded whatever the sheet's length
# A DTD opens with `<!DOCTYPE`; an entity declaration can only stand inside one. The XML parser
# openpyxl uses (expat) reads UTF-8, UTF-16 and single-byte ASCII-compatible encodings only, so
# these byte forms find every DTD it could ever read.
DTD_MARKERS: tuple[bytes, ...] = tuple(marker.encode(encoding) for marker in ("<!DOCTYPE", "<!ENTITY")
                                       for encoding in ("utf-8", "utf-16-le", "utf-16-be"))
DTD_OVERLAP = max(len(m) for m in DTD_MARKERS) - 1


# --- the archive, before anything parses it ---------------------------------------------------------

def check_archive(path: Path) -> None:
    """Reject a file that is not an `.xlsx` package, holds a DTD or would inflate beyond a sane bound.

    The zip directory is judged first, without inflating anything; then every member is streamed
    once, counting what it really inflates to and looking for a DTD in every part.
    """
    if not zipfile.is_zipfile(path):
        raise Rejected(f"{path.name} is not a valid .xlsx workbook: it is not a zip archive")
    try:
        with zipfile.ZipFile(path) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            names = {m.filename for m in members}
            missing = [part for part in REQUIRED_PARTS if part not in names]
            if missing:
                raise Rejected(f"{path.name} is not a valid .xlsx workbook: it lacks {', '.join(missing)}")
            declared = sum(m.file_size for m in members)
            if declared > MAX_INFLATED:
                raise Rejected(f"{path.name} would inflate to {declared} bytes, beyond the bound of "
                               f"{MAX_INFLATED} bytes (a zip bomb)")
            for member in members:
                if member.file_size > RATIO_MIN_SIZE and member.file_size > MAX_RATIO * max(member.compress_size, 1):
                    raise Rejected(f"{path.name}: part {member.filename} would inflate {member.compress_size} bytes "
                                   f"to {member.file_size}, beyond a ratio of {MAX_RATIO}:1 (a zip bomb)")
            inflated = 0
            for member in members:
                inflated += _scan_member(path.name, archive, member, MAX_INFLATED - inflated)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, OSError, EOFError,
            zlib.error, ValueError) as exc:
        # RuntimeError: an encrypted part; NotImplementedError: a compression method zipfile lacks
        raise Rejected(f"{path.name} is not a valid .xlsx workbook: {type(exc).__name__}: {exc}") from None


def _scan_member(file_name: str, archive: zipfile.ZipFile, member: zipfile.ZipInfo, budget: int) -> int:
    """Inflate one part in chunks, never more than its declared size nor the remaining budget,
    looking for a DTD; returns the bytes it inflated to."""
    size, tail = 0, b""
    with archive.open(member) as stream:
        while chunk := stream.read(SCAN_CHUNK):
            size += len(chunk)
            if size > member.file_size or size > budget:
                raise Rejected(f"{file_name}: part {member.filename} inflates beyond its declared size or the "
                               f"bound of {MAX_INFLATED} bytes (a zip bomb)")
            if size > RATIO_MIN_SIZE and size > MAX_RATIO * max(member.compress_size, 1):
                raise Rejected(f"{file_name}: part {member.filename} inflates beyond a ratio of {MAX_RATIO}:1 "
                               f"(a zip bomb)")
            window = tail + chunk
            if any(marker in window for marker in DTD_MARKERS):
                raise Rejected(f"{file_name}: part {member.filename} holds a DTD (<!DOCTYPE or <!ENTITY), "
                               f"which a workbook never needs")
            tail = window[-DTD_OVERLAP:]
    return size


@contextmanager
def open_workbook(path: Path) -> Iterator[Workbook]:
    """The workbook in openpyxl's read-only, values-only mode; closed on the way out."""
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(path, read_only=True, data_only=True, keep_links=False)
    except Exception as exc:  # a malformed package fails in many ways inside openpyxl: never a crash
        raise Rejected(f"{path.name} is not a valid .xlsx workbook: {type(exc).__name__}: {str(exc)[:200]}") from None
    try:
        yield workbook
    finally:
        workbook.close()


# --- cells to text ----------------------------------------------------------------------------------

def number_text(value: float) -> str:
    """An integral float as an integer (`72.0` → `72`), any other in its shortest round-trip
    form, written out positionally with `.` as a CSV site would (`1e-05` → `0.00001`)."""
    if not math.isfinite(value):
        return repr(value)  # `inf`, `nan`: not a number conform reads, so UNPARSEABLE
    if value.is_integer():
        return str(int(value))
    text = repr(value)
    return format(Decimal(text), "f") if "e" in text else text


def duration_text(value: timedelta) -> str:
    """A duration cell (`[h]:mm`) as Excel shows it; seconds are kept, never cut off."""
    seconds = value.total_seconds()
    sign, seconds = ("-", -seconds) if seconds < 0 else ("", seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{sign}{int(hours):02d}:{int(minutes):02d}"
    return text if secs == 0 else f"{text}:{secs:06.3f}".rstrip("0").rstrip(".")


def cell_text(value: object, date_format: str) -> str:
    """A cell value as the text a CSV site of the same dialect would deliver (see the module docstring)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value  # exactly as delivered, never trimmed
    if isinstance(value, bool):  # before int: a bool is an int
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return number_text(value)
    if isinstance(value, datetime):  # before date: a datetime is a date
        if value.time() == time(0) and value.tzinfo is None:
            return value.strftime(date_format)
        # A time of day would be lost in the site's date format: keep it, conform rejects it.
        return value.isoformat()
    if isinstance(value, date):
        return value.strftime(date_format)
    if isinstance(value, time):
        if value.second == 0 and value.microsecond == 0 and value.tzinfo is None:
            return f"{value.hour:02d}:{value.minute:02d}"
        return value.isoformat()  # seconds would be lost in HH:MM: kept, so conform rejects it
    if isinstance(value, timedelta):
        return duration_text(value)
    return str(value)


def _has_value(value: object) -> bool:
    return value is not None and value != ""


# --- sheets -----------------------------------------------------------------------------------------

def sheet_name(dataset: Dataset) -> str:
    """A dataset's sheet is named as its dts-csv file without the extension (DTS §3)."""
    return PurePath(dataset.file).stem


@dataclass
class Sheet:
    """A dataset's sheet, its header checked: which columns to read, at which positions."""

    dataset: Dataset
    name: str
    worksheet: ReadOnlyWorksheet
    width: int  # header cells, blank ones included
    columns: list[str]  # delivered columns the dataset knows, in sheet order
    positions: list[int]  # their 0-based column positions
    blank: list[int]  # positions of blank header cells: no name, so nothing to read there
    personal_data: list[str]
    ignored: list[str]
    unnamed_with_values: set[int] = field(default_factory=set)

    @property
    def source_file(self) -> str:
        return f"{WORKBOOK}!{self.name}"


def expected_sheet_rows(transfer: VerifiedTransfer) -> Mapping[str, int]:
    rows = transfer.files[WORKBOOK].rows
    if not isinstance(rows, Mapping):
        raise Rejected(f"manifest rows of {WORKBOOK} must be an object of sheet name to data rows, not {rows!r}")
    return rows


def _sheet_rows(sheet_title: str, worksheet: ReadOnlyWorksheet, **bounds: int) -> Iterator[tuple[object, ...]]:
    """openpyxl's rows (values only, every row number present, gaps as empty rows); an error of
    openpyxl's becomes a rejection. Its message is never passed on: it may quote a cell's value."""
    rows = worksheet.iter_rows(values_only=True, **bounds)
    try:
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as exc:  # a malformed sheet fails in many ways inside openpyxl: never a crash
                raise Rejected(f"{WORKBOOK}!{sheet_title} cannot be read as a worksheet "
                               f"({type(exc).__name__})") from None
            yield row
    finally:
        rows.close()


def inspect_sheet(workbook: Workbook, dataset: Dataset, date_format: str) -> Sheet:
    """Check a sheet's header (row 1) against its dataset, as `flows.read.inspect_file` does a CSV header."""
    from openpyxl.worksheet._read_only import ReadOnlyWorksheet

    name = sheet_name(dataset)
    worksheet = workbook[name]
    if not isinstance(worksheet, ReadOnlyWorksheet):
        raise Rejected(f"{WORKBOOK}!{name} is not a worksheet")
    # The dimension a writer records can be wrong; without it, openpyxl reads every row there is.
    worksheet.reset_dimensions()
    first = next(_sheet_rows(name, worksheet, min_row=1, max_row=1), ())
    if len(first) > EXCEL_MAX_COLUMNS:
        raise Rejected(f"{WORKBOOK}!{name} is not a valid worksheet: its header is {len(first)} columns wide")
    header = [cell_text(v, date_format) for v in first]
    # a blank header cell names no column, so two of them are no duplicate
    wanted = check_dataset_header(f"{WORKBOOK}!{name}", header, dataset, blank_ok=True)
    positions = [i for i, c in enumerate(header) if c in wanted]
    return Sheet(
        dataset=dataset,
        name=name,
        worksheet=worksheet,
        width=len(header),
        columns=[header[i] for i in positions],
        positions=positions,
        blank=[i for i, c in enumerate(header) if c == ""],
        personal_data=[c for c in header if c.lower() in PERSONAL_DATA_COLUMNS],
        ignored=[c for c in header if c and c not in wanted and c.lower() not in PERSONAL_DATA_COLUMNS],
    )


def _schema(columns: list[str]) -> pa.Schema:
    return pa.schema([(c, pa.string()) for c in columns] + [(ROW, pa.int64()), (RECORD, pa.int64())])


def load_sheet(con: duckdb.DuckDBPyConnection, sheet: Sheet, table: str, date_format: str, expected: int) -> int:
    """Stream the sheet's data rows into `table` (text columns, `_row` = the sheet row, `_record` = `_row`)
    in Arrow batches; returns the records delivered, which must be the manifest's count."""
    schema = _schema(sheet.columns)
    columns = ", ".join(f"{quote_ident(c)} varchar" for c in sheet.columns)
    con.execute(f"create or replace temp table {table} ({columns}{', ' if columns else ''}"
                f"{ROW} bigint, {RECORD} bigint)")
    buffers: list[list[str]] = [[] for _ in sheet.columns]
    numbers: list[int] = []
    records = 0

    def flush() -> None:
        starts = pa.array(numbers, pa.int64())
        batch = pa.Table.from_arrays([*(pa.array(b, pa.string()) for b in buffers), starts, starts], schema=schema)
        con.register(f"{table}_batch", batch)
        try:
            con.execute(f"insert into {table} select * from {table}_batch")
        finally:
            con.unregister(f"{table}_batch")
        for b in buffers:
            b.clear()
        numbers.clear()

    unnamed = sheet.blank
    for number, row in enumerate(_sheet_rows(sheet.name, sheet.worksheet, min_row=2), start=2):
        if number > EXCEL_MAX_ROWS or len(row) > EXCEL_MAX_COLUMNS:
            raise Rejected(f"{sheet.source_file} is not a valid worksheet: it reaches beyond Excel's "
                           f"{EXCEL_MAX_ROWS} rows or {EXCEL_MAX_COLUMNS} columns")
        # Entirely empty rows are not records: Excel leaves rows behind that once held data or
        # formatting. A row with any value in any column, personal-data ones included, is a record.
        if not any(_has_value(v) for v in row):
            continue
        records += 1
        if records > expected:
            raise Rejected(f"{sheet.source_file} holds more than {expected} data rows; the manifest says {expected}")
        width = len(row)
        if unnamed or width > sheet.width:  # values under no header name: ignored, but never silently
            for i in (*unnamed, *range(sheet.width, width)):
                if i < width and _has_value(row[i]):
                    sheet.unnamed_with_values.add(i)
        # Only the dataset's columns are converted and kept; personal-data values are dropped here.
        for buffer, i in zip(buffers, sheet.positions, strict=True):
            buffer.append(cell_text(row[i], date_format) if i < width else "")
        numbers.append(number)
        if len(numbers) >= BATCH_ROWS:
            flush()
    if numbers:
        flush()
    if records != expected:
        raise Rejected(f"{sheet.source_file} holds {records} data rows; the manifest says {expected}")
    from openpyxl.utils import get_column_letter

    sheet.ignored += [f"column {get_column_letter(i + 1)} (no header)" for i in sorted(sheet.unnamed_with_values)]
    return records


def check_sheets(transfer: VerifiedTransfer, workbook: Workbook, expected: Mapping[str, int]) -> None:
    """The manifest and the workbook agree on the sheets: each dataset's sheet is listed and present,
    every listed sheet is present. Other sheets are ignored with a warning."""
    present = list(workbook.sheetnames)
    needed = [sheet_name(d) for d in DATASETS.values()]
    unlisted = [s for s in needed if s not in expected]
    if unlisted:
        raise Rejected(f"manifest rows of {WORKBOOK} lack the sheet(s) {', '.join(unlisted)}")
    absent = [s for s in [*needed, *(s for s in expected if s not in needed)] if s not in present]
    if absent:
        raise Rejected(f"{WORKBOOK} lacks the sheet(s) {', '.join(absent)} (sheets: {', '.join(present) or 'none'})")
    transfer.warnings += [f"{WORKBOOK}: sheet {s} ignored (not a dataset)" for s in present if s not in needed]


def read_dts_xlsx(con: duckdb.DuckDBPyConnection, transfer: VerifiedTransfer) -> dict[str, RawDataset]:
    """The five sheets of a `dts-xlsx` workbook: the archive checked, every sheet's header checked
    before any sheet is streamed, then each streamed into `raw_<dataset>` and its record count
    held against the manifest."""
    expected = expected_sheet_rows(transfer)
    path = transfer.files[WORKBOOK].path
    check_archive(path)
    date_format = transfer.source.date_format
    # openpyxl warns about what it skips and about odd cells, quoting their values; a personal-data
    # value must never reach a log (DTS §7), so its warnings are silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with open_workbook(path) as workbook:
            check_sheets(transfer, workbook, expected)
            sheets = {name: inspect_sheet(workbook, d, date_format) for name, d in DATASETS.items()}
            raw = {}
            for name, sheet in sheets.items():
                records = load_sheet(con, sheet, f"raw_{name}", date_format, expected[sheet.name])
                raw[name] = RawDataset(sheet.dataset, f"raw_{name}", sheet.source_file, sheet.columns, records,
                                       [], sheet.personal_data, sheet.ignored)
    return raw
