"""Stage 8 — report: what a run did and what the warehouse holds, for a person at a terminal."""

from __future__ import annotations

from pathlib import Path

import duckdb
from rich import box
from rich.console import Console
from rich.table import Table

from flows.ingest import RunSummary

STATUS_STYLE = {"LANDED": "green", "REJECTED": "red", "PENDING": "yellow", "LATE": "magenta",
                "DUPLICATE": "cyan", "WAITING": "yellow", "SKIPPED": "dim"}


def print_summary(summary: RunSummary, console: Console) -> None:
    """The run at a glance, readable in 80 columns: transfers, rows per dataset, quarantine by reason."""
    transfers = Table(title=f"Transfers (run {summary.run_id})", box=box.SIMPLE_HEAD)
    transfers.add_column("source", no_wrap=True)
    transfers.add_column("transfer", no_wrap=True)
    transfers.add_column("status", no_wrap=True)
    transfers.add_column("reason / warnings")
    for r in summary.receipts:
        if r.status == "SKIPPED":
            continue
        style = STATUS_STYLE.get(r.status, "")
        transfers.add_row(r.source, r.transfer_id, f"[{style}]{r.status}[/]",
                          "\n".join(([r.reason] if r.reason else []) + r.warnings) or "—")
    console.print(transfers)
    skipped = summary.count("SKIPPED")
    if skipped:
        console.print(f"{skipped} transfer folder(s) already processed in earlier runs were left as they are.")
    if summary.loads:
        loads = Table(title="Rows by source and dataset", box=box.SIMPLE_HEAD)
        loads.add_column("source", no_wrap=True)
        loads.add_column("dataset", no_wrap=True)
        for column in ("delivered", "landed", "quarantined", "duplicates"):
            loads.add_column(column, justify="right", no_wrap=True)
        reasons = Table(title="Quarantined by reason", box=box.SIMPLE_HEAD)
        for column in ("source", "dataset", "reason", "records"):
            reasons.add_column(column, justify="right" if column == "records" else "left", no_wrap=True)
        for receipt, load in summary.loads:
            loads.add_row(receipt.source, load.dataset, f"{load.delivered:,}", f"{load.landed:,}",
                          f"{load.quarantined:,}", f"{load.duplicates_collapsed:,}")
            for reason, n in sorted(load.quarantined_by_reason.items()):
                reasons.add_row(receipt.source, load.dataset, reason, f"{n:,}")
        console.print(loads)
        if reasons.row_count:
            console.print(reasons)
    for warning in summary.warnings:
        console.print(f"[yellow]warning:[/] {warning}")
    for line in summary.expectations:
        # delivered values may hold brackets: never markup
        console.print(line, style="yellow" if summary.expectations_failed else None, markup=False, highlight=False)
    warehouse = Path(summary.warehouse).resolve()
    console.print(f"Warehouse: {warehouse / 'kap.duckdb'}")
    console.print(f"Parquet:   {warehouse / 'parquet'}")


def _table(con: duckdb.DuckDBPyConnection, title: str, query: str) -> Table:
    cursor = con.execute(query)
    table = Table(title=title, box=box.SIMPLE_HEAD)
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
