"""schemas/datasets.py and flows/validate.py: every row rule of the five pandera models, checked through
`model_findings` for the DTS §6 reason code it raises (DTS §3, §6).

Each rule test validates one small batch: good records first, then bad ones, and asserts that
exactly the bad records fail, each with exactly the rule's (reason, column). One batch per rule
keeps the module fast (a pandera validation costs tens of milliseconds whatever its size).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import date, time
from typing import Any

import duckdb
import pandera.polars as pa
import polars as pl
import pytest

from flows.read import RECORD
from flows.validate import FINDING_SCHEMA, model_findings, reason_of_failure, run_model
from schemas.datasets import DATASETS, REASON_ORDER
from tests.helpers import GOOD_RECORDS

POLARS_TYPES: dict[str, pl.DataType] = {"text": pl.String(), "integer": pl.Int64(), "decimal": pl.Float64(),
                                        "date": pl.Date(), "time": pl.Time()}
DOSING_VISITS = ["D1", "D2", "D3", "D4", "D5", "D6"]
SESSION_VISITS = ["PREP1", "PREP2", *DOSING_VISITS, "INT1", "INT2", "INT3", "INT4", "INT5", "INT6"]
Change = Mapping[str, Any]


def frame(dataset: str, *changes: Change) -> pl.DataFrame:
    """Conformed records of `dataset`: the good record with each of `changes` applied, on lines 2, 3, ..."""
    schema = {RECORD: pl.Int64(), **{c.name: POLARS_TYPES[c.kind] for c in DATASETS[dataset].columns}}
    rows = [{RECORD: line, **GOOD_RECORDS[dataset], **change} for line, change in enumerate(changes, start=2)]
    return pl.DataFrame(rows, schema=schema)


def findings(dataset: str, *changes: Change) -> dict[int, set[tuple[str, str]]]:
    """{line: {(reason, column)}} of the records with findings."""
    found: dict[int, set[tuple[str, str]]] = {}
    for f in model_findings(DATASETS[dataset], frame(dataset, *changes)):
        found.setdefault(f.record, set()).add((f.reason_code, f.column_name))
    return found


def assert_rule(dataset: str, good: Sequence[Change], bad: Sequence[Change], reason: str,
                column: str) -> None:
    """The good records pass; every bad one fails with exactly (reason, column)."""
    first_bad = 2 + len(good)
    expected = {line: {(reason, column)} for line in range(first_bad, first_bad + len(bad))}
    assert findings(dataset, *good, *bad) == expected


def test_good_records_pass_every_model() -> None:
    for name in DATASETS:
        assert findings(name, {}) == {}, name


# --- required values (not_nullable -> MISSING_REQUIRED) -----------------------------------------

REQUIRED: dict[str, list[str]] = {
    "participants": ["subject_id", "screening_date", "consent_date", "birth_year", "sex", "weight_kg",
                     "prior_ect", "status"],
    "sessions": ["subject_id", "visit", "session_date", "start_time", "duration_min", "therapist_id",
                 "attended"],
    "vitals": ["subject_id", "visit", "timepoint", "measured_time", "sbp", "dbp", "hr", "spo2"],
    "assessment_items": ["subject_id", "visit", "instrument", "assessment_date", "item", "score"],
    "adverse_events": ["subject_id", "ae_id", "term", "onset_date", "severity", "serious", "related",
                       "outcome", "action"],
}


@pytest.mark.parametrize(("dataset", "column"), [(d, c) for d, cols in REQUIRED.items() for c in cols])
def test_missing_required_value_is_missing_required(dataset: str, column: str) -> None:
    assert_rule(dataset, [{}], [{column: None}], "MISSING_REQUIRED", column)


@pytest.mark.parametrize("dataset", list(REQUIRED))
def test_only_the_dts_required_columns_are_not_nullable(dataset: str) -> None:
    assert [c.name for c in DATASETS[dataset].columns if c.required] == REQUIRED[dataset]


def test_optional_values_may_be_missing() -> None:
    assert findings("participants", {"withdrawal_date": None, "withdrawal_reason": None}) == {}
    assert findings("adverse_events", {"end_date": None}) == {}
    phq9_without_rater = {"instrument": "PHQ9", "visit": "W1", "rater_id": None, "score": 0}
    assert findings("assessment_items", phq9_without_rater) == {}


# --- subject ids and patterns (str_matches -> OUT_OF_RANGE) ---------------------------------------

@pytest.mark.parametrize("dataset", list(DATASETS))
def test_subject_id_not_site_and_4_digits_is_out_of_range(dataset: str) -> None:
    bad = ["S1-0001", "S01-001", "S01-00001", "s01-0001", "S01_0001", "X01-0001", "S01-0001 ", "", "SS1-0001"]
    assert_rule(dataset, [{"subject_id": "S01-0001"}, {"subject_id": "S99-9999"}],
                [{"subject_id": s} for s in bad], "OUT_OF_RANGE", "subject_id")


def test_therapist_id_not_t_and_3_digits_is_out_of_range() -> None:
    assert_rule("sessions", [{"therapist_id": "T000"}, {"therapist_id": "T999"}],
                [{"therapist_id": t} for t in ["T01", "T0001", "t001", "R001", "T00A", " T001"]],
                "OUT_OF_RANGE", "therapist_id")


def test_rater_id_not_r_and_3_digits_is_out_of_range() -> None:
    assert_rule("assessment_items", [{"rater_id": "R000"}, {"rater_id": "R999"}],
                [{"rater_id": r} for r in ["R01", "R0001", "r001", "T001", ""]], "OUT_OF_RANGE", "rater_id")


# --- hard limits (in_range / gt / le -> OUT_OF_RANGE) ----------------------------------------------

@pytest.mark.parametrize(
    ("dataset", "column", "good", "bad"),
    [
        ("participants", "birth_year", [1900, 2010], [1899, 2011]),
        ("participants", "weight_kg", [30.0, 250.0], [29.99, 250.01]),
        ("sessions", "duration_min", [5, 600], [4, 601, 0]),
        ("sessions", "dose_mg", [0.01, 800.0], [0.0, -5.0, 800.01]),
        ("sessions", "weight_kg", [30.0, 250.0], [29.9, 250.1]),
        ("sessions", "infusion_min", [1, 240], [0, 241]),
        ("vitals", "hr", [20, 250], [19, 251]),
        ("vitals", "spo2", [50, 100], [49, 101]),
    ],
)
def test_value_outside_its_hard_limit_is_out_of_range(dataset: str, column: str, good: list[float],
                                                       bad: list[float]) -> None:
    assert_rule(dataset, [{column: v} for v in good], [{column: v} for v in bad], "OUT_OF_RANGE", column)


def test_systolic_pressure_outside_50_to_300_is_out_of_range() -> None:
    # a diastolic pressure of 20 keeps each record consistent
    assert_rule("vitals", [{"sbp": 50, "dbp": 20}, {"sbp": 300, "dbp": 20}],
                [{"sbp": 49, "dbp": 20}, {"sbp": 301, "dbp": 20}], "OUT_OF_RANGE", "sbp")


def test_diastolic_pressure_outside_20_to_200_is_out_of_range() -> None:
    assert_rule("vitals", [{"sbp": 300, "dbp": 20}, {"sbp": 300, "dbp": 200}],
                [{"sbp": 300, "dbp": 19}, {"sbp": 300, "dbp": 201}], "OUT_OF_RANGE", "dbp")


# --- codes (isin -> OUT_OF_RANGE, or INVALID_VISIT for visits) ------------------------------------

CODES: dict[tuple[str, str], list[str]] = {
    ("participants", "sex"): ["F", "M", "X"],
    ("participants", "prior_ect"): ["Y", "N"],
    ("participants", "status"): ["SCREENED", "SCREEN_FAILED", "ENROLLED", "COMPLETED", "WITHDRAWN"],
    ("sessions", "attended"): ["Y", "N"],
    ("sessions", "route"): ["IV", "IM", "SL", "IN"],
    ("vitals", "timepoint"): ["PRE", "T40", "T120"],
    ("assessment_items", "instrument"): ["MADRS", "PHQ9", "GAD7", "CADSS", "CSSRS"],
    ("adverse_events", "severity"): ["MILD", "MODERATE", "SEVERE"],
    ("adverse_events", "serious"): ["Y", "N"],
    ("adverse_events", "related"): ["NOT_RELATED", "UNLIKELY", "POSSIBLE", "PROBABLE", "DEFINITE"],
    ("adverse_events", "outcome"): ["RECOVERED", "RECOVERING", "NOT_RECOVERED", "RECOVERED_WITH_SEQUELAE",
                                    "FATAL", "UNKNOWN"],
    ("adverse_events", "action"): ["NONE", "DOSE_REDUCED", "DOSE_INTERRUPTED", "DRUG_WITHDRAWN"],
}


def with_code(column: str, code: str) -> dict[str, Any]:
    """A record holding `code` that is otherwise valid (a withdrawn participant with withdrawal date
    and reason; each instrument at one of its visits)."""
    if column == "status":
        return {"status": code, "withdrawal_date": date(2026, 3, 1), "withdrawal_reason": "moved away"}
    if column == "instrument":
        return item_record(code)
    return {column: code}


@pytest.mark.parametrize(("dataset", "column"), list(CODES))
def test_code_outside_the_allowed_codes_is_out_of_range(dataset: str, column: str) -> None:
    allowed = CODES[dataset, column]
    bad = [allowed[0].lower(), "OTHER", " ", f"{allowed[0]} "]
    assert_rule(dataset, [with_code(column, code) for code in allowed], [{column: b} for b in bad],
                "OUT_OF_RANGE", column)


@pytest.mark.parametrize(
    ("dataset", "good", "bad"),
    [("sessions", SESSION_VISITS, ["BL", "W1", "D7", "INT7", "d1", "SCR"]),
     ("vitals", DOSING_VISITS, ["PREP1", "INT1", "BL", "D0", "D7", "d1"]),
     ("assessment_items", ["SCR", "BL", "W1", "W12"], ["PREP1", "INT1", "W5", "bl", "D1P48"])],
)
def test_visit_the_dataset_does_not_have_is_invalid_visit(dataset: str, good: list[str],
                                                          bad: list[str]) -> None:
    assert_rule(dataset, [{"visit": v} for v in good], [{"visit": v} for v in bad], "INVALID_VISIT", "visit")


def test_visit_code_check_is_the_only_builtin_check_with_its_own_reason() -> None:
    reasons = {(name, column): (col.metadata or {}).get("reason")
               for name, d in DATASETS.items() for column, col in d.model.to_schema().columns.items()}
    assert {k: v for k, v in reasons.items() if v is not None} == {
        ("sessions", "visit"): "INVALID_VISIT", ("vitals", "visit"): "INVALID_VISIT",
        ("assessment_items", "visit"): "INVALID_VISIT"}


# --- participants: dataframe checks -----------------------------------------------------------------

def test_consent_after_screening_is_inconsistent() -> None:
    # screening on 2026-01-10
    assert_rule("participants", [{"consent_date": date(2026, 1, 10)}, {"consent_date": date(2025, 12, 1)}],
                [{"consent_date": date(2026, 1, 11)}, {"consent_date": date(2027, 1, 1)}],
                "INCONSISTENT", "consent_date")


WITHDRAWN: dict[str, Any] = {"status": "WITHDRAWN", "withdrawal_date": date(2026, 3, 1),
                             "withdrawal_reason": "moved away"}
NOT_WITHDRAWN: list[Change] = [{"status": s, "withdrawal_date": None, "withdrawal_reason": None}
                               for s in ["SCREENED", "SCREEN_FAILED", "ENROLLED", "COMPLETED"]]


@pytest.mark.parametrize("column", ["withdrawal_date", "withdrawal_reason"])
def test_withdrawn_participant_without_withdrawal_detail_is_missing_required(column: str) -> None:
    assert_rule("participants", [WITHDRAWN, *NOT_WITHDRAWN], [{**WITHDRAWN, column: None}],
                "MISSING_REQUIRED", column)


# --- sessions: dataframe checks -----------------------------------------------------------------

NO_DOSE: dict[str, Any] = {"route": None, "dose_mg": None, "weight_kg": None, "infusion_min": None}


@pytest.mark.parametrize("column", ["route", "dose_mg", "weight_kg"])
def test_attended_dosing_session_without_dosing_value_is_missing_required(column: str) -> None:
    good = [{"visit": v} for v in DOSING_VISITS] + [
        {"visit": "D1", "attended": "N", **NO_DOSE},  # a missed dosing session has no dose
        *({"visit": v, **NO_DOSE} for v in SESSION_VISITS if v not in DOSING_VISITS)]
    bad = [{"visit": v, column: None} for v in DOSING_VISITS]
    assert_rule("sessions", good, bad, "MISSING_REQUIRED", column)


def test_iv_dose_without_infusion_minutes_is_missing_required() -> None:
    good = [{"route": r, "infusion_min": None} for r in ["IM", "SL", "IN"]]
    good.append({"route": "IV", "infusion_min": 40})
    assert_rule("sessions", good, [{"route": "IV", "infusion_min": None}], "MISSING_REQUIRED", "infusion_min")


# --- vitals: dataframe check --------------------------------------------------------------------------

def test_diastolic_at_or_above_systolic_is_inconsistent() -> None:
    assert_rule("vitals", [{"sbp": 120, "dbp": 119}, {"sbp": 60, "dbp": 40}],
                [{"sbp": 120, "dbp": 120}, {"sbp": 60, "dbp": 90}], "INCONSISTENT", "dbp")


# --- assessment items: dataframe checks -------------------------------------------------------------

INSTRUMENTS: dict[str, dict[str, Any]] = {
    # items, item maximum, its visits, visits of the schedule where it is not taken, its rater
    "MADRS": {"items": 10, "max": 6, "visits": ["SCR", "BL", "D1P24", "W1", "W2", "W3", "W4", "W8", "W12"],
              "not_taken": ["D1", "D6"], "rater_id": "R001"},
    "PHQ9": {"items": 9, "max": 3, "visits": ["BL", "W1", "W2", "W3", "W4", "W8", "W12"],
             "not_taken": ["SCR", "D1P24", "D3"], "rater_id": None},
    "GAD7": {"items": 7, "max": 3, "visits": ["BL", "W4", "W12"], "not_taken": ["SCR", "W1", "W8"],
             "rater_id": None},
    "CADSS": {"items": 23, "max": 4, "visits": DOSING_VISITS, "not_taken": ["BL", "W1", "D1P24"],
              "rater_id": None},
    "CSSRS": {"items": 6, "max": 1, "visits": ["SCR", "BL", "W1", "W2", "W3", "W4", "W8", "W12"],
              "not_taken": ["D1P24", "D2"], "rater_id": None},
}


def item_record(instrument: str, **changes: Any) -> dict[str, Any]:
    """A valid item of `instrument` (item 1, score 0, at its first visit), with `changes`."""
    spec = INSTRUMENTS[instrument]
    record = {"instrument": instrument, "visit": spec["visits"][0], "rater_id": spec["rater_id"], "item": 1,
              "score": 0}
    return record | changes


def test_madrs_item_without_rater_is_missing_required() -> None:
    assert_rule("assessment_items", [item_record("MADRS")], [item_record("MADRS", rater_id=None)],
                "MISSING_REQUIRED", "rater_id")


def test_rater_is_optional_outside_madrs() -> None:
    assert findings("assessment_items", *(item_record(i, rater_id=None) for i in INSTRUMENTS if i != "MADRS"),
                    *(item_record(i, rater_id="R002") for i in INSTRUMENTS)) == {}


@pytest.mark.parametrize("instrument", list(INSTRUMENTS))
def test_item_score_outside_the_instruments_range_is_out_of_range(instrument: str) -> None:
    top = INSTRUMENTS[instrument]["max"]
    assert_rule("assessment_items", [item_record(instrument, score=s) for s in range(top + 1)],
                [item_record(instrument, score=top + 1), item_record(instrument, score=-1)],
                "OUT_OF_RANGE", "score")


def test_madrs_item_score_above_6_is_out_of_range() -> None:
    assert_rule("assessment_items", [item_record("MADRS", item=10, score=6)],
                [item_record("MADRS", item=10, score=7)], "OUT_OF_RANGE", "score")


@pytest.mark.parametrize("instrument", list(INSTRUMENTS))
def test_item_number_the_instrument_lacks_is_invalid_visit(instrument: str) -> None:
    last = INSTRUMENTS[instrument]["items"]
    assert_rule("assessment_items", [item_record(instrument, item=i) for i in range(1, last + 1)],
                [item_record(instrument, item=last + 1), item_record(instrument, item=0)],
                "INVALID_VISIT", "item")


@pytest.mark.parametrize("instrument", list(INSTRUMENTS))
def test_instrument_at_a_visit_where_it_is_not_taken_is_invalid_visit(instrument: str) -> None:
    spec = INSTRUMENTS[instrument]
    assert_rule("assessment_items", [item_record(instrument, visit=v) for v in spec["visits"]],
                [item_record(instrument, visit=v) for v in spec["not_taken"]], "INVALID_VISIT", "visit")


def test_unknown_instrument_is_out_of_range_only() -> None:
    unknown = item_record("PHQ9") | {"instrument": "HAMD", "item": 40, "score": 9, "visit": "D1"}
    assert_rule("assessment_items", [item_record("PHQ9")], [unknown], "OUT_OF_RANGE", "instrument")


# --- adverse events: dataframe check ----------------------------------------------------------------

def test_ae_ending_before_onset_is_inconsistent() -> None:
    # onset on 2026-01-12
    assert_rule("adverse_events", [{"end_date": date(2026, 1, 12)}, {"end_date": date(2026, 6, 1)}],
                [{"end_date": date(2026, 1, 11)}, {"end_date": date(2025, 12, 31)}],
                "INCONSISTENT", "end_date")


# --- findings of a batch --------------------------------------------------------------------------

def test_missing_operand_of_a_rule_between_fields_is_only_missing_required() -> None:
    assert findings("participants", {"consent_date": None}, {"status": None, "withdrawal_date": None}) == {
        2: {("MISSING_REQUIRED", "consent_date")}, 3: {("MISSING_REQUIRED", "status")}}
    assert findings("vitals", {"dbp": None}) == {2: {("MISSING_REQUIRED", "dbp")}}
    assert findings("sessions", {"visit": None, "route": None}) == {2: {("MISSING_REQUIRED", "visit")}}
    assert findings("assessment_items", {"instrument": None, "item": 99}) == {
        2: {("MISSING_REQUIRED", "instrument")}}
    assert findings("adverse_events", {"onset_date": None}) == {2: {("MISSING_REQUIRED", "onset_date")}}


def test_every_finding_of_a_record_is_reported_with_its_line() -> None:
    found = findings("vitals", {}, {"sbp": 40, "dbp": 60, "timepoint": "T60"}, {"hr": None})
    assert found == {3: {("OUT_OF_RANGE", "sbp"), ("OUT_OF_RANGE", "timepoint"), ("INCONSISTENT", "dbp")},
                     4: {("MISSING_REQUIRED", "hr")}}


def test_findings_carry_the_records_identity_not_its_position() -> None:
    batch = frame("vitals", {}, {"spo2": 49}).with_columns(pl.Series(RECORD, [17, 42]))
    [finding] = model_findings(DATASETS["vitals"], batch)
    assert (finding.record, finding.reason_code, finding.column_name) == (42, "OUT_OF_RANGE", "spo2")


def test_time_values_are_accepted_over_the_whole_day() -> None:
    assert findings("vitals", {"measured_time": time(0, 0)}, {"measured_time": time(23, 59)}) == {}


# --- how pandera failures map to reasons ----------------------------------------------------------

@pytest.mark.parametrize("dataset", list(DATASETS))
def test_every_dataframe_check_is_named_reason_and_column(dataset: str) -> None:
    model = DATASETS[dataset].model
    columns = {c.name for c in DATASETS[dataset].columns}
    names = [check.name for check in model.to_schema().checks]
    assert names
    for name in names:
        reason, _, column = name.partition(":")
        assert reason in REASON_ORDER and column in columns, name
        mapped = reason_of_failure(DATASETS[dataset], "DataFrameSchema", model.__name__, name)
        assert mapped == (reason, column)


@pytest.mark.parametrize(
    ("dataset", "column", "check", "expected"),
    [("vitals", "sbp", "not_nullable", ("MISSING_REQUIRED", "sbp")),
     ("vitals", "sbp", "in_range(50, 300)", ("OUT_OF_RANGE", "sbp")),
     ("vitals", "visit", "isin(['D1'])", ("INVALID_VISIT", "visit")),
     ("vitals", "timepoint", "isin(['PRE'])", ("OUT_OF_RANGE", "timepoint")),
     ("assessment_items", "visit", "isin(['BL'])", ("INVALID_VISIT", "visit")),
     ("sessions", "therapist_id", "str_matches('^T\\d{3}$')", ("OUT_OF_RANGE", "therapist_id"))],
)
def test_column_check_maps_to_its_reason(dataset: str, column: str, check: str,
                                         expected: tuple[str, str]) -> None:
    assert reason_of_failure(DATASETS[dataset], "Column", column, check) == expected


@pytest.mark.parametrize("check", ["consent_before_screening", "WRONG:consent_date", "INCONSISTENT:",
                                   "INCONSISTENT"])
def test_dataframe_check_not_named_reason_and_column_is_an_error(check: str) -> None:
    with pytest.raises(ValueError, match="is not named <REASON>:<column>"):
        reason_of_failure(DATASETS["participants"], "DataFrameSchema", "Participants", check)


@pytest.mark.parametrize("check", ["dtype('Int64')", "column_in_dataframe", "column_in_schema"])
def test_conformed_data_not_matching_its_model_is_an_error(check: str) -> None:
    with pytest.raises(RuntimeError, match="does not match its model"):
        reason_of_failure(DATASETS["vitals"], "Column", "sbp", check)


def test_batch_of_the_wrong_type_is_an_error_not_a_finding() -> None:
    with pytest.raises(RuntimeError, match="vitals"):
        model_findings(DATASETS["vitals"], frame("vitals", {}).with_columns(pl.col("sbp").cast(pl.String)))


def test_batch_lacking_a_column_is_an_error_not_a_finding() -> None:
    with pytest.raises(RuntimeError, match="vitals"):
        model_findings(DATASETS["vitals"], frame("vitals", {}).drop("spo2"))


def test_models_are_pandera_polars_models() -> None:
    assert all(issubclass(d.model, pa.DataFrameModel) for d in DATASETS.values())


# --- run_model over a DuckDB table ------------------------------------------------------------------

@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    yield connection
    connection.close()


def store(con: duckdb.DuckDBPyConnection, table: str, records: pl.DataFrame) -> None:
    """A conformed table in DuckDB, typed as conform leaves it."""
    con.register("conformed_frame", records.to_arrow())
    con.execute(f"create or replace temp table {table} as select * from conformed_frame")
    con.unregister("conformed_frame")


def test_run_model_returns_one_finding_row_per_failed_rule(con: duckdb.DuckDBPyConnection) -> None:
    store(con, "conf_vitals", frame("vitals", {}, {"spo2": 101}, {"measured_time": None, "dbp": 130}))
    table = run_model(con, DATASETS["vitals"], "conf_vitals")
    assert table.schema == FINDING_SCHEMA
    assert sorted((r[RECORD], r["reason_code"], r["column_name"]) for r in table.to_pylist()) == [
        (3, "OUT_OF_RANGE", "spo2"), (4, "INCONSISTENT", "dbp"), (4, "MISSING_REQUIRED", "measured_time")]


def test_run_model_of_clean_records_is_an_empty_findings_table(con: duckdb.DuckDBPyConnection) -> None:
    store(con, "conf_ae", frame("adverse_events", {}, {"ae_id": "AE002", "end_date": None}))
    table = run_model(con, DATASETS["adverse_events"], "conf_ae")
    assert table.num_rows == 0
    assert table.schema == FINDING_SCHEMA
