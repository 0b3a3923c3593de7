"""The trial report (`flows/trial_report.py`, `kaptrial report`): one self-contained HTML file whose
plots are inline SVG, that names no outside resource, and that shows arms only when unblinded."""

from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.generate import generate_trial
from flows.ingest_transfers import run_ingest
from flows.trial_report import ReportData, Summary, build_report, load_report_data, render_report
from flows.unblinded import KEY_ENV
from flows.warehouse import connect, connect_unblinded

KEY = "report-test-key"
BLINDED_PLOTS = 5  # enrollment, MADRS, CADSS, BP, data quality
UNBLINDED_PLOTS = BLINDED_PLOTS + 2  # + MADRS change by arm, responders and remitters by arm
runner = CliRunner()


class Page(HTMLParser):
    """What a browser would load or run from the page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter[str] = Counter()
        self.references: list[str] = []
        self.ids: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        for name, value in attrs:
            if name in ("src", "href", "xlink:href", "action", "srcset", "data"):
                self.references.append(value or "")
            if name == "id":
                self.ids.append(value or "")

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(document: str) -> Page:
    page = Page()
    page.feed(document)
    page.close()
    return page


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("report")
    generate_trial(root / "inbox", seed=9, participants_per_site=6)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY)
        run_ingest(root / "inbox", root / "wh", sources=["S01", "S03", "S06", "IWRS"])
    return root / "wh"


@pytest.fixture(scope="module")
def arms(warehouse: Path) -> set[str]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY)
        con = connect_unblinded(warehouse)
    try:
        return {a for (a,) in con.execute("select distinct arm from unblinded.randomization").fetchall()}
    finally:
        con.close()


@pytest.fixture(scope="module")
def blinded(warehouse: Path) -> str:
    con = connect(warehouse, read_only=True)
    try:
        return build_report(con, unblinded=False)
    finally:
        con.close()


@pytest.fixture(scope="module")
def unblinded(warehouse: Path) -> str:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY)
        con = connect_unblinded(warehouse)
    try:
        return build_report(con, unblinded=True)
    finally:
        con.close()


def mentions(document: str, arm: str) -> bool:
    # the study's name holds KAP; an arm label is the code standing alone
    return re.search(rf"(?<![\w-]){re.escape(arm)}(?![\w-])", document.replace("KAP-TRD-01", "")) is not None


def test_the_report_parses_with_one_svg_per_plot(blinded: str, unblinded: str) -> None:
    for document, plots in ((blinded, BLINDED_PLOTS), (unblinded, UNBLINDED_PLOTS)):
        page = parse(document)
        assert page.tags["svg"] == plots
        assert page.tags["figure"] == plots
        assert page.tags["table"] >= 5
        assert document.startswith("<!DOCTYPE html>")


def test_the_report_needs_nothing_from_outside(blinded: str, unblinded: str) -> None:
    for document in (blinded, unblinded):
        page = parse(document)
        assert "http://" not in document and "https://" not in document
        assert all(ref.startswith("#") for ref in page.references), page.references
        for tag in ("script", "link", "img", "iframe", "object", "embed"):
            assert page.tags[tag] == 0, tag
        assert "@import" not in document and "@font-face" not in document
        # ids of the inline plots do not collide
        assert len(page.ids) == len(set(page.ids))


def test_the_blinded_report_names_no_arm(blinded: str, arms: set[str]) -> None:
    assert arms  # the trial's arms, from the unblinded store
    for arm in arms:
        assert not mentions(blinded, arm), arm
    assert "by arm" not in blinded.casefold()
    assert "Blinded" in blinded


def test_the_unblinded_report_has_the_arm_curves(unblinded: str, arms: set[str]) -> None:
    text = " ".join(parse(unblinded).text)
    assert "MADRS mean change from BL by arm" in text
    assert "MADRS responders by arm" in text and "MADRS remitters by arm" in text
    for arm in arms:
        # each arm is labelled in the legends of the plots (SVG text) and in the table
        assert mentions(text, arm), arm
    assert "UNBLINDED" in text


def test_the_report_shows_the_pooled_measures(blinded: str) -> None:
    text = " ".join(parse(blinded).text)
    for heading in ("Enrollment over time", "MADRS total by visit", "CADSS total by dosing session",
                    "Systolic BP by dosing session", "Diastolic BP by dosing session", "Open flags"):
        assert heading in text, heading
    for site in ("S01", "S03", "S06"):
        assert site in text
    assert "IWRS" not in text  # not a site


def test_the_blinded_data_reads_nothing_unblinded(warehouse: Path) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, KEY)
        con = connect_unblinded(warehouse)
    try:
        data = load_report_data(con, unblinded=False)
    finally:
        con.close()
    assert data.arms == [] and data.efficacy == [] and data.change_sd == {}


def test_the_callers_connection_is_left_ready_for_its_next_query(warehouse: Path) -> None:
    con = connect(warehouse, read_only=True)
    try:
        load_report_data(con, unblinded=False)
        # DuckDB refuses a relation while a result of execute() is half-read
        assert con.sql("select 1").fetchall() == [(1,)]
    finally:
        con.close()


def test_a_blinded_report_refuses_data_by_arm() -> None:
    from datetime import UTC, datetime

    data = ReportData(generated_at=datetime(2026, 6, 1, tzinfo=UTC), unblinded=False, arms=["A"])
    with pytest.raises(ValueError, match="blinded"):
        render_report(data)


def test_the_report_renders_an_empty_trial() -> None:
    from datetime import UTC, datetime

    document = render_report(ReportData(generated_at=datetime(2026, 6, 1, tzinfo=UTC), unblinded=False))
    assert parse(document).tags["svg"] == BLINDED_PLOTS - 1  # no data quality mart: said in words


def test_a_95_percent_interval_is_zero_for_a_single_value() -> None:
    assert Summary(1, 10.0, None).ci95 == 0.0
    assert Summary(4, 10.0, 2.0).ci95 == pytest.approx(1.959964)


def test_kaptrial_report_writes_the_file(warehouse: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "trial.html"
    result = runner.invoke(app, ["report", "--warehouse", str(warehouse), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert parse(out.read_text(encoding="utf-8")).tags["svg"] == BLINDED_PLOTS
    assert [p.name for p in out.parent.iterdir()] == ["trial.html"]


def test_kaptrial_report_unblinded_needs_the_key(warehouse: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    result = runner.invoke(app, ["report", "--warehouse", str(warehouse), "--out", str(tmp_path / "r.html"),
                                 "--unblinded"])
    assert result.exit_code == 2
    assert KEY_ENV in result.output
    assert not (tmp_path / "r.html").exists()
    monkeypatch.setenv(KEY_ENV, KEY)
    result = runner.invoke(app, ["report", "--warehouse", str(warehouse), "--out", str(tmp_path / "r.html"),
                                 "--unblinded"])
    assert result.exit_code == 0, result.output
    assert parse((tmp_path / "r.html").read_text(encoding="utf-8")).tags["svg"] == UNBLINDED_PLOTS
