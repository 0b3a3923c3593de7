"""The `kaptrial` command line: read-only queries, status, exit codes."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.ingest_transfers import run_ingest
from tests.helpers import write_transfer

runner = CliRunner()


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    write_transfer(root / "inbox", "S01", "20260601T020000Z")
    run_ingest(root / "inbox", root / "wh")
    return root / "wh"


def test_sql_prints_csv(warehouse: Path) -> None:
    result = runner.invoke(app, ["sql", "--warehouse", str(warehouse), "--format", "csv",
                                 "select subject_id, status from core.participants"])
    assert result.exit_code == 0, result.output
    assert list(csv.reader(io.StringIO(result.stdout))) == [["subject_id", "status"], ["S01-0001", "ENROLLED"]]


def test_sql_prints_json_with_dates_as_iso_text(warehouse: Path) -> None:
    result = runner.invoke(app, ["sql", "--warehouse", str(warehouse), "--format", "json",
                                 "select subject_id, screening_date from core.participants"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == [{"subject_id": "S01-0001", "screening_date": "2026-01-10"}]


def test_sql_is_read_only(warehouse: Path) -> None:
    result = runner.invoke(app, ["sql", "--warehouse", str(warehouse), "delete from core.participants"])
    assert result.exit_code == 1
    assert "read-only" in result.output


def test_sql_on_a_missing_warehouse_says_so(tmp_path: Path) -> None:
    result = runner.invoke(app, ["sql", "--warehouse", str(tmp_path / "nowhere"), "select 1"])
    assert result.exit_code == 2
    assert "no warehouse" in result.output


def test_status_lists_transfers_runs_and_counts(warehouse: Path) -> None:
    result = runner.invoke(app, ["status", "--warehouse", str(warehouse)], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "20260601T020000Z" in result.output and "LANDED" in result.output
    assert "Current rows by site" in result.output


def test_ingest_of_a_missing_inbox_is_a_usage_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", "--inbox", str(tmp_path / "none"), "--warehouse", str(tmp_path / "wh")])
    assert result.exit_code == 2
    assert "is not a folder" in result.output


def test_ingest_of_an_unknown_source_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "inbox").mkdir()
    result = runner.invoke(app, ["ingest", "--inbox", str(tmp_path / "inbox"), "--warehouse", str(tmp_path / "wh"),
                                 "--sources", "S99"])
    assert result.exit_code == 2
    assert "unknown source(s) S99" in result.output
    assert not (tmp_path / "wh").exists()
