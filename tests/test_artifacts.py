"""What a run shows in the Prefect UI (flows/artifacts.py), from a hand-built run summary: every
decided transfer with its rows, the quarantine by reason, flags opened and closed, new safety
flags first — references only, never a value behind a flag."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from flows.artifacts import FlagChange, flag_rows, quarantine_rows, receipt_rows, safety_markdown
from flows.ingest import RunSummary, TransferReceipt
from flows.process import DatasetLoad

LOAD = DatasetLoad("vitals", "vitals.csv", delivered=10, landed=7, quarantined=2, duplicates_collapsed=1,
                   quarantined_by_reason=Counter({"OUT_OF_RANGE": 1, "UNKNOWN_SUBJECT": 1}))
SUMMARY = RunSummary("run-1", "inbox", "wh", datetime(2026, 6, 1, tzinfo=UTC), receipts=[
    TransferReceipt("S01", "20260601T020000Z", "LANDED", loads=[LOAD],
                    warnings=["personal data received: participants.csv held column(s) dob, dropped and never stored"]),
    TransferReceipt("S02", "20260601T021000Z", "REJECTED", reason="checksum of vitals.csv differs"),
    TransferReceipt("S03", "20260501T020000Z", "SKIPPED", reason="already processed (LANDED)"),
])
CHANGES = [
    FlagChange("NEW", "f1", "SAFETY_SUICIDALITY", "S01", "S01-0001", "W2", "MADRS|10"),
    FlagChange("NEW", "f2", "SAFETY_SAE", "S01", "S01-0002", None, "AE001"),
    FlagChange("NEW", "f3", "WINDOW_DEVIATION", "S01", "S01-0001", "W4", "assessments|MADRS"),
    FlagChange("CLOSED", "f4", "SAFETY_VITALS", "S01", "S01-0003", "D1", "T40"),
]


def test_receipts_list_every_decided_transfer_with_its_rows_and_the_personal_data_warning() -> None:
    rows = receipt_rows(SUMMARY)
    assert [(r["source"], r["status"]) for r in rows] == [("S01", "LANDED"), ("S02", "REJECTED")]
    assert (rows[0]["delivered"], rows[0]["landed"], rows[0]["quarantined"], rows[0]["duplicates collapsed"]) == (
        10, 7, 2, 1)
    assert rows[0]["personal data"].startswith("personal data received") and rows[1]["personal data"] == "none"
    assert rows[1]["reason"] == "checksum of vitals.csv differs"


def test_quarantine_is_summarised_by_reason() -> None:
    assert quarantine_rows(SUMMARY) == [
        {"source": "S01", "transfer": "20260601T020000Z", "dataset": "vitals", "reason": "OUT_OF_RANGE", "records": 1},
        {"source": "S01", "transfer": "20260601T020000Z", "dataset": "vitals", "reason": "UNKNOWN_SUBJECT",
         "records": 1}]


def test_flags_are_counted_new_and_closed_by_site_and_type() -> None:
    assert flag_rows(CHANGES) == [
        {"site": "S01", "flag": "SAFETY_SAE", "new": 1, "closed": 0},
        {"site": "S01", "flag": "SAFETY_SUICIDALITY", "new": 1, "closed": 0},
        {"site": "S01", "flag": "SAFETY_VITALS", "new": 0, "closed": 1},
        {"site": "S01", "flag": "WINDOW_DEVIATION", "new": 1, "closed": 0}]


def test_new_safety_flags_come_sae_first_as_references_in_a_table_a_pipe_cannot_break() -> None:
    markdown = safety_markdown(CHANGES, "run-1")
    rows = [line for line in markdown.splitlines() if line.startswith("| **")]
    assert [r.split("|")[1].strip() for r in rows] == ["**SAFETY_SAE**", "**SAFETY_SUICIDALITY**"]
    assert r"(MADRS\|10)" in rows[1] and rows[1].count(" | ") == 5  # the escaped pipe splits no cell
    assert "WINDOW_DEVIATION" not in markdown and "f4" not in markdown  # closed and non-safety flags elsewhere
    assert safety_markdown([], "run-2") == "## New safety flags\n\nNone in run `run-2`.\n"
