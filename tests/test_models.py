"""schemas/models.py and flows/validate.py: every row rule of the six pandera models, checked for
the DTS §6 reason code it raises (DTS §3, §5, §6).

The pipeline runs the rules as SQL compiled from the models (`model_rules`); pandera itself is the
oracle. Every rule test validates one small batch both ways, asserts that the SQL finds exactly what
pandera finds, then that exactly the bad records fail, each with exactly the rule's (reason, column).
One batch per rule keeps the module fast (a pandera validation costs tens of milliseconds whatever
its size).
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from datetime import date, time
from typing import Any

import duckdb
import pandera.polars as pa
import polars as pl
import pytest

from flows.read import RECORD
from flows.validate import Rule, model_findings_sql, model_rules
from schemas.datasets import DATASETS, RANDOMIZATION, Dataset
from tests.helpers import GOOD_RECORDS

POLARS_TYPES: dict[str, pl.DataType] = {"text": pl.String(), "integer": pl.Int64(), "decimal": pl.Float64(),
                                        "date": pl.Date(), "time": pl.Time()}
DOSING_VISITS = ["D1", "D2", "D3", "D4", "D5", "D6"]
SESSION_VISITS = ["PREP1", "PREP2", *DOSING_VISITS, "INT1", "INT2", "INT3", "INT4", "INT5", "INT6"]
ALL_DATASETS: dict[str, Dataset] = {**DATASETS, RANDOMIZATION.name: RANDOMIZATION}
GOOD = {**GOOD_RECORDS, "randomization": {"subject_id": "S01-0001", "site_id": "S01", "arm": "KAP",
                                          "randomized_on": date(2026, 1, 12), "stratum": "NO_ECT"}}
Change = Mapping[str, Any]
Found = set[tuple[int, str, str, str]]  # (record, reason, column, detail)


def frame(dataset: str, *changes: Change) -> pl.DataFrame:
    """Conformed records of `dataset`: the good record with each of `changes` applied, on lines 2, 3, ..."""
    schema = {RECORD: pl.Int64(), **{c.name: POLARS_TYPES[c.kind] for c in ALL_DATASETS[dataset].columns}}
    rows = [{RECORD: line, **GOOD[dataset], **change} for line, change in enumerate(changes, start=2)]
    return pl.DataFrame(rows, schema=schema)


def pandera_found(dataset: Dataset, batch: pl.DataFrame) -> Found:
    """What pandera finds in a batch, each failure named as the compiled rule it belongs to."""
    try:
        dataset.model.validate(batch, lazy=True)
    except pa.errors.SchemaErrors as errors:
        cases = errors.failure_cases
    else:
        return set()
    rules: dict[tuple[str, str], Rule] = {r.pandera_case: r for r in model_rules(dataset)}
    records = batch.get_column(RECORD)
    found = set()
    for column, check, index in cases.select("column", "check", "index").iter_rows():
        assert index is not None and (column, check) in rules, f"{dataset.name}: no rule for {column} {check}"
        rule = rules[column, check]
        found.add((int(records[index]), rule.reason_code, rule.column_name, rule.detail))
    return found


def sql_found(dataset: Dataset, batch: pl.DataFrame) -> Found:
    with duckdb.connect() as con:
        con.register("batch", batch.to_arrow())
        return set(con.execute(model_findings_sql(dataset, "batch")).fetchall())


def findings(dataset: str, *changes: Change) -> dict[int, set[tuple[str, str]]]:
    """{line: {(reason, column)}} of the records with findings, where SQL and pandera agree."""
    batch = frame(dataset, *changes)
    by_sql = sql_found(ALL_DATASETS[dataset], batch)
    assert by_sql == pandera_found(ALL_DATASETS[dataset], batch)
    found: dict[int, set[tuple[str, str]]] = {}
    for record, reason, column, _ in by_sql:
        found.setdefault(record, set()).add((reason, column))
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
    assert sql_found(DATASETS["vitals"], batch) == {(42, "OUT_OF_RANGE", "spo2", "in_range(50, 100)")}


def test_time_values_are_accepted_over_the_whole_day() -> None:
    assert findings("vitals", {"measured_time": time(0, 0)}, {"measured_time": time(23, 59)}) == {}


# --- randomization (DTS §5) ---------------------------------------------------------------------------

def test_randomization_site_other_than_the_subjects_prefix_is_inconsistent() -> None:
    assert_rule("randomization", [{}, {"subject_id": "S12-0001", "site_id": "S12"}],
                [{"site_id": "S02"}, {"subject_id": "S12-0001", "site_id": "S01"}], "INCONSISTENT", "site_id")


def test_randomization_codes_outside_their_lists_are_out_of_range() -> None:
    assert_rule("randomization", [{"arm": a} for a in ["KAP", "KET", "ACP"]], [{"arm": "PLACEBO"}, {"arm": "kap"}],
                "OUT_OF_RANGE", "arm")
    assert_rule("randomization", [{"stratum": "ECT"}], [{"stratum": "ect"}], "OUT_OF_RANGE", "stratum")


def test_unicode_digits_are_not_digits_of_a_subject_or_rater_id() -> None:
    assert_rule("participants", [{}], [{"subject_id": "S01-\u0660\u0661\u0662\u0663"},
                                       {"subject_id": "S\uff10\uff11-0001"}], "OUT_OF_RANGE", "subject_id")
    assert_rule("assessment_items", [{}], [{"rater_id": "R\u0661\u0662\u0663"}], "OUT_OF_RANGE", "rater_id")


# --- the SQL agrees with pandera on many records at once ---------------------------------------------

# Per column kind, values around every rule's edges, missing included.
POOLS: dict[str, list[Any]] = {
    "integer": [None, -1, 0, 1, 4, 5, 6, 7, 9, 10, 11, 19, 20, 23, 24, 49, 50, 100, 101, 119, 120, 130, 200, 240,
                241, 250, 251, 300, 301, 600, 601, 1899, 1900, 1980, 2010, 2011],
    "decimal": [None, -5.0, 0.0, 0.01, 29.99, 30.0, 72.5, 250.0, 250.01, 799.99, 800.0, 800.01],
    "date": [None, date(2025, 12, 31), date(2026, 1, 5), date(2026, 1, 10), date(2026, 1, 12), date(2026, 6, 1)],
    "time": [None, time(0, 0), time(9, 30), time(23, 59)],
}
TEXTS = [None, "", " ", "S01-0001", "S02-0001", "S01", "S02", "S01-001", "S01-\u0661\u0662\u0663\u0664", "T001",
         "T01", "R001", "r001", "Y", "N", "y", "IV", "IM", "SL", "IN", "iv", "D1", "D6", "D7", "PREP1", "INT1", "SCR",
         "BL", "D1P24", "W1", "W4", "W12", "MADRS", "PHQ9", "GAD7", "CADSS", "CSSRS", "HAMD", "WITHDRAWN",
         "ENROLLED", "F", "M", "X", "PRE", "T40", "T120", "MILD", "SEVERE", "NOT_RELATED", "FATAL", "NONE",
         "DRUG_WITHDRAWN", "KAP", "ACP", "ECT", "NO_ECT", "moved away"]


@pytest.mark.parametrize("dataset", list(ALL_DATASETS))
def test_sql_rules_find_what_pandera_finds_in_random_records(dataset: str) -> None:
    # each record changes a few columns of the good one, so every rule is met on both sides
    rng = random.Random(dataset)
    columns = ALL_DATASETS[dataset].columns
    changes = [{c.name: rng.choice(TEXTS if c.kind == "text" else POOLS[c.kind])
                for c in columns if rng.random() < 0.4} for _ in range(3000)]
    batch = frame(dataset, *changes)
    found = sql_found(ALL_DATASETS[dataset], batch)
    assert found == pandera_found(ALL_DATASETS[dataset], batch)
    assert {rule for _, rule, _, _ in found} >= {"MISSING_REQUIRED", "OUT_OF_RANGE"}


# --- how pandera's checks compile to rules ------------------------------------------------------------

@pytest.mark.parametrize("dataset", list(ALL_DATASETS))
def test_every_dataframe_check_is_a_rule_of_its_reason_and_column(dataset: str) -> None:
    model = ALL_DATASETS[dataset].model
    names = [check.name for check in model.to_schema().checks]
    rules = {r.pandera_case[1]: r for r in model_rules(ALL_DATASETS[dataset]) if r.pandera_case[0] == model.__name__}
    assert names and sorted(rules) == sorted(names)
    for name in names:
        reason, _, column = name.partition(":")
        assert (rules[name].reason_code, rules[name].column_name) == (reason, column)


@pytest.mark.parametrize(
    ("dataset", "column", "check", "expected"),
    [("vitals", "sbp", "not_nullable", "MISSING_REQUIRED"),
     ("vitals", "sbp", "in_range", "OUT_OF_RANGE"),
     ("vitals", "visit", "isin", "INVALID_VISIT"),
     ("vitals", "timepoint", "isin", "OUT_OF_RANGE"),
     ("assessment_items", "visit", "isin", "INVALID_VISIT"),
     ("sessions", "therapist_id", "str_matches", "OUT_OF_RANGE")],
)
def test_column_check_maps_to_its_reason(dataset: str, column: str, check: str, expected: str) -> None:
    [rule] = [r for r in model_rules(DATASETS[dataset])
              if r.pandera_case[0] == column and r.pandera_case[1].startswith(check)]
    assert (rule.reason_code, rule.column_name) == (expected, column)


def one_check_model(check: pa.Check | None = None, **field: Any) -> Dataset:
    """A dataset of one integer column `a`, with `field` options and an optional dataframe check."""
    schema = pa.DataFrameSchema({"a": pa.Column(int, nullable=True, checks=list(
        pa.Field(**field).column_properties(int)["checks"] or []))}, checks=[check] if check else [], name="One")

    class One(pa.DataFrameModel):
        @classmethod
        def to_schema(cls) -> pa.DataFrameSchema:  # type: ignore[override]
            return schema

    return Dataset("one", "one.csv", One, ("a",))


@pytest.mark.parametrize("name", ["consent_before_screening", "WRONG:a", "INCONSISTENT:", "INCONSISTENT",
                                  "INCONSISTENT:b"])
def test_dataframe_check_not_named_reason_and_column_is_an_error(name: str) -> None:
    check = pa.Check(lambda data: data.lazyframe.select(pl.lit(True)), name=name, statistics={"sql": "true"})
    with pytest.raises(ValueError, match="is not named <REASON>:<column>"):
        model_rules(one_check_model(check))


def test_dataframe_check_without_an_sql_twin_is_an_error() -> None:
    check = pa.Check(lambda data: data.lazyframe.select(pl.lit(True)), name="INCONSISTENT:a")
    with pytest.raises(ValueError, match="has no SQL twin"):
        model_rules(one_check_model(check))


def test_builtin_check_without_sql_is_an_error() -> None:
    with pytest.raises(ValueError, match="no SQL for pandera check 'str_length'"):
        model_rules(one_check_model(str_length={"min_value": 1}))


@pytest.mark.parametrize("field", [
    {"in_range": {"min_value": 2, "max_value": 5, "include_min": False, "include_max": False}},
    {"in_range": {"min_value": 2, "max_value": 5}},
    {"gt": 2}, {"ge": 2}, {"lt": 5}, {"le": 5}, {"eq": 3}, {"ne": 3},
    {"isin": [1, 3]}, {"notin": [1, 3]},
])
def test_builtin_check_compiles_to_what_pandera_checks(field: dict[str, Any]) -> None:
    dataset = one_check_model(**field)
    batch = pl.DataFrame({RECORD: list(range(9)), "a": [None, 0, 1, 2, 3, 4, 5, 6, 7]},
                         schema={RECORD: pl.Int64(), "a": pl.Int64()})
    found = sql_found(dataset, batch)
    assert found and found == pandera_found(dataset, batch)


def test_pattern_without_an_anchor_matches_from_the_start_like_pandera() -> None:
    class Codes(pa.DataFrameModel):
        code: str = pa.Field(nullable=True, str_matches="[A-Z][0-9]")

    dataset = Dataset("codes", "codes.csv", Codes, ("code",))
    batch = pl.DataFrame({RECORD: [1, 2, 3, 4], "code": ["A1", "xA1", "A1x", None]})
    # (pandera writes the anchor into the check's name as it validates: compare records only)
    assert {f[0] for f in sql_found(dataset, batch)} == {f[0] for f in pandera_found(dataset, batch)} == {2}


def test_models_are_pandera_polars_models() -> None:
    assert all(issubclass(d.model, pa.DataFrameModel) for d in ALL_DATASETS.values())


def test_model_findings_of_clean_records_are_none() -> None:
    for name, dataset in ALL_DATASETS.items():
        assert sql_found(dataset, frame(name, {})) == set(), name
