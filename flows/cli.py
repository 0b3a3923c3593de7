"""`kaptrial`: the command line of the KAP-TRD-01 data platform."""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

import flows  # noqa: F401 — offline settings first
from flows.settings import DEFAULT_WAREHOUSE

app = typer.Typer(add_completion=False, no_args_is_help=True, help="KAP-TRD-01 data platform.")
console = Console()
err = Console(stderr=True, soft_wrap=True)

WarehouseOption = Annotated[Path, typer.Option("--warehouse", "-w", help="Warehouse folder.")]


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the demo inbox into.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed writes the same bytes.")] = 7,
    participants_per_site: Annotated[int, typer.Option(help="People screened per site.")] = 30,
) -> None:
    """Write a demo inbox that follows the DTS, with a controlled rate of every defect it names."""
    from flows.generate import generate_trial

    report = generate_trial(out, seed=seed, participants_per_site=participants_per_site)
    table = Table(title=f"Demo inbox {out}")
    for column in ("source", "transfer", "files"):
        table.add_column(column)
    for source, transfer_id, path in report.transfers:
        table.add_row(source, transfer_id, str(len(list(Path(path).iterdir()))))
    console.print(table)
    for source, why in dict(report.skipped).items():
        console.print(f"[yellow]{source}[/]: not generated ({why})")


@app.command()
def ingest(
    inbox: Annotated[Path, typer.Option("--inbox", help="Inbox folder: <source>/<transfer_id>/.")],
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    sources: Annotated[str | None, typer.Option(help="Comma-separated sources to ingest (default: all).")] = None,
) -> None:
    """Run the Prefect flow `ingest-transfers` in-process over the inbox.

    Exits 0 when the run completed, even with rejected transfers or quarantined rows.
    """
    from flows.ingest import WarehouseBusy
    from flows.ingest_transfers import ingest_transfers
    from flows.registry import load_registry
    from flows.report import print_summary

    only = [s.strip() for s in sources.split(",") if s.strip()] if sources else None
    # Usage errors are answered before Prefect starts.
    if not inbox.is_dir():
        err.print(f"[red]inbox {inbox} is not a folder[/]")
        raise typer.Exit(2)
    if only and (unknown := set(only) - set(load_registry())):
        err.print(f"[red]unknown source(s) {', '.join(sorted(unknown))}[/] (see schemas/sources.yaml)")
        raise typer.Exit(2)
    try:
        summary = ingest_transfers(inbox=str(inbox), warehouse=str(warehouse), sources=only)
    except WarehouseBusy as busy:
        err.print(f"[red]{busy}[/]")
        raise typer.Exit(3) from None
    except (FileNotFoundError, ValueError) as exc:
        err.print(f"[red]ingest failed:[/] {exc}")
        raise typer.Exit(2) from None
    print_summary(summary, console)


def _jsonable(value: Any) -> Any:
    if isinstance(value, (date, datetime, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help="One SQL query, run read-only.")],
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    format: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    unblinded: Annotated[bool, typer.Option(help="Attach the unblinded store as `unblinded`.")] = False,
) -> None:
    """Run one read-only query on the blinded warehouse (with --unblinded, `unblinded.*` too)."""
    from flows.unblinded import UnblindedKeyError
    from flows.warehouse import connect, connect_unblinded

    if format not in ("table", "csv", "json"):
        err.print("--format must be table, csv or json")
        raise typer.Exit(2)
    try:
        con = connect_unblinded(warehouse) if unblinded else connect(warehouse, read_only=True)
    except (FileNotFoundError, UnblindedKeyError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    try:
        cursor = con.execute(query)
        columns = [d[0] for d in cursor.description or []]
        rows = cursor.fetchall()
    except Exception as exc:
        err.print(f"[red]query failed:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        con.close()
    if format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        sys.stdout.write(buffer.getvalue())
    elif format == "json":
        sys.stdout.write(json.dumps([{c: _jsonable(v) for c, v in zip(columns, r, strict=True)} for r in rows],
                                    indent=1) + "\n")
    else:
        table = Table()
        for c in columns:
            table.add_column(c)
        for r in rows:
            table.add_row(*("" if v is None else str(v) for v in r))
        console.print(table)


@app.command()
def status(warehouse: WarehouseOption = DEFAULT_WAREHOUSE) -> None:
    """Transfers and their status, the last runs, and row counts of the warehouse."""
    from flows.report import print_status
    from flows.warehouse import connect

    try:
        con = connect(warehouse, read_only=True)
    except FileNotFoundError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    try:
        print_status(con, console)
    finally:
        con.close()


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")],
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    unblinded: Annotated[bool, typer.Option(help="Add results by arm (needs KAP_UNBLINDED_KEY).")] = False,
) -> None:
    """Write the trial report: one self-contained HTML file of plots and tables, blinded unless --unblinded."""
    from flows.trial_report import build_report
    from flows.unblinded import UnblindedKeyError
    from flows.warehouse import connect, connect_unblinded

    try:
        con = connect_unblinded(warehouse) if unblinded else connect(warehouse, read_only=True)
    except (FileNotFoundError, UnblindedKeyError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    try:
        document = build_report(con, unblinded=unblinded)
    except LookupError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    finally:
        con.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_text(document, encoding="utf-8")
    os.replace(partial, out)
    console.print(f"{'UNBLINDED' if unblinded else 'Blinded'} report written to {out}")


@app.command()
def export(
    table: Annotated[str, typer.Option("--table", help="Table to export, e.g. core.assessments.")],
    out: Annotated[Path, typer.Option("--out", help="File to write.")],
    warehouse: WarehouseOption = DEFAULT_WAREHOUSE,
    format: Annotated[str, typer.Option("--format", help="parquet, csv or xpt (SAS transport v5).")] = "parquet",
    unblinded: Annotated[bool, typer.Option(help="Attach the unblinded store, for unblinded.* tables.")] = False,
) -> None:
    """Export one table of the warehouse to Parquet, CSV or SAS transport v5 (XPT)."""
    from flows.export import FORMATS, ExportError, UnknownTable, export_table
    from flows.unblinded import UnblindedKeyError
    from flows.warehouse import connect, connect_unblinded

    if format not in FORMATS:
        err.print(f"--format must be one of {', '.join(FORMATS)}")
        raise typer.Exit(2)
    try:
        con = connect_unblinded(warehouse) if unblinded else connect(warehouse, read_only=True)
    except (FileNotFoundError, UnblindedKeyError) as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    try:
        result = export_table(con, table, format, out)
    except UnknownTable as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(2) from None
    except ExportError as exc:
        err.print(f"[red]cannot export {table} as {format}:[/] {exc}")
        raise typer.Exit(1) from None
    finally:
        con.close()
    console.print(f"{result.rows:,} rows of {table} written to {out} ({format})")
    if result.names:
        renamed = {c: n for c, n in result.names.items() if c.upper() != n}
        console.print(f"SAS dataset {result.dataset_name}; original column names are the variable labels"
                      + (": " + ", ".join(f"{c} → {n}" for c, n in renamed.items()) if renamed else ""))
    if table.startswith("unblinded."):
        err.print("[bold red]This file holds unblinded data:[/] keep it with the unblinded team.")


if __name__ == "__main__":
    app()
