"""flows/read_xlsx.py: a `dts-xlsx` workbook, one sheet per dataset, every cell as the text a CSV site
would send (DTS §2, §2.1, §3, §6, §7). Workbooks are built with openpyxl, tiny, in tmp_path."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest
from openpyxl import Workbook

from flows import read_xlsx
from flows.read import RECORD, ROW
from flows.read_xlsx import cell_text, read_dts_xlsx
from flows.verify import ManifestFile, Rejected, VerifiedTransfer
from flows.warehouse import connect
from schemas.datasets import DATASETS, LB_TO_KG
from tests.helpers import GOOD_RECORDS, TRANSFER_ID, header_of, sha256_hex, source, write_transfer

S06 = source("S06")
MDY = S06.date_format
SHEETS = {name: Path(d.file).stem for name, d in DATASETS.items()}  # dataset -> sheet name
WEIGHT_LB = 159.8  # 72.5 kg, as Houston delivers it
Rows = list[list[Any]]


# --- builders -----------------------------------------------------------------------------------------

def good_header(dataset: str) -> list[str]:
    """The dataset's columns as Houston sends them: weight in pounds."""
    return ["weight_lb" if c == "weight_kg" else c for c in header_of(dataset)]


def good_row(dataset: str, **changes: Any) -> list[Any]:
    """The dataset's good record as typed Excel cells (dates as date cells, times as time cells)."""
    record = {**GOOD_RECORDS[dataset], "subject_id": "S06-0001"}
    if "weight_kg" in record:
        record["weight_lb"] = WEIGHT_LB
    record.update(changes)
    return [record.get(c) for c in good_header(dataset)]


def good_sheets() -> dict[str, Rows]:
    """Every sheet of a valid workbook: a header and one good record each."""
    return {SHEETS[d]: [good_header(d), good_row(d)] for d in DATASETS}


def workbook_bytes(sheets: Mapping[str, Rows], styled_empty_rows: Mapping[str, Sequence[int]] | None = None) -> bytes:
    """An .xlsx with the sheets in order; `styled_empty_rows` adds rows that hold formatting only
    (as Excel leaves them behind)."""
    wb = Workbook()
    wb.remove(wb.active)
    for title, rows in sheets.items():
        ws = wb.create_sheet(title)
        for row in rows:
            ws.append(row)
        for number in (styled_empty_rows or {}).get(title, ()):
            ws.cell(row=number, column=1).number_format = "0.00"
    out = io.BytesIO()
    wb.save(out)
    return out.getvalue()


def rewrite_part(data: bytes, part: str, edit: Callable[[bytes], bytes]) -> bytes:
    """The same package with one part's bytes edited (or added, when absent)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            content = src.read(info)
            dst.writestr(info.filename, edit(content) if info.filename == part else content)
        if part not in src.namelist():
            dst.writestr(part, edit(b""))
    return out.getvalue()


def counts(sheets: Mapping[str, Rows]) -> dict[str, int]:
    """The manifest's rows: data rows per sheet (the header and empty rows not counted)."""
    return {title: sum(1 for r in rows[1:] if any(v not in (None, "") for v in r)) for title, rows in sheets.items()}


def transfer(tmp_path: Path, data: bytes, rows: Any) -> VerifiedTransfer:
    path = tmp_path / "export.xlsx"
    path.write_bytes(data)
    return VerifiedTransfer(S06, TRANSFER_ID, tmp_path, "dts-xlsx",
                            {"export.xlsx": ManifestFile("export.xlsx", path, sha256_hex(data), rows)}, "0" * 64)


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def read(con: duckdb.DuckDBPyConnection, tmp_path: Path, sheets: Mapping[str, Rows], rows: Any = None,
         data: bytes | None = None) -> tuple[dict[str, Any], VerifiedTransfer]:
    t = transfer(tmp_path, workbook_bytes(sheets) if data is None else data, counts(sheets) if rows is None else rows)
    return read_dts_xlsx(con, t), t


def with_sheet(dataset: str, rows: Rows) -> dict[str, Rows]:
    return {**good_sheets(), SHEETS[dataset]: rows}


def raw_rows(con: duckdb.DuckDBPyConnection, dataset: str, *columns: str) -> list[tuple[Any, ...]]:
    return con.sql(f"select {ROW}, {', '.join(columns)} from raw_{dataset} order by {ROW}").fetchall()


# --- cells to text, as a CSV site would write them ----------------------------------------------------

@pytest.mark.parametrize(("value", "text"), [
    (None, ""),
    ("", ""),
    ("  Headache ", "  Headache "),  # never trimmed
    ("02/18/2026", "02/18/2026"),  # a text date passes as delivered
    (72, "72"),
    (72.0, "72"),  # an integral float is an integer
    (-99, "-99"),
    (-99.0, "-99"),  # the missing-value code, whichever way Excel stored it
    (158.2, "158.2"),
    (0.1 + 0.2, "0.30000000000000004"),  # shortest round-trip form, never rounded
    (1e-05, "0.00001"),  # positional, as a CSV would hold it
    (-0.0, "0"),
    (float("nan"), "nan"),
    (True, "TRUE"),
    (False, "FALSE"),
    (date(2026, 2, 3), "02/03/2026"),
    (datetime(2026, 2, 3), "02/03/2026"),
    (datetime(2026, 2, 3, 14, 30), "2026-02-03T14:30:00"),  # a time of day is never cut off
    (time(9, 5), "09:05"),
    (time(9, 5, 30), "09:05:30"),  # nor are seconds
    (timedelta(hours=9, minutes=30), "09:30"),
    (timedelta(hours=26), "26:00"),
])
def test_cell_values_become_the_text_a_csv_site_would_deliver(value: object, text: str) -> None:
    assert cell_text(value, MDY) == text


def test_excel_date_cells_take_the_sites_date_format_and_text_dates_pass_unchanged(
        tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    rows = [good_header("participants"),
            good_row("participants", screening_date=date(2026, 1, 10), consent_date="01/05/2026"),
            good_row("participants", subject_id="S06-0002", screening_date=datetime(2026, 1, 10),
                     consent_date=datetime(2026, 1, 5, 14, 30))]
    read(con, tmp_path, with_sheet("participants", rows))
    assert raw_rows(con, "participants", "screening_date", "consent_date") == [
        (2, "01/10/2026", "01/05/2026"), (3, "01/10/2026", "2026-01-05T14:30:00")]


def test_numbers_times_booleans_and_missing_codes_load_as_csv_text(tmp_path: Path,
                                                                 con: duckdb.DuckDBPyConnection) -> None:
    rows = [good_header("vitals"),
            ["S06-0001", "D1", "PRE", time(9, 25), 120.0, 80, -99, " 98"],
            ["S06-0001", "D1", "T40", "10:05", 121.5, -99.0, True, None]]
    read(con, tmp_path, with_sheet("vitals", rows))
    assert raw_rows(con, "vitals", "measured_time", "sbp", "dbp", "hr", "spo2") == [
        (2, "09:25", "120", "80", "-99", " 98"), (3, "10:05", "121.5", "-99", "TRUE", "")]


def test_weight_in_pounds_is_read_as_delivered_under_its_own_name(tmp_path: Path,
                                                                  con: duckdb.DuckDBPyConnection) -> None:
    raw, _ = read(con, tmp_path, good_sheets())
    assert "weight_lb" in raw["participants"].columns and "weight_kg" not in raw["participants"].columns
    assert raw_rows(con, "participants", "weight_lb") == [(2, "159.8")]


# --- sheets, rows and lineage --------------------------------------------------------------------------

def test_every_dataset_loads_from_its_sheet_with_sheet_row_lineage(tmp_path: Path,
                                                                   con: duckdb.DuckDBPyConnection) -> None:
    raw, _ = read(con, tmp_path, good_sheets())
    assert set(raw) == set(DATASETS)
    for name, rd in raw.items():
        assert (rd.table, rd.source_file, rd.records, rd.malformed) == (
            f"raw_{name}", f"export.xlsx!{SHEETS[name]}", 1, [])
        assert rd.columns == good_header(name)
        described = con.sql(f"describe raw_{name}").fetchall()
        assert [(c[0], c[1]) for c in described] == [*((c, "VARCHAR") for c in rd.columns),
                                                     (ROW, "BIGINT"), (RECORD, "BIGINT")]
        assert con.sql(f"select {ROW}, {RECORD} from raw_{name}").fetchall() == [(2, 2)]


def test_column_order_may_vary_and_the_sheet_order_is_kept(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    header = list(reversed(good_header("adverse_events")))
    row = list(reversed(good_row("adverse_events")))
    raw, _ = read(con, tmp_path, with_sheet("adverse_events", [header, row]))
    assert raw["adverse_events"].columns == header
    assert raw_rows(con, "adverse_events", "subject_id", "term") == [(2, "S06-0001", "Headache")]


def test_entirely_empty_rows_are_not_records_and_row_numbers_stay_the_sheets(
        tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    header = good_header("adverse_events")
    rows = [header, good_row("adverse_events"), [None] * len(header), [""] * len(header),
            good_row("adverse_events", ae_id="AE002")]
    sheets = with_sheet("adverse_events", rows)
    data = workbook_bytes(sheets, styled_empty_rows={"adverse_events": [9, 10, 40]})
    raw, _ = read(con, tmp_path, sheets, rows=counts(sheets) | {"adverse_events": 2}, data=data)
    assert raw["adverse_events"].records == 2
    assert raw_rows(con, "adverse_events", "ae_id") == [(2, "AE001"), (5, "AE002")]


def test_a_sheet_with_a_header_and_no_data_rows_is_valid(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    raw, _ = read(con, tmp_path, with_sheet("adverse_events", [good_header("adverse_events")]))
    assert raw["adverse_events"].records == 0
    assert con.execute("select count(*) from raw_adverse_events").fetchall() == [(0,)]


def test_a_stale_dimension_tag_hides_no_row(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    rows = [good_header("adverse_events"), *(good_row("adverse_events", ae_id=f"AE{i:03d}") for i in range(1, 4))]
    sheets = with_sheet("adverse_events", rows)
    data = rewrite_part(workbook_bytes(sheets), "xl/worksheets/sheet5.xml",
                        lambda xml: xml.replace(b'<dimension ref="A1:J4"', b'<dimension ref="A1:J2"'))
    assert b'<dimension ref="A1:J2"' in zipfile.ZipFile(io.BytesIO(data)).read("xl/worksheets/sheet5.xml")
    raw, _ = read(con, tmp_path, sheets, data=data)
    assert raw["adverse_events"].records == 3


def test_rows_stream_in_batches_into_one_table(tmp_path: Path, con: duckdb.DuckDBPyConnection,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read_xlsx, "BATCH_ROWS", 2)
    rows = [good_header("vitals"), *(["S06-0001", "D1", "PRE", "09:25", 120 + i, 80, 72, 98] for i in range(5))]
    read(con, tmp_path, with_sheet("vitals", rows))
    assert raw_rows(con, "vitals", "sbp") == [(n + 2, str(120 + n)) for n in range(5)]


# --- the header (as flows.read.inspect_file) -------------------------------------------------------------

def test_personal_data_columns_are_never_stored_and_extra_columns_are_ignored_and_reported(
        tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    header = ["initials", *good_header("participants"), "site_comment", "Date_Of_Birth"]
    row = ["Q.X.Z.", *good_row("participants"), "call back", date(1980, 4, 17)]
    raw, _ = read(con, tmp_path, with_sheet("participants", [header, row]))
    rd = raw["participants"]
    assert (rd.personal_data, rd.ignored) == (["initials", "Date_Of_Birth"], ["site_comment"])
    assert rd.columns == good_header("participants")
    stored = con.sql("select * from raw_participants").fetchall()
    assert all(v not in ("Q.X.Z.", "04/17/1980", "call back") for r in stored for v in r)
    assert any("personal data" in w and "initials" in w for w in rd.warnings())


def test_values_under_a_blank_header_cell_are_ignored_and_reported(tmp_path: Path,
                                                                   con: duckdb.DuckDBPyConnection) -> None:
    header = [*good_header("adverse_events"), None, "note"]
    row = [*good_row("adverse_events"), "stray", "ok", "beyond the header"]
    raw, _ = read(con, tmp_path, with_sheet("adverse_events", [header, row]))
    assert raw["adverse_events"].ignored == ["note", "column K (no header)", "column M (no header)"]


@pytest.mark.parametrize("duplicate", ["term", "site_comment", "initials"])
def test_a_duplicated_column_name_rejects_the_transfer(tmp_path: Path, con: duckdb.DuckDBPyConnection,
                                                       duplicate: str) -> None:
    known = good_header("adverse_events")
    header = known + [duplicate] * (1 if duplicate in known else 2)
    with pytest.raises(Rejected, match=rf"export.xlsx!adverse_events: column '{duplicate}' appears twice"):
        read(con, tmp_path, with_sheet("adverse_events", [header]))


@pytest.mark.parametrize(("dataset", "column", "message"), [
    ("participants", "weight_lb", r"lacks the required column weight_kg \(or weight_lb\)"),
    ("sessions", "weight_lb", r"lacks the required column weight_kg \(or weight_lb\)"),
    ("vitals", "spo2", "lacks the required column spo2"),
    ("assessment_items", "score", "lacks the required column score"),
])
def test_a_sheet_lacking_a_required_column_rejects_the_transfer(tmp_path: Path, con: duckdb.DuckDBPyConnection,
                                                                dataset: str, column: str, message: str) -> None:
    header = [c for c in good_header(dataset) if c != column]
    with pytest.raises(Rejected, match=rf"export.xlsx!{SHEETS[dataset]} {message}"):
        read(con, tmp_path, with_sheet(dataset, [header]))


def test_an_empty_sheet_has_no_header_and_rejects_the_transfer(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(Rejected, match=r"export.xlsx!vitals lacks the required column subject_id"):
        read(con, tmp_path, with_sheet("vitals", []))


# --- the manifest's rows -------------------------------------------------------------------------------

@pytest.mark.parametrize(("delivered", "message"), [
    (2, r"export.xlsx!vitals holds more than 2 data rows; the manifest says 2"),
    (4, r"export.xlsx!vitals holds 3 data rows; the manifest says 4"),
])
def test_a_sheet_row_count_that_differs_from_the_manifest_rejects(tmp_path: Path, con: duckdb.DuckDBPyConnection,
                                                                  delivered: int, message: str) -> None:
    rows = [good_header("vitals"), *([f"S06-000{i}", "D1", "PRE", "09:25", 120, 80, 72, 98] for i in range(3))]
    sheets = with_sheet("vitals", rows)
    with pytest.raises(Rejected, match=message):
        read(con, tmp_path, sheets, rows=counts(sheets) | {"vitals": delivered})


def test_manifest_rows_must_map_sheets_to_counts_for_a_workbook(tmp_path: Path,
                                                                con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(Rejected, match=r"must be an object of sheet name to data rows"):
        read(con, tmp_path, good_sheets(), rows=5)


def test_a_dataset_sheet_missing_from_the_manifest_rejects(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    rows = {k: v for k, v in counts(good_sheets()).items() if k != "sessions"}
    with pytest.raises(Rejected, match=r"manifest rows of export.xlsx lack the sheet\(s\) sessions"):
        read(con, tmp_path, good_sheets(), rows=rows)


def test_a_dataset_sheet_missing_from_the_workbook_rejects(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    sheets = {k: v for k, v in good_sheets().items() if k != "assessments"}
    with pytest.raises(Rejected, match=r"export.xlsx lacks the sheet\(s\) assessments"):
        read(con, tmp_path, sheets, rows=counts(good_sheets()))


def test_a_sheet_the_manifest_lists_but_the_workbook_lacks_rejects(tmp_path: Path,
                                                                   con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(Rejected, match=r"export.xlsx lacks the sheet\(s\) notes"):
        read(con, tmp_path, good_sheets(), rows=counts(good_sheets()) | {"notes": 3})


def test_sheet_names_are_matched_exactly(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    sheets = {("Vitals" if k == "vitals" else k): v for k, v in good_sheets().items()}
    with pytest.raises(Rejected, match=r"export.xlsx lacks the sheet\(s\) vitals"):
        read(con, tmp_path, sheets, rows=counts(good_sheets()))


def test_an_extra_sheet_is_ignored_with_a_warning(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    sheets = {**good_sheets(), "README": [["exported by the site's tool"]]}
    raw, t = read(con, tmp_path, sheets, rows=counts(good_sheets()))
    assert set(raw) == set(DATASETS)
    assert t.warnings == ["export.xlsx: sheet README ignored (not a dataset)"]


# --- safety before parsing -------------------------------------------------------------------------------

def test_a_file_that_is_not_a_zip_is_rejected(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(Rejected, match=r"not a valid .xlsx workbook: it is not a zip archive"):
        read(con, tmp_path, good_sheets(), data=b"subject_id,visit\nS06-0001,D1\n")


def test_a_zip_that_is_not_a_workbook_is_rejected(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("participants.csv", "subject_id\n")
    with pytest.raises(Rejected, match=r"not a valid .xlsx workbook: it lacks \[Content_Types\].xml, xl/workbook.xml"):
        read(con, tmp_path, good_sheets(), data=out.getvalue())


def test_a_workbook_with_broken_xml_is_rejected_not_a_crash(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    data = rewrite_part(workbook_bytes(good_sheets()), "xl/workbook.xml", lambda xml: xml[: len(xml) // 2])
    with pytest.raises(Rejected, match=r"not a valid .xlsx workbook"):
        read(con, tmp_path, good_sheets(), data=data)


def test_a_sheet_with_broken_xml_is_rejected_not_a_crash(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    data = rewrite_part(workbook_bytes(good_sheets()), "xl/worksheets/sheet3.xml",
                        lambda xml: xml.replace(b"</sheetData>", b"<row><c><v>1</c></row></sheetData>"))
    with pytest.raises(Rejected, match=r"export.xlsx!vitals cannot be read as a worksheet"):
        read(con, tmp_path, good_sheets(), data=data)


DTD = b'<!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'


@pytest.mark.parametrize(("part", "encoding"), [
    ("xl/worksheets/sheet1.xml", "utf-8"),
    ("xl/styles.xml", "utf-8"),
    ("[Content_Types].xml", "utf-8"),
    ("xl/worksheets/sheet2.xml", "utf-16-le"),
])
def test_a_workbook_holding_a_dtd_is_rejected(tmp_path: Path, con: duckdb.DuckDBPyConnection, part: str,
                                              encoding: str) -> None:
    def inject(xml: bytes) -> bytes:
        text = (DTD + xml).decode("utf-8")
        return text.encode("utf-8") if encoding == "utf-8" else "\ufeff".encode(encoding) + text.encode(encoding)

    data = rewrite_part(workbook_bytes(good_sheets()), part, inject)
    with pytest.raises(Rejected, match=rf"part {re.escape(part)} holds a DTD"):
        read(con, tmp_path, good_sheets(), data=data)


def test_a_part_with_a_zip_bomb_ratio_is_rejected_before_inflating(tmp_path: Path,
                                                                   con: duckdb.DuckDBPyConnection) -> None:
    bomb = rewrite_part(workbook_bytes(good_sheets()), "xl/media/image1.png", lambda _: bytes(20 << 20))
    info = zipfile.ZipFile(io.BytesIO(bomb)).getinfo("xl/media/image1.png")
    assert info.file_size > 200 * info.compress_size
    with pytest.raises(Rejected, match=r"part xl/media/image1.png would inflate .* beyond a ratio of 200:1"):
        read(con, tmp_path, good_sheets(), data=bomb)


def test_a_part_cannot_inflate_beyond_the_size_its_directory_declares(tmp_path: Path,
                                                                     con: duckdb.DuckDBPyConnection) -> None:
    data = rewrite_part(workbook_bytes(good_sheets()), "xl/media/image1.png", lambda _: bytes(300_000))
    info = zipfile.ZipFile(io.BytesIO(data)).getinfo("xl/media/image1.png")
    # the central directory (and the local header) now claim 1000 bytes; the stream holds 300 000
    central = data.rindex(b"xl/media/image1.png") - 46  # its central directory entry: the last mention
    assert data[central:central + 4] == b"PK\x01\x02"
    patched = bytearray(data)
    patched[central + 24:central + 28] = (1000).to_bytes(4, "little")
    patched[info.header_offset + 22:info.header_offset + 26] = (1000).to_bytes(4, "little")
    with pytest.raises(Rejected, match=r"not a valid .xlsx workbook: BadZipFile: Bad CRC-32"):
        read(con, tmp_path, good_sheets(), data=bytes(patched))


def test_a_workbook_inflating_beyond_the_bound_is_rejected(tmp_path: Path, con: duckdb.DuckDBPyConnection,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(read_xlsx, "MAX_INFLATED", 4096)
    with pytest.raises(Rejected, match=r"would inflate to \d+ bytes, beyond the bound of 4096 bytes"):
        read(con, tmp_path, good_sheets())


# --- end to end: a Houston transfer through the whole pipeline ----------------------------------------------

@pytest.fixture(scope="module")
def houston(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One S06 transfer: good records, a datetime with a time of day, a missing code, a personal-data
    column and an empty trailing row; ingested into a fresh warehouse."""
    root = tmp_path_factory.mktemp("houston")
    participants = [["initials", *good_header("participants")],
                    ["Q.X.Z.", *good_row("participants")],
                    ["K.L.", *good_row("participants", subject_id="S06-0002",
                                       screening_date=datetime(2026, 1, 10, 14, 30))]]
    sheets = {**good_sheets(), "participants": participants}
    sheets["vitals"] = [good_header("vitals"), good_row("vitals", spo2=-99)]
    data = workbook_bytes(sheets, styled_empty_rows={"participants": [7]})
    files = [{"name": "export.xlsx", "sha256": sha256_hex(data), "rows": counts(sheets)}]
    write_transfer(root / "inbox", "S06", TRANSFER_ID, {"export.xlsx": data}, manifest_changes={"files": files})
    from flows.ingest_transfers import run_ingest  # Prefect is imported only when this runs

    summary = run_ingest(root / "inbox", root / "wh")
    assert [(r.source, r.status, r.reason) for r in summary.receipts] == [("S06", "LANDED", None)]
    return root / "wh"


def query(warehouse: Path, sql: str) -> list[tuple[Any, ...]]:
    con = connect(warehouse, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_a_houston_workbook_lands_with_sheet_lineage_and_pounds_in_kilograms(houston: Path) -> None:
    (subject, screening, weight, source_file, row), = query(
        houston, "select subject_id, screening_date, weight_kg, source_file, source_row from core.participants")
    assert (subject, screening, source_file, row) == ("S06-0001", date(2026, 1, 10), "export.xlsx!participants", 2)
    assert weight == pytest.approx(WEIGHT_LB * LB_TO_KG)
    assert query(houston, "select dataset, delivered, landed, quarantined from ops.loads order by dataset") == [
        ("adverse_events", 1, 1, 0), ("assessment_items", 1, 1, 0), ("participants", 2, 1, 1),
        ("sessions", 1, 1, 0), ("vitals", 1, 0, 1)]


def test_a_date_with_a_time_of_day_and_a_missing_code_are_quarantined_not_guessed(houston: Path) -> None:
    assert query(houston, "select dataset, source_file, source_row, column_name, value, reason_code "
                          "from ops.quarantine order by dataset") == [
        ("participants", "export.xlsx!participants", 3, "screening_date", "2026-01-10T14:30:00", "UNPARSEABLE"),
        ("vitals", "export.xlsx!vitals", 2, "spo2", None, "MISSING_REQUIRED")]


def test_personal_data_from_a_workbook_lands_nowhere_and_the_receipt_warns(houston: Path) -> None:
    (warnings,), = query(houston, "select warnings from ops.transfers")
    assert any("personal data" in w and "initials" in w for w in json.loads(warnings))
    for path in houston.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"Q.X.Z." not in data and b"K.L." not in data, path
