"""The marts `visit_compliance` and `safety_listing` on tiny hand-built records whose answers a
reader can check by eye (DTS §3.1, §6). Study day 0 is BL = 2026-03-02; the site's data cut-off
is the date of its current landed transfer, day 91 (2026-06-01) unless a test says otherwise."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from flows.land import record_transfer
from flows.warehouse import build_marts, connect, init_warehouse
from tests.test_derive import BL, MADRS_30, SITE, adverse_event, items, land, participant, session, vital

CUTOFF_DAY = 91  # W12's window closes on day 91: every visit is due


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(tmp_path)
    init_warehouse(connection)
    yield connection
    connection.close()


def subject(n: int) -> str:
    return f"{SITE}-{n:04d}"


def transfer_on(day: int) -> str:
    """The id of a transfer exported on study day `day` (its date is the data cut-off)."""
    return (BL + timedelta(days=day)).strftime("%Y%m%dT020000Z")


def land_on(con: duckdb.DuckDBPyConnection, day: int = CUTOFF_DAY, **datasets: Any) -> str:
    """Land the records as the site's current transfer, exported on study day `day`, and build the marts."""
    transfer_id = transfer_on(day)
    land(con, transfer_id, **datasets)
    record_transfer(con, source=SITE, transfer_id=transfer_id, format="dts-csv", status="LANDED", reason=None,
                    warnings=[], run_id="test")
    build_marts(con)
    return transfer_id


def randomized(*numbers: int, **overrides: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Participants with a BL visit on day 0: their participant rows and BL MADRS items."""
    people = [participant(subject_id=subject(n), **overrides) for n in numbers]
    baselines = [row for n in numbers for row in items("MADRS", "BL", 0, MADRS_30, subject_id=subject(n))]
    return people, baselines


COUNTS = ("expected", "done", "in_window", "out_of_window", "window_unknown", "missing")


def compliance(con: duckdb.DuckDBPyConnection, visit: str) -> dict[str, int]:
    row = con.execute(f"select {', '.join(COUNTS)} from marts.visit_compliance where site_id = ? and visit = ?",
                      [SITE, visit]).fetchone()
    return dict(zip(COUNTS, row, strict=True))


def counts(expected: int = 0, done: int = 0, in_window: int = 0, out_of_window: int = 0, window_unknown: int = 0,
           missing: int = 0) -> dict[str, int]:
    return dict(zip(COUNTS, (expected, done, in_window, out_of_window, window_unknown, missing), strict=True))


# --- marts.visit_compliance ------------------------------------------------------------------------


def test_visit_compliance_has_a_row_per_site_and_visit_of_the_schedule(con: duckdb.DuckDBPyConnection) -> None:
    people, baselines = randomized(1)
    land_on(con, participants=people, assessment_items=baselines)
    rows = con.execute("select count(*), count(distinct visit), min(cutoff_date), min(cutoff_transfer) "
                       "from marts.visit_compliance").fetchone()
    assert rows == (23, 23, BL + timedelta(days=CUTOFF_DAY), transfer_on(CUTOFF_DAY))
    assert compliance(con, "BL") == counts(expected=1, done=1, in_window=1)


def test_a_visit_on_the_last_day_of_its_window_is_in_window_and_the_day_after_is_out(
        con: duckdb.DuckDBPyConnection) -> None:
    # W1's window is days 5…9 from BL; INT2's is 1…3 days after the actual D2 (here day 6: days 7…9)
    people, baselines = randomized(1, 2, 3, 4)
    w1 = [items("MADRS", "W1", day, MADRS_30, subject_id=subject(n)) for n, day in ((1, 5), (2, 9), (3, 4), (4, 10))]
    sessions = [s for n, day in ((1, 7), (2, 9), (3, 6), (4, 10))
                for s in (session("D2", 6, subject_id=subject(n)), session("INT2", day, subject_id=subject(n)))]
    land_on(con, participants=people, assessment_items=baselines + [row for rows in w1 for row in rows],
            sessions=sessions)
    assert compliance(con, "W1") == counts(expected=4, done=4, in_window=2, out_of_window=2)
    assert compliance(con, "INT2") == counts(expected=4, done=4, in_window=2, out_of_window=2)


@pytest.mark.parametrize(("cutoff_day", "w4_expected"), [(30, 0), (31, 1)])
def test_a_visit_is_expected_once_its_window_has_closed_by_the_data_cutoff(
        con: duckdb.DuckDBPyConnection, cutoff_day: int, w4_expected: int) -> None:
    # W4's window closes on day 31
    people, baselines = randomized(1)
    land_on(con, cutoff_day, participants=people, assessment_items=baselines)
    assert compliance(con, "W4") == counts(expected=w4_expected, missing=w4_expected)
    assert compliance(con, "W8") == counts()


def test_a_missed_visit_is_missing_and_an_unattended_session_is_not_done(con: duckdb.DuckDBPyConnection) -> None:
    people, baselines = randomized(1)
    w1 = items("MADRS", "W1", 7, MADRS_30, subject_id=subject(1))
    land_on(con, participants=people, assessment_items=baselines + w1,
            sessions=[session("D1", 1, subject_id=subject(1), attended="N")])
    assert compliance(con, "W1") == counts(expected=1, done=1, in_window=1)
    assert compliance(con, "W2") == counts(expected=1, missing=1)
    assert compliance(con, "D1") == counts(expected=1, missing=1)


@pytest.mark.parametrize(("withdrawal_day", "w2_expected"), [(11, 0), (12, 1)])
def test_a_withdrawn_participant_is_expected_at_visits_whose_window_opened_before_the_withdrawal(
        con: duckdb.DuckDBPyConnection, withdrawal_day: int, w2_expected: int) -> None:
    # W1 opens on day 5, W2 on day 12, W12 on day 77
    people, baselines = randomized(1, status="WITHDRAWN", withdrawal_date=BL + timedelta(days=withdrawal_day),
                                   withdrawal_reason="moved away")
    land_on(con, participants=people, assessment_items=baselines)
    assert compliance(con, "W1") == counts(expected=1, missing=1)
    assert compliance(con, "W2") == counts(expected=w2_expected, missing=w2_expected)
    assert compliance(con, "W12") == counts()


def test_screen_failures_and_people_without_a_bl_visit_are_not_expected(con: duckdb.DuckDBPyConnection) -> None:
    people, baselines = randomized(1)
    people += [participant(subject_id=subject(2), status="SCREEN_FAILED"), participant(subject_id=subject(3))]
    screening = [row for n in (1, 2, 3) for row in items("MADRS", "SCR", -10, MADRS_30, subject_id=subject(n))]
    land_on(con, participants=people, assessment_items=baselines + screening)
    assert compliance(con, "SCR") == counts(expected=1, done=1, in_window=1)
    assert compliance(con, "BL") == counts(expected=1, done=1, in_window=1)


def test_an_integration_is_due_from_the_actual_dose_or_from_the_planned_one_when_the_dose_has_no_record(
        con: duckdb.DuckDBPyConnection) -> None:
    # cut-off day 8. Subject 1 had D2 on day 6: INT2's window closes on day 9, not yet due.
    # Subject 2 has no D2 (planned day 4, window closed day 6): INT2's planned window closes day 7, due.
    people, baselines = randomized(1, 2)
    land_on(con, 8, participants=people, assessment_items=baselines, sessions=[session("D2", 6, subject_id=subject(1))])
    assert compliance(con, "D2") == counts(expected=2, done=1, in_window=1, missing=1)
    assert compliance(con, "INT2") == counts(expected=1, missing=1)


def test_a_visit_done_before_its_window_closed_is_expected_and_done(con: duckdb.DuckDBPyConnection) -> None:
    # cut-off day 20: W4 (days 25…31) is not due yet, but was done, too early, on day 20
    people, baselines = randomized(1)
    land_on(con, 20, participants=people,
            assessment_items=baselines + items("MADRS", "W4", 20, MADRS_30, subject_id=subject(1)))
    assert compliance(con, "W4") == counts(expected=1, done=1, out_of_window=1)


def test_out_of_window_counts_the_subjects_with_a_window_deviation_flag_at_the_visit(
        con: duckdb.DuckDBPyConnection) -> None:
    s1, s2, s3 = subject(1), subject(2), subject(3)
    people, baselines = randomized(1, 2, 3)
    sessions = [
        session("D1", 1, subject_id=s1), session("INT1", 5, subject_id=s1),  # INT1 4 days after D1: out
        session("D1", 4, subject_id=s2), session("INT1", 5, subject_id=s2),  # D1 on day 4: out; INT1 in
        session("INT1", 3, subject_id=s3),                                   # no D1: INT1 cannot be judged
    ]
    assessment_items = [
        *baselines,
        *items("CADSS", "D1", 5, [0] * 23, subject_id=s1),  # a D1 assessment out of window: not the session
        *items("MADRS", "W1", 7, MADRS_30, subject_id=s1),
        *items("PHQ9", "W1", 10, [0] * 9, subject_id=s1),   # one instrument out of window is enough
        *items("MADRS", "W1", 9, MADRS_30, subject_id=s2),
        *items("MADRS", "D1P24", 6, MADRS_30, subject_id=s2),
    ]
    land_on(con, participants=people, sessions=sessions, assessment_items=assessment_items)
    assert compliance(con, "D1") == counts(expected=3, done=2, in_window=1, out_of_window=1, missing=1)
    assert compliance(con, "INT1") == counts(expected=3, done=3, in_window=1, out_of_window=1, window_unknown=1)
    assert compliance(con, "W1") == counts(expected=3, done=2, in_window=1, out_of_window=1, missing=1)
    assert compliance(con, "D1P24") == counts(expected=3, done=1, in_window=1, missing=2)
    disagreements = con.execute("""
        with flagged as (
            select site_id, visit, dataset, count(distinct subject_id) as subjects
            from ops.flags
            where flag_type = 'WINDOW_DEVIATION' and status = 'OPEN'
            group by all
        )
        select compliance.visit, compliance.out_of_window, flagged.subjects
        from marts.visit_compliance as compliance
        left join flagged using (site_id, visit, dataset)
        where compliance.out_of_window <> coalesce(flagged.subjects, 0)""").fetchall()
    assert disagreements == []


# --- marts.safety_listing --------------------------------------------------------------------------


def listing(con: duckdb.DuckDBPyConnection, flag_type: str, columns: str) -> list[tuple[Any, ...]]:
    return con.execute(f"select {columns} from marts.safety_listing where flag_type = ? order by flag_id",
                       [flag_type]).fetchall()


def test_each_safety_flag_is_listed_with_the_values_and_the_lineage_behind_it(
        con: duckdb.DuckDBPyConnection) -> None:
    transfer_id = land_on(
        con,
        sessions=[session("D1", 1)],
        vitals=[vital("D1", "PRE"), vital("D1", "T40", sbp=185)],                 # vitals.csv rows 2, 3
        assessment_items=items("MADRS", "BL", 0, MADRS_30)                         # assessment_items.csv rows 2–11
        + items("CSSRS", "W1", 7, [1, 1, 1, 1, 0, 0]),                             # rows 12–17: item 4 is row 15
        adverse_events=[adverse_event("AE001", "Headache"),                        # adverse_events.csv row 2
                        adverse_event("AE002", "Hypertension", serious="Y", severity="SEVERE",
                                      end_date=BL + timedelta(days=5), action="DOSE_INTERRUPTED")],  # row 3
    )
    lineage = "status, subject_id, visit, transfer_id, source_file, source_row, record_present"
    assert listing(con, "SAFETY_VITALS", f"{lineage}, visit_date, timepoint, measured_time, sbp, dbp, hr, spo2") == [
        ("OPEN", "S01-0001", "D1", transfer_id, "vitals.csv", 3, True, BL + timedelta(days=1), "T40",
         vital("D1", "T40")["measured_time"], 185, 80, 70, 98)]
    assert listing(con, "SAFETY_SUICIDALITY", f"{lineage}, instrument, item, score, assessment_date") == [
        ("OPEN", "S01-0001", "W1", transfer_id, "assessment_items.csv", 15, True, "CSSRS", 4, 1,
         BL + timedelta(days=7))]
    assert listing(con, "SAFETY_SAE", f"{lineage}, ae_id, term, preferred_term, body_system, onset_date, end_date, "
                                      "severity, serious, related, outcome, action") == [
        ("OPEN", "S01-0001", None, transfer_id, "adverse_events.csv", 3, True, "AE002", "Hypertension",
         "Hypertension", "Vascular disorders", BL + timedelta(days=2), BL + timedelta(days=5), "SEVERE", True,
         "POSSIBLE", "RECOVERED", "DOSE_INTERRUPTED")]
    assert con.execute("select count(*) from marts.safety_listing").fetchone() == (3,)


def test_a_flag_closed_by_a_corrected_value_stays_listed_as_closed_with_the_corrected_value(
        con: duckdb.DuckDBPyConnection) -> None:
    first = land_on(con, 1, sessions=[session("D1", 1)], vitals=[vital("D1", "T40", sbp=185)])
    second = land_on(con, 2, sessions=[session("D1", 1)], vitals=[vital("D1", "T40", sbp=125)])
    assert listing(con, "SAFETY_VITALS", "status, first_seen_transfer, last_seen_transfer, closed_transfer, "
                                         "message, sbp, transfer_id, record_present") == [
        ("CLOSED", first, first, second, "T40 BP 185/80 mmHg, HR 70, SpO2 98 %", 125, second, True)]


def test_a_flag_whose_record_was_deleted_stays_listed_with_no_values(con: duckdb.DuckDBPyConnection) -> None:
    first = land_on(con, 3, adverse_events=[adverse_event("AE001", "Headache", serious="Y")])
    second = land_on(con, 4)
    assert listing(con, "SAFETY_SAE", "status, last_seen_transfer, closed_transfer, ae_id, term, transfer_id, "
                                      "source_row, record_present") == [
        ("CLOSED", first, second, None, None, None, None, False)]
