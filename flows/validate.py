"""Stage 5 — validate: every conformed record against its dataset's pandera model and the
rules between records (DTS §3, §6), ending in one reason code per quarantined record.

Row rules come from the pandera model of `schemas/datasets.py`, run on Arrow batches through
its polars backend; rules across records (keys, known subjects) are DuckDB queries. Each
finding is a (line, reason, column) candidate; a record keeps the first reason in the DTS §6
order, and within it the first column of the dataset's column order.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pandera.polars as pa
import polars as pl
import pyarrow as pa_arrow

from flows.conform import BAD, RAW, UNIT, quote_ident, quote_literal
from flows.read import RECORD, ROW, MalformedRecord
from schemas.datasets import REASON_ORDER, Dataset

BATCH_ROWS = 1_000_000
FINDING_SCHEMA = pa_arrow.schema([(RECORD, pa_arrow.int64()), ("reason_code", pa_arrow.string()),
                                  ("column_name", pa_arrow.string()), ("detail", pa_arrow.string())])
RANK = {reason: i for i, reason in enumerate(REASON_ORDER)}


@dataclass(frozen=True)
class Finding:
    record: int
    reason_code: str
    column_name: str
    detail: str


def reason_of_failure(dataset: Dataset, schema_context: str, column: str, check: str) -> tuple[str, str]:
    """(reason code, column) of one pandera failure case (see `schemas.datasets`)."""
    if schema_context == "DataFrameSchema":
        reason, _, target = check.partition(":")
        if reason not in RANK or not target:
            raise ValueError(f"dataframe check {check!r} of {dataset.name} is not named <REASON>:<column>")
        return reason, target
    if check == "not_nullable":
        return "MISSING_REQUIRED", column
    if check.startswith(("dtype(", "column_in_dataframe", "column_in_schema")):
        raise RuntimeError(f"{dataset.name}.{column}: conformed data does not match its model ({check})")
    metadata = dataset.model.to_schema().columns[column].metadata or {}
    return metadata.get("reason", "OUT_OF_RANGE"), column


def model_findings(dataset: Dataset, batch: pl.DataFrame) -> list[Finding]:
    """Row-rule findings of one batch of conformed records."""
    try:
        dataset.model.validate(batch, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
    else:
        return []
    records = batch.get_column(RECORD)
    rules = {c.name: c.description for c in dataset.model.to_schema().checks if c.description}
    findings = []
    for context, column, check, index in cases.select(
            "schema_context", "column", "check", "index").iter_rows():
        if index is None:
            raise RuntimeError(f"{dataset.name}: table-level check {check!r} failed on {column}")
        reason, target = reason_of_failure(dataset, context, column, check)
        findings.append(Finding(int(records[index]), reason, target, rules.get(check, check)))
    return findings


def run_model(con: duckdb.DuckDBPyConnection, dataset: Dataset, conformed: str) -> pa_arrow.Table:
    """Pandera over the conformed table, batch by batch, so memory stays flat."""
    columns = ", ".join([RECORD] + [quote_ident(c.name) for c in dataset.columns])
    reader = con.sql(f"select {columns} from {conformed}").to_arrow_reader(BATCH_ROWS)
    findings: list[Finding] = []
    for batch in reader:
        findings += model_findings(dataset, pl.from_arrow(batch))
    rows = [{RECORD: f.record, "reason_code": f.reason_code, "column_name": f.column_name, "detail": f.detail}
            for f in findings]
    return pa_arrow.Table.from_pylist(rows, schema=FINDING_SCHEMA)


def unparseable_sql(dataset: Dataset, conformed: str) -> str:
    parts = [f"select {RECORD}, 'UNPARSEABLE' as reason_code, {quote_literal(c.name)} as column_name, "
             f"{quote_literal(c.kind)} as detail from {conformed} where {quote_ident(c.name + BAD)}"
             for c in dataset.columns]
    return "\nunion all\n".join(parts)


def unknown_subject_sql(conformed: str, source_id: str, known_subjects: str | None, site_group: bool = False) -> str:
    """Subjects of another site (by their prefix, or a REDCap row's data access group), or
    (outside participants) not landing from this transfer."""
    other_site = f"split_part(subject_id, '-', 1) <> {quote_literal(source_id)}"
    other_group = (f"coalesce(_site_group <> {quote_literal(source_id.lower())}, false)" if site_group
                   else "false")
    not_landing = "false" if known_subjects is None else f"subject_id not in (select subject_id from {known_subjects})"
    detail = (f"case when {other_site} then 'other site' when {other_group} then 'other group' "
              "else 'not landing' end")
    return (f"select {RECORD}, 'UNKNOWN_SUBJECT', 'subject_id', {detail} from {conformed} "
            f"where subject_id is not null and ({other_site} or {other_group} or {not_landing})")


def conflicting_duplicates_sql(dataset: Dataset, conformed: str) -> str:
    """Records sharing a key with another, different record: all of them (DTS §6). Identical
    records were collapsed before, so any two left with one key differ somewhere."""
    key = ", ".join(quote_ident(k) for k in dataset.key)
    not_null = " and ".join(f"{quote_ident(k)} is not null" for k in dataset.key)
    others = [c.name for c in dataset.columns if c.name not in dataset.key]
    differing = " ".join(
        f"when count(distinct coalesce({quote_ident(c + RAW)}, '\x00')) > 1 then {quote_literal(c)}" for c in others)
    return f"""
        with duplicated_keys as (
            select {key} from {conformed} where {not_null} group by all having count(*) > 1
        ),
        duplicated as (
            select * from {conformed} semi join duplicated_keys using ({key})
        ),
        conflicts as (
            select {key}, count(*) as copies, case {differing} else {quote_literal(dataset.key[-1])} end as column_name
            from duplicated
            group by {key}
        )
        select duplicated.{RECORD}, 'CONFLICTING_DUPLICATE', conflicts.column_name,
               conflicts.copies::varchar || ' records share this key'
        from duplicated join conflicts using ({key})"""


def quarantine_select(dataset: Dataset, conformed: str, findings: str) -> str:
    """One quarantine record per record with findings: the first reason, then the first column."""
    column_order = "case column_name " + " ".join(
        f"when {quote_literal(c.name)} then {i}" for i, c in enumerate(dataset.columns)) + " else 999 end"
    reason_rank = "case reason_code " + " ".join(
        f"when {quote_literal(r)} then {i}" for r, i in RANK.items()) + " end"
    value = "case findings.column_name " + " ".join(
        f"when {quote_literal(c.name)} then conformed.{quote_ident(c.name + RAW)}" for c in dataset.columns) + " end"
    unit = "case findings.column_name " + " ".join(
        f"when {quote_literal(c.name)} then conformed.{quote_ident(c.name + UNIT)}" for c in dataset.columns) + " end"
    return f"""
        select distinct on (findings.{RECORD})
               findings.{RECORD}, conformed.{ROW} as source_row, findings.reason_code, {unit} as column_name,
               {value} as value, findings.detail, findings.column_name as conformed_column, conformed.subject_id
        from {findings} as findings
        join {conformed} as conformed using ({RECORD})
        order by findings.{RECORD}, {reason_rank}, {column_order}"""


def malformed_findings(records: list[MalformedRecord]) -> list[dict[str, object]]:
    return [{RECORD: None, "source_row": m.line, "reason_code": "UNPARSEABLE", "column_name": None, "value": None,
             "detail": f"the record has {m.fields} fields where the header has {m.expected}",
             "conformed_column": None, "subject_id": None} for m in records]
