"""The check catalogue and the data dictionary: what the pipeline enforces and what every table
and column means, each from one source, for `ref.checks`, `COMMENT ON` and `docs/`.

The rules of the pandera models are read from the models (schemas/models.py), so a rule added
there is catalogued without another edit; the SQL rules and the flags are listed in
schemas/checks.yaml. Column descriptions come from the models' fields for delivered columns
and from schemas/dictionary.yaml for everything else.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import yaml

from flows.conform import quote_ident, quote_literal
from flows.settings import SCHEMAS_DIR
from schemas.datasets import DATASETS, RANDOMIZATION, REASON_ORDER, Dataset

# A built-in pandera check means OUT_OF_RANGE or, where the column says so, INVALID_VISIT
# (see schemas/models.py); a value set or a pattern is a conformance rule, a bound a
# plausibility one.
CONFORMANCE_CHECKS = frozenset({"isin", "str_matches", "notin"})
REASON_CATEGORY = {
    "MISSING_REQUIRED": ("completeness", None),
    "OUT_OF_RANGE": ("plausibility", "atemporal"),
    "INVALID_VISIT": ("conformance", "value"),
    "INCONSISTENT": ("plausibility", "atemporal"),
}


@dataclass(frozen=True)
class Check:
    check_id: str
    check_kind: str  # quarantine | flag
    dataset: str
    column_name: str | None
    reason_code: str
    level: str  # field | record | table | cross-table
    category: str  # conformance | completeness | plausibility
    subcategory: str | None
    severity: str  # error | warning | safety
    implemented_by: str
    description: str


CHECK_COLUMNS = [f.name for f in fields(Check)]


def describe_builtin(name: str, statistics: dict[str, Any]) -> str:
    """A pandera built-in check in words, e.g. `in_range(5, 600)` → `between 5 and 600`."""
    match name:
        case "in_range":
            return f"between {statistics['min_value']} and {statistics['max_value']}"
        case "isin":
            return "one of " + ", ".join(str(v) for v in statistics["allowed_values"])
        case "str_matches":
            return f"matches {statistics['pattern']}"
        case "greater_than":
            return f"> {statistics['min_value']}"
        case "greater_than_or_equal_to":
            return f">= {statistics['min_value']}"
        case "less_than":
            return f"< {statistics['max_value']}"
        case "less_than_or_equal_to":
            return f"<= {statistics['max_value']}"
    return name


def model_checks(dataset: Dataset) -> list[Check]:
    """Every rule of a dataset's pandera model, one entry per column and reason."""
    schema = dataset.model.to_schema()
    model = f"schemas/models.py {dataset.model.__name__}"
    found: list[Check] = []
    kinds = {c.name: c.kind for c in dataset.columns}
    for name, kind in kinds.items():
        if kind != "text":
            found.append(Check(f"{dataset.name}.UNPARSEABLE.{name}", "quarantine", dataset.name, name, "UNPARSEABLE",
                               "field", "conformance", "value", "error", "flows/conform.py",
                               f"{name} reads as {'an' if kind[0] in 'aeiou' else 'a'} {kind}"))
    for name, column in schema.columns.items():
        if not column.nullable:
            found.append(Check(f"{dataset.name}.MISSING_REQUIRED.{name}", "quarantine", dataset.name, name,
                               "MISSING_REQUIRED", "field", "completeness", None, "error", model,
                               f"{name} is present"))
        if column.checks:
            reason = (column.metadata or {}).get("reason", "OUT_OF_RANGE")
            conformance = any(c.name in CONFORMANCE_CHECKS for c in column.checks)
            category, subcategory = ("conformance", "value") if conformance else REASON_CATEGORY[reason]
            rule = " and ".join(describe_builtin(c.name, c.statistics) for c in column.checks)
            found.append(Check(f"{dataset.name}.{reason}.{name}", "quarantine", dataset.name, name, reason, "field",
                               category, subcategory, "error", model, f"{name} {rule}"))
    for check in schema.checks:
        reason, _, column = check.name.partition(":")
        category, subcategory = REASON_CATEGORY[reason]
        if reason == "INCONSISTENT" and kinds.get(column) == "date":
            subcategory = "temporal"
        entry = Check(f"{dataset.name}.{reason}.{column}", "quarantine", dataset.name, column, reason, "record",
                      category, subcategory, "error", model, check.description or check.name)
        # a quarantine record names dataset, reason and column: rules that share all three are one
        # entry, the record-level one, so every quarantined record maps to exactly one check
        same = next((i for i, c in enumerate(found) if c.check_id == entry.check_id), None)
        if same is None:
            found.append(entry)
        else:
            found[same] = replace(entry, description=f"{found[same].description}; {entry.description}")
    # a value delivered in another unit is checked after conversion, and reported under the
    # column it was delivered as (weight_lb): the same rules, listed for that column
    for name, (alternative, _) in dataset.alternatives.items():
        found += [replace(c, check_id=f"{dataset.name}.{c.reason_code}.{alternative}", column_name=alternative,
                          description=f"{c.description} (delivered as {alternative}, converted)")
                  for c in list(found) if c.column_name == name]
    return found


@cache
def rule_table() -> dict[str, Any]:
    with open(SCHEMAS_DIR / "checks.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def record_rule_checks(dataset: Dataset) -> list[Check]:
    return [Check(f"{dataset.name}.{rule['reason']}" + (f".{rule['column']}" if rule["column"] else ""),
                  "quarantine", dataset.name, rule["column"], rule["reason"], rule["level"], rule["category"],
                  rule["subcategory"], "error", rule["implemented_by"], rule["description"])
            for rule in rule_table()["record_rules"]
            if dataset.site_scoped or not rule.get("site_scoped_only")]


def flag_checks() -> list[Check]:
    return [Check(f"{dataset}.{flag_type}", "flag", dataset, None, flag_type, "record", spec["category"],
                  spec["subcategory"], spec["severity"], "sql/ops/current_flags.sql", spec["description"])
            for flag_type, spec in rule_table()["flags"].items() for dataset in spec["datasets"]]


@cache
def check_catalogue() -> tuple[Check, ...]:
    """Every rule, listed once, in DTS §6 order of reasons within each dataset, then the flags."""
    checks: list[Check] = []
    for dataset in (*DATASETS.values(), RANDOMIZATION):
        entries = model_checks(dataset) + record_rule_checks(dataset)
        checks += sorted(entries, key=lambda c: (REASON_ORDER.index(c.reason_code), c.column_name or ""))
    checks += flag_checks()
    ids = [c.check_id for c in checks]
    if len(ids) != len(set(ids)):
        raise ValueError(f"check ids listed twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    return tuple(checks)


@cache
def dictionary() -> dict[str, Any]:
    with open(SCHEMAS_DIR / "dictionary.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def model_descriptions() -> dict[str, dict[str, str]]:
    """Descriptions of the delivered columns, per core table, from the dataset models."""
    return {f"core.{d.name}": {c.name: c.description for c in d.columns} for d in DATASETS.values()}


def describe(table: str, columns: list[str]) -> tuple[str | None, dict[str, str]]:
    """A table's description and its columns' descriptions (those the sources have)."""
    spec = dictionary()["tables"].get(table, {})
    own = spec.get("columns") or {}
    models = model_descriptions().get(table, {})
    shared = dictionary()["shared_columns"]
    described = {}
    for column in columns:
        text = own.get(column) or models.get(column) or shared.get(column)
        if text:
            described[column] = text
    return spec.get("description"), described


def warehouse_columns(con: duckdb.DuckDBPyConnection) -> dict[str, list[tuple[str, str]]]:
    """The tables of the contract's schemas in the connected database: name → [(column, type)]."""
    rows = con.execute("""
        select schema_name || '.' || table_name, list((column_name, data_type) order by column_index)
        from duckdb_columns()
        where database_name = current_database() and schema_name in ('core', 'ops', 'marts', 'ref')
        group by all order by all""").fetchall()
    return {table: [tuple(c.values()) if isinstance(c, dict) else tuple(c) for c in columns]
            for table, columns in rows}


def undocumented(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Tables and columns of the database the dictionary does not describe."""
    missing = []
    for table, columns in warehouse_columns(con).items():
        description, described = describe(table, [c for c, _ in columns])
        if not description:
            missing.append(table)
        missing += [f"{table}.{c}" for c, _ in columns if c not in described]
    return missing


def current_comments(con: duckdb.DuckDBPyConnection) -> tuple[dict[str, str], dict[tuple[str, str], str]]:
    """The comments the database holds: by table, and by (table, column). Views count as tables."""
    tables = dict(con.execute("""
        select schema_name || '.' || table_name, comment from duckdb_tables()
        where database_name = current_database()
        union all
        select schema_name || '.' || view_name, comment from duckdb_views()
        where database_name = current_database() and not internal""").fetchall())
    columns = {(t, c): text for t, c, text in con.execute("""
        select schema_name || '.' || table_name, column_name, comment from duckdb_columns()
        where database_name = current_database()""").fetchall()}
    return tables, columns


def comment_tables(con: duckdb.DuckDBPyConnection) -> None:
    """`COMMENT ON` every table and column the dictionary describes, so any DuckDB client shows
    them; a comment already right is not written again (each is a catalog write)."""
    table_comments, column_comments = current_comments(con)
    views = {v for (v,) in con.execute("""
        select schema_name || '.' || view_name from duckdb_views()
        where database_name = current_database() and not internal""").fetchall()}
    for table, columns in warehouse_columns(con).items():
        description, described = describe(table, [c for c, _ in columns])
        schema, name = table.split(".")
        target = f"{quote_ident(schema)}.{quote_ident(name)}"
        statements = []
        if description and table_comments.get(table) != description.strip():
            kind = "view" if table in views else "table"
            statements.append(f"comment on {kind} {target} is {quote_literal(description.strip())}")
        statements += [f"comment on column {target}.{quote_ident(column)} is {quote_literal(text.strip())}"
                       for column, text in described.items() if column_comments.get((table, column)) != text.strip()]
        if statements:
            # one round trip per table: a statement each costs a catalog write each
            con.execute(";\n".join(statements))


def dictionary_markdown(con: duckdb.DuckDBPyConnection) -> str:
    """The data dictionary of the connected warehouse, from its comments, and the check catalogue."""
    comments, column_comments = current_comments(con)
    lines = ["# KAP-TRD-01 warehouse: data dictionary", "",
             "Generated from `schemas/dictionary.yaml` and the dataset models after every run; "
             "the same text is in the warehouse as `COMMENT ON` (`duckdb_columns().comment`).", ""]
    for table, columns in warehouse_columns(con).items():
        lines += [f"## `{table}`", "", (comments.get(table) or "").strip(), "",
                  "| column | type | description |", "|---|---|---|"]
        lines += [f"| `{c}` | {t} | {_cell(column_comments.get((table, c)) or '')} |" for c, t in columns]
        lines.append("")
    lines += ["## Check catalogue (`ref.checks`)", "",
              "| check | kind | level | category | severity | description |", "|---|---|---|---|---|---|"]
    # the catalogue as the warehouse holds it (`ref.checks`, in the order it was written)
    checks = con.execute(f"select {', '.join(CHECK_COLUMNS)} from ref.checks order by rowid").fetchall()
    lines += [f"| `{c.check_id}` | {c.check_kind} | {c.level} | {c.category}"
              f"{'/' + c.subcategory if c.subcategory else ''} | {c.severity} | {_cell(c.description)} |"
              for c in (Check(*row) for row in checks)]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_dictionary(con: duckdb.DuckDBPyConnection, docs: Path) -> Path:
    """`docs/dictionary.md`, written beside and renamed in."""
    docs.mkdir(parents=True, exist_ok=True)
    target = docs / "dictionary.md"
    beside = target.with_name(".dictionary.md.tmp")
    beside.write_text(dictionary_markdown(con), encoding="utf-8")
    beside.replace(target)
    return target
