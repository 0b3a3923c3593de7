"""flows/conform.py: delivered text to typed values, in the site's dialect (DTS §2, §3, §6)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date, time
from typing import Any

import duckdb
import pytest

from flows.conform import BAD, RAW, UNIT, collapse_select, conform_select, quote_ident, quote_literal
from flows.read import RECORD, ROW
from flows.registry import Source
from schemas.datasets import DATASETS, LB_TO_KG
from tests.helpers import header_of, record_text, source

S01, S02, S05 = source("S01"), source("S02"), source("S05")


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    """One in-memory database for the module (opening one costs more than a test); every test
    replaces the tables it uses."""
    connection = duckdb.connect()
    yield connection
    connection.close()


def conform(con: duckdb.DuckDBPyConnection, dataset: str, src: Source,
            records: Sequence[Mapping[str, str]]) -> list[dict[str, Any]]:
    """Load `records` (delivered text, header = the first record's keys) as the reader would, collapse
    identical ones and conform them; the conformed rows by line."""
    delivered = list(records[0])
    columns = ", ".join(f"{quote_ident(c)} varchar" for c in delivered)
    con.execute(f"create or replace temp table raw ({columns}, {ROW} bigint, {RECORD} bigint)")
    con.executemany(f"insert into raw values ({', '.join('?' * (len(delivered) + 2))})",
                    [[r[c] for c in delivered] + [line, line] for line, r in enumerate(records, start=2)])
    con.execute(f"create or replace temp table dedup as {collapse_select(delivered, 'raw')}")
    relation = con.sql(conform_select(DATASETS[dataset], src, delivered, "dedup") + f" order by {ROW}")
    return [dict(zip(relation.columns, row, strict=True)) for row in relation.fetchall()]


def one_value(con: duckdb.DuckDBPyConnection, dataset: str, src: Source, column: str,
              text: str) -> tuple[Any, Any, bool]:
    """(typed value, raw text, bad) of one delivered value in an otherwise good record."""
    [row] = conform(con, dataset, src, [record_text(dataset, src, **{column: text})])
    return row[column], row[column + RAW], row[column + BAD]


def in_pounds(record: dict[str, str]) -> dict[str, str]:
    """The record with its weight delivered as `weight_lb` (same text) instead of `weight_kg`."""
    return {("weight_lb" if k == "weight_kg" else k): v for k, v in record.items()}


# --- dates ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("src", "text", "expected"),
    [(S01, "2026-01-10", date(2026, 1, 10)), (S01, "2028-02-29", date(2028, 2, 29)),
     (S02, "10.01.2026", date(2026, 1, 10)), (S02, "31.12.2026", date(2026, 12, 31)),
     (S05, "10/01/2026", date(2026, 1, 10)), (S05, "13/01/2026", date(2026, 1, 13))],
)
def test_date_in_the_sites_format_is_read(con: duckdb.DuckDBPyConnection, src: Source, text: str,
                                          expected: date) -> None:
    assert one_value(con, "participants", src, "consent_date", text) == (expected, text, False)


@pytest.mark.parametrize(
    ("src", "text"),
    [(S01, "10.01.2026"), (S01, "2026-02-30"), (S01, "2026/01/10"), (S01, "20260110"), (S01, "yesterday"),
     (S01, "2026-01-10T00:00"), (S02, "31.02.2026"), (S02, "2026-01-10"), (S02, "10/01/2026"),
     (S05, "01/13/2026"), (S05, "2026-01-10"), (S05, "29/02/2026"),
     # the site's format written in full: no surrounding spaces, no missing zeros
     (S01, " 2026-01-10"), (S01, "2026-01-10 "), (S01, "2026-01-10\t"), (S01, "2026-1-5"),
     (S02, " 10.01.2026"), (S02, "1.2.2026")],
)
def test_date_not_in_the_sites_format_is_unparseable(con: duckdb.DuckDBPyConnection, src: Source,
                                                     text: str) -> None:
    assert one_value(con, "participants", src, "consent_date", text) == (None, text, True)


# --- times ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [("09:30", time(9, 30)),
                                                ("00:00", time(0, 0)), ("23:59", time(23, 59))])
def test_time_hh_mm_is_read(con: duckdb.DuckDBPyConnection, text: str, expected: time) -> None:
    assert one_value(con, "sessions", S01, "start_time", text) == (expected, text, False)


@pytest.mark.parametrize("text", ["9h30", "0930", "09:30:00", "24:00", "12:60", "9:5", "09.30", "noon",
                                  "-1:00", "9:30", " 09:30"])
def test_time_not_hh_mm_is_unparseable(con: duckdb.DuckDBPyConnection, text: str) -> None:
    assert one_value(con, "sessions", S01, "start_time", text) == (None, text, True)


# --- integers -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [("120", 120), ("007", 7), ("+5", 5), ("-3", -3), ("0", 0)])
def test_integer_is_read(con: duckdb.DuckDBPyConnection, text: str, expected: int) -> None:
    assert one_value(con, "vitals", S01, "sbp", text) == (expected, text, False)


@pytest.mark.parametrize("text", ["120.0", "119.6", "120,0", "1e2", "three", " 120", "120 ", "12 0", "0x10",
                                  "99999999999999999999", "+", "--3"])
def test_integer_is_never_rounded_or_guessed(con: duckdb.DuckDBPyConnection, text: str) -> None:
    assert one_value(con, "vitals", S01, "sbp", text) == (None, text, True)


# --- decimals -------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("src", "text", "expected"),
    [(S01, "72.5", 72.5), (S01, "72", 72.0), (S01, ".5", 0.5), (S01, "72.", 72.0), (S01, "-1.25", -1.25),
     (S05, "72.5", 72.5), (S02, "72,5", 72.5), (S02, "72", 72.0), (S02, ",5", 0.5), (S02, "+80,25", 80.25)],
)
def test_decimal_with_the_sites_separator_is_read(con: duckdb.DuckDBPyConnection, src: Source, text: str,
                                                  expected: float) -> None:
    assert one_value(con, "participants", src, "weight_kg", text) == (expected, text, False)


@pytest.mark.parametrize(
    ("src", "text"),
    [(S01, "72,5"), (S01, "7o.5"), (S01, "1e2"), (S01, "inf"), (S01, "nan"), (S01, "1,234.5"),
     (S01, "72.5 kg"), (S01, "."), (S02, "72.5"), (S02, "1.234,5"), (S02, "7o,5"), (S02, ","),
     (S02, "72,5,0")],
)
def test_decimal_in_another_notation_is_unparseable(con: duckdb.DuckDBPyConnection, src: Source,
                                                    text: str) -> None:
    assert one_value(con, "participants", src, "weight_kg", text) == (None, text, True)


# --- missing values -------------------------------------------------------------------------------

@pytest.mark.parametrize(("src", "code"), [(S01, ""), (S02, ""), (S02, "NA"), (S05, ""), (S05, ".")])
@pytest.mark.parametrize("column", ["consent_date", "birth_year", "weight_kg", "sex"])
def test_sites_missing_code_is_a_missing_value_not_unparseable(con: duckdb.DuckDBPyConnection, src: Source,
                                                               code: str, column: str) -> None:
    assert one_value(con, "participants", src, column, code) == (None, None, False)


@pytest.mark.parametrize(("src", "code"), [(S01, "NA"), (S01, "."), (S02, "."), (S05, "NA"), (S01, "-99")])
def test_another_sites_missing_code_is_a_value(con: duckdb.DuckDBPyConnection, src: Source,
                                               code: str) -> None:
    value, raw, bad = one_value(con, "participants", src, "consent_date", code)
    assert (value, raw, bad) == (None, code, True)
    assert one_value(con, "participants", src, "sex", code) == (code, code, False)


def test_missing_code_is_matched_exactly(con: duckdb.DuckDBPyConnection) -> None:
    assert one_value(con, "participants", S02, "sex", "na") == ("na", "na", False)
    assert one_value(con, "participants", S02, "sex", " NA") == (" NA", " NA", False)


def test_missing_code_with_a_quote_is_matched(con: duckdb.DuckDBPyConnection) -> None:
    src = source("S01", missing_values=("", "n'a"))
    assert one_value(con, "participants", src, "birth_year", "n'a") == (None, None, False)


# --- text, units and absent columns ----------------------------------------------------------------

def test_text_values_pass_unchanged_and_are_never_unparseable(con: duckdb.DuckDBPyConnection) -> None:
    record = record_text("adverse_events", S02, term=" Kopfweh, Zürich € ", severity="mild")
    [row] = conform(con, "adverse_events", S02, [record])
    assert (row["term"], row["term" + BAD]) == (" Kopfweh, Zürich € ", False)
    assert (row["severity"], row["severity" + RAW], row["severity" + BAD]) == ("mild", "mild", False)


@pytest.mark.parametrize("dataset", ["participants", "sessions"])
@pytest.mark.parametrize(("text", "kg"),
                         [("160", 160 * LB_TO_KG), ("100.5", 100.5 * LB_TO_KG), ("220", 99.7903214)])
def test_weight_in_pounds_is_converted_to_kg(con: duckdb.DuckDBPyConnection, dataset: str, text: str,
                                             kg: float) -> None:
    record = in_pounds(record_text(dataset, S01))
    [row] = conform(con, dataset, S01, [record | {"weight_lb": text}])
    assert row["weight_kg"] == pytest.approx(kg, rel=1e-12)
    assert (row["weight_kg" + RAW], row["weight_kg" + BAD]) == (text, False)
    assert row["weight_kg" + UNIT] == "weight_lb"


def test_weight_in_pounds_uses_the_sites_decimal_separator(con: duckdb.DuckDBPyConnection) -> None:
    record = in_pounds(record_text("participants", S02))
    other = record | {"weight_lb": "160.5", "subject_id": "S02-0002"}
    [good, bad] = conform(con, "participants", S02, [record | {"weight_lb": "160,5"}, other])
    assert good["weight_kg"] == pytest.approx(160.5 * LB_TO_KG)
    assert (bad["weight_kg"], bad["weight_kg" + RAW], bad["weight_kg" + BAD]) == (None, "160.5", True)


def test_weight_in_kg_is_kept_when_both_units_are_delivered(con: duckdb.DuckDBPyConnection) -> None:
    [row] = conform(con, "participants", S01, [record_text("participants", S01) | {"weight_lb": "500"}])
    assert (row["weight_kg"], row["weight_kg" + UNIT]) == (72.5, "weight_kg")


@pytest.mark.parametrize(("dataset", "column"), [("participants", "withdrawal_date"),
                                                 ("participants", "withdrawal_reason"),
                                                 ("assessment_items", "rater_id"),
                                                 ("adverse_events", "end_date")])
def test_column_absent_from_the_file_is_missing_not_unparseable(con: duckdb.DuckDBPyConnection, dataset: str,
                                                                column: str) -> None:
    record = {k: v for k, v in record_text(dataset, S01).items() if k != column}
    [row] = conform(con, dataset, S01, [record])
    assert (row[column], row[column + RAW], row[column + BAD]) == (None, None, False)


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_every_column_has_its_typed_value_raw_text_bad_flag_and_unit(con: duckdb.DuckDBPyConnection,
                                                                     dataset: str) -> None:
    [row] = conform(con, dataset, S01, [record_text(dataset, S01)])
    suffixes = ("", RAW, BAD, UNIT)
    expected = [RECORD, ROW, "_copies"] + [f"{c}{suffix}" for c in header_of(dataset) for suffix in suffixes]
    assert list(row) == expected
    assert row[ROW] == 2
    assert not any(row[c + BAD] for c in header_of(dataset))


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_conformed_types_follow_the_model(con: duckdb.DuckDBPyConnection, dataset: str) -> None:
    conform(con, dataset, S01, [record_text(dataset, S01)])
    sql = conform_select(DATASETS[dataset], S01, header_of(dataset), "dedup")
    types = {name: sql_type for name, sql_type, *_ in con.sql(f"describe {sql}").fetchall()}
    kinds = {"text": "VARCHAR", "integer": "BIGINT", "decimal": "DOUBLE", "date": "DATE", "time": "TIME"}
    assert {c.name: types[c.name] for c in DATASETS[dataset].columns} == {
        c.name: kinds[c.kind] for c in DATASETS[dataset].columns}


# --- identical duplicates ---------------------------------------------------------------------------

def test_identical_records_collapse_to_their_first_line(con: duckdb.DuckDBPyConnection) -> None:
    good = record_text("vitals", S01)
    rows = conform(con, "vitals", S01, [good, good | {"timepoint": "T40"}, good, good])
    assert [(r[ROW], r["_copies"], r["timepoint"]) for r in rows] == [(2, 2, "PRE"), (3, 0, "T40")]


def test_records_differing_in_one_value_do_not_collapse(con: duckdb.DuckDBPyConnection) -> None:
    good = record_text("vitals", S01)
    rows = conform(con, "vitals", S01, [good, good | {"hr": "73"}, good | {"hr": " 72"}])
    assert [(r[ROW], r["_copies"], r["hr" + RAW]) for r in rows] == [(2, 0, "72"), (3, 0, "73"),
                                                                     (4, 0, " 72")]


def test_collapse_compares_only_the_columns_it_is_given(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"create or replace temp table raw (a varchar, b varchar, {ROW} bigint, {RECORD} bigint)")
    con.execute("insert into raw values ('x', '1', 2, 2), ('x', '2', 3, 3), ('x', '1', 4, 4)")
    assert con.sql(collapse_select(["a"], "raw")).fetchall() == [(2, 2, 2, "x")]
    collapsed = sorted(con.sql(collapse_select(["a", "b"], "raw")).fetchall())
    assert collapsed == [(2, 2, 1, "x", "1"), (3, 3, 0, "x", "2")]


# --- quoting ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "quoted"), [("plain", "'plain'"), ("it's", "'it''s'"), ("", "''")])
def test_literals_are_quoted_for_sql(value: str, quoted: str) -> None:
    assert quote_literal(value) == quoted


@pytest.mark.parametrize(("name", "quoted"), [("sbp", '"sbp"'), ('we"ird', '"we""ird"')])
def test_identifiers_are_quoted_for_sql(name: str, quoted: str) -> None:
    assert quote_ident(name) == quoted
