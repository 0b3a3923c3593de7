"""The Prefect flow `ingest-transfers` over a generated trial, under the session's Prefect test
harness: every row accounted for, every injected defect quarantined with its reason, every
injected protocol or safety problem flagged, no personal data anywhere."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pytest

from flows.generate import GenerationReport, generate_trial
from flows.ingest import RunSummary
from flows.unblinded import KEY_ENV
from flows.warehouse import connect


@pytest.fixture(scope="module")
def ingested(prefect_harness: None, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[GenerationReport, RunSummary, Path]]:
    from flows.ingest_transfers import ingest_transfers

    root = tmp_path_factory.mktemp("flow")
    report = generate_trial(root / "inbox", seed=5, participants_per_site=12)
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, "flow-test-key")
        summary = ingest_transfers(inbox=str(root / "inbox"), warehouse=str(root / "wh"))
    yield report, summary, root / "wh"


@pytest.fixture(scope="module")
def con(ingested: tuple[GenerationReport, RunSummary, Path]) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = connect(ingested[2], read_only=True)
    yield connection
    connection.close()


def test_every_generated_transfer_lands(ingested: tuple[GenerationReport, RunSummary, Path]) -> None:
    report, summary, _ = ingested
    assert {r.source for r in summary.receipts if r.status == "LANDED"} == {s for s, _, _ in report.transfers}
    assert [r for r in summary.receipts if r.status != "LANDED"] == []


def test_every_dataset_balances_delivered_against_landed_quarantined_and_collapsed(
        ingested: tuple[GenerationReport, RunSummary, Path], con: duckdb.DuckDBPyConnection) -> None:
    report = ingested[0]
    loads = con.execute("select source, dataset, delivered, landed, quarantined, duplicates_collapsed "
                        "from ops.loads").fetchall()
    assert len(loads) == 5 * len({s for s, _, _ in report.transfers if s != "IWRS"}) + 1
    for source, dataset, delivered, landed, quarantined, collapsed in loads:
        assert delivered == landed + quarantined + collapsed, (source, dataset)
        assert delivered == report.delivered[(source, dataset)]
        assert collapsed == report.expected_collapsed.get((source, dataset), 0)


def test_every_injected_defect_is_quarantined_with_its_reason_and_nothing_else_is(
        ingested: tuple[GenerationReport, RunSummary, Path], con: duckdb.DuckDBPyConnection) -> None:
    report = ingested[0]
    expected = {(q["source"], q["dataset"], q["source_file"], q["source_row"], q["reason_code"])
                for q in report.expected_quarantine}
    got = set(con.execute("select source, dataset, source_file, source_row, reason_code "
                          "from ops.quarantine").fetchall())
    assert got == expected
    assert {q[4] for q in expected} == {"UNPARSEABLE", "MISSING_REQUIRED", "OUT_OF_RANGE", "UNKNOWN_SUBJECT",
                                        "CONFLICTING_DUPLICATE", "INVALID_VISIT", "INCONSISTENT"}


def test_every_injected_protocol_and_safety_problem_is_an_open_flag(
        ingested: tuple[GenerationReport, RunSummary, Path], con: duckdb.DuckDBPyConnection) -> None:
    open_flags = set(con.execute("select flag_type, subject_id, visit from ops.flags where status = 'OPEN'"
                                 ).fetchall())
    injected = {(f["flag_type"], f["subject_id"], f["visit"]) for f in ingested[0].injected_flags}
    assert injected and injected <= open_flags


def test_no_personal_data_in_any_file_of_the_warehouse(ingested: tuple[GenerationReport, RunSummary, Path]) -> None:
    report, _, warehouse = ingested
    # a value as a whole token: a first name like "Eva" is not found in "Evaluated"
    needles = [re.compile(rb"(?<![A-Za-z0-9])" + re.escape(v.encode()) + rb"(?![A-Za-z0-9])")
               for v in report.phi_values]
    assert needles
    for path in warehouse.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [n.pattern for n in needles if n.search(data)], path


def test_the_run_is_a_completed_prefect_flow_run_recorded_in_ops_runs(
        ingested: tuple[GenerationReport, RunSummary, Path], con: duckdb.DuckDBPyConnection) -> None:
    from prefect.client.orchestration import get_client

    summary = ingested[1]

    async def state() -> tuple[str, str]:
        async with get_client() as client:
            run = await client.read_flow_run(uuid.UUID(summary.run_id))
            flow = await client.read_flow(run.flow_id)
            return flow.name, run.state.type.value

    assert asyncio.run(state()) == ("ingest-transfers", "COMPLETED")
    assert con.execute("select status, transfers_landed from ops.runs where run_id = ?",
                       [summary.run_id]).fetchone() == ("COMPLETED", len(summary.receipts))


def test_prefects_logs_and_run_records_hold_no_arm_and_no_personal_data(
        ingested: tuple[GenerationReport, RunSummary, Path]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    report, summary, _ = ingested

    async def everything_prefect_kept() -> str:
        async with get_client() as client:
            run_id = uuid.UUID(summary.run_id)
            logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
            run = await client.read_flow_run(run_id)
            tasks = await client.read_task_runs()
            return "\n".join([*(log.message for log in logs), run.model_dump_json(),
                              *(t.model_dump_json() for t in tasks)])

    kept = asyncio.run(everything_prefect_kept())
    assert summary.run_id in kept and "ingest-IWRS-" in kept  # the run and its task runs are there
    assert not re.search(r"\b(KAP|KET|ACP)\b", kept)
    assert not [v for v in report.phi_values if v in kept]


def test_a_run_over_folders_already_processed_makes_no_task_run_for_them(
        ingested: tuple[GenerationReport, RunSummary, Path]) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.ingest_transfers import ingest_transfers

    report, first, warehouse = ingested
    with pytest.MonkeyPatch.context() as env:
        env.setenv(KEY_ENV, "flow-test-key")
        again = ingest_transfers(inbox=first.inbox, warehouse=str(warehouse))

    async def task_runs(run_id: str) -> int:
        async with get_client() as client:
            of_run = FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)]))
            return len(await client.read_task_runs(flow_run_filter=of_run))

    assert [(r.source, r.transfer_id, r.status) for r in again.receipts] == [
        (r.source, r.transfer_id, "SKIPPED") for r in first.receipts]
    assert asyncio.run(task_runs(first.run_id)) == len(report.transfers)
    assert asyncio.run(task_runs(again.run_id)) == 0
