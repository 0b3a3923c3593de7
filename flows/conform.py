"""Stage 4 — conform: delivered text to typed values, in the site's dialect (DTS §2, §3).

Generates one DuckDB `select` per dataset from the dataset's columns and the source's settings.
For every column it yields the typed value, the text as delivered (`<col>__raw`, null when the
site's missing code was sent) and whether a non-missing value failed to parse (`<col>__bad`,
which quarantines the record as UNPARSEABLE). A value is never rounded or guessed: an integer
must look like one, a decimal must use the site's separator, a date the site's format.
"""

from __future__ import annotations

from flows.read import RECORD, ROW
from flows.registry import Source, date_shape
from schemas.datasets import Column, Dataset

RAW = "__raw"
BAD = "__bad"
UNIT = "__unit"  # the delivered column a converted value came from (e.g. weight_lb)


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def missing_to_null(expr: str, missing_values: tuple[str, ...]) -> str:
    if not missing_values:
        return expr
    codes = ", ".join(quote_literal(v) for v in missing_values)
    return f"case when {expr} in ({codes}) then null else {expr} end"


def parse_expression(raw: str, column: Column, source: Source, factor: float = 1.0) -> str:
    """Typed value of the text expression `raw` (already null when missing)."""
    if column.kind == "text":
        return raw
    if column.kind == "integer":
        return f"case when regexp_full_match({raw}, '[+-]?[0-9]+') then try_cast({raw} as bigint) end"
    if column.kind == "decimal":
        sep = source.decimal or "."
        pattern = "[+-]?([0-9]+([" + sep + "][0-9]*)?|[" + sep + "][0-9]+)"
        number = f"try_cast(replace({raw}, {quote_literal(sep)}, '.') as double)"
        scaled = number if factor == 1.0 else f"{number} * {factor!r}"
        return f"case when regexp_full_match({raw}, {quote_literal(pattern)}) then {scaled} end"
    if column.kind == "date":
        # DuckDB's strptime forgives spaces and missing zeros; the site's format is the contract.
        shape = quote_literal(date_shape(source.date_format))
        return (f"case when regexp_full_match({raw}, {shape}) "
                f"then cast(try_strptime({raw}, {quote_literal(source.date_format)}) as date) end")
    if column.kind == "time":
        # `HH:MM` to the letter (DTS §3): `9:30` is not the contract's shape, like `9h30`
        return (f"case when regexp_full_match({raw}, '[0-9]{{2}}:[0-9]{{2}}') "
                f"then cast(try_strptime({raw}, '%H:%M') as time) end")
    raise ValueError(f"unknown column kind {column.kind!r}")


SQL_TYPES = {"text": "varchar", "integer": "bigint", "decimal": "double", "date": "date", "time": "time"}


def delivered_as(dataset: Dataset, column: Column, delivered: list[str]) -> tuple[str, float]:
    """The delivered column a conformed column is read from, and the factor to its unit: the
    column itself, else its registered alternative (weight_lb for weight_kg) when that came."""
    if column.name not in delivered and column.name in dataset.alternatives:
        alternative, factor = dataset.alternatives[column.name]
        if alternative in delivered:
            return alternative, factor
    return column.name, 1.0


def texts_select(dataset: Dataset, source: Source, delivered: list[str], table: str,
                 passthrough: tuple[str, ...] = (), keep: tuple[str, ...] = (RECORD, ROW, "_copies")) -> str:
    """The `select` of every conformed column's text as delivered (`<col>__raw`), null where the
    site's missing code was sent or the column was not delivered, over the raw text table of one
    delivered dataset."""
    texts = [*keep, *(quote_ident(c) for c in passthrough)]
    for column in dataset.columns:
        delivered_name, _ = delivered_as(dataset, column, delivered)
        raw = quote_ident(column.name + RAW)
        texts.append(f"{missing_to_null(quote_ident(delivered_name), source.missing_values)} as {raw}"
                     if delivered_name in delivered else f"null::varchar as {raw}")
    return f"select {', '.join(texts)} from {table}"


def typed_select(dataset: Dataset, source: Source, delivered: list[str], table: str,
                 passthrough: tuple[str, ...] = (), keep: tuple[str, ...] = (RECORD, ROW, "_copies")) -> str:
    """The `select` of every conformed column typed (`<col>`) beside its text (`<col>__raw`).

    Two layers, each computing a value once (DuckDB does not share a repeated expression):
    `texts_select`, then the typed value parsed from each text."""
    typed = [*keep, *(quote_ident(c) for c in passthrough)]
    for column in dataset.columns:
        delivered_name, factor = delivered_as(dataset, column, delivered)
        name, raw = quote_ident(column.name), quote_ident(column.name + RAW)
        typed.append(f"{parse_expression(raw, column, source, factor)} as {name}" if delivered_name in delivered
                     else f"null::{SQL_TYPES[column.kind]} as {name}")
        typed.append(raw)
    return (f"select {', '.join(typed)}\n"
            f"from ({texts_select(dataset, source, delivered, table, passthrough, keep)})")


def conform_select(dataset: Dataset, source: Source, delivered: list[str], table: str,
                   passthrough: tuple[str, ...] = (), keep: tuple[str, ...] = (RECORD, ROW, "_copies")) -> str:
    """The `select` that turns the raw text table of one delivered dataset into conformed columns:
    `typed_select`, and for every column whether a text failed to parse (`<col>__bad`) and the
    delivered column it came from (`<col>__unit`). `passthrough` columns (lineage a format adds,
    such as a REDCap form status) are kept as they are."""
    columns = [*keep, *(quote_ident(c) for c in passthrough)]
    for column in dataset.columns:
        name, raw = quote_ident(column.name), quote_ident(column.name + RAW)
        delivered_name, _ = delivered_as(dataset, column, delivered)
        columns += [
            name,
            raw,
            f"{raw} is not null and {name} is null as {quote_ident(column.name + BAD)}",
            f"{quote_literal(delivered_name)} as {quote_ident(column.name + UNIT)}",
        ]
    return (f"select {', '.join(columns)}\n"
            f"from ({typed_select(dataset, source, delivered, table, passthrough, keep)})")


def collapse_select(delivered: list[str], table: str) -> str:
    """Identical records (every delivered column the dataset knows) collapse to their first one."""
    columns = ", ".join(quote_ident(c) for c in delivered)
    return (f"select min({RECORD}) as {RECORD}, min({ROW}) as {ROW}, count(*) - 1 as _copies, {columns} "
            f"from {table} group by all")
