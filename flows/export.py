"""Analyst exports: one warehouse table to Parquet, CSV or SAS transport (XPT v5).

Parquet and CSV are DuckDB's own `COPY`: the values as the warehouse holds them. XPT v5 is what
statisticians' SAS reads; its limits are met deterministically or refused, never by silently
changing a value:

- variable names of at most 8 characters (letters, digits, `_`, upper case): the column name
  upper-cased, cut to 8, a clash disambiguated by a number (`QUARANTI`, `QUARANT1`, …); the
  original name is the variable's label (at most 40 characters, else an error);
- the dataset name from the table name the same way;
- `DATE` → SAS date, `TIMESTAMP` → SAS datetime (with a time zone: in UTC), `TIME` → SAS time,
  `BOOLEAN` → 0/1, every other number → a SAS numeric (8-byte floating point);
- text of at most 200 bytes (UTF-8): a longer value is an error naming column and rows, since
  cutting it would change trial data. A null text becomes SAS's blank.

Every file is written beside its destination and renamed over it: never half a file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from flows.conform import quote_ident, quote_literal

FORMATS = ("parquet", "csv", "xpt")
UNBLINDED_CATALOG = "unblinded"
XPT_NAME_LENGTH = 8
XPT_LABEL_LENGTH = 40
XPT_TEXT_BYTES = 200
# SAS numerics are floating point: integers beyond 2**53 would lose digits
XPT_MAX_EXACT_INTEGER = 2**53


class ExportError(ValueError):
    """The table cannot be exported as asked; the message says why."""


class UnknownTable(ExportError):
    """The table is not in the warehouse."""


@dataclass
class ExportResult:
    table: str
    format: str
    path: Path
    rows: int
    # XPT only: original column name → variable name
    names: dict[str, str] = field(default_factory=dict)
    dataset_name: str | None = None


def available_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Exportable tables as `schema.table`: the blinded warehouse's, and `unblinded.<table>` when the
    unblinded store is attached."""
    rows = con.execute("""
        select database_name, schema_name, table_name from duckdb_tables()
        where not internal and not temporary
            and (schema_name in ('core', 'ops', 'marts', 'ref') or database_name = ?)
        order by all""", [UNBLINDED_CATALOG]).fetchall()
    return sorted({f"{UNBLINDED_CATALOG}.{t}" if d == UNBLINDED_CATALOG else f"{s}.{t}" for d, s, t in rows})


def resolve_table(con: duckdb.DuckDBPyConnection, table: str) -> str:
    """The table's SQL name, if it is one of `available_tables`; else `UnknownTable` listing them."""
    tables = available_tables(con)
    if table not in tables:
        hint = ""
        if table.startswith(f"{UNBLINDED_CATALOG}."):
            hint = " (unblinded tables need --unblinded and KAP_UNBLINDED_KEY)"
        raise UnknownTable(f"no table {table!r} in the warehouse{hint}; available: {', '.join(tables)}")
    schema, name = table.split(".", 1)
    if schema == UNBLINDED_CATALOG:
        return f"{UNBLINDED_CATALOG}.main.{quote_ident(name)}"
    return f"{quote_ident(schema)}.{quote_ident(name)}"


def export_table(con: duckdb.DuckDBPyConnection, table: str, fmt: str, out: Path) -> ExportResult:
    """Write `table` (`schema.table`, as `available_tables` names it) to `out` in `fmt`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")
    source = resolve_table(con, table)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    try:
        if fmt == "xpt":
            result = write_xpt(con, table, source, partial)
        else:
            options = "format parquet, compression zstd" if fmt == "parquet" else "format csv, header true"
            con.execute(f"copy (select * from {source}) to {quote_literal(str(partial))} ({options})")
            # fetchall, not fetchone: a result left half-read blocks the caller's next query on `con`
            ((rows,),) = con.execute(f"select count(*) from {source}").fetchall()
            result = ExportResult(table, fmt, out, int(rows))
        os.replace(partial, out)
    finally:
        partial.unlink(missing_ok=True)
    result.path = out
    return result


def sas_name(name: str, length: int = XPT_NAME_LENGTH) -> str:
    """`name` as a SAS v5 name: upper case, letters, digits and `_`, not starting with a digit, cut."""
    cleaned = re.sub(r"[^A-Z0-9_]", "_", name.upper()) or "_"
    if cleaned[0].isdigit():
        cleaned = "_" + cleaned
    return cleaned[:length]


def xpt_names(columns: Sequence[str]) -> dict[str, str]:
    """Unique SAS v5 variable names for `columns`, in order: the cut name, or on a clash the cut name with
    its last characters replaced by the smallest number that makes it unique. The same columns always
    map to the same names."""
    names: dict[str, str] = {}
    taken: set[str] = set()
    for column in columns:
        base = sas_name(column)
        candidate, number = base, 0
        while candidate in taken:
            number += 1
            suffix = str(number)
            candidate = base[:XPT_NAME_LENGTH - len(suffix)] + suffix
        names[column] = candidate
        taken.add(candidate)
    return names


def xpt_dataset_name(table: str) -> str:
    """The dataset name of an exported table: its name without the schema, as a SAS v5 name."""
    return sas_name(table.split(".", 1)[-1])


def _rows_where(mask: pa.ChunkedArray, limit: int = 5) -> str:
    rows = [str(i + 1) for i, bad in enumerate(mask.to_pylist()) if bad][:limit]
    return ", ".join(rows) + (", …" if pc.sum(mask).as_py() > limit else "")


def xpt_column(name: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """One column as XPT v5 can hold it, or `ExportError` saying why not."""
    kind = column.type
    if pa.types.is_boolean(kind) or pa.types.is_null(kind):
        return pc.cast(column, pa.float64())
    if pa.types.is_integer(kind):
        too_big = pc.greater(pc.abs(pc.cast(column, pa.float64())), XPT_MAX_EXACT_INTEGER)
        if pc.any(too_big).as_py():
            raise ExportError(f"column {name}: integers beyond 2^53 cannot be held exactly by a SAS numeric "
                              f"(rows {_rows_where(too_big)})")
        return pc.cast(column, pa.float64())
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        return pc.cast(column, pa.float64())
    if pa.types.is_date(kind) or pa.types.is_time(kind):
        return column
    if pa.types.is_timestamp(kind):
        # SAS datetimes have no time zone: a zoned timestamp is written as its UTC wall time
        return pc.cast(column, pa.timestamp(kind.unit)) if kind.tz else column
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        too_long = pc.greater(pc.binary_length(column), XPT_TEXT_BYTES)
        if pc.any(too_long).as_py():
            longest = pc.max(pc.binary_length(column)).as_py()
            raise ExportError(f"column {name}: text longer than {XPT_TEXT_BYTES} bytes (up to {longest}) in rows "
                              f"{_rows_where(too_long)}; XPT v5 cannot hold it and a value is never cut. "
                              "Export as parquet or csv instead")
        return column
    raise ExportError(f"column {name}: type {kind} has no SAS transport v5 form; export as parquet or csv instead")


def write_xpt(con: duckdb.DuckDBPyConnection, table: str, source: str, path: Path) -> ExportResult:
    """The table as a SAS transport v5 file at `path`."""
    import pyreadstat

    arrow = con.sql(f"select * from {source}").to_arrow_table()
    names = xpt_names(arrow.column_names)
    too_long = [c for c in arrow.column_names if len(c) > XPT_LABEL_LENGTH]
    if too_long:
        raise ExportError(f"column name(s) {', '.join(too_long)} longer than {XPT_LABEL_LENGTH} characters cannot "
                          "be kept as the variable's label; export as parquet or csv instead")
    converted = pa.table({names[c]: xpt_column(c, arrow.column(c)) for c in arrow.column_names})
    # dates, times as Python objects: pyreadstat writes those as SAS dates and times
    frame = converted.to_pandas(date_as_object=True)
    dataset = xpt_dataset_name(table)
    pyreadstat.write_xport(frame, str(path), file_label=f"KAP-TRD-01 {table}"[:XPT_LABEL_LENGTH],
                           column_labels=list(arrow.column_names), table_name=dataset, file_format_version=5)
    return ExportResult(table, "xpt", path, arrow.num_rows, names=names, dataset_name=dataset)

