"""Derivations (sql/core) and flag rules (sql/ops/current_flags.sql) on tiny hand-built records
whose answers a reader can check by eye (DTS §3, §3.1, §6)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, time, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from flows.land import merge_flags, replace_core
from flows.warehouse import connect, create_valid_tables, init_warehouse, set_variables

BL = date(2026, 3, 2)
SITE = "S01"
SUBJECT = "S01-0001"


def participant(**overrides: Any) -> dict[str, Any]:
    row = {"subject_id": SUBJECT, "screening_date": BL - timedelta(days=14), "consent_date": BL - timedelta(days=15),
           "birth_year": 1980, "sex": "F", "weight_kg": 70.0, "prior_ect": "N", "status": "ENROLLED",
           "withdrawal_date": None, "withdrawal_reason": None}
    return row | overrides


def session(visit: str, day: int, **overrides: Any) -> dict[str, Any]:
    row = {"subject_id": SUBJECT, "visit": visit, "session_date": BL + timedelta(days=day), "start_time": time(9),
           "duration_min": 120, "therapist_id": "T001", "attended": "Y", "route": None, "dose_mg": None,
           "weight_kg": None, "infusion_min": None}
    if visit.startswith("D"):
        row |= {"route": "IV", "dose_mg": 52.5, "weight_kg": 70.0, "infusion_min": 40}
    return row | overrides


def items(instrument: str, visit: str, day: int, scores: list[int], **overrides: Any) -> list[dict[str, Any]]:
    when = BL + timedelta(days=day)
    return [{"subject_id": SUBJECT, "visit": visit, "instrument": instrument, "assessment_date": when,
             "rater_id": "R001" if instrument == "MADRS" else None, "item": i, "score": s} | overrides
            for i, s in enumerate(scores, start=1)]


def vital(visit: str, timepoint: str, **overrides: Any) -> dict[str, Any]:
    row = {"subject_id": SUBJECT, "visit": visit, "timepoint": timepoint, "measured_time": time(9, 40), "sbp": 120,
           "dbp": 80, "hr": 70, "spo2": 98}
    return row | overrides


def adverse_event(ae_id: str, term: str, **overrides: Any) -> dict[str, Any]:
    row = {"subject_id": SUBJECT, "ae_id": ae_id, "term": term, "onset_date": BL + timedelta(days=2), "end_date": None,
           "severity": "MILD", "serious": "N", "related": "POSSIBLE", "outcome": "RECOVERED", "action": "NONE"}
    return row | overrides


MADRS_30 = [3] * 10
BASELINE = items("MADRS", "BL", 0, MADRS_30)


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(tmp_path)
    init_warehouse(connection)
    yield connection
    connection.close()


def land(con: duckdb.DuckDBPyConnection, transfer_id: str = "20260601T000000Z", *,
         participants: list[dict[str, Any]] | None = None, sessions: list[dict[str, Any]] = (),
         vitals: list[dict[str, Any]] = (), assessment_items: list[dict[str, Any]] = BASELINE,
         adverse_events: list[dict[str, Any]] = ()) -> None:
    """The derivation and flag steps of landing, on records that passed validation."""
    create_valid_tables(con)
    datasets = {"participants": participants or [participant()], "sessions": sessions, "vitals": vitals,
                "assessment_items": assessment_items, "adverse_events": adverse_events}
    for name, rows in datasets.items():
        if not rows:
            continue
        lineage = {"form_status": None, "site_id": SITE, "transfer_id": transfer_id, "source_file": f"{name}.csv"}
        table = pa.Table.from_pylist([r | lineage | {"source_row": i + 2} for i, r in enumerate(rows)])
        con.register("incoming", table)
        con.execute(f"insert into valid_{name} by name select * from incoming")
        con.unregister("incoming")
    set_variables(con, {"site_id": SITE, "transfer_id": transfer_id})
    replace_core(con, SITE)
    merge_flags(con, SITE, transfer_id)


def flags(con: duckdb.DuckDBPyConnection, flag_type: str, status: str = "OPEN") -> set[tuple[str, str | None]]:
    return set(con.execute("select subject_id, visit from ops.flags where flag_type = ? and status = ?",
                           [flag_type, status]).fetchall())


def assessment(con: duckdb.DuckDBPyConnection, instrument: str, visit: str) -> dict[str, Any]:
    cursor = con.execute("select * from core.assessments where instrument = ? and visit = ?", [instrument, visit])
    columns = [d[0] for d in cursor.description]
    return dict(zip(columns, cursor.fetchone(), strict=True))


def test_madrs_total_is_the_sum_of_its_ten_items_when_complete(con: duckdb.DuckDBPyConnection) -> None:
    land(con)
    row = assessment(con, "MADRS", "BL")
    assert (row["total"], row["items_present"], row["is_complete"]) == (30, 10, True)


def test_madrs_total_is_null_when_an_item_is_missing(con: duckdb.DuckDBPyConnection) -> None:
    land(con, assessment_items=BASELINE + items("MADRS", "W1", 7, [2] * 9))
    row = assessment(con, "MADRS", "W1")
    assert (row["total"], row["items_present"], row["is_complete"]) == (None, 9, False)
    assert flags(con, "INCOMPLETE_ASSESSMENT") == {(SUBJECT, "W1")}


@pytest.mark.parametrize(("scores", "level"), [
    ([0, 0, 0, 0, 0, 0], 0),
    ([1, 1, 0, 0, 0, 0], 2),
    ([1, 0, 1, 0, 0, 1], 3),  # item 6 is behaviour, not ideation
    ([0, 0, 0, 0, 1, 0], 5),
])
def test_cssrs_ideation_level_is_the_highest_ideation_item_answered_1(
        con: duckdb.DuckDBPyConnection, scores: list[int], level: int) -> None:
    land(con, assessment_items=BASELINE + items("CSSRS", "BL", 0, scores))
    row = assessment(con, "CSSRS", "BL")
    assert (row["ideation_level"], row["total"], row["is_complete"]) == (level, None, True)


def test_bl_date_is_the_date_of_the_baseline_assessments_and_study_day_counts_from_it(
        con: duckdb.DuckDBPyConnection) -> None:
    land(con, sessions=[session("D1", 1)], assessment_items=BASELINE + items("MADRS", "W1", 8, MADRS_30))
    assert con.execute("select bl_date, age_at_consent from core.participants").fetchone() == (BL, 2026 - 1980)
    assert con.execute("select study_day from core.sessions where visit = 'D1'").fetchone() == (1,)
    assert assessment(con, "MADRS", "W1")["study_day"] == 8


def test_dose_per_kg_uses_the_sessions_own_weight(con: duckdb.DuckDBPyConnection) -> None:
    land(con, sessions=[session("D1", 1, dose_mg=60.0, weight_kg=80.0)])
    assert con.execute("select dose_mg_per_kg, session_type from core.sessions").fetchone() == (0.75, "DOSING")


@pytest.mark.parametrize(("visit", "day", "deviates"), [
    ("W1", 5, False), ("W1", 9, False), ("W1", 4, True), ("W1", 10, True),
    ("SCR", -1, False), ("SCR", 0, True), ("W4", 31, False), ("W4", 32, True),
])
def test_assessment_window_edges_are_inclusive(con: duckdb.DuckDBPyConnection, visit: str, day: int,
                                               deviates: bool) -> None:
    land(con, assessment_items=BASELINE + items("MADRS", visit, day, MADRS_30))
    assert flags(con, "WINDOW_DEVIATION") == ({(SUBJECT, visit)} if deviates else set())


@pytest.mark.parametrize(("days_after_dose", "deviates"), [(1, False), (3, False), (0, True), (4, True)])
def test_integration_window_counts_from_the_actual_dosing_date(con: duckdb.DuckDBPyConnection,
                                                               days_after_dose: int, deviates: bool) -> None:
    # D2 is on day 6 (its window is 3…6), so INT2 is due on days 7…9
    land(con, sessions=[session("D2", 6), session("INT2", 6 + days_after_dose)])
    assert flags(con, "WINDOW_DEVIATION") == ({(SUBJECT, "INT2")} if deviates else set())


def test_d1p24_window_counts_from_the_first_dose(con: duckdb.DuckDBPyConnection) -> None:
    land(con, sessions=[session("D1", 3)],
         assessment_items=BASELINE + items("MADRS", "D1P24", 4, MADRS_30))
    assert flags(con, "WINDOW_DEVIATION") == set()


def test_people_without_a_bl_visit_have_no_windows(con: duckdb.DuckDBPyConnection) -> None:
    land(con, assessment_items=items("MADRS", "SCR", -40, MADRS_30))
    assert flags(con, "WINDOW_DEVIATION") == set()


@pytest.mark.parametrize(("overrides", "deviates"), [
    ({"dose_mg": 70.0}, False),                    # IV 1.0 mg/kg, the upper edge
    ({"dose_mg": 35.0}, False),                    # IV 0.5 mg/kg, the lower edge
    ({"dose_mg": 71.0}, True),                     # IV 1.014 mg/kg
    ({"infusion_min": 34}, True),                  # IV infused too fast
    ({"route": "IM", "dose_mg": 105.0, "infusion_min": None}, False),  # IM 1.5 mg/kg
    ({"route": "IM", "dose_mg": 101.4, "weight_kg": 67.6, "infusion_min": None}, False),  # 1.5 exactly, not in binary
    ({"route": "IM", "dose_mg": 101.5, "weight_kg": 67.6, "infusion_min": None}, True),
    ({"route": "IV", "dose_mg": 33.8, "weight_kg": 67.6}, False),  # IV 0.5 mg/kg exactly
    ({"route": "SL", "dose_mg": 400.0, "infusion_min": None}, False),
    ({"route": "SL", "dose_mg": 401.0, "infusion_min": None}, True),
    ({"route": "IN", "dose_mg": 28.0, "infusion_min": None}, False),
    ({"route": "IN", "dose_mg": 27.5, "infusion_min": None}, True),
])
def test_dose_outside_the_protocol_range_is_flagged(con: duckdb.DuckDBPyConnection, overrides: dict[str, Any],
                                                    deviates: bool) -> None:
    land(con, sessions=[session("D1", 1, **overrides)])
    assert flags(con, "DOSE_DEVIATION") == ({(SUBJECT, "D1")} if deviates else set())


@pytest.mark.parametrize(("birth_year", "deviates"), [(2026 - 18, False), (2026 - 75, False),
                                                      (2026 - 17, True), (2026 - 76, True)])
def test_age_at_consent_outside_18_to_75_is_flagged(con: duckdb.DuckDBPyConnection, birth_year: int,
                                                    deviates: bool) -> None:
    land(con, participants=[participant(birth_year=birth_year)])
    assert flags(con, "AGE_DEVIATION") == ({(SUBJECT, None)} if deviates else set())


@pytest.mark.parametrize(("overrides", "flagged"), [
    ({"sbp": 180}, True), ({"sbp": 179}, False), ({"dbp": 110}, True), ({"dbp": 109}, False),
    ({"hr": 130}, True), ({"hr": 129}, False), ({"spo2": 91}, True), ({"spo2": 92}, False),
])
def test_safety_vitals_thresholds(con: duckdb.DuckDBPyConnection, overrides: dict[str, Any], flagged: bool) -> None:
    land(con, sessions=[session("D1", 1)], vitals=[vital("D1", "T40", **overrides)])
    assert flags(con, "SAFETY_VITALS") == ({(SUBJECT, "D1")} if flagged else set())


@pytest.mark.parametrize(("instrument", "visit", "scores", "flagged"), [
    ("CSSRS", "W1", [1, 1, 1, 1, 0, 0], True),
    ("CSSRS", "W1", [1, 1, 1, 0, 0, 1], True),
    ("CSSRS", "W1", [1, 1, 1, 0, 0, 0], False),
    ("PHQ9", "W1", [0] * 8 + [1], True),
    ("PHQ9", "W1", [3] * 8 + [0], False),
    ("MADRS", "W1", [0] * 9 + [4], True),
    ("MADRS", "W1", [6] * 9 + [3], False),
])
def test_suicidality_items_are_flagged_complete_or_not(con: duckdb.DuckDBPyConnection, instrument: str, visit: str,
                                                       scores: list[int], flagged: bool) -> None:
    land(con, assessment_items=BASELINE + items(instrument, visit, 7, scores))
    assert flags(con, "SAFETY_SUICIDALITY") == ({(SUBJECT, visit)} if flagged else set())


def test_serious_events_and_uncoded_terms_are_flagged_and_terms_coded_after_trim_and_case_fold(
        con: duckdb.DuckDBPyConnection) -> None:
    land(con, adverse_events=[adverse_event("AE001", "  Feeling Detached \t"),
                              adverse_event("AE002", "purple elephants", serious="Y")])
    coded = con.execute("select ae_id, preferred_term, serious from core.adverse_events order by ae_id").fetchall()
    assert coded == [("AE001", "Dissociation", False), ("AE002", None, True)]
    assert flags(con, "SAFETY_SAE") == {(SUBJECT, None)}
    assert flags(con, "UNCODED_TERM") == {(SUBJECT, None)}


def test_a_flag_that_still_holds_keeps_its_id_and_a_corrected_one_closes(con: duckdb.DuckDBPyConnection) -> None:
    first, second, third = "20260601T000000Z", "20260701T000000Z", "20260801T000000Z"
    land(con, first, sessions=[session("D1", 1, dose_mg=80.0)])
    flag_id = con.execute("select flag_id from ops.flags where flag_type = 'DOSE_DEVIATION'").fetchone()[0]
    land(con, second, sessions=[session("D1", 1, dose_mg=80.0)])
    assert con.execute("select flag_id, status, first_seen_transfer, last_seen_transfer from ops.flags "
                       "where flag_type = 'DOSE_DEVIATION'").fetchall() == [(flag_id, "OPEN", first, second)]
    land(con, third, sessions=[session("D1", 1, dose_mg=60.0)])
    assert con.execute("select flag_id, status, last_seen_transfer, closed_transfer from ops.flags "
                       "where flag_type = 'DOSE_DEVIATION'").fetchall() == [(flag_id, "CLOSED", second, third)]


def outcome(con: duckdb.DuckDBPyConnection, visit: str) -> tuple[Any, ...] | None:
    from flows.warehouse import build_marts

    build_marts(con)
    return con.execute("select baseline_total, total, change, pct_change, response, remission "
                       "from marts.madrs_outcomes where visit = ?", [visit]).fetchone()


@pytest.mark.parametrize(("w4_scores", "expected"), [
    ([1] * 5 + [2] * 5, (30, 15, -15, -50.0, True, False)),    # exactly 50 % less: a response
    ([2] * 6 + [1] * 4, (30, 16, -14, -46.67, False, False)),
    ([1] * 10, (30, 10, -20, -66.67, True, True)),             # exactly 10: remission
    ([1] * 9 + [2], (30, 11, -19, -63.33, True, False)),
])
def test_response_and_remission_at_their_thresholds(con: duckdb.DuckDBPyConnection, w4_scores: list[int],
                                                    expected: tuple[Any, ...]) -> None:
    land(con, assessment_items=BASELINE + items("MADRS", "W4", 28, w4_scores))
    assert outcome(con, "W4") == expected


def test_incomplete_assessments_do_not_count_for_endpoints(con: duckdb.DuckDBPyConnection) -> None:
    land(con, assessment_items=BASELINE + items("MADRS", "W4", 28, [1] * 9))
    assert outcome(con, "W4") is None


@pytest.mark.parametrize(("w4_scores", "w12_scores", "sustained"), [
    ([1] * 10, [1] * 5 + [2] * 5, True),      # W4 66 % less, W12 exactly 50 % less: both responses
    ([1] * 10, [2] * 6 + [1] * 4, False),     # W12 only 46.67 % less
    ([2] * 6 + [1] * 4, None, False),         # W4 not a response: W12 cannot make it sustained
    ([1] * 10, None, None),                   # W12 not done yet: unknown
    ([1] * 10, [1] * 9, None),                # W12 incomplete: does not count, unknown
])
def test_sustained_response_needs_a_response_at_w4_and_w12(con: duckdb.DuckDBPyConnection, w4_scores: list[int],
                                                           w12_scores: list[int] | None,
                                                           sustained: bool | None) -> None:
    scores = BASELINE + items("MADRS", "W4", 28, w4_scores)
    if w12_scores:
        scores += items("MADRS", "W12", 84, w12_scores)
    land(con, assessment_items=scores)
    outcome(con, "W4")
    assert con.execute("select distinct sustained_response from marts.madrs_outcomes").fetchall() == [(sustained,)]
