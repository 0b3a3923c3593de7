"""Analyst exports (`flows/export.py`, `kaptrial export`): Parquet and CSV hold the table's values,
XPT v5 reads back in SAS's terms with the original names as labels, and nothing is cut or guessed."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, time
from pathlib import Path

import duckdb
import pyreadstat
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.conform import quote_literal
from flows.export import (
    ExportError,
    UnknownTable,
    available_tables,
    export_table,
    xpt_dataset_name,
    xpt_names,
)
from flows.generate import generate_trial
from flows.ingest_transfers import run_ingest
from flows.unblinded import KEY_ENV
from flows.warehouse import connect

KEY = "export-test-key"
runner = CliRunner()


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    generate_trial(root / "inbox", seed=9, participants_per_site=6)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY)
        run_ingest(root / "inbox", root / "wh", sources=["S01", "S06", "IWRS"])
    return root / "wh"


@pytest.fixture()
def con(warehouse: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(warehouse, read_only=True)
    yield connection
    connection.close()


def differences(con: duckdb.DuckDBPyConnection, table: str, copy: str) -> int:
    """Rows in one and not the other, counting duplicates."""
    row = con.execute(f"""select (select count(*) from (select * from {table} except all select * from {copy}))
                                 + (select count(*) from (select * from {copy} except all select * from {table}))""")
    return row.fetchone()[0]


@pytest.mark.parametrize("table", ["core.assessments", "core.sessions", "ops.transfers"])
def test_parquet_holds_the_tables_rows_and_values(con: duckdb.DuckDBPyConnection, tmp_path: Path,
                                                  table: str) -> None:
    out = tmp_path / "out.parquet"
    result = export_table(con, table, "parquet", out)
    # DuckDB refuses a relation while a result of execute() is half-read: the export leaves none
    assert con.sql("select 1").fetchall() == [(1,)]
    copy = f"read_parquet({quote_literal(str(out))})"
    assert result.rows == con.execute(f"select count(*) from {table}").fetchone()[0] > 0
    assert con.execute(f"select count(*) from {copy}").fetchone()[0] == result.rows
    assert differences(con, table, copy) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out.parquet"]


@pytest.mark.parametrize("table", ["core.assessments", "core.participants", "ops.transfers"])
def test_csv_reads_back_as_the_table(con: duckdb.DuckDBPyConnection, tmp_path: Path, table: str) -> None:
    out = tmp_path / "out.csv"
    result = export_table(con, table, "csv", out)
    types = con.execute(f"select column_name, column_type from (describe {table})").fetchall()
    columns = "{" + ", ".join(f"{quote_literal(n)}: {quote_literal(t)}" for n, t in types) + "}"
    copy = f"read_csv({quote_literal(str(out))}, header = true, columns = {columns})"
    assert con.execute(f"select count(*) from {copy}").fetchone()[0] == result.rows > 0
    assert differences(con, table, copy) == 0


def test_xpt_reads_back_with_sas_names_and_the_original_names_as_labels(con: duckdb.DuckDBPyConnection,
                                                                        tmp_path: Path) -> None:
    out = tmp_path / "sessions.xpt"
    result = export_table(con, "core.sessions", "xpt", out)
    frame, meta = pyreadstat.read_xport(str(out))
    columns = [c for (c,) in con.execute("select column_name from (describe core.sessions)").fetchall()]
    assert len(frame) == result.rows == con.execute("select count(*) from core.sessions").fetchone()[0]
    assert meta.column_labels == columns
    assert list(frame.columns) == [result.names[c] for c in columns]
    assert all(len(n) <= 8 and n == n.upper() for n in frame.columns)
    assert meta.table_name == "SESSIONS" == result.dataset_name

    expected = con.execute("""select session_date, start_time, attended, dose_mg, source_row, subject_id, route
                              from core.sessions""").fetchall()
    names = result.names
    got = list(zip(frame[names["session_date"]], frame[names["start_time"]], frame[names["attended"]],
                   frame[names["dose_mg"]], frame[names["source_row"]], frame[names["subject_id"]],
                   frame[names["route"]], strict=True))
    assert meta.original_variable_types[names["session_date"]] == "DATE"
    assert meta.original_variable_types[names["start_time"]] == "TIME"
    for want, have in zip(expected, got, strict=True):
        session_date, start_time, attended, dose_mg, source_row, subject_id, route = want
        assert have[0] == session_date or (session_date is None and not isinstance(have[0], date))
        assert have[1] == start_time or (start_time is None and not isinstance(have[1], time))
        assert (have[2] == int(attended)) if attended is not None else have[2] != have[2]  # 0/1, NaN when null
        assert (have[3] == pytest.approx(float(dose_mg))) if dose_mg is not None else have[3] != have[3]
        assert have[4] == source_row
        assert have[5] == subject_id
        assert have[6] == (route or "")  # SAS has no null text: blank


def test_xpt_of_an_unblinded_table_needs_the_unblinded_store(warehouse: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "rand.xpt"
    blinded = runner.invoke(app, ["export", "--warehouse", str(warehouse), "--table", "unblinded.randomization",
                                  "--format", "xpt", "--out", str(out)])
    assert blinded.exit_code == 2 and "--unblinded" in blinded.output
    monkeypatch.setenv(KEY_ENV, KEY)
    result = runner.invoke(app, ["export", "--warehouse", str(warehouse), "--table", "unblinded.randomization",
                                 "--format", "xpt", "--out", str(out), "--unblinded"])
    assert result.exit_code == 0, result.output
    frame, meta = pyreadstat.read_xport(str(out))
    assert "arm" in meta.column_labels and len(frame) > 0
    assert "unblinded data" in result.output


def test_an_unknown_table_is_a_usage_error_listing_the_tables(warehouse: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "--warehouse", str(warehouse), "--table", "core.nope", "--format", "csv",
                                 "--out", str(tmp_path / "x.csv")], env={"COLUMNS": "400"})
    assert result.exit_code == 2
    assert "no table 'core.nope'" in result.output and "core.assessments" in result.output
    assert not (tmp_path / "x.csv").exists()


def test_an_unknown_format_is_a_usage_error(warehouse: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "--warehouse", str(warehouse), "--table", "core.vitals", "--format", "xlsx",
                                 "--out", str(tmp_path / "x.xlsx")])
    assert result.exit_code == 2


def test_kaptrial_export_writes_parquet(warehouse: Path, tmp_path: Path) -> None:
    out = tmp_path / "a" / "assessments.parquet"
    result = runner.invoke(app, ["export", "--warehouse", str(warehouse), "--table", "core.assessments",
                                 "--out", str(out)])
    assert result.exit_code == 0, result.output
    # a connection of its own: a result left on DuckDB's default connection blocks other tests using it
    with duckdb.connect() as reader:
        assert reader.execute(f"select count(*) from read_parquet({quote_literal(str(out))})").fetchone()[0] > 0


def test_the_tables_listed_are_the_warehouses(con: duckdb.DuckDBPyConnection) -> None:
    tables = available_tables(con)
    assert {"core.assessments", "ops.quarantine", "marts.enrollment", "ref.visits"} <= set(tables)
    assert not any(t.startswith("unblinded.") for t in tables)
    with pytest.raises(UnknownTable, match=r"core\.assessments"):
        export_table(con, "assessments", "csv", Path("/nonexistent/never.csv"))


def test_xpt_names_are_cut_upper_case_unique_and_deterministic() -> None:
    columns = ["quarantined_unparseable", "quarantined_missing_required", "quarant1", "site_id", "2nd value",
               "x" * 12, "x" * 9]
    names = xpt_names(columns)
    assert names == {"quarantined_unparseable": "QUARANTI", "quarantined_missing_required": "QUARANT1",
                     "quarant1": "QUARANT2", "site_id": "SITE_ID", "2nd value": "_2ND_VAL",
                     "x" * 12: "XXXXXXXX", "x" * 9: "XXXXXXX1"}
    assert xpt_names(columns) == names
    assert xpt_dataset_name("core.assessment_items") == "ASSESSME"


@pytest.fixture()
def scratch() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    connection.execute("create schema core")
    yield connection
    connection.close()


def test_text_longer_than_200_bytes_is_refused_not_cut(scratch: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    # 100 characters of two bytes each: 200 bytes, fits; one more does not
    scratch.execute("create table core.notes as select * from (values (1, repeat('é', 100)), (2, repeat('é', 101)))"
                    " as t(id, note)")
    with pytest.raises(ExportError, match=r"column note: text longer than 200 bytes \(up to 202\) in rows 2"):
        export_table(scratch, "core.notes", "xpt", tmp_path / "notes.xpt")
    assert list(tmp_path.iterdir()) == []


def test_booleans_dates_and_zoned_timestamps_in_sas_terms(scratch: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    scratch.execute("set timezone = 'Europe/Oslo'")
    scratch.execute("""create table core.t as select * from (values
        (true, date '2026-01-02', timestamptz '2026-01-02 10:00:00+01', null::varchar),
        (false, null, null, 'x'),
        (null, date '1959-12-31', timestamptz '2026-07-01 00:30:00+00', '')) as t(ok, day, stamp, txt)""")
    export_table(scratch, "core.t", "xpt", tmp_path / "t.xpt")
    frame, meta = pyreadstat.read_xport(str(tmp_path / "t.xpt"))
    assert meta.column_labels == ["ok", "day", "stamp", "txt"]
    assert frame["OK"].tolist()[:2] == [1.0, 0.0] and frame["OK"].isna().tolist()[2]
    assert frame["DAY"].tolist()[0] == date(2026, 1, 2) and frame["DAY"].tolist()[2] == date(1959, 12, 31)
    assert [str(v) for v in frame["STAMP"].tolist()] == ["2026-01-02 09:00:00", "NaT", "2026-07-01 00:30:00"]  # UTC


def test_a_type_sas_cannot_hold_is_refused(scratch: duckdb.DuckDBPyConnection, tmp_path: Path) -> None:
    scratch.execute("create table core.l as select [1, 2] as items")
    with pytest.raises(ExportError, match="column items: type"):
        export_table(scratch, "core.l", "xpt", tmp_path / "l.xpt")
