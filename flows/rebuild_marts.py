"""The Prefect flow `rebuild-marts`: every mart, blinded and unblinded, rebuilt from the published
core on demand, after a change to a mart's SQL or to the study metadata in schemas/ (windows,
thresholds), without waiting for the next delivery.

The `ref` tables are refreshed from schemas/ first. Core rows and flags are not touched: they
are derived when a transfer lands, from the metadata of that day, and the audit trail says so.
The rebuild is a run like an ingest: one writer, a private draft, one atomic switch, a row in
`ops.runs`.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

import flows  # noqa: F401 — offline settings before Prefect is imported
from flows.derive import rebuild_marts, refresh_unblinded_marts
from flows.ingest import RunSummary, finish_run, new_run_id, start_run, utc_now, writer_lock
from flows.ingest_transfers import check_expectations, flow_run_id
from flows.publish import publish
from flows.settings import DEFAULT_WAREHOUSE
from flows.warehouse import DATABASE, init_warehouse, open_next


def run_rebuild(warehouse: Path, run_id: str | None = None) -> RunSummary:
    if not (warehouse / DATABASE).exists():
        raise FileNotFoundError(f"no warehouse at {warehouse / DATABASE}: run an ingest first")
    summary = RunSummary(run_id or new_run_id(), "", str(warehouse), utc_now())
    with writer_lock(warehouse):
        con = open_next(warehouse)
        try:
            init_warehouse(con)
            start_run(con, summary)
            derive_seconds = rebuild_marts(con)
            if warning := refresh_unblinded_marts(con, warehouse):
                summary.warnings.append(warning)
            # the whole warehouse against its expectations, the rebuilt marts included
            expectations_seconds = check_expectations(con, warehouse, summary, None)
            summary.finished_at = utc_now()
            finish_run(con, summary, "COMPLETED", "rebuild-marts", derive_seconds=derive_seconds,
                       expectations_seconds=expectations_seconds)
            publish(con, warehouse)
        finally:
            con.close()
    return summary


@flow(name="rebuild-marts", log_prints=False)
def rebuild_marts_flow(warehouse: str = str(DEFAULT_WAREHOUSE)) -> RunSummary:
    """Rebuild every mart of the warehouse from its published core."""
    summary = run_rebuild(Path(warehouse), run_id=flow_run_id())
    get_run_logger().info("run %s: marts rebuilt%s", summary.run_id,
                          "; " + "; ".join(summary.warnings) if summary.warnings else "")
    return summary
