"""Stage 5 — validate: every conformed record against its dataset's pandera model and the
rules between records (DTS §3, §6), ending in one reason code per quarantined record.

Row rules come from the pandera models of `schemas/models.py`, compiled to DuckDB SQL (`model_rules`):
a built-in check from its name and statistics, a dataframe check from the SQL twin it carries. They
run where the records are instead of moving every record through pandera (the tests hold the SQL
to pandera's verdict). Rules across records (keys, known subjects) are DuckDB queries too.

Every way a record can fail is a `Verdict`, and the verdicts are ordered as DTS §6 chooses a
record's one reason: by reason, then by the dataset's column order, then by the model's order of
rules. One `case` over them (`first_failure_sql`) gives each record, in the same scan that types
it, the index of the first verdict it fails; `quarantine_select` turns that into its reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flows.conform import RAW, quote_ident, quote_literal
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


def unknown_subject(source_id: str, known_subjects: str | None, site_group: bool = False) -> tuple[str, str]:
    """When a record's subject is unknown here, as SQL over its columns, and which way (its
    detail): of another site (by the id's prefix, or a REDCap row's data access group), or
    (outside participants) not among the participants landing from this transfer."""
    other_site = f"split_part(subject_id, '-', 1) <> {quote_literal(source_id)}"
    other_group = (f"coalesce(_site_group <> {quote_literal(source_id.lower())}, false)" if site_group
                   else "false")
    not_landing = "false" if known_subjects is None else f"subject_id not in (select subject_id from {known_subjects})"
    fails = f"subject_id is not null and ({other_site} or {other_group} or {not_landing})"
    detail = (f"case when {other_site} then 'other site' when {other_group} then 'other group' "
              "else 'not landing' end")
    return fails, detail


def conflicting_duplicates_sql(dataset: Dataset, conformed: str) -> str:
    """Records sharing a key with another, different record: all of them (DTS §6), with the first
    column they differ in. Identical records were collapsed before, so any two left with one key
    differ somewhere. (`min <> max` says the same as `count(distinct) > 1`, at a fraction of the
    planning: DuckDB plans each distinct aggregate on its own, ~20 ms a statement.)"""
    key = ", ".join(quote_ident(k) for k in dataset.key)
    not_null = " and ".join(f"{quote_ident(k)} is not null" for k in dataset.key)
    others = {c.name: quote_ident(c.name + RAW) for c in dataset.columns if c.name not in dataset.key}
    texts = ", ".join(f"coalesce({raw}, '\x00') as {raw}" for raw in others.values())
    differing = " ".join(f"when min({raw}) <> max({raw}) then {quote_literal(name)}" for name, raw in others.items())
    return f"""
        with keyed as (
            select {RECORD}, {key}, {texts} from {conformed} where {not_null}
        ),
        conflicts as (
            select {key}, count(*) as copies, case {differing} else {quote_literal(dataset.key[-1])} end as column_name
            from keyed
            group by {key}
            having count(*) > 1
        )
        select keyed.{RECORD}, conflicts.column_name, conflicts.copies::varchar || ' records share this key' as detail
        from keyed join conflicts using ({key})"""


@dataclass(frozen=True)
class Verdict:
    """One way a record can fail."""

    reason_code: str
    # null where each failing record names its own (a conflicting duplicate's first difference)
    column_name: str | None
    # null where each failing record has its own (which way a subject is unknown, how many share a key)
    detail: str | None
    # SQL over `typed_select`'s columns, true where the record fails; null for a verdict between
    # records, which only the records that share a key can fail (conflicting duplicates)
    fails: str | None


def verdicts(dataset: Dataset, unknown: str | None) -> list[Verdict]:
    """Every way a record of the dataset can fail, in the order its one reason is chosen: the DTS
    §6 order of reasons, then the dataset's column order, then the model's order of rules.
    `unknown`: when a subject is unknown here (`unknown_subject`), for a dataset that names one."""
    found = [Verdict("UNPARSEABLE", c.name, c.kind,
                     f"{quote_ident(c.name + RAW)} is not null and {quote_ident(c.name)} is null")
             for c in dataset.columns]
    found += [Verdict(r.reason_code, r.column_name, r.detail, f"({r.passes}) is not true")
              for r in model_rules(dataset)]
    if unknown is not None:
        found.append(Verdict("UNKNOWN_SUBJECT", "subject_id", None, unknown))
    found.append(Verdict("CONFLICTING_DUPLICATE", None, None, None))
    position = {c.name: i for i, c in enumerate(dataset.columns)}
    return sorted(found, key=lambda v: (RANK[v.reason_code], position.get(v.column_name or "", len(position))))


def first_failure_sql(found: list[Verdict]) -> str:
    """The index in `found` of the first verdict a record fails on its own; null when it fails none."""
    return "case " + " ".join(f"when {v.fails} then {i}" for i, v in enumerate(found) if v.fails) + " end"


def conflict_index(found: list[Verdict]) -> int:
    return next(i for i, v in enumerate(found) if v.reason_code == "CONFLICTING_DUPLICATE")


def shared_key_records_sql(dataset: Dataset, checked: str) -> str:
    """The `_record`s of `checked` whose typed key another record shares (a null key part counts
    as a value): the only ones that may be identical copies or conflicting duplicates. Grouped by
    a hash of the key; a collision only adds records to look at."""
    key = ", ".join(quote_ident(k) for k in dataset.key)
    return f"""
        with keyed as materialized (select {RECORD}, hash({key}) as _key from {checked})
        select {RECORD} from keyed
        where _key in (select _key from keyed group by _key having count(*) > 1)"""


def _literal_or_null(value: str | None) -> str:
    return "null::varchar" if value is None else quote_literal(value)


def quarantine_select(dataset: Dataset, found: list[Verdict], checked: str, texts: str, conflicts: str,
                      unknown_detail: str, delivered_names: dict[str, str]) -> str:
    """One quarantine record per failed record of `checked` (its `_rule` the index of its first
    verdict): the reason, the column as delivered (`delivered_names`: a conformed column read from
    another, such as weight_kg from weight_lb), its value as delivered and the detail. `texts` is
    `texts_select` over at least the failed records."""
    rows = ", ".join(f"({i}, {quote_literal(v.reason_code)}, {_literal_or_null(v.column_name)}, "
                     f"{_literal_or_null(v.detail)})" for i, v in enumerate(found))
    column = "coalesce(verdicts.column_name, conflicts.column_name)"
    value = f"case {column} " + " ".join(
        f"when {quote_literal(c.name)} then texts.{quote_ident(c.name + RAW)}" for c in dataset.columns) + " end"
    renamed = {name: delivered for name, delivered in delivered_names.items() if name != delivered}
    unit = (f"case {column} " + " ".join(f"when {quote_literal(name)} then {quote_literal(delivered)}"
                                         for name, delivered in renamed.items()) + f" else {column} end"
            if renamed else column)
    return f"""
        select failed.{RECORD}, failed.{ROW} as source_row, verdicts.reason_code, {unit} as column_name,
               {value} as value,
               case verdicts.reason_code when 'UNKNOWN_SUBJECT' then {unknown_detail}
                    when 'CONFLICTING_DUPLICATE' then conflicts.detail else verdicts.detail end as detail,
               {column} as conformed_column, failed.subject_id
        from (select * from {checked} where _rule is not null) as failed
        join (values {rows}) as verdicts(_rule, reason_code, column_name, detail) using (_rule)
        join ({texts}) as texts using ({RECORD})
        left join {conflicts} as conflicts using ({RECORD})"""


def malformed_findings(records: list[MalformedRecord]) -> list[dict[str, object]]:
    return [{RECORD: None, "source_row": m.line, "reason_code": "UNPARSEABLE", "column_name": None, "value": None,
             "detail": f"the record has {m.fields} fields where the header has {m.expected}",
             "conformed_column": None, "subject_id": None} for m in records]
