"""The check catalogue (`ref.checks`, `marts.data_quality_checks`) and the data dictionary
(`COMMENT ON`, `docs/dictionary.md`): every rule listed once, every violation counted against a
listed rule, every table and column described."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from flows.catalogue import check_catalogue, describe_builtin, dictionary, rule_table, undocumented
from flows.generate import generate_trial
from flows.ingest_transfers import run_ingest
from flows.settings import SQL_DIR
from flows.unblinded import KEY_ENV
from flows.warehouse import connect
from schemas.datasets import DATASETS, RANDOMIZATION

KAHN = {"conformance": {"value", "relational", "computational"}, "completeness": {None},
        "plausibility": {"atemporal", "temporal", "uniqueness"}}


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every source and format of a generated trial, with its injected defects, ingested."""
    root = tmp_path_factory.mktemp("catalogue")
    generate_trial(root / "inbox", seed=9, participants_per_site=12)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, "catalogue-test-key")
        run_ingest(root / "inbox", root / "wh")
    return root / "wh"


@pytest.fixture(scope="module")
def con(warehouse: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(warehouse, read_only=True)
    yield connection
    connection.close()


def test_every_rule_of_every_model_is_catalogued_once() -> None:
    ids = {c.check_id for c in check_catalogue()}
    assert len(ids) == len(check_catalogue())
    for dataset in (*DATASETS.values(), RANDOMIZATION):
        schema = dataset.model.to_schema()
        for check in schema.checks:
            reason, _, column = check.name.partition(":")
            assert f"{dataset.name}.{reason}.{column}" in ids
        for name, column in schema.columns.items():
            if not column.nullable:
                assert f"{dataset.name}.MISSING_REQUIRED.{name}" in ids
            if column.checks:
                assert f"{dataset.name}.{(column.metadata or {}).get('reason', 'OUT_OF_RANGE')}.{name}" in ids
        assert f"{dataset.name}.CONFLICTING_DUPLICATE" in ids
        assert (f"{dataset.name}.UNKNOWN_SUBJECT.subject_id" in ids) == dataset.site_scoped


def test_every_entry_has_a_kahn_category_a_level_a_severity_and_words() -> None:
    for check in check_catalogue():
        assert check.subcategory in KAHN[check.category], check
        assert check.level in {"field", "record", "table", "cross-table"}
        assert check.severity in {"error", "warning", "safety"}
        assert check.description and check.implemented_by
        assert (check.severity == "error") == (check.check_kind == "quarantine")


def test_the_catalogue_lists_exactly_the_flags_the_flag_model_raises() -> None:
    model = (SQL_DIR / "ops" / "current_flags.sql").read_text(encoding="utf-8")
    # each branch of the model starts with its flag type, then the subject
    raised = set(re.findall(r"'([A-Z_]+)'(?: as flag_type)?,\s+(?:\w+\.)?subject_id", model))
    assert set(rule_table()["flags"]) == raised
    assert len(raised) == 10


def test_a_builtin_check_reads_as_words() -> None:
    assert describe_builtin("in_range", {"min_value": 5, "max_value": 600}) == "between 5 and 600"
    assert describe_builtin("isin", {"allowed_values": ["Y", "N"]}) == "one of Y, N"
    assert describe_builtin("less_than_or_equal_to", {"max_value": 800}) == "<= 800"


def test_every_quarantined_record_and_open_flag_counts_against_a_listed_check(con: duckdb.DuckDBPyConnection) -> None:
    assert con.execute("select count(*) from ref.checks").fetchone()[0] == len(check_catalogue())
    unlisted = con.execute("select check_id, violations from marts.data_quality_checks where check_kind is null")
    assert unlisted.fetchall() == []
    quarantined, flagged = con.execute("""
        with current_transfers as (
            select source, max(transfer_id) as transfer_id from ops.transfers where status = 'LANDED' group by all
        )
        select
            (select count(*) from ops.quarantine join current_transfers using (source, transfer_id)),
            (select count(*) from ops.flags where status = 'OPEN')""").fetchone()
    assert quarantined > 0 and flagged > 0  # the generated trial's injected defects
    by_kind = dict(con.execute("select check_kind, sum(violations) from marts.data_quality_checks group by all")
                   .fetchall())
    assert by_kind == {"quarantine": quarantined, "flag": flagged}


def test_data_quality_counts_violations_by_kahn_category(con: duckdb.DuckDBPyConnection) -> None:
    mismatched = con.execute("""
        with by_site as (
            select site_id, sum(violations) as violations from marts.data_quality_checks group by all
        ),
        categorised as (
            select site_id,
                sum(violations_conformance + violations_completeness + violations_plausibility) as violations
            from marts.data_quality group by all
        )
        select * from by_site full join categorised using (site_id)
        where by_site.violations is distinct from categorised.violations""").fetchall()
    assert mismatched == []
    # the passing checks are listed too, as the Data Quality Dashboard lists them
    assert con.execute("select count(*) filter (where passed), count(*) filter (where not passed) "
                       "from marts.data_quality_checks").fetchone() > (0, 0)


def test_every_table_and_column_of_the_warehouse_is_described(con: duckdb.DuckDBPyConnection) -> None:
    assert undocumented(con) == []


def test_the_dictionary_describes_only_what_exists(con: duckdb.DuckDBPyConnection) -> None:
    tables = {t: set(cols) for t, cols in con.execute("""
        select schema_name || '.' || table_name, list(column_name) from duckdb_columns()
        where schema_name in ('core', 'ops', 'marts', 'ref') group by all""").fetchall()}
    for table, spec in dictionary()["tables"].items():
        assert table in tables, table
        assert set(spec.get("columns") or {}) <= tables[table], table


def test_comments_carry_the_models_descriptions(con: duckdb.DuckDBPyConnection) -> None:
    comment = con.execute("select comment from duckdb_columns() where schema_name = 'core' "
                          "and table_name = 'vitals' and column_name = 'sbp'").fetchone()[0]
    assert comment == DATASETS["vitals"].model.to_schema().columns["sbp"].description
    table_comment = con.execute("select comment from duckdb_tables() where schema_name = 'marts' "
                                "and table_name = 'data_quality_checks'").fetchone()[0]
    assert "Data Quality Dashboard" in table_comment


def test_the_dictionary_document_lists_every_table_and_the_catalogue(warehouse: Path,
                                                                     con: duckdb.DuckDBPyConnection) -> None:
    text = (warehouse / "docs" / "dictionary.md").read_text(encoding="utf-8")
    for (table,) in con.execute("select distinct schema_name || '.' || table_name from duckdb_columns() "
                                "where schema_name in ('core', 'ops', 'marts', 'ref')").fetchall():
        assert f"## `{table}`" in text
    assert "| `vitals.OUT_OF_RANGE.sbp` | quarantine | field | plausibility/atemporal | error |" in text
