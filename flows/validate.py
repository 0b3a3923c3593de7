"""Stage 5 — validate: every conformed record against its dataset's pandera model and the
rules between records (DTS §3, §6), ending in one reason code per quarantined record.

Row rules come from the pandera models of `schemas/models.py`, compiled to DuckDB SQL (`model_rules`):
a built-in check from its name and statistics, a dataframe check from the SQL twin it carries. They
run where the records are, one filtered scan per rule, instead of moving every record through
pandera (the tests hold the SQL to pandera's verdict). Rules across records (keys, known subjects)
are DuckDB queries too. Each finding is a (record, reason, column) candidate; a record keeps the
first reason in the DTS §6 order, and within it the first column of the dataset's column order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flows.conform import BAD, RAW, UNIT, quote_ident, quote_literal
from flows.read import RECORD, ROW, MalformedRecord
from schemas.datasets import REASON_ORDER, Dataset

RANK = {reason: i for i, reason in enumerate(REASON_ORDER)}


def _sql_value(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"no SQL literal for {value!r}")
    return quote_literal(value) if isinstance(value, str) else repr(value)


def _values(values: Any) -> str:
    return "(" + ", ".join(_sql_value(v) for v in values) + ")"


def _in_range(column: str, stats: dict[str, Any]) -> str:
    low = ">=" if stats.get("include_min", True) else ">"
    high = "<=" if stats.get("include_max", True) else "<"
    return (f"{column} {low} {_sql_value(stats['min_value'])} and "
            f"{column} {high} {_sql_value(stats['max_value'])}")


def _str_matches(column: str, stats: dict[str, Any]) -> str:
    # pandera anchors the pattern at the start, as `re.match` does
    pattern = stats["pattern"] if stats["pattern"].startswith("^") else "^" + stats["pattern"]
    return f"regexp_matches({column}, {quote_literal(pattern)})"


# pandera's built-in checks as DuckDB predicates over a non-null value (pandera skips nulls).
BUILTIN_SQL: dict[str, Callable[[str, dict[str, Any]], str]] = {
    "in_range": _in_range,
    "isin": lambda c, s: f"{c} in {_values(s['allowed_values'])}",
    "notin": lambda c, s: f"{c} not in {_values(s['forbidden_values'])}",
    "str_matches": _str_matches,
    "greater_than": lambda c, s: f"{c} > {_sql_value(s['min_value'])}",
    "greater_than_or_equal_to": lambda c, s: f"{c} >= {_sql_value(s['min_value'])}",
    "less_than": lambda c, s: f"{c} < {_sql_value(s['max_value'])}",
    "less_than_or_equal_to": lambda c, s: f"{c} <= {_sql_value(s['max_value'])}",
    "equal_to": lambda c, s: f"{c} = {_sql_value(s['value'])}",
    "not_equal_to": lambda c, s: f"{c} <> {_sql_value(s['value'])}",
}


@dataclass(frozen=True)
class Rule:
    """One row rule of a model: the record fails it where `passes` is not true."""

    reason_code: str
    column_name: str
    detail: str
    passes: str
    # how pandera names a failure of this rule: (its column, or the model for a dataframe check; check)
    pandera_case: tuple[str, str]


def model_rules(dataset: Dataset) -> list[Rule]:
    """Every row rule of the dataset's pandera model, as SQL over its conformed columns:
    `not_nullable` means MISSING_REQUIRED; a built-in check OUT_OF_RANGE, or the reason in its
    column's metadata; a dataframe check named `<REASON>:<column>` that reason for that column."""
    schema = dataset.model.to_schema()
    rules = []
    for name, column in schema.columns.items():
        ident = quote_ident(name)
        if not column.nullable:
            rules.append(Rule("MISSING_REQUIRED", name, "not_nullable", f"{ident} is not null", (name, "not_nullable")))
        reason = (column.metadata or {}).get("reason", "OUT_OF_RANGE")
        for check in column.checks:
            if check.name not in BUILTIN_SQL:
                raise ValueError(f"{dataset.name}.{name}: no SQL for pandera check {check.name!r}")
            detail = check.error or check.name
            predicate = BUILTIN_SQL[check.name](ident, check.statistics)
            rules.append(Rule(reason, name, detail, f"{ident} is null or ({predicate})", (name, detail)))
    for check in schema.checks:
        reason, _, target = check.name.partition(":")
        if reason not in RANK or target not in schema.columns:
            raise ValueError(f"dataframe check {check.name!r} of {dataset.name} is not named <REASON>:<column>")
        sql = (check.statistics or {}).get("sql")
        if not sql:
            raise ValueError(f"dataframe check {check.name!r} of {dataset.name} has no SQL twin (statistics['sql'])")
        rules.append(Rule(reason, target, check.description or check.name, sql, (schema.name, check.name)))
    return rules


def model_findings_sql(dataset: Dataset, conformed: str) -> str:
    """Findings (record, reason, column, detail) of every row rule: one filtered scan per rule."""
    return "\nunion all\n".join(
        f"select {RECORD}, {quote_literal(r.reason_code)} as reason_code, "
        f"{quote_literal(r.column_name)} as column_name, {quote_literal(r.detail)} as detail "
        f"from {conformed} where ({r.passes}) is not true"
        for r in model_rules(dataset))


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
