"""The Prefect flow `ingest-transfers`: every transfer in the inbox, discovered, verified, read,
conformed, validated, quarantined and landed, then the marts rebuilt.

Tasks are thin wrappers around the plain functions of `flows.ingest`. Transfers of one
warehouse are landed one after the other: DuckDB has one writer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import duckdb
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import get_run_context
from prefect.states import State

import flows  # noqa: F401 — offline settings before Prefect is imported
from flows.artifacts import collect, create_artifacts
from flows.derive import rebuild_marts, refresh_unblinded_marts
from flows.discover import TransferRef, discover_transfers
from flows.expectations import preload, record_expectations, run_expectations
from flows.ingest import (
    FINAL_STATUSES,
    RunSummary,
    TransferReceipt,
    finish_run,
    ingest_one,
    may_land,
    new_run_id,
    prior_status,
    start_run,
    utc_now,
    writer_lock,
)
from flows.publish import publish
from flows.registry import Source, load_registry
from flows.settings import DEFAULT_WAREHOUSE
from flows.verify import Rejected
from flows.warehouse import DOCS, init_warehouse, is_current, open_next


def transient_io_error(task: object, task_run: object, state: State) -> bool:
    """Retry a transfer on an I/O error only (a share that hiccuped, a file briefly locked): a
    transfer that fails lands nothing (one transaction), so trying it again is safe. A rejected
    transfer or a bug is not retried: the same input gives the same answer."""
    try:
        state.result()
    except Rejected:
        return False
    except OSError:
        return True
    except Exception:
        return False
    return False


@task(name="ingest-transfer", cache_policy=NO_CACHE, task_run_name="ingest-{ref.source}-{ref.folder}",
      retries=2, retry_delay_seconds=10, retry_condition_fn=transient_io_error)
def ingest_transfer(con: duckdb.DuckDBPyConnection, ref: TransferRef, source: Source, warehouse: Path,
                    run_id: str) -> TransferReceipt:
    """Verify, read, validate and land one transfer (or record why not)."""
    return ingest_one(con, ref, source, warehouse, run_id)


def flow_run_id() -> str:
    try:
        return str(get_run_context().flow_run.id)
    except Exception:  # outside a flow run (plain function call)
        return new_run_id()


def check_expectations(con: duckdb.DuckDBPyConnection, warehouse: Path, summary: RunSummary,
                       sites: set[str] | None) -> float:
    """Great Expectations on the draft's tables of `sites`, recorded in `ops.expectations` of the
    same publication; a failure is reported, never a reason to hold data back. The seconds taken."""
    report = run_expectations(con, warehouse / DOCS / "gx", sites)
    record_expectations(con, summary.run_id, report)
    summary.expectations, summary.expectations_failed = report.summary_lines(), report.failed
    return report.seconds


def run_ingest(inbox: Path, warehouse: Path, sources: list[str] | None = None, run_id: str | None = None,
               step: Callable[..., TransferReceipt] = ingest_one, expectations: bool = True) -> RunSummary:
    """The whole run; the flow passes its task as `step`, tests that need no Prefect call it as is.
    `expectations=False` skips Great Expectations (its import alone costs seconds)."""
    registry = load_registry()
    only = set(sources) if sources else None
    if only and (unknown := only - set(registry)):
        raise ValueError(f"unknown source(s) {', '.join(sorted(unknown))}; registered: {', '.join(registry)}")
    discovery = discover_transfers(inbox, registry, only)
    summary = RunSummary(run_id or new_run_id(), str(inbox), str(warehouse), utc_now(), warnings=discovery.warnings)
    with writer_lock(warehouse):
        con = open_next(warehouse)
        try:
            # a run that will land nothing in a warehouse this code built leaves its tables,
            # reference data and comments as they are, and never needs the dataset models
            initialised = not is_current(con)
            if initialised:
                init_warehouse(con)
            landing = any(may_land(con, ref) for ref in discovery.transfers)
            if landing and not initialised:
                init_warehouse(con)
            start_run(con, summary)
            if expectations and landing:
                preload()
            try:
                for ref in discovery.transfers:
                    # a folder already processed is answered from ops.transfers (DTS §2.1: it is not
                    # processed again), not as a task run of its own: a nightly run that finds
                    # nothing new costs no round trips to the Prefect API per folder
                    settled = prior_status(con, ref.source, ref.folder) in FINAL_STATUSES
                    summary.receipts.append((ingest_one if settled else step)(
                        con, ref, registry[ref.source], warehouse, summary.run_id))
                derive_seconds, expectations_seconds = 0.0, None
                # marts derive from what landed: a run that landed nothing leaves them as they are
                # (a change of a mart or of the study metadata is the `rebuild-marts` flow's)
                if summary.count("LANDED"):
                    derive_seconds = rebuild_marts(con)
                    if warning := refresh_unblinded_marts(con, warehouse):
                        summary.warnings.append(warning)
                    if expectations:
                        expectations_seconds = check_expectations(con, warehouse, summary, summary.landed_sources)
            except Exception as exc:
                # what landed before the failure is whole: publish it, with the failed run on record
                summary.finished_at = utc_now()
                finish_run(con, summary, "FAILED", f"{type(exc).__name__}: {exc}")
                publish(con, warehouse, summary.landed_sources)
                raise
            summary.finished_at = utc_now()
            finish_run(con, summary, "COMPLETED", derive_seconds=derive_seconds,
                       expectations_seconds=expectations_seconds)
            publish(con, warehouse, summary.landed_sources)
        finally:
            con.close()
    return summary


@flow(name="ingest-transfers", log_prints=False)
def ingest_transfers(inbox: str, warehouse: str = str(DEFAULT_WAREHOUSE),
                     sources: list[str] | None = None) -> RunSummary:
    """Ingest every new transfer of the inbox into the warehouse."""
    logger = get_run_logger()
    summary = run_ingest(Path(inbox), Path(warehouse), sources, run_id=flow_run_id(), step=ingest_transfer)
    create_artifacts(collect(summary, Path(warehouse)))
    # Counts only: row values never go to Prefect's logs or database.
    logger.info("run %s: %d landed, %d rejected, %d pending of %d transfer folders; %d expectation(s) failed",
                summary.run_id, summary.count("LANDED"), summary.count("REJECTED"), summary.count("PENDING"),
                len(summary.receipts), summary.expectations_failed)
    return summary
