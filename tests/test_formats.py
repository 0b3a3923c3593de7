"""Sources by configuration (DTS §2): a new site needs only a registry entry, and one trial
delivered as dts-csv, dts-xlsx or redcap lands the same core rows apart from lineage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from flows.generate import generate_trial
from flows.ingest_transfers import run_ingest
from flows.settings import SCHEMAS_DIR

LINEAGE = {"transfer_id", "source_file", "source_row", "form_status", "delivered_total"}
# weights delivered in pounds come back as kg to within the pound's rounding
APPROXIMATE = {"weight_kg", "dose_mg_per_kg"}
TABLES = ("participants", "sessions", "vitals", "assessment_items", "assessments", "adverse_events")


def registry_with(tmp_path: Path, entries: dict[str, dict[str, Any]]) -> Path:
    document = yaml.safe_load((SCHEMAS_DIR / "sources.yaml").read_text(encoding="utf-8"))
    document["sources"] |= entries
    path = tmp_path / "sources.yaml"
    tmp_path.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    return path


def test_a_new_site_joins_with_a_registry_entry_and_no_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    oslo = {"name": "Oslo", "format": "dts-csv", "delimiter": "|", "decimal": ",", "encoding": "utf-8",
            "date_format": "%d.%m.%Y", "missing_values": ["", "NA"], "timezone": "Europe/Oslo"}
    monkeypatch.setenv("KAP_SOURCES", str(registry_with(tmp_path, {"S07": oslo})))
    report = generate_trial(tmp_path / "inbox", seed=3, participants_per_site=8, sources={"S07": oslo})
    summary = run_ingest(tmp_path / "inbox", tmp_path / "wh")
    assert [(r.source, r.status) for r in summary.receipts] == [("S07", "LANDED")]
    con = duckdb.connect(str(tmp_path / "wh" / "kap.duckdb"), read_only=True)
    got = set(con.execute("select dataset, source_row, reason_code from ops.quarantine").fetchall())
    assert got == {(q["dataset"], q["source_row"], q["reason_code"]) for q in report.expected_quarantine}
    assert con.execute("select distinct site_id from core.participants").fetchall() == [("S07",)]
    con.close()


def landed_rows(warehouse: Path) -> dict[str, tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """Per core table: its rows without lineage (exact columns), and beside them the approximate ones."""
    con = duckdb.connect(str(warehouse / "kap.duckdb"), read_only=True)
    rows = {}
    for table in TABLES:
        columns = [c for (c,) in con.execute(
            "select column_name from information_schema.columns where table_schema = 'core' and table_name = ? "
            "order by ordinal_position", [table]).fetchall() if c not in LINEAGE]
        exact = ", ".join(f"{c}::varchar" for c in columns if c not in APPROXIMATE)
        approximate = ", ".join([c for c in columns if c in APPROXIMATE] or ["null"])
        fetched = con.execute(f"select [{exact}]::varchar, {approximate} from core.{table} order by 1").fetchall()
        rows[table] = ([r[:1] for r in fetched], [r[1:] for r in fetched])
    con.close()
    return rows


def same_rows(got: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]],
              want: tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]) -> bool:
    if got[0] != want[0]:
        return False
    return all(g == pytest.approx(w, abs=0.05) for g_row, w_row in zip(got[1], want[1], strict=True)
               for g, w in zip(g_row, w_row, strict=True) if g is not None or w is not None)


def test_one_trial_in_every_format_lands_the_same_core_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = yaml.safe_load((SCHEMAS_DIR / "sources.yaml").read_text(encoding="utf-8"))["sources"]
    landed = {}
    for fmt, template in (("dts-csv", "S02"), ("dts-xlsx", "S06"), ("redcap", "S03")):
        # S01 delivering the way the template site does: same people, same visits, same scores
        settings = dict(registry[template], name="Boston", timezone=registry["S01"]["timezone"])
        root = tmp_path / fmt
        monkeypatch.setenv("KAP_SOURCES", str(registry_with(root, {"S01": settings})))
        generate_trial(root / "inbox", seed=11, participants_per_site=6, defect_rate=0.0, sources={"S01": settings})
        summary = run_ingest(root / "inbox", root / "wh")
        assert [(r.source, r.status) for r in summary.receipts] == [("S01", "LANDED")], summary.receipts
        landed[fmt] = landed_rows(root / "wh")
    assert all(landed["dts-csv"][table][0] for table in TABLES)
    for table in TABLES:
        assert same_rows(landed["dts-xlsx"][table], landed["dts-csv"][table]), table
        assert same_rows(landed["redcap"][table], landed["dts-csv"][table]), table
