"""The ingest of tiny hand-made transfers, end to end without Prefect (DTS §2.1, §6, §7)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from flows import ingest as ingest_module
from flows import ingest_transfers as ingest_transfers_module
from flows import land as land_module
from flows import read as read_module
from flows import warehouse as warehouse_module
from flows.ingest import WarehouseBusy, writer_lock
from flows.ingest_transfers import run_ingest
from flows.warehouse import connect, layout_fingerprint
from tests.helpers import csv_bytes, dataset_file, dts_csv_files, header_of, record_text, source, write_transfer

T1, T2, T3 = "20260601T020000Z", "20260701T020000Z", "20260801T020000Z"


def query(warehouse: Path, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
    con = connect(warehouse, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def s01_files(**datasets: list[dict[str, str]]) -> dict[str, bytes]:
    """The five S01 files: a good record each, with the given datasets' rows replaced."""
    src = source("S01")
    files = dts_csv_files(src)
    for name, rows in datasets.items():
        files[{"assessment_items": "assessments.csv"}.get(name, f"{name}.csv")] = dataset_file(name, src, rows)
    return files


def statuses(warehouse: Path) -> dict[str, str]:
    return dict(query(warehouse, "select transfer_id, status from ops.transfers where source = 'S01'"))


def test_a_transfer_lands_whole_with_lineage_and_every_row_accounted_for(tmp_path: Path) -> None:
    src = source("S01")
    vitals = [record_text("vitals", src), record_text("vitals", src, timepoint="T40", sbp="400"),
              record_text("vitals", src, timepoint="T120"), record_text("vitals", src, timepoint="T120")]
    write_transfer(tmp_path / "inbox", "S01", T1, s01_files(vitals=vitals))
    summary = run_ingest(tmp_path / "inbox", tmp_path / "wh")
    assert [r.status for r in summary.receipts] == ["LANDED"]
    loads = query(tmp_path / "wh", "select dataset, delivered, landed, quarantined, duplicates_collapsed "
                                   "from ops.loads order by dataset")
    assert ("vitals", 4, 2, 1, 1) in loads
    assert all(delivered == landed + quarantined + collapsed for _, delivered, landed, quarantined, collapsed in loads)
    landed = query(tmp_path / "wh", "select timepoint, transfer_id, source_file, source_row from core.vitals "
                                    "order by source_row")
    assert landed == [("PRE", T1, "vitals.csv", 2), ("T120", T1, "vitals.csv", 4)]


def test_a_quarantine_record_names_file_line_column_value_and_reason(tmp_path: Path) -> None:
    src = source("S01")
    participants = [record_text("participants", src, weight_kg="7o.5")]
    write_transfer(tmp_path / "inbox", "S01", T1, s01_files(participants=participants))
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    rows = query(tmp_path / "wh", "select dataset, source_file, source_row, column_name, value, reason_code, message "
                                  "from ops.quarantine order by dataset")
    assert rows[0][:6] == ("adverse_events", "adverse_events.csv", 2, "subject_id", "S01-0001", "UNKNOWN_SUBJECT")
    participant = next(r for r in rows if r[0] == "participants")
    assert participant[:6] == ("participants", "participants.csv", 2, "weight_kg", "7o.5", "UNPARSEABLE")
    assert participant[6] == "participants.csv line 2, column weight_kg: '7o.5' cannot be read as a decimal"
    # a participant who does not land takes every record of theirs along (DTS §6)
    assert {r[5] for r in rows if r[0] != "participants"} == {"UNKNOWN_SUBJECT"}


def test_a_record_keeps_the_first_reason_in_dts_order(tmp_path: Path) -> None:
    src = source("S01")
    vitals = [record_text("vitals", src, sbp="abc", dbp="400"),        # UNPARSEABLE before OUT_OF_RANGE
              record_text("vitals", src, timepoint="T40", visit="W1", sbp="120", dbp="130")]  # INVALID_VISIT first
    write_transfer(tmp_path / "inbox", "S01", T1, s01_files(vitals=vitals))
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    assert query(tmp_path / "wh", "select source_row, column_name, reason_code from ops.quarantine "
                                  "where dataset = 'vitals' order by 1") == [
        (2, "sbp", "UNPARSEABLE"), (3, "visit", "INVALID_VISIT")]


def test_a_conflicting_duplicate_outranks_the_reasons_after_it_and_yields_to_those_before(tmp_path: Path) -> None:
    src = source("S01")
    # one key, three different records: dbp above sbp alone is INCONSISTENT, after
    # CONFLICTING_DUPLICATE in DTS §6; an sbp of 400 is OUT_OF_RANGE, before it
    vitals = [record_text("vitals", src, sbp="120", dbp="130"), record_text("vitals", src, sbp="120", dbp="80"),
              record_text("vitals", src, sbp="400", dbp="80")]
    write_transfer(tmp_path / "inbox", "S01", T1, s01_files(vitals=vitals))
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    assert query(tmp_path / "wh", "select source_row, column_name, reason_code, message from ops.quarantine "
                                  "where dataset = 'vitals' order by 1") == [
        (2, "sbp", "CONFLICTING_DUPLICATE",
         "vitals.csv line 2, column sbp: 3 records share this key but differ (sbp is one difference)"),
        (3, "sbp", "CONFLICTING_DUPLICATE",
         "vitals.csv line 3, column sbp: 3 records share this key but differ (sbp is one difference)"),
        (4, "sbp", "OUT_OF_RANGE",
         "vitals.csv line 4, column sbp: '400' is outside the allowed values: in_range(50, 300)")]


def test_conflicting_duplicates_are_all_quarantined_and_identical_ones_collapse(tmp_path: Path) -> None:
    src = source("S01")
    sessions = [record_text("sessions", src), record_text("sessions", src),
                record_text("sessions", src, duration_min="90")]
    write_transfer(tmp_path / "inbox", "S01", T1, s01_files(sessions=sessions))
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    assert query(tmp_path / "wh", "select source_row, column_name, reason_code from ops.quarantine "
                                  "where dataset = 'sessions' order by 1") == [
        (2, "duration_min", "CONFLICTING_DUPLICATE"), (4, "duration_min", "CONFLICTING_DUPLICATE")]
    assert query(tmp_path / "wh", "select delivered, landed, quarantined, duplicates_collapsed from ops.loads "
                                  "where dataset = 'sessions'") == [(3, 0, 2, 1)]


def test_identical_records_collapse_whatever_their_key_and_the_typed_key_decides_conflicts(tmp_path: Path) -> None:
    src = source("S01")

    def item(**changes: str) -> dict[str, str]:
        return record_text("assessment_items", src, **changes)

    # item 1 and 01 are one key, different records; a missing or unreadable key does not keep
    # identical records apart, and neither is a conflict
    items = [item(), item(item="01"), item(item=""), item(item=""), item(item="x1"), item(item="x1")]
    write_transfer(tmp_path / "inbox", "S01", T1, s01_files(assessment_items=items))
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    assert query(tmp_path / "wh", "select source_row, column_name, value, reason_code from ops.quarantine "
                                  "where dataset = 'assessment_items' order by 1") == [
        (2, "item", "1", "CONFLICTING_DUPLICATE"), (3, "item", "01", "CONFLICTING_DUPLICATE"),
        (4, "item", None, "MISSING_REQUIRED"), (6, "item", "x1", "UNPARSEABLE")]
    assert query(tmp_path / "wh", "select delivered, landed, quarantined, duplicates_collapsed from ops.loads "
                                  "where dataset = 'assessment_items'") == [(6, 0, 4, 2)]


def test_a_file_streamed_lands_and_quarantines_as_the_same_file_read_whole(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # read whole, a file is an Arrow table DuckDB scans in place; streamed (over WHOLE_FILE_BYTES),
    # a table of its own: validation and landing must not tell them apart
    src = source("S01")

    def item(**changes: str) -> dict[str, str]:
        return record_text("assessment_items", src, **changes)

    items = [item(), item(), item(item="2", score="x"), item(item="3", subject_id="S01-0999"),
             item(item="4"), item(item="4", score="1"), item(item="5", score="99")]
    files = s01_files(assessment_items=items)
    seen = []
    for way in ("whole", "streamed"):
        if way == "streamed":
            monkeypatch.setattr(read_module, "WHOLE_FILE_BYTES", -1)
        write_transfer(tmp_path / way / "inbox", "S01", T1, files)
        run_ingest(tmp_path / way / "inbox", tmp_path / way / "wh")
        wh = tmp_path / way / "wh"
        seen.append((query(wh, "select * exclude (run_id) from ops.quarantine order by all"),
                     query(wh, "select * exclude (run_id) from ops.loads order by all"),
                     query(wh, "select * from core.assessment_items order by all")))
    assert seen[0] == seen[1]
    assert query(tmp_path / "streamed" / "wh", "select reason_code, count(*) from ops.quarantine "
                                               "where dataset = 'assessment_items' group by 1 order by 1") == [
        ("CONFLICTING_DUPLICATE", 2), ("OUT_OF_RANGE", 1), ("UNKNOWN_SUBJECT", 1), ("UNPARSEABLE", 1)]
    assert query(tmp_path / "streamed" / "wh", "select delivered, landed, quarantined, duplicates_collapsed "
                                               "from ops.loads where dataset = 'assessment_items'") == [(7, 1, 5, 1)]


def test_weight_in_pounds_lands_in_kilograms(tmp_path: Path) -> None:
    src = source("S01")
    header = [("weight_lb" if c == "weight_kg" else c) for c in header_of("participants")]
    row = record_text("participants", src)
    row["weight_lb"] = "154.0"
    files = s01_files()
    files["participants.csv"] = ",".join(header).encode() + b"\n" + ",".join(
        row[c] for c in header).encode() + b"\n"
    write_transfer(tmp_path / "inbox", "S01", T1, files)
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    (weight,), = query(tmp_path / "wh", "select weight_kg from core.participants")
    assert weight == pytest.approx(154.0 * 0.45359237)


def test_a_weight_in_pounds_out_of_range_is_quarantined_as_delivered(tmp_path: Path) -> None:
    src = source("S01")
    header = [("weight_lb" if c == "weight_kg" else c) for c in header_of("participants")]
    row = record_text("participants", src) | {"weight_lb": "900"}  # 408 kg
    files = s01_files()
    files["participants.csv"] = csv_bytes(header, [row], src)
    write_transfer(tmp_path / "inbox", "S01", T1, files)
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    assert query(tmp_path / "wh", "select column_name, value, reason_code from ops.quarantine "
                                  "where dataset = 'participants'") == [("weight_lb", "900", "OUT_OF_RANGE")]


def test_personal_data_columns_never_land_and_the_receipt_warns(tmp_path: Path) -> None:
    src = source("S01")
    header = [*header_of("participants"), "initials", "date_of_birth"]
    row = record_text("participants", src) | {"initials": "Q.X.Z.", "date_of_birth": "1980-04-17"}
    files = s01_files()
    files["participants.csv"] = (",".join(header) + "\n" + ",".join(row[c] for c in header) + "\n").encode()
    write_transfer(tmp_path / "inbox", "S01", T1, files)
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    (warnings,), = query(tmp_path / "wh", "select warnings from ops.transfers")
    assert any("personal data" in w and "initials" in w for w in json.loads(warnings))
    for path in (tmp_path / "wh").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"Q.X.Z." not in data and b"1980-04-17" not in data, path


def test_a_rejected_transfer_leaves_the_previous_state_and_does_not_block_the_next(tmp_path: Path) -> None:
    inbox, wh = tmp_path / "inbox", tmp_path / "wh"
    write_transfer(inbox, "S01", T1)
    run_ingest(inbox, wh)
    bad = write_transfer(inbox, "S01", T2, s01_files())
    (bad.path / "vitals.csv").write_bytes((bad.path / "vitals.csv").read_bytes() + b"\n")  # checksum differs
    summary = run_ingest(inbox, wh)
    assert [(r.transfer_id, r.status) for r in summary.receipts if r.status != "SKIPPED"] == [(T2, "REJECTED")]
    assert "vitals.csv: checksum differs" in summary.receipts[-1].reason
    assert query(wh, "select distinct transfer_id from core.participants") == [(T1,)]
    write_transfer(inbox, "S01", T3)
    run_ingest(inbox, wh)
    assert statuses(wh) == {T1: "LANDED", T2: "REJECTED", T3: "LANDED"}
    assert query(wh, "select distinct transfer_id from core.participants") == [(T3,)]


def test_a_pending_transfer_is_picked_up_once_its_manifest_arrives(tmp_path: Path) -> None:
    inbox, wh = tmp_path / "inbox", tmp_path / "wh"
    ref = write_transfer(inbox, "S01", T1)
    manifest = (ref.path / "manifest.json").read_bytes()
    (ref.path / "manifest.json").unlink()
    run_ingest(inbox, wh)
    assert statuses(wh) == {T1: "PENDING"}
    (ref.path / "manifest.json").write_bytes(manifest)
    run_ingest(inbox, wh)
    assert statuses(wh) == {T1: "LANDED"}


def test_a_late_transfer_is_recorded_and_not_landed(tmp_path: Path) -> None:
    inbox, wh = tmp_path / "inbox", tmp_path / "wh"
    write_transfer(inbox, "S01", T2)
    run_ingest(inbox, wh)
    write_transfer(inbox, "S01", T1)
    run_ingest(inbox, wh)
    assert statuses(wh) == {T1: "LATE", T2: "LANDED"}
    assert query(wh, "select distinct transfer_id from core.participants") == [(T2,)]


@pytest.mark.parametrize(("folder", "changes", "reason"), [
    ("20260230T000000Z", {"transfer_id": "20260230T000000Z"}, "not a UTC time"),  # no 30 February
    (None, {"study": "OTHER-STUDY"}, "names study"),
])
def test_an_older_transfer_of_another_study_or_a_bad_id_is_rejected_not_late(
        tmp_path: Path, folder: str | None, changes: dict[str, str], reason: str) -> None:
    inbox, wh = tmp_path / "inbox", tmp_path / "wh"
    write_transfer(inbox, "S01", T2)
    run_ingest(inbox, wh)
    write_transfer(inbox, "S01", T1, folder=folder, manifest_changes=changes)
    run_ingest(inbox, wh)
    rejected = query(wh, "select status, reason from ops.transfers where transfer_id <> ?", [T2])
    assert [status for status, _ in rejected] == ["REJECTED"] and reason in rejected[0][1]


def test_a_second_run_with_nothing_new_changes_nothing(tmp_path: Path) -> None:
    inbox, wh = tmp_path / "inbox", tmp_path / "wh"
    write_transfer(inbox, "S01", T1)
    run_ingest(inbox, wh)
    before = query(wh, "select count(*) from ops.quarantine union all select count(*) from ops.loads "
                       "union all select count(*) from core.assessment_items union all select count(*) from ops.flags")
    parquet = {p: p.stat().st_mtime_ns for p in (wh / "parquet").rglob("*.parquet")}
    summary = run_ingest(inbox, wh)
    assert [r.status for r in summary.receipts] == ["SKIPPED"]
    assert query(wh, "select count(*) from ops.quarantine union all select count(*) from ops.loads "
                     "union all select count(*) from core.assessment_items union all select count(*) from ops.flags"
                 ) == before
    assert {p: p.stat().st_mtime_ns for p in (wh / "parquet").rglob("*.parquet")} == parquet


def test_a_run_with_nothing_new_needs_no_dataset_model_and_records_its_layout(tmp_path: Path) -> None:
    inbox, wh = tmp_path / "inbox", tmp_path / "wh"
    write_transfer(inbox, "S01", T1)
    run_ingest(inbox, wh, expectations=False)
    dictionary = (wh / "docs" / "dictionary.md").read_text(encoding="utf-8")
    # a fresh interpreter: this one imported the models long ago
    script = ("import json, sys; from pathlib import Path; from flows.ingest_transfers import run_ingest; "
              f"s = run_ingest(Path({str(inbox)!r}), Path({str(wh)!r})); "
              "print(json.dumps([[r.status for r in s.receipts], s.run_id, "
              "[m for m in ('pandera', 'polars', 'pandas') if m in sys.modules]]))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    receipts, run_id, imported = json.loads(done.stdout.strip().splitlines()[-1])
    assert (receipts, imported) == (["SKIPPED"], [])
    assert query(wh, "select status, layout from ops.runs where run_id = ?", [run_id]) == [
        ("COMPLETED", layout_fingerprint())]
    assert (wh / "docs" / "dictionary.md").read_text(encoding="utf-8") == dictionary


def test_a_warehouse_is_initialised_when_a_transfer_lands_or_the_layout_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, wh = tmp_path / "inbox", tmp_path / "wh"
    initialised: list[str] = []
    real_init = ingest_transfers_module.init_warehouse
    monkeypatch.setattr(ingest_transfers_module, "init_warehouse",
                        lambda con: (initialised.append("init"), real_init(con))[1])
    write_transfer(inbox, "S01", T1)
    run_ingest(inbox, wh, expectations=False)  # a new warehouse
    run_ingest(inbox, wh, expectations=False)  # nothing new, same layout
    write_transfer(inbox, "S01", T2)
    run_ingest(inbox, wh, expectations=False)  # a transfer to land
    assert initialised == ["init", "init"]
    for module in (warehouse_module, ingest_module):
        monkeypatch.setattr(module, "layout_fingerprint", lambda: "another layout")
    run_ingest(inbox, wh, expectations=False)  # nothing new, but the code's layout changed
    assert initialised == ["init", "init", "init"]
    assert query(wh, "select layout from ops.runs order by started_at desc limit 1") == [("another layout",)]


def test_a_processed_transfer_holds_only_what_lands_and_what_is_quarantined(tmp_path: Path) -> None:
    from flows.process import process_transfer
    from flows.verify import verify_transfer

    ref = write_transfer(tmp_path / "inbox", "S01", T1)
    with duckdb.connect() as con:
        processed = process_transfer(con, verify_transfer(ref, source("S01")))
        temp = {name for (name,) in con.execute("select table_name from duckdb_tables() where temporary")
                .fetchall()}
        views = {name for (name,) in con.execute("select view_name from duckdb_views() where temporary")
                 .fetchall()}
        landing = con.execute("select count(*) from valid_assessment_items").fetchone()[0]
    datasets = [load.dataset for load in processed.loads]
    # the text and the records sharing a key are gone before landing: one copy of the records,
    # checked, of which what lands is a view
    assert temp == {f"{kind}_{ds}" for ds in datasets for kind in ("checked", "quarantine")}
    assert {f"valid_{ds}" for ds in datasets} <= views
    assert landing == next(load.landed for load in processed.loads if load.dataset == "assessment_items") > 0


def test_a_failure_while_landing_rolls_the_whole_transfer_back(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    inbox, wh = tmp_path / "inbox", tmp_path / "wh"
    write_transfer(inbox, "S01", T1)

    def broken(*_: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(land_module, "merge_flags", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        run_ingest(inbox, wh)
    assert query(wh, "select count(*) from core.participants union all select count(*) from ops.quarantine "
                     "union all select count(*) from ops.transfers") == [(0,), (0,), (0,)]
    assert query(wh, "select status from ops.runs") == [("FAILED",)]
    monkeypatch.undo()
    run_ingest(inbox, wh)
    assert statuses(wh) == {T1: "LANDED"}


def test_parquet_holds_each_sites_core_rows_partitioned_by_site(tmp_path: Path) -> None:
    inbox, wh = tmp_path / "inbox", tmp_path / "wh"
    write_transfer(inbox, "S01", T1)
    write_transfer(inbox, "S02", T1)
    run_ingest(inbox, wh)
    rows = duckdb.sql(f"select site_id, subject_id from read_parquet('{wh}/parquet/core/participants/*/*.parquet', "
                      "hive_partitioning=true) order by 1").fetchall()
    assert rows == [("S01", "S01-0001"), ("S02", "S02-0001")]


def test_one_writer_per_warehouse(tmp_path: Path) -> None:
    write_transfer(tmp_path / "inbox", "S01", T1)
    with writer_lock(tmp_path / "wh"), pytest.raises(WarehouseBusy, match="another ingest is writing"):
        run_ingest(tmp_path / "inbox", tmp_path / "wh")


def test_a_value_spanning_lines_keeps_every_later_record_on_its_exact_line(tmp_path: Path) -> None:
    src = source("S01")
    events = [record_text("adverse_events", src, term="nausea\nand vomiting"),
              record_text("adverse_events", src, ae_id="AE002", severity="EXTREME")]
    write_transfer(tmp_path / "inbox", "S01", T1, s01_files(adverse_events=events))
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    assert query(tmp_path / "wh", "select term, source_row from core.adverse_events") == [("nausea\nand vomiting", 2)]
    assert query(tmp_path / "wh", "select source_row, column_name, reason_code from ops.quarantine") == [
        (4, "severity", "OUT_OF_RANGE")]


def transfer_rows(warehouse: Path) -> list[tuple[object, ...]]:
    return query(warehouse, "select transfer_id, status from ops.transfers order by recorded_at")


def test_an_identical_re_delivery_is_a_duplicate_recorded_once(tmp_path: Path) -> None:
    inbox, wh = tmp_path / "inbox", tmp_path / "wh"
    ref = write_transfer(inbox, "S01", T1)
    run_ingest(inbox, wh)
    manifest = json.loads((ref.path / "manifest.json").read_text())
    (ref.path / "manifest.json").write_text(json.dumps(manifest))  # the same files, uploaded again
    summary = run_ingest(inbox, wh)
    assert [(r.status, r.reason) for r in summary.receipts] == [
        ("DUPLICATE", "identical re-delivery of a transfer already LANDED: nothing to do")]
    assert run_ingest(inbox, wh).receipts[0].status == "SKIPPED"
    assert transfer_rows(wh) == [(T1, "LANDED"), (T1, "DUPLICATE")]


def test_a_conflicting_re_delivery_is_rejected_and_the_first_delivery_stands(tmp_path: Path) -> None:
    inbox, wh = tmp_path / "inbox", tmp_path / "wh"
    write_transfer(inbox, "S01", T1)
    run_ingest(inbox, wh)
    src = source("S01")
    write_transfer(inbox, "S01", T1, s01_files(participants=[record_text("participants", src, sex="M")]))
    summary = run_ingest(inbox, wh)
    assert summary.receipts[0].status == "REJECTED"
    assert "conflicting re-delivery" in summary.receipts[0].reason
    assert transfer_rows(wh) == [(T1, "LANDED"), (T1, "REJECTED")]
    assert query(wh, "select sex from core.participants") == [("F",)]
    assert run_ingest(inbox, wh).receipts[0].status == "SKIPPED"


def test_a_second_snapshot_logs_exactly_its_updates_deletes_and_inserts(tmp_path: Path) -> None:
    src = source("S01")
    inbox, wh = tmp_path / "inbox", tmp_path / "wh"
    first = [record_text("vitals", src), record_text("vitals", src, timepoint="T40", sbp="130")]
    write_transfer(inbox, "S01", T1, s01_files(vitals=first))
    run_ingest(inbox, wh)
    assert query(wh, "select count(*) from ops.changes") == [(0,)]  # nothing is logged for a first snapshot
    second = [record_text("vitals", src, sbp="125"), record_text("vitals", src, timepoint="T120")]
    write_transfer(inbox, "S01", T2, s01_files(vitals=second))
    run_ingest(inbox, wh)
    assert query(wh, "select dataset, record_key, column_name, old_value, new_value, change_type, old_transfer_id, "
                     "new_transfer_id from ops.changes order by change_type, record_key") == [
        ("vitals", "S01-0001|D1|T40", None, None, None, "DELETE", T1, T2),
        ("vitals", "S01-0001|D1|T120", None, None, None, "INSERT", None, T2),
        ("vitals", "S01-0001|D1|PRE", "sbp", "120", "125", "UPDATE", T1, T2),
    ]
