"""flows/read.py: a delivered CSV file, in its site's dialect, every column as text (DTS §2.1, §3, §7)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from flows import read
from flows.read import RECORD, ROW, MalformedRecord, ReadFile, inspect_file, load_file
from flows.registry import Source
from flows.verify import Rejected
from schemas.datasets import DATASETS
from tests.helpers import csv_bytes, dataset_file, header_of, record_text, source

AE = DATASETS["adverse_events"]
AE_HEADER = ",".join(header_of("adverse_events"))
S01, S02, S05 = source("S01"), source("S02"), source("S05")


@pytest.fixture(autouse=True, params=["whole", "streamed"])
def reading(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test both ways: a file parsed whole (the usual size) and one streamed in batches (a
    file over `WHOLE_FILE_BYTES`); both must read the same records with the same lines."""
    if request.param == "streamed":
        monkeypatch.setattr(read, "WHOLE_FILE_BYTES", -1)
    return str(request.param)


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    """One in-memory database for the module (opening one costs more than a test); `load_file`
    replaces the table `raw` in every test."""
    connection = duckdb.connect()
    yield connection
    connection.close()


def ae_line(n: int, term: str = "Headache") -> str:
    """One adverse-event record of S01 as a CSV line (no line end)."""
    return f"S01-{n:04d},AE{n},{term},2026-01-12,,MILD,N,POSSIBLE,RECOVERED,NONE"


def write(tmp_path: Path, data: bytes | str, name: str = "adverse_events.csv") -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        path.write_bytes(data.encode("utf-8"))
    else:
        path.write_bytes(data)
    return path


def load(con: duckdb.DuckDBPyConnection, path: Path, src: Source = S01,
         dataset: str = "adverse_events") -> ReadFile:
    rf = inspect_file(path, DATASETS[dataset], src)
    load_file(con, rf, "raw")
    return rf


def rows(con: duckdb.DuckDBPyConnection, *columns: str) -> list[tuple[object, ...]]:
    return con.sql(f"select {ROW}, {', '.join(columns)} from raw order by {ROW}").fetchall()


def table_columns(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [c[0] for c in con.sql("describe raw").fetchall()]


# --- inspect_file: the header -------------------------------------------------------------------

@pytest.mark.parametrize(("src", "encoding", "delimiter"), [(S01, "utf-8-sig", ","), (S02, "cp1252", ";"),
                                                            (S05, "utf-8-sig", ",")])
def test_file_is_read_in_the_sites_dialect(tmp_path: Path, src: Source, encoding: str,
                                           delimiter: str) -> None:
    rf = inspect_file(write(tmp_path, dataset_file("adverse_events", src)), AE, src)
    assert (rf.encoding, rf.delimiter) == (encoding, delimiter)
    assert rf.columns == header_of("adverse_events")


def test_columns_are_kept_in_file_order_whatever_the_order(tmp_path: Path) -> None:
    header = list(reversed(header_of("adverse_events")))
    rf = inspect_file(write(tmp_path, csv_bytes(header, [], S01)), AE, S01)
    assert rf.columns == header


def test_extra_columns_are_ignored_and_reported(tmp_path: Path) -> None:
    header = [*header_of("adverse_events"), "site_comment", "Severity"]
    rf = inspect_file(write(tmp_path, csv_bytes(header, [], S01)), AE, S01)
    assert rf.columns == header_of("adverse_events")
    assert rf.ignored == ["site_comment", "Severity"]
    assert rf.personal_data == []


@pytest.mark.parametrize("column", ["initials", "name", "first_name", "last_name", "date_of_birth", "dob",
                                    "mrn", "address", "phone", "email", "ssn", "nhs_number", "Initials",
                                    "EMAIL"])
def test_personal_data_column_is_set_aside_and_never_a_column_to_read(tmp_path: Path, column: str) -> None:
    header = [*header_of("participants"), column]
    path = write(tmp_path, csv_bytes(header, [], S01), "participants.csv")
    rf = inspect_file(path, DATASETS["participants"], S01)
    assert rf.personal_data == [column]
    assert column not in rf.columns
    assert rf.ignored == []


def test_weight_in_pounds_stands_in_for_weight_in_kg(tmp_path: Path) -> None:
    header = ["weight_lb" if c == "weight_kg" else c for c in header_of("participants")]
    path = write(tmp_path, csv_bytes(header, [], S01), "participants.csv")
    rf = inspect_file(path, DATASETS["participants"], S01)
    assert "weight_lb" in rf.columns
    assert "weight_kg" not in rf.columns


@pytest.mark.parametrize(("dataset", "optional"), [("participants", "withdrawal_date"),
                                                   ("participants", "withdrawal_reason"),
                                                   ("assessment_items", "rater_id"),
                                                   ("adverse_events", "end_date")])
def test_optional_column_may_be_absent_from_the_header(tmp_path: Path, dataset: str, optional: str) -> None:
    header = [c for c in header_of(dataset) if c != optional]
    rf = inspect_file(write(tmp_path, csv_bytes(header, [], S01)), DATASETS[dataset], S01)
    assert rf.columns == header


@pytest.mark.parametrize(
    ("dataset", "column"),
    [("participants", "subject_id"), ("participants", "consent_date"), ("participants", "status"),
     ("sessions", "visit"), ("sessions", "route"), ("sessions", "infusion_min"), ("vitals", "spo2"),
     ("vitals", "timepoint"), ("assessment_items", "score"), ("assessment_items", "instrument"),
     ("adverse_events", "term"), ("adverse_events", "action")],
)
def test_file_lacking_a_required_column_is_rejected(tmp_path: Path, dataset: str, column: str) -> None:
    header = [c for c in header_of(dataset) if c != column]
    with pytest.raises(Rejected, match=rf"lacks the required column {column}\b"):
        inspect_file(write(tmp_path, csv_bytes(header, [], S01)), DATASETS[dataset], S01)


@pytest.mark.parametrize("dataset", ["participants", "sessions"])
def test_file_lacking_weight_in_either_unit_is_rejected(tmp_path: Path, dataset: str) -> None:
    header = [c for c in header_of(dataset) if c != "weight_kg"]
    with pytest.raises(Rejected, match=r"lacks the required column weight_kg \(or weight_lb\)"):
        inspect_file(write(tmp_path, csv_bytes(header, [], S01)), DATASETS[dataset], S01)


@pytest.mark.parametrize("duplicate", ["term", "severity", "site_comment", "initials"])
def test_duplicated_column_name_is_rejected(tmp_path: Path, duplicate: str) -> None:
    known = header_of("adverse_events")
    header = known + [duplicate] * (1 if duplicate in known else 2)
    with pytest.raises(Rejected, match=rf"column '{duplicate}' appears twice"):
        inspect_file(write(tmp_path, csv_bytes(header, [], S01)), AE, S01)


def test_file_in_another_sites_delimiter_lacks_its_columns(tmp_path: Path) -> None:
    path = write(tmp_path, dataset_file("adverse_events", S01))
    with pytest.raises(Rejected, match="lacks the required column subject_id"):
        inspect_file(path, AE, S02)


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(Rejected, match="is empty: it has no header"):
        inspect_file(write(tmp_path, b""), AE, S01)


@pytest.mark.parametrize("src", [S01, S05])
def test_utf8_byte_order_mark_is_not_part_of_the_first_column_name(tmp_path: Path, src: Source) -> None:
    data = b"\xef\xbb\xbf" + (AE_HEADER + "\n" + ae_line(1).replace("S01", src.source_id) + "\n").encode()
    rf = inspect_file(write(tmp_path, data), AE, src)
    assert rf.columns[0] == "subject_id"


# --- load_file: values as delivered ---------------------------------------------------------------

def test_comma_dialect_loads_every_value_as_delivered_text(tmp_path: Path,
                                                           con: duckdb.DuckDBPyConnection) -> None:
    rf = load(con, write(tmp_path, dataset_file("adverse_events", S01)))
    assert rf.records == 1
    assert con.sql("select * from raw").fetchall() == [
        ("S01-0001", "AE001", "Headache", "2026-01-12", "2026-01-13", "MILD", "N", "POSSIBLE", "RECOVERED",
         "NONE", 2, 2)]
    assert table_columns(con) == [*header_of("adverse_events"), ROW, RECORD]


def test_semicolon_dialect_with_decimal_commas_loads_as_delivered(tmp_path: Path,
                                                                  con: duckdb.DuckDBPyConnection) -> None:
    load(con, write(tmp_path, dataset_file("participants", S02), "participants.csv"), S02, "participants")
    assert con.sql("select subject_id, consent_date, weight_kg, withdrawal_date from raw").fetchall() == [
        ("S02-0001", "05.01.2026", "72,5", "")]


@pytest.mark.parametrize("term", ["Kopfschmerzen in Zürich", "Kosten 5 €", "Übelkeit – „stark“", "Œdème ‰"])
def test_windows_1252_text_is_decoded_exactly(tmp_path: Path, con: duckdb.DuckDBPyConnection,
                                              term: str) -> None:
    data = dataset_file("adverse_events", S02, [record_text("adverse_events", S02, term=term)])
    assert term.encode("cp1252") in data
    load(con, write(tmp_path, data), S02)
    assert rows(con, "term") == [(2, term)]


@pytest.mark.parametrize("src", [S01, S05])
def test_utf8_text_behind_a_byte_order_mark_is_decoded_exactly(tmp_path: Path, con: duckdb.DuckDBPyConnection,
                                                               src: Source) -> None:
    text = AE_HEADER + "\n" + ae_line(1, "Zürich €").replace("S01", src.source_id) + "\n"
    load(con, write(tmp_path, b"\xef\xbb\xbf" + text.encode()), src)
    assert table_columns(con)[0] == "subject_id"
    assert rows(con, "subject_id", "term") == [(2, f"{src.source_id}-0001", "Zürich €")]


def test_values_are_never_trimmed_or_interpreted(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    row = record_text("participants", S02, birth_year="007", weight_kg=" 72,50 ", sex="NA", status="null",
                      withdrawal_reason='said "no"')
    load(con, write(tmp_path, dataset_file("participants", S02, [row]), "participants.csv"), S02,
         "participants")
    query = "select birth_year, weight_kg, sex, status, withdrawal_reason, withdrawal_date from raw"
    assert con.sql(query).fetchall() == [("007", " 72,50 ", "NA", "null", 'said "no"', "")]


def test_extra_column_is_not_loaded(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    header = ["site_comment", *header_of("adverse_events")]
    row = record_text("adverse_events", S01) | {"site_comment": "see binder"}
    load(con, write(tmp_path, csv_bytes(header, [row], S01)))
    assert "site_comment" not in table_columns(con)
    assert con.sql("select count(*) from raw where term = 'Headache'").fetchall() == [(1,)]


def test_personal_data_column_never_reaches_the_table(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    header = ["initials", *header_of("participants"), "date_of_birth"]
    row = record_text("participants", S01) | {"initials": "Q.X.Z.", "date_of_birth": "1980-04-17"}
    rf = load(con, write(tmp_path, csv_bytes(header, [row], S01), "participants.csv"), S01, "participants")
    assert rf.personal_data == ["initials", "date_of_birth"]
    assert table_columns(con) == [*header_of("participants"), ROW, RECORD]
    values = {str(v) for row in con.sql("select * from raw").fetchall() for v in row}
    assert values.isdisjoint({"Q.X.Z.", "1980-04-17"})


def test_weight_in_pounds_is_loaded_under_its_delivered_name(tmp_path: Path,
                                                             con: duckdb.DuckDBPyConnection) -> None:
    header = ["weight_lb" if c == "weight_kg" else c for c in header_of("participants")]
    row = record_text("participants", S01) | {"weight_lb": "160.5"}
    load(con, write(tmp_path, csv_bytes(header, [row], S01), "participants.csv"), S01, "participants")
    assert con.sql("select weight_lb from raw").fetchall() == [("160.5",)]


# --- load_file: records and their lines -------------------------------------------------------

@pytest.mark.parametrize("end", ["\n", "\r\n"])
@pytest.mark.parametrize("trailing", [True, False])
def test_each_record_keeps_the_line_it_is_on(tmp_path: Path, con: duckdb.DuckDBPyConnection, end: str,
                                             trailing: bool) -> None:
    text = end.join([AE_HEADER, ae_line(1), ae_line(2), ae_line(3)]) + (end if trailing else "")
    rf = load(con, write(tmp_path, text))
    assert rf.records == 3
    assert rf.malformed == []
    assert rows(con, "subject_id", "action") == [(2, "S01-0001", "NONE"), (3, "S01-0002", "NONE"),
                                                 (4, "S01-0003", "NONE")]


@pytest.mark.parametrize("end", ["\n", "\r\n"])
def test_quoted_value_with_an_embedded_newline_keeps_later_lines_exact(
        tmp_path: Path, con: duckdb.DuckDBPyConnection, end: str) -> None:
    multiline = f'"Head{end}ache,{end}{end}severe"'
    text = end.join([AE_HEADER, ae_line(1, multiline), ae_line(2), ae_line(3)]) + end
    rf = load(con, write(tmp_path, text))
    assert rf.records == 3
    assert rows(con, "term") == [(2, f"Head{end}ache,{end}{end}severe"), (6, "Headache"), (7, "Headache")]


def test_blank_lines_are_not_records_and_do_not_shift_lines(tmp_path: Path,
                                                            con: duckdb.DuckDBPyConnection) -> None:
    text = "\n".join([AE_HEADER, ae_line(1), "", "", ae_line(2), "", ae_line(3)]) + "\n\n"
    rf = load(con, write(tmp_path, text))
    assert rf.records == 3
    assert rows(con, "subject_id") == [(2, "S01-0001"), (5, "S01-0002"), (7, "S01-0003")]


@pytest.mark.parametrize(("bad", "fields"), [(ae_line(2) + ",extra", 11), (ae_line(2) + ",,", 12),
                                             ("S01-0002,AE2,Nausea", 3), ("S01-0002", 1)])
def test_record_with_the_wrong_number_of_fields_becomes_malformed_with_its_line(
        tmp_path: Path, con: duckdb.DuckDBPyConnection, bad: str, fields: int) -> None:
    text = "\n".join([AE_HEADER, ae_line(1), bad, ae_line(3)]) + "\n"
    rf = load(con, write(tmp_path, text))
    assert rf.malformed == [MalformedRecord(line=3, fields=fields, expected=10)]
    assert rf.records == 3  # malformed records are delivered records too
    assert rows(con, "subject_id") == [(2, "S01-0001"), (4, "S01-0003")]


def test_malformed_record_after_a_multiline_record_has_its_exact_line(tmp_path: Path,
                                                                      con: duckdb.DuckDBPyConnection) -> None:
    text = "\n".join([AE_HEADER, ae_line(1, '"two\nlines"'), "", ae_line(2) + ",x", ae_line(3)]) + "\n"
    rf = load(con, write(tmp_path, text))
    assert rf.malformed == [MalformedRecord(line=5, fields=11, expected=10)]
    assert rf.records == 3
    assert rows(con, "subject_id") == [(2, "S01-0001"), (6, "S01-0003")]


def test_malformed_records_at_a_semicolon_site_keep_their_lines(tmp_path: Path,
                                                                con: duckdb.DuckDBPyConnection) -> None:
    good = record_text("adverse_events", S02, term="Übelkeit")
    text = (";".join(header_of("adverse_events")) + "\n" + ";".join(good.values()) + "\n"
            + ";".join(good.values()) + ";x\n")
    rf = load(con, write(tmp_path, text.encode("cp1252")), S02)
    assert rf.malformed == [MalformedRecord(line=3, fields=11, expected=10)]
    assert rows(con, "term") == [(2, "Übelkeit")]


@pytest.mark.parametrize("src", [S01, S02, S05])
def test_header_only_file_is_valid_with_no_records(tmp_path: Path, con: duckdb.DuckDBPyConnection,
                                                   src: Source) -> None:
    rf = load(con, write(tmp_path, dataset_file("adverse_events", src, [])), src)
    assert rf.records == 0
    assert rf.malformed == []
    assert con.sql("select count(*) from raw").fetchall() == [(0,)]
    assert table_columns(con) == [*header_of("adverse_events"), ROW, RECORD]


def test_header_without_a_final_newline_is_valid_with_no_records(tmp_path: Path,
                                                                 con: duckdb.DuckDBPyConnection) -> None:
    rf = load(con, write(tmp_path, AE_HEADER))
    assert (rf.records, rf.malformed) == (0, [])
    assert con.sql("select count(*) from raw").fetchall() == [(0,)]


def test_old_mac_line_endings_are_read_with_exact_lines(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    rf = load(con, write(tmp_path, "\r".join([AE_HEADER, ae_line(1), ae_line(2)]) + "\r"))
    assert rf.records == 2
    assert rows(con, "subject_id") == [(2, "S01-0001"), (3, "S01-0002")]


def test_header_and_blank_lines_only_is_valid_with_no_records(tmp_path: Path,
                                                              con: duckdb.DuckDBPyConnection) -> None:
    rf = load(con, write(tmp_path, AE_HEADER + "\n\n\n"))
    assert rf.records == 0
    assert con.sql("select count(*) from raw").fetchall() == [(0,)]


def test_quoted_delimiters_and_quotes_stay_inside_their_value(tmp_path: Path,
                                                             con: duckdb.DuckDBPyConnection) -> None:
    load(con, write(tmp_path, AE_HEADER + "\n" + ae_line(1, '"Headache, ""severe"""') + "\n"))
    assert rows(con, "term", "severity") == [(2, 'Headache, "severe"', "MILD")]


def test_file_not_decodable_in_the_declared_encoding_is_rejected_on_load(
        tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    path = write(tmp_path, dataset_file("adverse_events", S01))
    rf = inspect_file(path, AE, S01)
    path.write_bytes(path.read_bytes().replace(b"Headache", b"Head\xffache"))
    with pytest.raises(Rejected, match="cannot be read as CSV in the declared dialect"):
        load_file(con, rf, "raw")


def test_loading_again_replaces_the_table(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    load(con, write(tmp_path, "\n".join([AE_HEADER, ae_line(1), ae_line(2)]) + "\n"))
    load(con, write(tmp_path, "\n".join([AE_HEADER, ae_line(3)]) + "\n", "other.csv"))
    assert rows(con, "subject_id") == [(2, "S01-0003")]
