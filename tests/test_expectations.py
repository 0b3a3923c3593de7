"""Great Expectations on the published tables (flows/expectations.py, schemas/expectations.yaml):
every suite passes on a generated trial; seeded violations fail exactly their expectations, at
their site, naming the rows; results land in ops.expectations; Data Docs are written offline
(pytest-socket allows 127.0.0.1 only, so a build that reached the network would fail here)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from flows.expectations import (
    ExpectationReport,
    ExpectationSpec,
    SuiteSpec,
    _swap_in,
    load_suites,
    record_expectations,
    run_expectations,
    site_groups,
)
from flows.generate import generate_trial
from flows.ingest import RunSummary
from flows.ingest_transfers import run_ingest
from flows.settings import DUCKDB_CONFIG
from flows.warehouse import DATABASE
from schemas.datasets import DATASETS, instruments

SITES = ["S01", "S02", "S03", "S04", "S05", "S06"]

# One violation per site, each of a kind the issue names. The participant deleted at S02 has rows
# in every table that refers to participants; the S03 participant's baseline MADRS items are all
# set to 1, and its total with them, so that only the entry level is broken, not the derivation.
# The S05 score of 2 is within other instruments' item ranges, not within C-SSRS's (which has no
# total to go wrong with it).
SEEDS = """
insert into core.assessment_items
select * from core.assessment_items
where site_id = 'S01' and instrument = 'CSSRS'
order by subject_id, visit, item
limit 1;

create temp table removed as
select participants.subject_id
from core.participants as participants
where participants.site_id = 'S02'
    and exists (select 1 from core.sessions as t where t.subject_id = participants.subject_id)
    and exists (select 1 from core.vitals as t where t.subject_id = participants.subject_id)
    and exists (select 1 from core.assessments as t where t.subject_id = participants.subject_id)
    and exists (select 1 from core.adverse_events as t where t.subject_id = participants.subject_id)
order by participants.subject_id
limit 1;
delete from core.participants where subject_id in (select subject_id from removed);

create temp table lowered as
select assessments.subject_id
from core.assessments as assessments
join core.participants as participants using (site_id, subject_id)
where assessments.site_id = 'S03' and assessments.instrument = 'MADRS' and assessments.visit = 'BL'
    and assessments.total is not null and participants.status = 'ENROLLED'
order by assessments.subject_id
limit 1;
update core.assessment_items set score = 1
where subject_id in (select subject_id from lowered) and instrument = 'MADRS' and visit = 'BL';
update core.assessments set total = items_present
where subject_id in (select subject_id from lowered) and instrument = 'MADRS' and visit = 'BL';

create temp table raised as
select subject_id, visit, timepoint from core.vitals where site_id = 'S04' order by all limit 1;
update core.vitals set sbp = 400
where (subject_id, visit, timepoint) in (select (subject_id, visit, timepoint) from raised);

create temp table overscored as
select subject_id, visit, item from core.assessment_items
where site_id = 'S05' and instrument = 'CSSRS' order by all limit 1;
update core.assessment_items set score = 2
where instrument = 'CSSRS' and (subject_id, visit, item) in (select (subject_id, visit, item) from overscored);
"""

# (suite, expectation, site) of every failure the seeds cause, and why.
EXPECTED_FAILURES = {
    # a duplicated item row: the key, the count against ops.loads, and items_present against items
    ("assessment_items", "key_unique", "S01"),
    ("row_counts", "core_rows_equal_landed_assessment_items", "S01"),
    ("assessments_vs_items", "items_present_counts_items", "S01"),
    # a deleted participant: every table that refers to them, the count, and the enrollment mart
    *(("referential_integrity", f"{table}_subjects_are_participants", "S02")
      for table in ("sessions", "vitals", "assessment_items", "assessments", "adverse_events")),
    ("row_counts", "core_rows_equal_landed_participants", "S02"),
    ("enrollment_mart", "screened_equals_participants", "S02"),
    # an enrolled participant's baseline MADRS below the entry level
    ("madrs_baseline", "baseline_total_at_entry_level", "S03"),
    # a systolic pressure beyond the DTS hard limit
    ("vitals", "sbp_in_range", "S04"),
    # an item score beyond its instrument's range
    ("assessment_items", "score_at_most_item_max", "S05"),
}


def open_copy(database: Path, to: Path) -> duckdb.DuckDBPyConnection:
    shutil.copyfile(database, to)
    return duckdb.connect(str(to), config=dict(DUCKDB_CONFIG))


def row_counts(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    tables = con.execute("select schema_name || '.' || table_name from duckdb_tables() "
                         "where schema_name in ('core', 'marts', 'ops') and table_name <> 'expectations'").fetchall()
    return {t: con.execute(f"select count(*) from {t}").fetchone()[0] for (t,) in tables}


@pytest.fixture(scope="module")
def landed(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunSummary, Path]:
    """A small generated trial landed without Prefect (the IWRS list is not needed here)."""
    root = tmp_path_factory.mktemp("expectations")
    generate_trial(root / "inbox", seed=11, participants_per_site=8)
    summary = run_ingest(root / "inbox", root / "wh", sources=SITES)
    assert [r.status for r in summary.receipts] == ["LANDED"] * len(SITES)
    return summary, root / "wh"


@pytest.fixture(scope="module")
def published(landed: tuple[RunSummary, Path]) -> Path:
    return (landed[1] / DATABASE).resolve()


def test_the_ingest_runs_the_suites_on_what_landed_and_records_them_with_the_data(
        landed: tuple[RunSummary, Path], tmp_path: Path) -> None:
    summary, warehouse = landed
    assert summary.expectations_failed == 0
    assert "0 failed" in summary.expectations[0] and "on 6 site(s)" in summary.expectations[0]
    with duckdb.connect(str(warehouse / DATABASE), read_only=True) as con:
        recorded = con.execute("select count(*), count(*) filter (where not success), count(distinct site_id) "
                               "from ops.expectations where run_id = ?", [summary.run_id]).fetchall()
        seconds = con.execute("select seconds_expectations from ops.runs where run_id = ?",
                              [summary.run_id]).fetchall()
    assert recorded[0][0] > 0 and recorded[0][1] == 0 and recorded[0][2] == len(SITES)
    assert seconds[0][0] > 0
    assert (warehouse / "docs" / "gx" / "index.html").is_file()
    # nothing new lands: nothing to check again, and the record of the first run stands
    copy = tmp_path / "wh"
    shutil.copytree(warehouse, copy, symlinks=True)
    again = run_ingest(warehouse.parent / "inbox", copy, sources=SITES)
    assert again.expectations == []
    with duckdb.connect(str(copy / DATABASE), read_only=True) as con:
        assert con.execute("select count(distinct run_id) from ops.expectations").fetchall() == [(1,)]
        assert con.execute("select seconds_expectations from ops.runs where run_id = ?",
                           [again.run_id]).fetchall() == [(None,)]


@pytest.fixture(scope="module")
def clean(published: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ExpectationReport, Path]]:
    root = tmp_path_factory.mktemp("clean")
    con = open_copy(published, root / DATABASE)
    try:
        yield run_expectations(con, root / "docs" / "gx"), root / "docs" / "gx"
    finally:
        con.close()


@pytest.fixture(scope="module")
def violated(published: Path, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[duckdb.DuckDBPyConnection, ExpectationReport, dict[str, int]]]:
    con = open_copy(published, tmp_path_factory.mktemp("violated") / DATABASE)
    con.execute(SEEDS)
    before = row_counts(con)
    try:
        yield con, run_expectations(con, None), before
    finally:
        con.close()


def failed(report: ExpectationReport) -> set[tuple[str, str, str | None]]:
    return {(r.suite, r.expectation, r.site_id) for r in report.failures}


def observed(report: ExpectationReport, suite: str, expectation: str, site: str) -> str:
    (result,) = [r for r in report.results if (r.suite, r.expectation, r.site_id) == (suite, expectation, site)]
    return result.observed


def test_every_expectation_passes_on_a_generated_trial_at_every_site(clean: tuple[ExpectationReport, Path]) -> None:
    report = clean[0]
    assert report.failures == []
    expected = {(s.name, e.id, site) for s in load_suites() for e in s.expectations for site in SITES}
    assert {(r.suite, r.expectation, r.site_id) for r in report.results} == expected
    assert report.evaluated == len(expected)


def test_seeded_violations_fail_exactly_their_expectations_at_their_sites(
        violated: tuple[duckdb.DuckDBPyConnection, ExpectationReport, dict[str, int]]) -> None:
    assert failed(violated[1]) == EXPECTED_FAILURES


def test_a_failure_reports_the_site_counts_and_the_rows_that_break_it(
        violated: tuple[duckdb.DuckDBPyConnection, ExpectationReport, dict[str, int]]) -> None:
    con, report, _ = violated
    (subject, visit, timepoint), = con.execute("select * from raised").fetchall()
    assert observed(report, "vitals", "sbp_in_range", "S04").startswith("1 of ")
    assert f"{subject}/{visit}/{timepoint}: sbp=400" in observed(report, "vitals", "sbp_in_range", "S04")
    assert observed(report, "assessment_items", "key_unique", "S01").startswith("2 of ")
    (removed,), = con.execute("select * from removed").fetchall()
    assert f"{removed}: participant=missing" in observed(report, "referential_integrity",
                                                          "sessions_subjects_are_participants", "S02")
    (lowered,), = con.execute("select * from lowered").fetchall()
    items = instruments()["MADRS"]["items"]
    assert f"{lowered}/ENROLLED: baseline_total={items}" in observed(report, "madrs_baseline",
                                                                      "baseline_total_at_entry_level", "S03")
    (subject, visit, item), = con.execute("select * from overscored").fetchall()
    assert f"{subject}/{visit}/CSSRS/{item}: item_max=1, score=2" in observed(
        report, "assessment_items", "score_at_most_item_max", "S05")
    counts = observed(report, "row_counts", "core_rows_equal_landed_participants", "S02")
    assert "participants: core_rows=" in counts
    severities = {(r.expectation, r.severity) for r in report.failures}
    assert ("baseline_total_at_entry_level", "warning") in severities
    assert ("sbp_in_range", "error") in severities


def test_failures_are_recorded_in_ops_expectations_and_no_row_is_touched(
        violated: tuple[duckdb.DuckDBPyConnection, ExpectationReport, dict[str, int]]) -> None:
    con, report, before = violated
    assert row_counts(con) == before
    record_expectations(con, "run-1", report)
    record_expectations(con, "run-1", report)  # recording a run again replaces its rows
    recorded = con.execute("select suite, expectation, site_id from ops.expectations "
                           "where run_id = 'run-1' and not success").fetchall()
    assert set(recorded) == EXPECTED_FAILURES and len(recorded) == len(EXPECTED_FAILURES)
    assert con.execute("select count(*), count(distinct checked_at) from ops.expectations "
                       "where run_id = 'run-1'").fetchone() == (report.evaluated, 1)
    lines = report.summary_lines()
    errors = len(EXPECTED_FAILURES) - 1  # the MADRS entry level is a warning
    assert lines[0].startswith(f"expectations: {report.evaluated} evaluated on 6 site(s), {len(EXPECTED_FAILURES)} "
                               f"failed ({errors} error, 1 warning)")
    assert any("vitals.sbp_in_range at S04" in line for line in lines)


def test_only_the_given_sites_are_validated(
        violated: tuple[duckdb.DuckDBPyConnection, ExpectationReport, dict[str, int]]) -> None:
    con = violated[0]
    report = run_expectations(con, None, sites={"S04", "IWRS"})
    assert {r.site_id for r in report.results} == {"S04"}
    assert failed(report) == {("vitals", "sbp_in_range", "S04")}
    assert run_expectations(con, None, sites=set()).results == []


def test_data_docs_are_written_offline_with_a_page_per_suite(clean: tuple[ExpectationReport, Path]) -> None:
    report, docs = clean
    assert report.docs_index == docs / "index.html"
    assert report.docs_index.is_file()
    index = report.docs_index.read_text(encoding="utf-8")
    for suite in load_suites():
        assert suite.name in index
        assert list((docs / "validations" / suite.name).rglob("*.html")), suite.name
    assert [p.name for p in docs.parent.iterdir()] == ["gx"]  # nothing left of the build beside it


def test_data_docs_replace_the_previous_build_but_never_another_directory(tmp_path: Path) -> None:
    target = tmp_path / "gx"
    for build in ("first", "second"):
        built = tmp_path / build
        built.mkdir()
        (built / "index.html").write_text(build)
        _swap_in(built, target)
    assert (target / "index.html").read_text() == "second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gx"]
    (other := tmp_path / "warehouse").mkdir()
    (other / "kap.duckdb").write_text("data")
    (built := tmp_path / "third").mkdir()
    with pytest.raises(ValueError, match="not a Data Docs directory"):
        _swap_in(built, other)
    assert (other / "kap.duckdb").read_text() == "data"


def test_a_suite_that_cannot_be_evaluated_is_reported_failed_not_raised(
        violated: tuple[duckdb.DuckDBPyConnection, ExpectationReport, dict[str, int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    broken = ExpectationSpec("gone_in_range", "expect_column_values_to_be_between",
                             {"column": "gone", "min_value": 0}, "core.vitals", {}, "plausibility", "error",
                             "A column that is not there.")
    monkeypatch.setattr("flows.expectations.load_suites",
                        lambda: (SuiteSpec("vitals", "core.vitals", None, ("subject_id",), (broken,)),))
    report = run_expectations(violated[0], None, sites={"S01"})
    (result,) = report.results
    assert (result.success, result.site_id) == (False, "S01")
    assert result.observed.startswith("could not be evaluated: ") and "gone" in result.observed


def test_thresholds_come_from_the_models_and_the_study_yaml_not_from_literals() -> None:
    suites = {s.name: {e.id: e for e in s.expectations} for s in load_suites()}
    vitals = DATASETS["vitals"].model.to_schema().columns
    for column in ("sbp", "dbp", "hr", "spo2"):
        (in_range,) = [c for c in vitals[column].checks if c.name == "in_range"]
        kwargs = suites["vitals"][f"{column}_in_range"].kwargs
        assert (kwargs["min_value"], kwargs["max_value"]) == (in_range.statistics["min_value"],
                                                             in_range.statistics["max_value"])
    dose = suites["sessions"]["dose_mg_in_range"].kwargs
    assert (dose["min_value"], dose["strict_min"], dose["max_value"]) == (0, True, 800)
    for name, spec in instruments().items():
        if spec["total_max"] is None:
            assert f"total_in_range_{name}" not in suites["assessments"]
            continue
        total = suites["assessments"][f"total_in_range_{name}"]
        assert (total.kwargs["min_value"], total.kwargs["max_value"], total.where) == (
            spec["total_min"], spec["total_max"], {"instrument": name})
    baseline = suites["madrs_baseline"]["baseline_total_at_entry_level"].kwargs
    assert (baseline["min_value"], baseline["max_value"]) == (20, instruments()["MADRS"]["total_max"])


def test_site_batches_keep_whole_sites_under_the_row_budget() -> None:
    counts = {"S01": 3, "S02": 3, "S03": 5, "S04": 1, "S05": 9}
    assert site_groups(counts, ["S01", "S02", "S03", "S04", "S05", "S06"], max_rows=6) == [
        ["S01", "S02"], ["S03", "S04"], ["S05"], ["S06"]]
