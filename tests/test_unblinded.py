"""The IWRS randomization and the blind (DTS §5): the arm lands only in the encrypted unblinded
store; the blinded warehouse, its Parquet and the command line without the key never show it."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from flows.cli import app
from flows.ingest_transfers import run_ingest
from flows.unblinded import KEY_ENV, STORE, UnblindedKeyError, decrypt, encrypt, read_store
from tests.helpers import csv_bytes, source, write_transfer

KEY = "correct horse battery staple"
T1, T2 = "20260601T030000Z", "20260701T030000Z"
HEADER = ["subject_id", "site_id", "arm", "randomized_on", "stratum"]
ARMS = ("KAP", "KET", "ACP")


def randomization(*rows: tuple[str, str, str, str, str]) -> dict[str, bytes]:
    return {"randomization.csv": csv_bytes(HEADER, [list(r) for r in rows], source("IWRS"))}


LIST_1 = randomization(("S01-0001", "S01", "KAP", "2026-01-12", "NO_ECT"),
                       ("S01-0002", "S01", "ACP", "2026-01-13", "ECT"),
                       ("S02-0001", "S01", "KET", "2026-01-14", "ECT"))  # site_id is not the subject's site


def arm_values(warehouse: Path) -> list[str]:
    """Every place in kap.duckdb or parquet/ where a text value is an arm code."""
    found = []
    con = duckdb.connect(str(warehouse / "kap.duckdb"), read_only=True)
    columns = con.execute("select table_schema, table_name, column_name from information_schema.columns "
                          "where data_type = 'VARCHAR'").fetchall()
    for schema, table, column in columns:
        n = con.execute(f'select count(*) from "{schema}"."{table}" where "{column}" in (?, ?, ?)', ARMS).fetchone()[0]
        if n:
            found.append(f"{schema}.{table}.{column}")
    con.close()
    for path in (warehouse / "parquet").rglob("*.parquet"):
        table = duckdb.sql(f"select * from read_parquet('{path}')").to_arrow_table()
        found += [f"{path}:{name}" for name, column in zip(table.column_names, table.columns, strict=True)
                  if pa.types.is_string(column.type) and set(column.to_pylist()) & set(ARMS)]
    return found


def test_the_store_round_trips_and_only_under_its_key() -> None:
    tables = {"randomization": pa.table({"subject_id": ["S01-0001"], "arm": ["KAP"]})}
    blob = encrypt(tables, KEY)
    assert b"S01-0001" not in blob and b"KAP" not in blob.split(b"\n", 1)[1]
    assert decrypt(blob, KEY)["randomization"].to_pylist() == [{"subject_id": "S01-0001", "arm": "KAP"}]
    with pytest.raises(UnblindedKeyError, match="does not open"):
        decrypt(blob, "wrong key")
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(UnblindedKeyError, match="altered"):
        decrypt(tampered, KEY)


def test_without_the_key_the_list_waits_and_nothing_unblinded_is_written(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    write_transfer(tmp_path / "inbox", "IWRS", T1, LIST_1)
    summary = run_ingest(tmp_path / "inbox", tmp_path / "wh")
    assert [(r.status, KEY_ENV in (r.reason or "")) for r in summary.receipts] == [("WAITING", True)]
    assert not (tmp_path / "wh" / STORE).exists()
    con = duckdb.connect(str(tmp_path / "wh" / "kap.duckdb"), read_only=True)
    assert con.execute("select count(*) from ops.transfers").fetchone() == (0,)
    con.close()
    # with the key, a later run lands it
    monkeypatch.setenv(KEY_ENV, KEY)
    assert [r.status for r in run_ingest(tmp_path / "inbox", tmp_path / "wh").receipts] == ["LANDED"]


def test_the_list_lands_only_in_the_encrypted_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    write_transfer(tmp_path / "inbox", "S01", "20260601T020000Z")
    write_transfer(tmp_path / "inbox", "IWRS", T1, LIST_1)
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    store = read_store(tmp_path / "wh", KEY)
    assert store["randomization"].select(["subject_id", "arm"]).to_pylist() == [
        {"subject_id": "S01-0001", "arm": "KAP"}, {"subject_id": "S01-0002", "arm": "ACP"}]
    quarantined = store["quarantine"].to_pylist()
    assert [(q["source_row"], q["column_name"], q["reason_code"]) for q in quarantined] == [
        (4, "site_id", "INCONSISTENT")]
    assert arm_values(tmp_path / "wh") == []
    with pytest.raises(duckdb.Error):
        duckdb.connect(str(tmp_path / "wh" / STORE), read_only=True)
    con = duckdb.connect(str(tmp_path / "wh" / "kap.duckdb"), read_only=True)
    assert con.execute("select dataset, delivered, landed, quarantined from ops.loads where source = 'IWRS'"
                       ).fetchall() == [("randomization", 3, 2, 1)]
    assert con.execute("select count(*) from ops.quarantine where source = 'IWRS'").fetchone() == (0,)
    con.close()


def test_a_new_list_replaces_the_old_and_its_changes_stay_unblinded(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    write_transfer(tmp_path / "inbox", "IWRS", T1, LIST_1)
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    write_transfer(tmp_path / "inbox", "IWRS", T2, randomization(
        ("S01-0001", "S01", "KET", "2026-01-12", "NO_ECT"), ("S01-0003", "S01", "KAP", "2026-02-01", "ECT")))
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    store = read_store(tmp_path / "wh", KEY)
    assert store["randomization"].column("subject_id").to_pylist() == ["S01-0001", "S01-0003"]
    changes = {(c["change_type"], c["record_key"], c["column_name"], c["old_value"], c["new_value"])
               for c in store["changes"].to_pylist()}
    assert changes == {("UPDATE", "S01-0001", "arm", "KAP", "KET"), ("DELETE", "S01-0002", None, None, None),
                       ("INSERT", "S01-0003", None, None, None)}
    con = duckdb.connect(str(tmp_path / "wh" / "kap.duckdb"), read_only=True)
    assert con.execute("select count(*) from ops.changes").fetchone() == (0,)
    con.close()


def test_sql_unblinded_joins_the_arm_with_core_tables_only_with_the_key(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    write_transfer(tmp_path / "inbox", "S01", "20260601T020000Z")
    write_transfer(tmp_path / "inbox", "IWRS", T1, LIST_1)
    run_ingest(tmp_path / "inbox", tmp_path / "wh")
    query = ("select p.subject_id, r.arm from core.participants as p "
             "join unblinded.randomization as r using (subject_id)")
    runner = CliRunner()
    result = runner.invoke(app, ["sql", "--warehouse", str(tmp_path / "wh"), "--unblinded", "--format", "csv", query])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["subject_id,arm", "S01-0001,KAP"]
    blinded = runner.invoke(app, ["sql", "--warehouse", str(tmp_path / "wh"), query])
    assert blinded.exit_code == 1 and "unblinded" in blinded.output
    monkeypatch.setenv(KEY_ENV, "not the key")
    wrong = runner.invoke(app, ["sql", "--warehouse", str(tmp_path / "wh"), "--unblinded", query])
    assert wrong.exit_code == 2 and "does not open" in wrong.output


class Killed(BaseException):
    """Stands for SIGKILL at an exact instant: nothing after it runs, no handler catches it."""


def test_a_run_killed_after_the_store_was_switched_in_lands_the_list_again_to_the_same_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store is written before the blinded receipt is published: a kill in between leaves the
    transfer unrecorded, and landing it again must not record its quarantine twice."""
    import flows.publish as publish

    monkeypatch.setenv(KEY_ENV, KEY)
    write_transfer(tmp_path / "inbox", "IWRS", T1, LIST_1)
    run_ingest(tmp_path / "inbox", tmp_path / "reference", expectations=False)

    def killed(*args: object) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(publish, "publish_next", killed)
        with pytest.raises(Killed):
            run_ingest(tmp_path / "inbox", tmp_path / "wh", expectations=False)
    assert read_store(tmp_path / "wh", KEY)["quarantine"].num_rows == 1
    assert [r.status for r in run_ingest(tmp_path / "inbox", tmp_path / "wh", expectations=False).receipts] == [
        "LANDED"]
    store, reference = read_store(tmp_path / "wh", KEY), read_store(tmp_path / "reference", KEY)
    drop = {"run_id"}
    for name in ("randomization", "quarantine"):
        columns = [c for c in reference[name].column_names if c not in drop]
        assert store[name].select(columns).to_pylist() == reference[name].select(columns).to_pylist(), name
    assert "changes" not in store
