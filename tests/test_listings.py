"""Site query listings (`flows/listings.py`): one workbook per site holding exactly the site's open
flags and the quarantined records of its current transfer, every delivered value text (never a
formula), nothing of an arm."""

from __future__ import annotations

import shutil
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest
from openpyxl import load_workbook
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

import flows.listings as listings_module
from flows.generate import generate_trial
from flows.ingest_transfers import run_ingest
from flows.listings import ABOUT_SHEET, COLUMNS, QUERIES_SHEET, show, write_site_listings
from flows.unblinded import KEY_ENV
from flows.warehouse import DATABASE, connect, connect_unblinded

KEY = "listings-test-key"
SITES = ["S01", "S03", "S06"]  # one per format: dts-csv, redcap, dts-xlsx
HEADERS = [h for h, _ in COLUMNS]
# what a hostile or unlucky delivery can hold: each would be a formula (or DDE) if typed by value
HOSTILE = ["=1+1", "@SUM(A1)", "-5", "+cmd|' /C calc'!A0", "\t=2+2", "=HYPERLINK(\"http://x\",\"y\")"]
GENERATED_AT = datetime(2026, 6, 2, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("listings")
    generate_trial(root / "inbox", seed=9, participants_per_site=6)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY)
        run_ingest(root / "inbox", root / "wh", sources=[*SITES, "IWRS"])
    return root / "wh"


@pytest.fixture(scope="module")
def seeded(warehouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the warehouse database with formula-like values quarantined and flagged at S01, and
    nothing open at S03."""
    copy = tmp_path_factory.mktemp("seeded")
    shutil.copyfile((warehouse / DATABASE).resolve(), copy / DATABASE)
    con = duckdb.connect(str(copy / DATABASE))
    try:
        transfer = con.execute("select max(transfer_id) from ops.transfers where source = 'S01' and status = 'LANDED'"
                               ).fetchone()[0]
        for i, value in enumerate(HOSTILE):
            con.execute("""insert into ops.quarantine (source, transfer_id, dataset, source_file, source_row,
                               subject_id, column_name, value, reason_code, message)
                           values ('S01', ?, 'adverse_events', 'adverse_events.csv', ?, 'S01-0001', 'term', ?,
                                   'OUT_OF_RANGE', ?)""", [transfer, 9000 + i, value, value])
        con.execute("""insert into ops.flags (flag_id, flag_type, site_id, subject_id, visit, dataset, detail, message,
                           status, first_seen_transfer, last_seen_transfer)
                       values ('hostile', 'UNCODED_TERM', 'S01', 'S01-0002', null, 'adverse_events', '=AE1',
                               '=HYPERLINK("http://x","y")', 'OPEN', ?, ?)""", [transfer, transfer])
        con.execute("delete from ops.quarantine where source = 'S03'")
        con.execute("update ops.flags set status = 'CLOSED' where site_id = 'S03'")
    finally:
        con.close()
    return copy


@pytest.fixture(scope="module")
def listings(seeded: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("queries")
    con = connect(seeded, read_only=True)
    try:
        paths = write_site_listings(con, out, generated_at=GENERATED_AT)
    finally:
        con.close()
    return {p.stem: p for p in paths}


def rows_of(ws: Worksheet) -> list[dict[str, object]]:
    rows = list(ws.iter_rows(values_only=True))
    assert list(rows[0]) == HEADERS
    return [dict(zip(HEADERS, r, strict=True)) for r in rows[1:] if r[HEADERS.index("query id")]]


def about_of(path: Path) -> dict[str, object]:
    return {k: v for k, v in load_workbook(path)[ABOUT_SHEET].iter_rows(values_only=True) if k}


def test_every_site_gets_a_workbook_and_the_randomization_source_none(listings: dict[str, Path]) -> None:
    assert sorted(listings) == SITES
    out = next(iter(listings.values())).parent
    assert sorted(p.name for p in out.iterdir()) == [f"{s}.xlsx" for s in SITES]  # nothing half-written left


def test_rows_are_the_open_flags_and_the_current_quarantine_of_the_site(seeded: Path,
                                                                         listings: dict[str, Path]) -> None:
    con = duckdb.connect(str(seeded / DATABASE), read_only=True)
    try:
        for site in SITES:
            quarantined = con.execute("""
                select subject_id, source_file, source_row, column_name, value, reason_code, message
                from ops.quarantine
                where source = ? and transfer_id = (select max(transfer_id) from ops.transfers
                                                    where source = ? and status = 'LANDED')""",
                                      [site, site]).fetchall()
            flagged = con.execute("""select subject_id, visit, flag_type, message, first_seen_transfer
                                     from ops.flags where site_id = ? and status = 'OPEN'""", [site]).fetchall()
            rows = rows_of(load_workbook(listings[site])[QUERIES_SHEET])
            shown_quarantine = Counter(
                (r["subject"], str(r["form"]).split("(")[1].rstrip(")"), r["line"], r["field"], r["value"], r["rule"],
                 r["message"]) for r in rows if r["kind"] == "quarantined record")
            shown_flags = Counter((r["subject"], r["visit"], r["rule"], r["message"], r["first seen"])
                                  for r in rows if r["kind"] == "open flag")
            # control characters are shown as escapes: the listing shows them, the warehouse holds them
            assert shown_quarantine == Counter(tuple(show(v) if isinstance(v, str) else v for v in record)
                                               for record in quarantined), site
            assert shown_flags == Counter(flagged), site
            assert len(rows) == len(quarantined) + len(flagged)
            assert all(r["site response"] is None for r in rows)
    finally:
        con.close()
    assert len(rows_of(load_workbook(listings["S01"])[QUERIES_SHEET])) > len(HOSTILE)


def test_formula_like_values_stay_text_cells(listings: dict[str, Path]) -> None:
    seen: dict[str, str] = {}
    for path in listings.values():
        wb = load_workbook(path)
        for ws in wb.worksheets:
            for row in ws.iter_rows():
                for cell in row:
                    assert cell.data_type != "f", (path.name, cell.coordinate, cell.value)
                    if isinstance(cell.value, str):
                        seen[cell.value] = cell.data_type
                        # the quote prefix keeps it text when a coordinator edits the cell
                        assert cell.quotePrefix, (path.name, ws.title, cell.coordinate, cell.value)
    # a tab is shown as the escape \t rather than as an invisible character
    for value in [*HOSTILE[:4], "\\t=2+2", '=HYPERLINK("http://x","y")', "=AE1"]:
        assert seen.get(value) == "s", value


def test_a_listing_is_sorted_by_subject_then_visit_in_schedule_order(listings: dict[str, Path],
                                                                     seeded: Path) -> None:
    con = duckdb.connect(str(seeded / DATABASE), read_only=True)
    order = {v: i for i, (v,) in enumerate(con.execute("select visit from ref.visits order by rowid").fetchall())}
    con.close()
    rows = rows_of(load_workbook(listings["S01"])[QUERIES_SHEET])
    keys = [(r["subject"] is None, r["subject"] or "", order.get(r["visit"], len(order)) if r["visit"] else -1)
            for r in rows]
    assert keys == sorted(keys)


def test_a_listing_has_a_frozen_header_a_filter_and_an_about_sheet(listings: dict[str, Path]) -> None:
    wb = load_workbook(listings["S01"])
    assert wb.sheetnames == [QUERIES_SHEET, ABOUT_SHEET]
    ws = wb[QUERIES_SHEET]
    assert ws.freeze_panes == "A2"
    assert ws.auto_filter.ref == f"A1:L{ws.max_row}"
    assert ws.column_dimensions["I"].width >= 60  # the message
    about = about_of(listings["S01"])
    rows = rows_of(ws)
    assert about["site"] == "S01" and about["current transfer"] == "20260601T020000Z"
    assert about["generated at (UTC)"] == "2026-06-02 08:00:00"
    assert about["open queries"] == len(rows)
    assert about["quarantined records"] == sum(r["kind"] == "quarantined record" for r in rows)
    assert about["open flags"] == sum(r["kind"] == "open flag" for r in rows)


def test_line_is_a_number_and_the_empty_site_response_column_is_shaded_and_wraps(listings: dict[str, Path]) -> None:
    ws = load_workbook(listings["S01"])[QUERIES_SHEET]
    lines = [r["line"] for r in rows_of(ws) if r["kind"] == "quarantined record"]
    assert lines and all(isinstance(line, int) for line in lines)
    response, message = (ws.column_dimensions[get_column_letter(HEADERS.index(h) + 1)]
                         for h in ("site response", "message"))
    assert response.fill.fgColor.rgb.endswith("FFF2CC") and response.alignment.wrap_text
    assert message.alignment.wrap_text


def test_a_text_past_excels_cell_limit_is_cut_with_a_note_counting_utf16_units() -> None:
    # Excel counts UTF-16 units: an emoji takes two, so 20,000 of them are past its 32,767 limit
    cut = show("\N{GRINNING FACE}" * 20_000)
    assert cut.endswith(" … [cut: 20,000 characters]")
    assert len(cut.encode("utf-16-le")) // 2 <= 32_767
    assert show("x" * 32_767) == "x" * 32_767


def test_a_failed_write_leaves_the_previous_workbook_and_nothing_half_written(seeded: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    con = connect(seeded, read_only=True)
    try:
        (first, *_) = write_site_listings(con, tmp_path)
        before = first.read_bytes()

        def fail(*args: object) -> None:
            raise OSError("disk full")

        monkeypatch.setattr(listings_module, "write_about", fail)
        with pytest.raises(OSError, match="disk full"):
            write_site_listings(con, tmp_path)
    finally:
        con.close()
    assert first.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{s}.xlsx" for s in SITES]


def test_a_site_with_nothing_open_gets_a_workbook_saying_so(listings: dict[str, Path]) -> None:
    about = about_of(listings["S03"])
    assert about["open queries"] == 0 and about["status"] == "nothing open"
    ws = load_workbook(listings["S03"])[QUERIES_SHEET]
    assert rows_of(ws) == []
    assert str(ws["A2"].value).startswith("Nothing open for S03")


def test_no_arm_appears_in_any_listing(warehouse: Path, listings: dict[str, Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    con = connect_unblinded(warehouse)
    arms = {a for (a,) in con.execute("select distinct arm from unblinded.randomization").fetchall()}
    con.close()
    assert arms
    for path in listings.values():
        for ws in load_workbook(path).worksheets:
            for row in ws.iter_rows(values_only=True):
                for value in row:
                    assert value not in arms
                    assert "randomization" not in str(value or "").casefold()


def test_listings_are_rewritten_in_place(seeded: Path, tmp_path: Path) -> None:
    con = connect(seeded, read_only=True)
    try:
        first = write_site_listings(con, tmp_path)
        second = write_site_listings(con, tmp_path)
    finally:
        con.close()
    assert first == second
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{s}.xlsx" for s in SITES]


def test_the_callers_connection_is_left_ready_for_its_next_query(seeded: Path, tmp_path: Path) -> None:
    con = connect(seeded, read_only=True)
    try:
        write_site_listings(con, tmp_path)
        # DuckDB refuses a relation while a result of execute() is half-read
        assert con.sql("select 1").fetchall() == [(1,)]
    finally:
        con.close()


def test_every_run_leaves_each_sites_workbook_and_rewrites_only_the_sites_that_landed(warehouse: Path,
                                                                                     tmp_path: Path) -> None:
    listings = warehouse / "reports" / "queries"
    assert sorted(p.name for p in listings.glob("*.xlsx")) == [f"{s}.xlsx" for s in SITES]
    copy = tmp_path / "wh"
    shutil.copytree(warehouse, copy, symlinks=True)
    before = {p.name: p.stat().st_mtime_ns for p in (copy / "reports" / "queries").glob("*.xlsx")}
    (copy / "reports" / "queries" / "S03.xlsx").unlink()
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY)
        run_ingest(warehouse.parent / "inbox", copy, sources=[*SITES, "IWRS"])  # nothing new
    after = {p.name: p.stat().st_mtime_ns for p in (copy / "reports" / "queries").glob("*.xlsx")}
    assert set(after) == set(before)  # a missing workbook is written again
    assert {k: v for k, v in after.items() if k != "S03.xlsx"} == {k: v for k, v in before.items() if k != "S03.xlsx"}


def workbook_cells(path: Path) -> list[list[list[object]]]:
    return [[list(row) for row in ws.iter_rows(values_only=True)] for ws in load_workbook(path).worksheets]


def test_two_writer_processes_write_the_same_workbooks_as_one(seeded: Path, listings: dict[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listings_module, "PARALLEL_QUERIES", 0)
    monkeypatch.setattr(listings_module.os, "cpu_count", lambda: 2)
    con = connect(seeded, read_only=True)
    try:
        paths = write_site_listings(con, tmp_path, generated_at=GENERATED_AT)
    finally:
        con.close()
    assert [p.name for p in paths] == [p.name for p in listings.values()]
    for path in paths:
        assert workbook_cells(path) == workbook_cells(listings[path.stem])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{s}.xlsx" for s in SITES]


def test_a_failed_second_writer_fails_the_listings_with_its_error(seeded: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listings_module, "PARALLEL_QUERIES", 0)
    monkeypatch.setattr(listings_module.os, "cpu_count", lambda: 2)
    (tmp_path / "S01.xlsx").mkdir()  # the second writer's largest site cannot be renamed into place
    con = connect(seeded, read_only=True)
    try:
        with pytest.raises((RuntimeError, OSError), match="S01"):
            write_site_listings(con, tmp_path, generated_at=GENERATED_AT)
    finally:
        con.close()
    assert not list(tmp_path.glob(".*.partial"))


def test_halves_share_the_queries_evenly() -> None:
    def job(site: str, n: int) -> tuple[Path, listings_module.SiteState, list[object]]:
        return Path(site), listings_module.SiteState(site, None), [object()] * n

    mine, theirs = listings_module.halves([job("a", 10), job("b", 6), job("c", 5), job("d", 1)])  # type: ignore[list-item]
    assert sorted(s.site_id for _, s, _ in [*mine, *theirs]) == ["a", "b", "c", "d"]
    assert abs(sum(len(q) for *_, q in mine) - sum(len(q) for *_, q in theirs)) <= 2


def test_only_the_named_sites_are_rewritten_and_the_others_not_read(seeded: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    con = connect(seeded, read_only=True)
    try:
        write_site_listings(con, tmp_path, generated_at=GENERATED_AT)
        read = []
        original = listings_module.read_site_queries

        def spy(con: duckdb.DuckDBPyConnection, sites: list[str]) -> dict[str, list[listings_module.Query]]:
            read.append(sorted(sites))
            return original(con, sites)

        monkeypatch.setattr(listings_module, "read_site_queries", spy)
        assert [p.stem for p in write_site_listings(con, tmp_path, sites={"S06"})] == ["S06"]
        assert write_site_listings(con, tmp_path, sites=set()) == []
    finally:
        con.close()
    assert read == [["S06"]]
