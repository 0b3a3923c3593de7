"""Site query listings: per site, one Excel workbook of what the site has to answer.

A site coordinator works through the open flags of the site (`ops.flags`, status OPEN) and the
quarantined records of its current transfer (`ops.quarantine` of the newest LANDED transfer of
the source, as `marts.data_quality` counts them), one row each, sorted by subject and visit, with
an empty "site response" column to fill in. Written to `<out_dir>/<site>.xlsx`, each workbook
written beside and renamed in, so a reader never opens half a file.

Delivered values are hostile input: a value such as `=HYPERLINK(...)` or `@SUM(A1)` must stay
text in Excel. Every text cell is therefore written with XlsxWriter's `write_string` (never
`write`, which would store a leading `=` as a formula) and with Excel's quote prefix, which keeps
it text even when a coordinator edits the cell. Listings are blinded: the randomization and
anything of an arm are never read.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import xlsxwriter
from xlsxwriter.format import Format
from xlsxwriter.worksheet import Worksheet

from flows.registry import load_registry

QUERIES_SHEET = "Open queries"
ABOUT_SHEET = "About"
# (header, widest width) — widths follow the content up to this cap, so a long message wraps
COLUMNS: tuple[tuple[str, int], ...] = (
    ("subject", 12), ("visit", 8), ("kind", 18), ("form", 34), ("line", 8), ("field", 20), ("value", 24),
    ("rule", 24), ("message", 70), ("first seen", 18), ("site response", 40), ("query id", 34),
)
WRAPPED = {"message", "site response"}
QUARANTINED, FLAGGED = "quarantined record", "open flag"
# Excel refuses a cell longer than this; a listing shows where it cut rather than break the file
EXCEL_MAX_CELL = 32_767
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# queries of a run's listings from which two processes write them (see write_workbooks)
PARALLEL_QUERIES = 20_000
SAFE_FILE_NAME = re.compile(r"[^A-Za-z0-9_.-]")
# XlsxWriter format properties; TEXT marks a cell as text for Excel (the quote prefix)
HEADER = {"bold": True, "font_color": "#FFFFFF", "bg_color": "#305496", "pattern": 1}
RESPONSE_FILL = {"bg_color": "#FFF2CC", "pattern": 1}
WRAP = {"text_wrap": True, "valign": "top"}
TOP = {"valign": "top"}
TEXT = {"quote_prefix": True}
# write() is never called; were it, it should still not turn text into formulas, numbers or links.
# Built in memory with a shared string table: a workbook holds one site's listing, whose rows are in
# memory already, and `constant_memory` (inline strings through a temporary file) is ~20 % slower.
WORKBOOK_OPTIONS = {"in_memory": True, "strings_to_formulas": False, "strings_to_numbers": False,
                    "strings_to_urls": False}


@dataclass(frozen=True)
class Query:
    """One row of a site's listing."""

    site_id: str
    subject: str | None
    visit: str | None
    kind: str
    form: str
    line: int | None
    field: str | None
    value: str | None
    rule: str
    message: str | None
    first_seen: str
    query_id: str
    visit_order: int


@dataclass(frozen=True)
class SiteState:
    """What the About sheet says of a site."""

    site_id: str
    current_transfer: str | None


# one workbook to write: where, of which site, with its sorted queries
Job = tuple[Path, SiteState, list[Query]]


# Quarantined records of each source's newest LANDED transfer; a record is "first seen" in the
# earliest landed transfer of the source that quarantined the same value for the same reason.
QUARANTINE_SQL = """
with landed as (
    select source, transfer_id,
        row_number() over (partition by source order by transfer_id desc) as recency,
    from ops.transfers
    where status = 'LANDED'
),

first_seen as (
    select quarantine.source, quarantine.dataset, quarantine.subject_id, quarantine.column_name,
        quarantine.value, quarantine.reason_code, min(quarantine.transfer_id) as first_seen,
    from ops.quarantine as quarantine
    join landed using (source, transfer_id)
    group by all
)

select
    quarantine.source as site_id,
    quarantine.subject_id,
    {visit} as visit,
    quarantine.dataset,
    quarantine.source_file,
    quarantine.source_row,
    quarantine.column_name,
    quarantine.value,
    quarantine.reason_code,
    quarantine.message,
    coalesce(first_seen.first_seen, quarantine.transfer_id) as first_seen,
    quarantine.transfer_id,
from ops.quarantine as quarantine
join landed using (source, transfer_id)
left join first_seen
    on first_seen.source = quarantine.source
    and first_seen.dataset = quarantine.dataset
    and first_seen.subject_id is not distinct from quarantine.subject_id
    and first_seen.column_name is not distinct from quarantine.column_name
    and first_seen.value is not distinct from quarantine.value
    and first_seen.reason_code = quarantine.reason_code
where landed.recency = 1
    and quarantine.dataset <> 'randomization'
"""

FLAGS_SQL = """
select flag_id, flag_type, site_id, subject_id, visit, dataset, detail, message, first_seen_transfer,
from ops.flags
where status = 'OPEN'
"""


def write_site_listings(con: duckdb.DuckDBPyConnection, out_dir: Path, *,
                        generated_at: datetime | None = None, sites: set[str] | None = None) -> list[Path]:
    """One workbook `<out_dir>/<site>.xlsx` per site of the warehouse, also for a site with nothing open.

    `con` is a (read-only) connection to the published `kap.duckdb`. Returns the paths written,
    in site order. A handful of queries for all sites, then one pass per site: linear in sites and rows.
    With `sites`, only those sites' workbooks (and any missing one) are rewritten: a site's queries
    change only when one of its transfers lands, and the queries of the others are not even read.
    """
    generated_at = generated_at or datetime.now(UTC)
    states = site_states(con)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {site_id: out_dir / f"{SAFE_FILE_NAME.sub('_', site_id)}.xlsx" for site_id in states}
    due = sorted(s for s in states if sites is None or s in sites or not paths[s].exists())
    queries = read_site_queries(con, due) if due else {}
    write_workbooks([(paths[s], states[s], sort_queries(queries.get(s, []))) for s in due], generated_at)
    return [paths[site_id] for site_id in due]


def write_workbooks(jobs: list[Job], generated_at: datetime) -> None:
    """Every workbook of `jobs`. XlsxWriter is pure Python (~7 µs a cell, half of it assembling the
    XML at close), so with many queries a second process (`python -m flows.listings`) writes half of
    the sites while this one writes the others; below `PARALLEL_QUERIES` its start-up costs more."""
    if (os.cpu_count() or 1) < 2 or len(jobs) < 2 or sum(len(q) for _, _, q in jobs) < PARALLEL_QUERIES:
        for path, state, queries in jobs:
            write_workbook(path, state, queries, generated_at)
        return
    mine, theirs = halves(jobs)
    # a fresh interpreter, not a fork: the caller holds DuckDB and Prefect threads
    with tempfile.TemporaryFile() as errors:
        child = subprocess.Popen([sys.executable, "-m", "flows.listings"], stdin=subprocess.PIPE, stderr=errors)
        assert child.stdin is not None
        with child.stdin:
            pickle.dump((theirs, generated_at), child.stdin)
        try:
            for path, state, queries in mine:
                write_workbook(path, state, queries, generated_at)
        finally:
            code = child.wait()
        if code != 0:
            errors.seek(0)
            raise RuntimeError(f"writing the listings of {', '.join(s.site_id for _, s, _ in theirs)} failed "
                               f"(exit status {code}):\n{errors.read().decode(errors='replace')[-3000:]}")


def halves(jobs: list[Job]) -> tuple[list[Job], list[Job]]:
    """Two shares of about the same number of queries: the largest first, each to the lighter share."""
    shares: tuple[list[Job], list[Job]] = ([], [])
    sizes = [0, 0]
    for job in sorted(jobs, key=lambda job: -len(job[2])):
        lighter = 0 if sizes[0] <= sizes[1] else 1
        shares[lighter].append(job)
        sizes[lighter] += len(job[2]) + 1
    return shares


def site_states(con: duckdb.DuckDBPyConnection) -> dict[str, SiteState]:
    """Every site of the warehouse (a source that delivered, or has open flags) and its current transfer."""
    randomization_sources = {s for s, src in load_registry().items() if not src.is_site}
    randomization_sources |= {s for (s,) in con.execute(
        "select distinct source from ops.transfers where format = 'iwrs'").fetchall()}
    current = dict(con.execute("""
        select source, max(transfer_id) from ops.transfers where status = 'LANDED' group by all""").fetchall())
    sites = {s for (s,) in con.execute("select distinct source from ops.transfers").fetchall()}
    sites |= {s for (s,) in con.execute("select distinct site_id from ops.flags where status = 'OPEN'").fetchall()}
    sites -= randomization_sources
    return {s: SiteState(s, current.get(s)) for s in sites}


def read_site_queries(con: duckdb.DuckDBPyConnection, sites: Iterable[str]) -> dict[str, list[Query]]:
    """The open queries of `sites`, from the published warehouse."""
    order = visit_order(con)
    unscheduled = len(order)
    wanted = sorted(set(sites))
    queries: dict[str, list[Query]] = defaultdict(list)
    cursor = con.execute(f"select * from ({QUARANTINE_SQL.format(visit=quarantine_visit(con))}) "
                         "where site_id in (select unnest($sites))", {"sites": wanted})
    for (site_id, subject, visit, dataset, source_file, source_row, column, value, reason, message, first_seen,
         transfer_id) in cursor.fetchall():
        queries[site_id].append(Query(
            site_id=site_id, subject=subject, visit=visit, kind=QUARANTINED, form=f"{dataset} ({source_file})",
            line=source_row, field=column, value=value, rule=reason, message=message, first_seen=first_seen,
            query_id=f"Q:{transfer_id}:{source_file}:{source_row}:{column or ''}",
            visit_order=order.get(visit, unscheduled) if visit else -1))
    flags = con.execute(f"{FLAGS_SQL} and site_id in (select unnest($sites))", {"sites": wanted}).fetchall()
    for flag_id, flag_type, site_id, subject, visit, dataset, detail, message, first_seen in flags:
        queries[site_id].append(Query(
            site_id=site_id, subject=subject, visit=visit, kind=FLAGGED, form=dataset or "", line=None,
            field=detail, value=None, rule=flag_type, message=message, first_seen=first_seen,
            query_id=f"F:{flag_id}", visit_order=order.get(visit, unscheduled) if visit else -1))
    return queries


def quarantine_visit(con: duckdb.DuckDBPyConnection) -> str:
    """The visit of a quarantined record: `ops.quarantine` names none (only file, line and column), so it
    is known where the quarantined column is the visit itself, or where a later warehouse records it."""
    known = "case when quarantine.column_name = 'visit' then quarantine.value end"
    # fetchall, not fetchone: a result left half-read blocks the caller's next query on `con`
    (has_visit,) = con.execute("""select count(*) from duckdb_columns() where schema_name = 'ops'
        and table_name = 'quarantine' and column_name = 'visit'""").fetchall()[0]
    return f"coalesce(quarantine.visit, {known})" if has_visit else known


def visit_order(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Visits in the schedule's order (the order of `schemas/visits.yaml`, kept as `ref.visits` rows)."""
    return {v: i for i, (v,) in enumerate(con.execute("select visit from ref.visits order by rowid").fetchall())}


def sort_queries(queries: Iterable[Query]) -> list[Query]:
    """By subject (queries without a subject last), visit in schedule order (subject-level first), then form."""
    return sorted(queries, key=lambda q: (q.subject is None, q.subject or "", q.visit_order, q.visit or "",
                                          q.kind, q.form, q.line or 0, q.field or "", q.query_id))


def show(text: str) -> str:
    """Text as a cell shows it: control characters visible as escapes (an XML cell cannot hold most of
    them, and a CR would silently become a line feed), and cut with a note past Excel's cell limit
    (counted in UTF-16 units, as Excel counts: a character outside the BMP takes two)."""
    if len(text) <= EXCEL_MAX_CELL // 2 and text.isprintable():
        return text  # the common case, a C-speed test: no control character (each is unprintable), short
    text = CONTROL.sub(lambda m: {"\t": "\\t", "\r": "\\r", "\n": "\\n"}.get(m.group(), f"\\x{ord(m.group()):02x}"),
                       text)
    if len(text) > EXCEL_MAX_CELL // 2 and utf16_len(text) > EXCEL_MAX_CELL:
        note = f" … [cut: {len(text):,} characters]"
        kept = text.encode("utf-16-le")[:2 * (EXCEL_MAX_CELL - len(note))]
        text = kept.decode("utf-16-le", errors="ignore") + note  # a pair cut in half is dropped
    return text


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def row_values(query: Query) -> list[str | int | None]:
    return [query.subject, query.visit, query.kind, query.form, query.line, query.field, query.value, query.rule,
            query.message, query.first_seen, None, query.query_id]


def column_widths(rows: Sequence[Sequence[str | int | None]]) -> list[float]:
    widths = [len(header) + 4 for header, _ in COLUMNS]
    for row in rows:
        for i, value in enumerate(row):
            if value is not None:
                widths[i] = max(widths[i], len(str(value)) + 2)
    return [min(width, cap) if header not in WRAPPED else cap
            for width, (header, cap) in zip(widths, COLUMNS, strict=True)]


def write_workbook(path: Path, state: SiteState, queries: list[Query], generated_at: datetime) -> None:
    """The site's workbook, written beside `path` and renamed over it (nothing is left behind if writing fails)."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        with xlsxwriter.Workbook(str(partial), WORKBOOK_OPTIONS) as wb:
            write_queries(wb, state, [row_values(q) for q in queries])
            write_about(wb, state, queries, generated_at)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)  # also when the rename failed: nothing half-done is left
        raise


def write_queries(wb: xlsxwriter.Workbook, state: SiteState, rows: list[list[str | int | None]]) -> None:
    """Sheet "Open queries": a frozen, filtered header, then one row per query, each cell typed explicitly."""
    ws = wb.add_worksheet(QUERIES_SHEET)
    # per column: its format (alignment, the shaded response), which an empty cell shows and a number
    # takes, and the format of its text cells (the same, with the quote prefix)
    styles = [{**(WRAP if name in WRAPPED else TOP), **(RESPONSE_FILL if name == "site response" else {})}
              for name, _ in COLUMNS]
    column_formats = [wb.add_format(style) for style in styles]
    text_formats = [wb.add_format({**style, **TEXT}) for style in styles]
    for col, width in enumerate(column_widths(rows)):
        ws.set_column(col, col, width, column_formats[col])
    ws.freeze_panes(1, 0)
    ws.autofilter(0, 0, max(len(rows), 1), len(COLUMNS) - 1)
    header = wb.add_format({**HEADER, **TEXT})
    for col, (name, _) in enumerate(COLUMNS):
        ws.write_string(0, col, name, header)
    # each cell typed explicitly, never write(), which guesses a type from the value (a leading "=" makes
    # a formula); an empty cell is not written: its column's format shows it
    write_string, write_number = ws.write_string, ws.write_number
    for r, row in enumerate(rows, start=1):
        for c, value in enumerate(row):
            if isinstance(value, int):
                write_number(r, c, value, column_formats[c])
            elif value:
                write_string(r, c, show(value), text_formats[c])
    if not rows:
        ws.write_string(1, 0, f"Nothing open for {state.site_id}: no open flags and no quarantined records "
                              "in its current transfer.", wb.add_format({"italic": True, **TEXT}))


def write_about(wb: xlsxwriter.Workbook, state: SiteState, queries: list[Query], generated_at: datetime) -> None:
    ws = wb.add_worksheet(ABOUT_SHEET)
    ws.set_column(0, 0, 26)
    ws.set_column(1, 1, 90)
    quarantined = sum(q.kind == QUARANTINED for q in queries)
    flagged = len(queries) - quarantined
    lines: list[tuple[str, str | int]] = [
        ("site", state.site_id),
        ("current transfer", state.current_transfer or "none landed yet"),
        ("generated at (UTC)", generated_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")),
        ("open queries", len(queries)),
        ("quarantined records", quarantined),
        ("open flags", flagged),
        ("status", "nothing open" if not queries else f"{len(queries)} open quer{'y' if len(queries) == 1 else 'ies'}"),
        ("", ""),
        ("what this is", "Quarantined records of the site's current transfer (they did not land: correct them "
                         "in the next delivery) and open flags on landed data (confirm or correct). "
                         f"Work through sheet '{QUERIES_SHEET}' and write your answer in 'site response'; "
                         "keep 'query id' as it is, data management matches answers by it."),
        ("line", "Line of the delivered file (CSV) or row of the sheet (workbook) that was quarantined."),
        ("first seen", "The transfer in which the problem was first seen."),
    ]
    label_format = wb.add_format({"bold": True, **TOP, **TEXT})
    text_format = wb.add_format({**WRAP, **TEXT})
    for r, (label, value) in enumerate(lines):
        write_text(ws, r, 0, label, label_format)
        if isinstance(value, int):
            ws.write_number(r, 1, value)
        else:
            write_text(ws, r, 1, value, text_format)


def write_text(ws: Worksheet, row: int, col: int, value: str, cell_format: Format) -> None:
    """A cell that is text whatever it starts with: never a formula (an empty text is an empty cell)."""
    if value:
        ws.write_string(row, col, show(value), cell_format)
    else:
        ws.write_blank(row, col, None, cell_format)


if __name__ == "__main__":
    # the second writer of write_workbooks: its share of the workbooks, pickled on stdin by the first
    share, generated = pickle.load(sys.stdin.buffer)
    for share_path, share_state, share_queries in share:
        write_workbook(share_path, share_state, share_queries, generated)
