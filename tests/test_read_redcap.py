"""flows/read_redcap.py: a REDCap raw export fanned out into the five conformed datasets (DTS §4, §6, §7).

Tiny hand-made transfers shaped like a real raw export: longitudinal events, repeating
instruments (vital signs, adverse events), the DAG column, checkbox columns, `<form>_complete`
statuses and calculated totals, with the project's data dictionary beside them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from flows.ingest_transfers import run_ingest
from flows.process import validate_dataset
from flows.read import RECORD, ROW, RawDataset
from flows.read_redcap import DICTIONARY, DICTIONARY_COLUMNS, EXPORT, load_template, parse_template, read_redcap
from flows.verify import Rejected, VerifiedTransfer, verify_transfer
from flows.warehouse import connect, create_valid_tables
from tests.helpers import manifest_entry, source, write_transfer

S03 = source("S03")
T1 = "20260601T022000Z"
SUBJECT = "S03-0001"


# --- a real-shaped project: its dictionary, its export -------------------------------------------------

def _scores(top: int) -> str:
    return " | ".join(f"{n}, {n}" for n in range(top + 1))


def _assessment(form: str, items: int, top: int, *, rater: bool = False, total: bool = True,
                kind: str = "radio") -> list[tuple[str, str, str, str, str]]:
    fields = [(f"{form}_date", form, "text", "", "date_ymd")]
    fields += [(f"{form}_rater", form, "text", "", "")] if rater else []
    fields += [(f"{form}_{n}", form, kind, _scores(top) if kind == "radio" else "", "") for n in range(1, items + 1)]
    if total:
        fields.append((f"{form}_total", form, "calc", f"sum([{form}_1]…[{form}_{items}])", ""))
    return fields


# (field, form, type, choices, validation), in the project's order, as REDCap writes its dictionary
FIELDS: list[tuple[str, str, str, str, str]] = [
    ("record_id", "enrollment", "text", "", ""),
    ("scr_date", "enrollment", "text", "", "date_ymd"),
    ("consent_date", "enrollment", "text", "", "date_ymd"),
    ("birth_year", "enrollment", "text", "", "integer"),
    ("sex", "enrollment", "radio", "1, F | 2, M | 3, X", ""),
    ("weight_kg", "enrollment", "text", "", "number"),
    ("prior_ect", "enrollment", "yesno", "", ""),
    ("status", "study_status", "dropdown",
     "1, SCREENED | 2, SCREEN_FAILED | 3, ENROLLED | 4, COMPLETED | 5, WITHDRAWN", ""),
    ("withdrawal_date", "study_status", "text", "", "date_ymd"),
    ("withdrawal_reason", "study_status", "notes", "", ""),
    *_assessment("madrs", 10, 6, rater=True),
    *_assessment("phq9", 9, 3),
    *_assessment("gad7", 7, 3),
    *_assessment("cadss", 23, 4),
    *_assessment("cssrs", 6, 1, total=False, kind="yesno"),
    ("dose_date", "dosing", "text", "", "date_ymd"),
    ("dose_time", "dosing", "text", "", "time"),
    ("dose_route", "dosing", "dropdown", "1, IV | 2, IM | 3, SL | 4, IN", ""),
    ("dose_mg", "dosing", "text", "", "number"),
    ("dose_weight_kg", "dosing", "text", "", "number"),
    ("dose_infusion_min", "dosing", "text", "", "integer"),
    ("dose_duration_min", "dosing", "text", "", "integer"),
    ("dose_therapist", "dosing", "text", "", ""),
    ("dose_attended", "dosing", "yesno", "", ""),
    ("ts_date", "therapy_session", "text", "", "date_ymd"),
    ("ts_time", "therapy_session", "text", "", "time"),
    ("ts_duration_min", "therapy_session", "text", "", "integer"),
    ("ts_therapist", "therapy_session", "text", "", ""),
    ("ts_attended", "therapy_session", "yesno", "", ""),
    ("vs_timepoint", "vital_signs", "dropdown", "1, PRE | 2, T40 | 3, T120", ""),
    ("vs_time", "vital_signs", "text", "", "time"),
    ("vs_sbp", "vital_signs", "text", "", "integer"),
    ("vs_dbp", "vital_signs", "text", "", "integer"),
    ("vs_hr", "vital_signs", "text", "", "integer"),
    ("vs_spo2", "vital_signs", "text", "", "integer"),
    ("ae_id", "adverse_events", "text", "", ""),
    ("ae_term", "adverse_events", "text", "", ""),
    ("ae_onset", "adverse_events", "text", "", "date_ymd"),
    ("ae_end", "adverse_events", "text", "", "date_ymd"),
    ("ae_severity", "adverse_events", "dropdown", "1, MILD | 2, MODERATE | 3, SEVERE", ""),
    ("ae_serious", "adverse_events", "yesno", "", ""),
    ("ae_related", "adverse_events", "dropdown",
     "1, NOT_RELATED | 2, UNLIKELY | 3, POSSIBLE | 4, PROBABLE | 5, DEFINITE", ""),
    ("ae_outcome", "adverse_events", "dropdown", "1, RECOVERED | 2, RECOVERING | 3, NOT_RECOVERED | "
     "4, RECOVERED_WITH_SEQUELAE | 5, FATAL | 6, UNKNOWN", ""),
    ("ae_action", "adverse_events", "checkbox", "1, NONE | 2, DOSE_REDUCED | 3, DOSE_INTERRUPTED | 4, DRUG_WITHDRAWN",
     ""),
]
DICTIONARY_HEADER = ["Variable / Field Name", "Form Name", "Section Header", "Field Type", "Field Label",
                     "Choices, Calculations, OR Slider Labels", "Field Note",
                     "Text Validation Type OR Show Slider Number", "Text Validation Min", "Text Validation Max",
                     "Identifier?", "Branching Logic (Show field only if...)", "Required Field?"]
LEAD = ["record_id", "redcap_event_name", "redcap_repeat_instrument", "redcap_repeat_instance",
        "redcap_data_access_group"]


def export_header(fields: list[tuple[str, str, str, str, str]] = FIELDS) -> list[str]:
    """The raw export's columns: the lead columns, then each form's fields and its status."""
    header = list(LEAD)
    for i, (name, form, kind, choices, _) in enumerate(fields):
        if name == "record_id":
            continue
        if kind == "checkbox":
            header += [f"{name}___{part.split(',')[0].strip()}" for part in choices.split("|")]
        else:
            header.append(name)
        if i + 1 == len(fields) or fields[i + 1][1] != form:
            header.append(f"{form}_complete")
    return header


def csv_text(header: list[str], rows: list[Mapping[str, str]] | list[list[str]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(h, "") for h in header] if isinstance(row, Mapping) else row)
    return out.getvalue()


def dictionary_text(fields: list[tuple[str, str, str, str, str]] = FIELDS,
                    header: list[str] = DICTIONARY_HEADER) -> str:
    by_name = {"Variable / Field Name": 0, "Form Name": 1, "Field Type": 2,
               "Choices, Calculations, OR Slider Labels": 3, "Text Validation Type OR Show Slider Number": 4}
    rows = [[f[by_name[h]] if h in by_name else (f"{f[0]} label" if h == "Field Label" else "") for h in header]
            for f in fields]
    return csv_text(header, rows)


def row(event: str, record: str = SUBJECT, repeat: str = "", instance: str = "", **values: str) -> dict[str, str]:
    return {"record_id": record, "redcap_event_name": event, "redcap_repeat_instrument": repeat,
            "redcap_repeat_instance": instance, "redcap_data_access_group": record[:3].lower(), **values}


def items(form: str, scores: list[int | str], total: str | None = None, status: str = "2",
          **extra: str) -> dict[str, str]:
    values = {f"{form}_{n}": str(s) for n, s in enumerate(scores, start=1)}
    total = str(sum(int(s) for s in scores if str(s).isdigit())) if total is None else total
    return {**values, **({f"{form}_total": total} if form != "cssrs" else {}), f"{form}_complete": status,
            **extra}


def screening(record: str = SUBJECT, **changes: str) -> dict[str, str]:
    values = {"scr_date": "2026-01-10", "consent_date": "2026-01-05", "birth_year": "1980", "sex": "1",
              "weight_kg": "72.5", "prior_ect": "0", "enrollment_complete": "2", "status": "3",
              "study_status_complete": "2",
              **items("madrs", [3, 2, 1, 0, 4, 2, 1, 3, 2, 1], madrs_date="2026-01-10", madrs_rater="R001"),
              **items("cssrs", [0, 0, 0, 0, 0, 0], cssrs_date="2026-01-10")}
    return row("screening_arm_1", record, **{**values, **changes})


def dose(event: str = "dose_1_arm_1", **changes: str) -> dict[str, str]:
    values = {"dose_date": "2026-01-12", "dose_time": "09:30", "dose_route": "1", "dose_mg": "50",
              "dose_weight_kg": "72.5", "dose_infusion_min": "40", "dose_duration_min": "120",
              "dose_therapist": "T001", "dose_attended": "1", "dosing_complete": "2",
              **items("cadss", [1] * 23, cadss_date="2026-01-12")}
    return row(event, **{**values, **changes})


def vital(instance: int, timepoint: str, event: str = "dose_1_arm_1", **changes: str) -> dict[str, str]:
    values = {"vs_timepoint": timepoint, "vs_time": "09:25", "vs_sbp": "120", "vs_dbp": "80", "vs_hr": "72",
              "vs_spo2": "98", "vital_signs_complete": "2"}
    return row(event, repeat="vital_signs", instance=str(instance), **{**values, **changes})


def adverse_event(instance: int = 1, ticks: tuple[str, str, str, str] = ("1", "0", "0", "0"),
                  record: str = SUBJECT, **changes: str) -> dict[str, str]:
    values = {"ae_id": f"AE{instance:03d}", "ae_term": "Headache", "ae_onset": "2026-01-12", "ae_end": "2026-01-13",
              "ae_severity": "1", "ae_serious": "0", "ae_related": "3", "ae_outcome": "1",
              **{f"ae_action___{n}": t for n, t in enumerate(ticks, start=1)}, "adverse_events_complete": "2"}
    return row("ae_log_arm_1", record, repeat="adverse_events", instance=str(instance), **{**values, **changes})


def standard_rows() -> list[dict[str, str]]:
    """A subject's screening, a dosing visit with its three vital-signs instances, an adverse event."""
    return [screening(), dose(), vital(1, "1"), vital(2, "2"), vital(3, "3"), adverse_event()]


def deliver(tmp_path: Path, rows: list[dict[str, str]] | None = None, *, export: str | None = None,
            dictionary: str | None = None, rows_in_manifest: Mapping[str, int] | None = None,
            transfer_id: str = T1) -> VerifiedTransfer:
    """A verified S03 transfer of the export (default: the standard rows) and its dictionary."""
    files = {EXPORT: (export if export is not None else csv_text(export_header(), rows or standard_rows())).encode(),
             DICTIONARY: (dictionary if dictionary is not None else dictionary_text()).encode()}
    entries = [manifest_entry(name, data, (rows_in_manifest or {}).get(name), src=S03) for name, data in files.items()]
    ref = write_transfer(tmp_path / "inbox", "S03", transfer_id, files, manifest_changes={"files": entries})
    return verify_transfer(ref, S03)


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def records(con: duckdb.DuckDBPyConnection, raw: RawDataset, *columns: str) -> list[tuple[object, ...]]:
    return con.execute(f"select {', '.join(columns)} from {raw.table} order by {RECORD}").fetchall()


# One delivery with a rule on (nearly) every line, read and validated once for the module:
# reading and validating cost more than the assertions.
TICKS = {"AE001": ("1", "0", "0", "0"), "AE002": ("1", "1", "0", "0"), "AE003": ("0", "1", "1", "0"),
         "AE004": ("1", "0", "1", "1"), "AE005": ("0", "0", "0", "0")}
DELIVERY = [
    screening(madrs_4="", madrs_total="25"),                                       # 2: missing item, total off
    screening("S03-0002", sex="4", cssrs_3="2"),                                   # 3: codes the dictionary lacks
    row("baseline_arm_1", **items("phq9", [1] * 9, phq9_date="2026-01-11")),       # 4: one form of four
    dose("dose_1_arm_1", cadss_complete="0"),                                      # 5
    dose("dose_2_arm_1", cadss_complete="1", cadss_total=""),                      # 6
    dose("dose_3_arm_1"),                                                          # 7
    dose("dose_4_arm_1", cadss_complete=""),                                       # 8
    dose("dose_7_arm_1"),                                                          # 9: an event the study lacks
    row("prep_1_arm_1", therapy_session_complete="0"),                             # 10: a status and nothing else
    vital(1, "1"), vital(2, "2"), vital(3, "3"),                                   # 11-13
    *(adverse_event(n, ticks) for n, ticks in enumerate(TICKS.values(), start=1)),  # 14-18
    adverse_event(1, record="S04-0003"),                                           # 19: another site's subject
]


@dataclass
class Delivered:
    con: duckdb.DuckDBPyConnection
    raw: dict[str, RawDataset]
    quarantine: dict[str, list[tuple[object, ...]]]  # (line, column, value, reason) per dataset


@pytest.fixture(scope="module")
def delivered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delivered]:
    connection = duckdb.connect()
    transfer = deliver(tmp_path_factory.mktemp("redcap"), DELIVERY)
    raw = read_redcap(connection, transfer)
    contents = {name: connection.execute(f"select * from {r.table}").fetchall() for name, r in raw.items()}
    create_valid_tables(connection)
    quarantine = {}
    for name, dataset in raw.items():
        load = validate_dataset(connection, transfer, dataset, None if name == "participants" else "valid_participants")
        assert load.balanced
        quarantine[name] = connection.execute(f"select source_row, conformed_column, value, reason_code "
                                              f"from quarantine_{name} order by 1, 2").fetchall()
    assert contents == {name: connection.execute(f"select * from {r.table}").fetchall() for name, r in raw.items()}
    yield Delivered(connection, raw, quarantine)
    connection.close()


def items_of(d: Delivered, where: str, *columns: str) -> list[tuple[object, ...]]:
    return d.con.execute(f"select {', '.join(columns)} from raw_assessment_items where {where} "
                         f"order by {RECORD}").fetchall()


# --- fan-out ------------------------------------------------------------------------------------------

def test_each_row_fans_out_into_the_records_it_holds(delivered: Delivered) -> None:
    raw = delivered.raw
    assert {name: r.records for name, r in raw.items()} == {
        "participants": 2, "sessions": 6, "vitals": 3, "assessment_items": 9 + 6 + 10 + 6 + 9 + 5 * 23,
        "adverse_events": 6}
    assert records(delivered.con, raw["participants"], ROW, "subject_id") == [(2, SUBJECT), (3, "S03-0002")]
    assert records(delivered.con, raw["vitals"], ROW, "visit", "timepoint") == [
        (11, "D1", "PRE"), (12, "D1", "T40"), (13, "D1", "T120")]
    per_form = delivered.con.execute(
        "select instrument, list(distinct _row order by _row), count(*), count(distinct _record) "
        "from raw_assessment_items group by all order by 1").fetchall()
    assert per_form == [("CADSS", [5, 6, 7, 8, 9], 115, 115), ("CSSRS", [2, 3], 12, 12), ("MADRS", [2, 3], 19, 19),
                        ("PHQ9", [4], 9, 9)]
    assert all(r.source_file == EXPORT and r.columns == [c.name for c in r.dataset.columns] for r in raw.values())


def test_item_records_carry_their_form_date_rater_and_item_number(delivered: Delivered) -> None:
    madrs = items_of(delivered, "instrument = 'MADRS' and _row = 3", "item", "score", "assessment_date", "rater_id")
    assert madrs == [(str(n), str(s), "2026-01-10", "R001") for n, s in enumerate([3, 2, 1, 0, 4, 2, 1, 3, 2, 1], 1)]
    assert items_of(delivered, "instrument = 'PHQ9'", "distinct rater_id") == [("",)]  # MADRS only: others missing
    assert delivered.raw["assessment_items"].passthrough == ("_form_status", "_site_group", "_delivered_total")


def test_a_form_absent_from_a_row_makes_no_record(delivered: Delivered) -> None:
    assert items_of(delivered, "_row = 4", "distinct instrument, visit") == [("PHQ9", "BL")]


def test_a_form_with_only_its_status_filled_is_present(delivered: Delivered) -> None:
    assert delivered.con.execute("select visit, session_date, _form_status from raw_sessions "
                                 "where _row = 10").fetchall() == [("PREP1", "", "INCOMPLETE")]
    assert (10, "session_date", None, "MISSING_REQUIRED") in delivered.quarantine["sessions"]


# --- codes ------------------------------------------------------------------------------------------

def test_raw_choice_codes_become_dts_codes_through_the_dictionary(delivered: Delivered) -> None:
    con, raw = delivered.con, delivered.raw
    assert records(con, raw["participants"], "sex", "prior_ect", "status")[0] == ("F", "N", "ENROLLED")
    assert records(con, raw["sessions"], "route", "attended", "dose_mg", "weight_kg")[0] == ("IV", "Y", "50", "72.5")
    assert [t for (t,) in records(con, raw["vitals"], "timepoint")] == ["PRE", "T40", "T120"]
    assert records(con, raw["adverse_events"], "severity", "serious", "related", "outcome")[0] == (
        "MILD", "N", "POSSIBLE", "RECOVERED")


def test_a_code_the_dictionary_does_not_know_passes_through_and_is_quarantined_out_of_range(
        delivered: Delivered) -> None:
    assert records(delivered.con, delivered.raw["participants"], "sex") == [("F",), ("4",)]
    assert delivered.quarantine["participants"] == [(3, "sex", "4", "OUT_OF_RANGE")]
    assert items_of(delivered, "instrument = 'CSSRS' and _row = 3 and item = '3'", "score") == [("2",)]
    assert (3, "score", "2", "OUT_OF_RANGE") in delivered.quarantine["assessment_items"]


def test_the_most_severe_ticked_action_counts_and_none_ticked_is_missing(delivered: Delivered) -> None:
    actions = dict(delivered.con.execute("select ae_id, action from raw_adverse_events "
                                         "where subject_id = 'S03-0001'").fetchall())
    assert actions == {"AE001": "NONE", "AE002": "DOSE_REDUCED", "AE003": "DOSE_INTERRUPTED",
                       "AE004": "DRUG_WITHDRAWN", "AE005": ""}
    assert (18, "action", None, "MISSING_REQUIRED") in delivered.quarantine["adverse_events"]


def test_events_map_to_visits_and_an_unknown_event_is_an_invalid_visit(delivered: Delivered) -> None:
    visits = delivered.con.execute("select _row, visit from raw_sessions order by _row").fetchall()
    assert visits == [(5, "D1"), (6, "D2"), (7, "D3"), (8, "D4"), (9, "dose_7_arm_1"), (10, "PREP1")]
    assert (9, "visit", "dose_7_arm_1", "INVALID_VISIT") in delivered.quarantine["sessions"]


def test_a_row_of_another_site_holds_records_quarantined_as_unknown_subject(delivered: Delivered) -> None:
    assert (19, "subject_id", "S04-0003", "UNKNOWN_SUBJECT") in delivered.quarantine["adverse_events"]


def test_a_participant_who_does_not_land_takes_their_records_along(delivered: Delivered) -> None:
    their_items = [q for q in delivered.quarantine["assessment_items"] if q[0] == 3]
    assert len(their_items) == 6 + 10 and {q[3] for q in their_items} == {"OUT_OF_RANGE", "UNKNOWN_SUBJECT"}


# --- statuses, totals, missing items ------------------------------------------------------------------

def test_the_form_status_comes_from_its_complete_column(delivered: Delivered) -> None:
    statuses = items_of(delivered, "instrument = 'CADSS'", "distinct visit, _form_status")
    assert statuses == [("D1", "INCOMPLETE"), ("D2", "UNVERIFIED"), ("D3", "COMPLETE"), ("D4", None),
                        ("dose_7_arm_1", "COMPLETE")]
    assert records(delivered.con, delivered.raw["participants"], "_form_status")[0] == ("COMPLETE",)


def test_the_calculated_total_is_passed_as_delivered_even_when_it_disagrees(delivered: Delivered) -> None:
    totals = delivered.con.execute(
        "select _row, instrument, list(distinct _delivered_total), sum(score::int) from raw_assessment_items "
        "where _row in (2, 6) group by all order by 1, 2").fetchall()
    assert totals == [(2, "CSSRS", [None], 0), (2, "MADRS", ["25"], 19), (6, "CADSS", [None], 23)]


def test_empty_item_on_a_present_form_makes_the_assessment_incomplete_not_quarantined(delivered: Delivered) -> None:
    madrs = items_of(delivered, "instrument = 'MADRS' and _row = 2", "item::int")
    assert [n for (n,) in madrs] == [1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert not [q for q in delivered.quarantine["assessment_items"] if q[0] == 2]
    assert delivered.con.execute("select count(*) from valid_assessment_items "
                                 "where subject_id = 'S03-0001' and visit = 'SCR' and instrument = 'MADRS'"
                                 ).fetchall() == [(9,)]


# --- the site, personal data, extra columns, malformed rows, lines ----------------------------------------

def test_personal_data_is_never_read_and_extra_columns_are_ignored_once(tmp_path: Path,
                                                                        con: duckdb.DuckDBPyConnection) -> None:
    header = [*export_header(), "dob", "site_note"]
    rows = [{**r, "dob": "1980-04-17", "site_note": "called back"} for r in standard_rows()]
    raw = read_redcap(con, deliver(tmp_path, export=csv_text(header, rows)))
    warnings = [w for r in raw.values() for w in r.warnings()]
    assert warnings == [f"personal data received: {EXPORT} held column(s) dob, dropped and never stored",
                        f"{EXPORT}: extra column(s) site_note ignored"]
    tables = con.execute("select table_name, column_name from duckdb_columns() where not internal").fetchall()
    assert not [t for t in tables if t[1] in ("dob", "site_note")]
    for r in raw.values():
        assert con.execute(f"select count(*) from {r.table} "
                           "where concat_ws('|', columns(*)) like '%1980-04-17%'").fetchall() == [(0,)]


def test_a_malformed_row_is_one_unparseable_record_of_the_dataset_it_feeds(
        tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    text = csv_text(export_header(), standard_rows())
    lines = text.splitlines()
    assert lines[2].endswith(",")
    lines[2] = lines[2][:-1]  # line 3: the dosing visit, one field short
    lines[4] = lines[4] + ",surplus"  # line 5: the second vital-signs instance, one field too many
    raw = read_redcap(con, deliver(tmp_path, export="\n".join(lines) + "\n"))
    assert [(m.line, m.fields - m.expected) for m in raw["sessions"].malformed] == [(3, -1)]
    assert [(m.line, m.fields - m.expected) for m in raw["vitals"].malformed] == [(5, 1)]
    assert (raw["sessions"].records, raw["vitals"].records) == (1, 3)
    assert records(con, raw["vitals"], ROW) == [(4,), (6,)]
    assert not [r for r in raw.values() if r.malformed and r.dataset.name not in ("sessions", "vitals")]


def test_lines_stay_exact_when_a_value_spans_lines(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    withdrawn = screening(status="5", withdrawal_date="2026-02-01", withdrawal_reason="moved away,\nno contact")
    raw = read_redcap(con, deliver(tmp_path, [withdrawn, dose(), vital(1, "1")]))
    assert records(con, raw["participants"], ROW, "withdrawal_reason") == [(2, "moved away,\nno contact")]
    assert records(con, raw["sessions"], ROW) == [(4,)]
    assert records(con, raw["vitals"], ROW) == [(5,)]


def test_a_number_the_dictionary_writes_with_a_decimal_comma_is_read_as_one(
        tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    fields = [f if f[0] != "weight_kg" else (*f[:4], "number_comma_decimal") for f in FIELDS]
    raw = read_redcap(con, deliver(tmp_path, [screening(weight_kg="72,5")], dictionary=dictionary_text(fields)))
    assert records(con, raw["participants"], "weight_kg") == [("72.5",)]


# --- what rejects the transfer ------------------------------------------------------------------------

def _without(column: str) -> str:
    header = [c for c in export_header() if c != column]
    return csv_text(header, standard_rows())


@pytest.mark.parametrize(("changes", "reason"), [
    ({"rows_in_manifest": {EXPORT: 7}}, f"{EXPORT} holds 6 data rows; the manifest says 7"),
    ({"rows_in_manifest": {DICTIONARY: 3}}, f"{DICTIONARY} holds {len(FIELDS)} data rows; the manifest says 3"),
    ({"export": _without("madrs_3")}, f"{EXPORT} lacks the required column(s) madrs_3"),
    ({"export": _without("ae_action___2")}, f"{EXPORT} lacks the required column(s) ae_action___2"),
    ({"export": _without("vital_signs_complete")}, f"{EXPORT} lacks the required column(s) vital_signs_complete"),
    ({"export": _without("redcap_event_name")}, f"{EXPORT} lacks the required column(s) redcap_event_name"),
    ({"export": csv_text([*export_header(), "sex"], [])}, f"{EXPORT}: column 'sex' appears twice in the header"),
    ({"dictionary": dictionary_text(header=[h for h in DICTIONARY_HEADER if h != "Form Name"])},
     f"{DICTIONARY} lacks REDCap's column(s) 'Form Name'"),
    ({"dictionary": dictionary_text([f for f in FIELDS if f[0] != "vs_hr"])},
     f"{DICTIONARY} lacks the field vs_hr of the REDCap template"),
    ({"dictionary": dictionary_text([f if f[0] != "vs_hr" else ("vs_hr", "dosing", *f[2:]) for f in FIELDS])},
     f"{DICTIONARY} puts vs_hr on form dosing; the REDCap template has it on vital_signs"),
    ({"dictionary": dictionary_text([f if f[0] != "sex" else (*f[:3], "F | M", "") for f in FIELDS])},
     f"{DICTIONARY}: the choices of sex cannot be read"),
    ({"dictionary": "Variable / Field Name,Form Name\nrecord_id\n"}, f"{DICTIONARY} lacks REDCap's column(s)"),
])
def test_a_transfer_that_cannot_be_read_as_the_template_is_rejected(
        tmp_path: Path, con: duckdb.DuckDBPyConnection, changes: dict[str, Any], reason: str) -> None:
    transfer = deliver(tmp_path, **changes)
    with pytest.raises(Rejected, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        read_redcap(con, transfer)


def test_the_template_maps_only_columns_its_dataset_has() -> None:
    spec = {"record_id": "record_id", "event": "redcap_event_name", "form_status": {0: "INCOMPLETE"}, "events": {},
            "datasets": {"vitals": [{"forms": ["vital_signs"], "columns": {"dose_mg": "vs_sbp"}}]}}
    with pytest.raises(ValueError, match="vitals cannot map column"):
        parse_template(spec)
    template = load_template()
    assert {b.dataset for b in template.blocks} == {"participants", "sessions", "vitals", "assessment_items",
                                                    "adverse_events"}
    assert set(DICTIONARY_COLUMNS.values()) <= set(DICTIONARY_HEADER)


# --- end to end: the flags a REDCap transfer raises -----------------------------------------------------

def test_form_status_total_and_missing_item_reach_the_flags(tmp_path: Path) -> None:
    baseline = row("baseline_arm_1", **items("madrs", [2] * 10, total="25", status="0", madrs_date="2026-01-11",
                                              madrs_rater="R001"),
                   **items("phq9", [1, 1, 1, 1, "", 1, 1, 1, 1], phq9_date="2026-01-11"))
    deliver(tmp_path, [screening(), baseline])
    summary = run_ingest(tmp_path / "inbox", tmp_path / "wh")
    assert [r.status for r in summary.receipts] == ["LANDED"]
    db = connect(tmp_path / "wh", read_only=True)
    try:
        flags = db.execute("select flag_type, visit, detail from ops.flags where status = 'OPEN' "
                           "order by 1, 2, 3").fetchall()
        assessments = db.execute("select visit, instrument, items_present, is_complete, total, form_status "
                                 "from core.assessments where visit = 'BL' order by 2").fetchall()
        loads = db.execute("select dataset, delivered, landed, quarantined from ops.loads order by 1").fetchall()
    finally:
        db.close()
    assert ("FORM_INCOMPLETE", "BL", "MADRS") in flags
    assert ("TOTAL_MISMATCH", "BL", "MADRS") in flags
    assert ("INCOMPLETE_ASSESSMENT", "BL", "PHQ9") in flags
    assert assessments == [("BL", "MADRS", 10, True, 20, "INCOMPLETE"), ("BL", "PHQ9", 8, False, None, "COMPLETE")]
    assert loads == [("adverse_events", 0, 0, 0), ("assessment_items", 34, 34, 0), ("participants", 1, 1, 0),
                     ("sessions", 0, 0, 0), ("vitals", 0, 0, 0)]


def test_an_incomplete_enrollment_or_adverse_event_form_lands_flagged(tmp_path: Path) -> None:
    """FORM_INCOMPLETE holds for every form (DTS §4), the participant's and the AE log's too."""
    deliver(tmp_path, [screening(enrollment_complete="0"), adverse_event(1, adverse_events_complete="0"),
                       adverse_event(2)])
    run_ingest(tmp_path / "inbox", tmp_path / "wh", expectations=False)
    db = connect(tmp_path / "wh", read_only=True)
    try:
        flags = db.execute("select dataset, subject_id, visit, detail from ops.flags "
                           "where flag_type = 'FORM_INCOMPLETE' and status = 'OPEN' order by all").fetchall()
        statuses = db.execute("select (select list(form_status) from core.participants), "
                              "(select list(form_status order by ae_id) from core.adverse_events)").fetchone()
    finally:
        db.close()
    assert flags == [("adverse_events", SUBJECT, None, "AE001"), ("participants", SUBJECT, None, "participant")]
    assert statuses == (["INCOMPLETE"], ["INCOMPLETE", "COMPLETE"])


def test_a_row_of_another_sites_data_access_group_is_an_unknown_subject_and_no_group_is_none(
        tmp_path: Path) -> None:
    from flows.ingest_transfers import run_ingest

    rows = [*standard_rows(), {**vital(4, "2", event="dose_2_arm_1"), "redcap_data_access_group": "s04"},
            {**vital(5, "3", event="dose_2_arm_1"), "redcap_data_access_group": ""}]
    deliver(tmp_path, rows)
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    con = duckdb.connect(str(tmp_path / "wh" / "kap.duckdb"), read_only=True)
    quarantined = con.execute("select dataset, source_row, reason_code, message from ops.quarantine").fetchall()
    landed = con.execute("select visit, timepoint from core.vitals where visit = 'D2'").fetchall()
    con.close()
    assert quarantined == [("vitals", 8, "UNKNOWN_SUBJECT", "redcap_export.csv line 8, column subject_id: subject "
                            "S03-0001 is on a row of another site's data access group")]
    assert landed == [("D2", "T120")]
