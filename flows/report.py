"""Stage 8 — report: what a run did and what the warehouse holds, for a person at a terminal."""

from __future__ import annotations

from pathlib import Path

import duckdb
from rich.console import Console
from rich.table import Table

from flows.ingest import RunSummary

STATUS_STYLE = {"LANDED": "green", "REJECTED": "red", "PENDING": "yellow", "LATE": "magenta",
                "DUPLICATE": "cyan", "WAITING": "yellow", "SKIPPED": "dim"}


def reasons_text(by_reason: dict[str, int]) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(by_reason.items())) or "—"


def print_summary(summary: RunSummary, console: Console) -> None:
    transfers = Table(title=f"Transfers (run {summary.run_id})")
    for column in ("source", "transfer", "status", "reason / warnings"):
        transfers.add_column(column)
    for r in summary.receipts:
        if r.status == "SKIPPED":
            continue
        style = STATUS_STYLE.get(r.status, "")
        transfers.add_row(r.source, r.transfer_id, f"[{style}]{r.status}[/]", "\n".join(
            ([r.reason] if r.reason else []) + r.warnings) or "—")
    skipped = summary.count("SKIPPED")
    console.print(transfers)
    if skipped:
        console.print(f"{skipped} transfer folder(s) already processed in earlier runs were left as they are.")
    if summary.loads:
        loads = Table(title="Rows by source and dataset")
        for column in ("source", "transfer", "dataset", "delivered", "landed", "quarantined", "duplicates",
                       "quarantined by reason"):
            loads.add_column(column, justify="right" if column in ("delivered", "landed", "quarantined",
                                                                   "duplicates") else "left")
        for receipt, load in summary.loads:
            loads.add_row(receipt.source, receipt.transfer_id, load.dataset, str(load.delivered), str(load.landed),
                          str(load.quarantined), str(load.duplicates_collapsed),
                          reasons_text(load.quarantined_by_reason))
        console.print(loads)
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    warehouse = Path(summary.warehouse).resolve()
    console.print(f"Warehouse: {warehouse / 'kap.duckdb'} (Parquet under {warehouse / 'parquet'})")


def _table(con: duckdb.DuckDBPyConnection, title: str, query: str) -> Table:
    cursor = con.execute(query)
    table = Table(title=title)
    for d in cursor.description:
        table.add_column(d[0])
    for row in cursor.fetchall():
        table.add_row(*("" if v is None else str(v) for v in row))
    return table


def print_status(con: duckdb.DuckDBPyConnection, console: Console) -> None:
    console.print(_table(con, "Transfers", """
        select source, transfer_id, status, coalesce(reason, '') as reason,
               json_array_length(coalesce(warnings, '[]')) as warnings,
               strftime(recorded_at, '%Y-%m-%d %H:%M') as recorded
        from ops.transfers order by source, transfer_id"""))
    console.print(_table(con, "Last runs", """
        select run_id, strftime(started_at, '%Y-%m-%d %H:%M:%S') as started, status, transfers_landed as landed,
               transfers_rejected as rejected, transfers_pending as pending, rows_landed, rows_quarantined,
               round(epoch(finished_at - started_at), 1) as seconds
        from ops.runs order by started_at desc limit 5"""))
    console.print(_table(con, "Current rows by site", """
        select site_id,
               (select count(*) from core.participants p where p.site_id = s.site_id) as participants,
               (select count(*) from core.sessions x where x.site_id = s.site_id) as sessions,
               (select count(*) from core.vitals x where x.site_id = s.site_id) as vitals,
               (select count(*) from core.assessment_items x where x.site_id = s.site_id) as assessment_items,
               (select count(*) from core.assessments x where x.site_id = s.site_id) as assessments,
               (select count(*) from core.adverse_events x where x.site_id = s.site_id) as adverse_events,
               (select count(*) from ops.flags f where f.site_id = s.site_id and f.status = 'OPEN') as open_flags
        from (select distinct site_id from core.participants) as s order by site_id"""))
