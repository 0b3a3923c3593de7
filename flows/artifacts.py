"""What a run shows in the Prefect UI: the receipt of every transfer, the quarantine by reason,
the flags it opened and closed, and its new safety flags first, for the medical monitor.

Prefect's database holds run metadata, never trial data: artifacts carry counts, statuses and
references (flag id, site, subject code, visit, what the flag is about), never a measured value
or a verbatim term. The values behind a flag are one query away in the warehouse
(`marts.safety_listing`, `ops.flags`), which the markdown says.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from flows.ingest import RunSummary
from flows.settings import DUCKDB_CONFIG
from flows.warehouse import DATABASE

SAFETY_FLAGS = ("SAFETY_SAE", "SAFETY_SUICIDALITY", "SAFETY_VITALS")
ABOUT = {"SAFETY_SAE": "serious adverse event", "SAFETY_SUICIDALITY": "suicidality item",
         "SAFETY_VITALS": "vital signs beyond threshold"}


@dataclass(frozen=True)
class FlagChange:
    change: str  # NEW or CLOSED
    flag_id: str
    flag_type: str
    site_id: str
    subject_id: str
    visit: str | None
    detail: str | None


@dataclass
class RunArtifacts:
    receipts: list[dict[str, object]] = field(default_factory=list)
    quarantine: list[dict[str, object]] = field(default_factory=list)
    flags: list[dict[str, object]] = field(default_factory=list)
    safety_markdown: str = ""


def flag_changes(con: duckdb.DuckDBPyConnection, summary: RunSummary) -> list[FlagChange]:
    """Flags first seen, or closed, by a transfer this run landed."""
    landed = [(r.source, r.transfer_id) for r in summary.receipts if r.status == "LANDED"]
    if not landed:
        return []
    con.execute("create or replace temp table run_landed (site_id varchar, transfer_id varchar)")
    con.executemany("insert into run_landed values (?, ?)", landed)
    rows = con.execute("""
        select 'NEW', flag_id, flag_type, site_id, subject_id, visit, detail
        from ops.flags join run_landed using (site_id)
        where flags.first_seen_transfer = run_landed.transfer_id and flags.status = 'OPEN'
        union all
        select 'CLOSED', flag_id, flag_type, site_id, subject_id, visit, detail
        from ops.flags join run_landed using (site_id)
        where flags.closed_transfer = run_landed.transfer_id
        order by 1 desc, 3, 4, 5, 6""").fetchall()
    return [FlagChange(*row) for row in rows]


def receipt_rows(summary: RunSummary) -> list[dict[str, object]]:
    """One row per transfer folder the run decided something about (not the ones already done)."""
    rows = []
    for receipt in summary.receipts:
        if receipt.status == "SKIPPED":
            continue
        personal = [w for w in receipt.warnings if w.startswith("personal data")]
        rows.append({
            "source": receipt.source, "transfer": receipt.transfer_id, "status": receipt.status,
            "files": len(receipt.loads), "delivered": sum(x.delivered for x in receipt.loads),
            "landed": sum(x.landed for x in receipt.loads),
            "quarantined": sum(x.quarantined for x in receipt.loads),
            "duplicates collapsed": sum(x.duplicates_collapsed for x in receipt.loads),
            "personal data": "; ".join(personal) if personal else "none",
            "reason": receipt.reason or "",
        })
    return rows


def quarantine_rows(summary: RunSummary) -> list[dict[str, object]]:
    return [{"source": receipt.source, "transfer": receipt.transfer_id, "dataset": load.dataset,
             "reason": reason, "records": count}
            for receipt, load in summary.loads for reason, count in sorted(load.quarantined_by_reason.items())]


def flag_rows(changes: Iterable[FlagChange]) -> list[dict[str, object]]:
    """New and closed flags counted by site and type."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for change in changes:
        entry = counts.setdefault((change.site_id, change.flag_type), {"NEW": 0, "CLOSED": 0})
        entry[change.change] += 1
    return [{"site": site, "flag": flag_type, "new": c["NEW"], "closed": c["CLOSED"]}
            for (site, flag_type), c in sorted(counts.items())]


def safety_markdown(changes: Iterable[FlagChange], run_id: str) -> str:
    new = [c for c in changes if c.change == "NEW" and c.flag_type in SAFETY_FLAGS]
    if not new:
        return f"## New safety flags\n\nNone in run `{run_id}`.\n"
    lines = [f"## New safety flags: {len(new)}", "",
             "Opened by the transfers of this run, for the medical monitor. The values behind each flag are in "
             "the warehouse: `kaptrial sql \"select * from marts.safety_listing where status = 'OPEN'\"`.", "",
             "| flag | site | subject | visit | about | flag id |", "|---|---|---|---|---|---|"]
    order = {flag: i for i, flag in enumerate(SAFETY_FLAGS)}
    for c in sorted(new, key=lambda c: (order[c.flag_type], c.site_id, c.subject_id, c.visit or "")):
        lines.append(f"| **{c.flag_type}** | {cell(c.site_id)} | {cell(c.subject_id)} | {cell(c.visit or '–')} | "
                     f"{ABOUT[c.flag_type]} ({cell(c.detail or '–')}) | `{c.flag_id}` |")
    return "\n".join(lines) + "\n"


def cell(text: str) -> str:
    """A markdown table cell: a delivered `|` (a detail such as `MADRS|10`) must not split it."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def run_artifacts(summary: RunSummary, changes: list[FlagChange]) -> RunArtifacts:
    return RunArtifacts(receipt_rows(summary), quarantine_rows(summary), flag_rows(changes),
                        safety_markdown(changes, summary.run_id))


def collect(summary: RunSummary, warehouse: Path) -> RunArtifacts:
    """The artifacts of a run, read from the warehouse it published."""
    path = warehouse / DATABASE
    if not path.exists():
        return run_artifacts(summary, [])
    with duckdb.connect(str(path), read_only=True, config=dict(DUCKDB_CONFIG)) as con:
        return run_artifacts(summary, flag_changes(con, summary))


def create_artifacts(artifacts: RunArtifacts) -> None:
    """Attach the artifacts to the current flow run."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    create_table_artifact(key="transfer-receipts", table=artifacts.receipts or [{"transfers": "none new"}],
                          description="Every transfer this run decided something about, with its rows.")
    create_table_artifact(key="quarantine-by-reason", table=artifacts.quarantine or [{"quarantined": 0}],
                          description="Records held back, by source, dataset and DTS §6 reason.")
    create_table_artifact(key="flags-new-and-closed", table=artifacts.flags or [{"flags": "none new or closed"}],
                          description="Flags opened and closed by this run's transfers, by site and type.")
    create_markdown_artifact(key="new-safety-flags", markdown=artifacts.safety_markdown,
                             description="New safety flags (SAE, suicidality, vital signs) since the previous run.")
