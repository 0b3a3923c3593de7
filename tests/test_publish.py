"""Safe publishing (issue 4): readers are never blocked by an ingest, and an ingest killed at
any instant leaves the warehouse as it was or as it would be after, never a mix; the next run
converges to what an uninterrupted run gives."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from flows.generate import generate_trial
from flows.ingest_transfers import run_ingest
from flows.settings import PROJECT_ROOT, SCHEMAS_DIR

INGEST = "import sys; from pathlib import Path; from flows.ingest_transfers import run_ingest; " \
         "run_ingest(Path(sys.argv[1]), Path(sys.argv[2]))"


def csv_sites() -> dict[str, dict[str, object]]:
    import yaml

    registry = yaml.safe_load((SCHEMAS_DIR / "sources.yaml").read_text(encoding="utf-8"))["sources"]
    return {s: v for s, v in registry.items() if v["format"] == "dts-csv"}


@pytest.fixture(scope="module")
def deliveries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A first inbox, already ingested into `base`, and a second one with a new snapshot per site."""
    root = tmp_path_factory.mktemp("publish")
    generate_trial(root / "first", seed=21, participants_per_site=40, sources=csv_sites())
    second = root / "second"
    shutil.copytree(root / "first", second)
    generate_trial(root / "later", seed=22, participants_per_site=60, sources=csv_sites(),
                   transfer_time=datetime(2026, 9, 1, 2, tzinfo=UTC))
    for site in csv_sites():
        for folder in (root / "later" / site).iterdir():
            shutil.copytree(folder, second / site / folder.name)
    run_ingest(root / "first", root / "base")
    run_ingest(second, root / "reference")
    run_ingest(second, root / "reference")  # nothing new: the state every run must converge to
    return {"first": root / "first", "second": second, "base": root / "base", "reference": root / "reference"}


def ingest_process(inbox: Path, warehouse: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", INGEST, str(inbox), str(warehouse)], cwd=PROJECT_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def state(warehouse: Path) -> dict[str, object]:
    """What must agree between two warehouses: current rows, receipts, quarantine, flags, Parquet."""
    con = duckdb.connect(str(warehouse / "kap.duckdb"), read_only=True)
    try:
        result: dict[str, object] = {
            table: con.execute(f"select count(*), min(transfer_id), max(transfer_id) from core.{table}").fetchall()
            for table in ("participants", "sessions", "vitals", "assessment_items", "assessments", "adverse_events")}
        result["transfers"] = con.execute("select source, transfer_id, status from ops.transfers "
                                          "order by all").fetchall()
        result["quarantine"] = con.execute("select source, transfer_id, dataset, source_row, reason_code "
                                           "from ops.quarantine order by all").fetchall()
        result["changes"] = con.execute("select count(*) from ops.changes").fetchall()
        result["flags"] = con.execute("select flag_id, status, first_seen_transfer, last_seen_transfer "
                                      "from ops.flags order by all").fetchall()
    finally:
        con.close()
    result["parquet"] = sorted(str(p.relative_to(warehouse)) for p in (warehouse / "parquet").rglob("*.parquet"))
    return result


def consistent(warehouse: Path) -> None:
    """Every site's core rows come from its current landed transfer, and Parquet says the same."""
    con = duckdb.connect(str(warehouse / "kap.duckdb"), read_only=True)
    current = dict(con.execute("select source, max(transfer_id) from ops.transfers where status = 'LANDED' "
                               "group by source").fetchall())
    landed = con.execute("select site_id, transfer_id from core.assessment_items group by all").fetchall()
    balanced = con.execute("select count(*) from ops.loads "
                           "where delivered <> landed + quarantined + duplicates_collapsed").fetchone()[0]
    con.close()
    assert all(current[site] == transfer for site, transfer in landed), (landed, current)
    assert balanced == 0
    for site, transfer in current.items():
        parts = list((warehouse / "parquet" / "core" / "assessment_items" / f"site_id={site}").glob("*.parquet"))
        assert [p.name for p in parts] in ([f"part-{transfer}.parquet"], []), (site, parts)


def test_readers_are_never_blocked_while_an_ingest_runs(deliveries: dict[str, Path], tmp_path: Path) -> None:
    warehouse = tmp_path / "wh"
    shutil.copytree(deliveries["base"], warehouse, symlinks=True)
    before = state(warehouse)["participants"]
    seen, failures, queries = set(), [], 0
    process = ingest_process(deliveries["second"], warehouse)
    while process.poll() is None:
        try:
            con = duckdb.connect(str(warehouse / "kap.duckdb"), read_only=True)
            seen.add(con.execute("select count(*), max(transfer_id) from core.participants").fetchone())
            con.close()
            queries += 1
        except duckdb.Error as exc:
            failures.append(str(exc))
        time.sleep(0.02)
    assert process.returncode == 0
    assert failures == []
    assert queries > 20
    after = state(warehouse)["participants"]
    # each reader saw the warehouse before the run or after it, nothing in between
    assert seen == {(before[0][0], before[0][2]), (after[0][0], after[0][2])}


@pytest.mark.parametrize("seconds", [1.0, 3.5, 5.0, 6.5, 8.0])
def test_a_killed_ingest_leaves_old_or_new_and_the_next_run_converges(deliveries: dict[str, Path], tmp_path: Path,
                                                                       seconds: float) -> None:
    warehouse = tmp_path / "wh"
    shutil.copytree(deliveries["base"], warehouse, symlinks=True)
    process = ingest_process(deliveries["second"], warehouse)
    time.sleep(seconds)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    consistent(warehouse)
    run_ingest(deliveries["second"], warehouse)
    consistent(warehouse)
    assert state(warehouse) == state(deliveries["reference"])


class Killed(BaseException):
    """Stands for SIGKILL at an exact instant: nothing after it runs, no handler catches it."""


@pytest.mark.parametrize("instant", ["mirror_parquet", "publish_next"])
def test_killed_between_sealing_and_switching_publishes_nothing(deliveries: dict[str, Path], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                instant: str) -> None:
    """The instants a timed kill rarely hits: the draft's Parquet written or half-written, not yet switched."""
    import flows.publish as module

    warehouse = tmp_path / "wh"
    shutil.copytree(deliveries["base"], warehouse, symlinks=True)
    original = getattr(module, instant)

    def killed(*args: object) -> None:
        if instant == "mirror_parquet":
            original(*args)  # the whole tree written beside, then killed before the switch
        raise Killed

    monkeypatch.setattr(module, instant, killed)
    with pytest.raises(Killed):
        run_ingest(deliveries["second"], warehouse)
    monkeypatch.undo()
    assert state(warehouse) == state(deliveries["base"])
    consistent(warehouse)
    run_ingest(deliveries["second"], warehouse)
    assert state(warehouse) == state(deliveries["reference"])


def test_a_warehouse_of_the_layout_before_generations_is_taken_over(deliveries: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    """`kap.duckdb` a plain file and `parquet/` a plain directory: the next run publishes through links."""
    warehouse = tmp_path / "wh"
    legacy_layout(deliveries["base"], warehouse)
    run_ingest(deliveries["second"], warehouse)
    assert (warehouse / "kap.duckdb").is_symlink() and (warehouse / "parquet").is_symlink()
    assert state(warehouse) == state(deliveries["reference"])
    assert sorted(p.name for p in warehouse.iterdir()) == [".generations", ".ingest.lock", ".published", "docs",
                                                           "kap.duckdb", "parquet", "reports"]


def legacy_layout(base: Path, warehouse: Path) -> None:
    """`kap.duckdb` a plain file and `parquet/` a plain directory, as before generations."""
    warehouse.mkdir()
    shutil.copyfile(base / "kap.duckdb", warehouse / "kap.duckdb")
    shutil.copytree(base / "parquet", warehouse / "parquet")


def without_parquet(result: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in result.items() if k != "parquet"}


@pytest.mark.parametrize("switch", [1, 2, 3])
def test_a_run_killed_while_taking_over_the_old_layout_leaves_the_old_warehouse(
        deliveries: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, switch: int) -> None:
    """Killed before the n-th link switch of the take-over (`.published`, then `kap.duckdb`, then
    `parquet`): readers still see the old data, database and Parquet alike, and the next run
    finishes the take-over and the ingest."""
    import flows.warehouse as module

    warehouse = tmp_path / "wh"
    legacy_layout(deliveries["base"], warehouse)
    original, calls = module.switch_link, []

    def killed(*args: object) -> None:
        calls.append(args)
        if len(calls) == switch:
            raise Killed
        original(*args)

    monkeypatch.setattr(module, "switch_link", killed)
    with pytest.raises(Killed):
        run_ingest(deliveries["second"], warehouse, expectations=False)
    monkeypatch.undo()
    consistent(warehouse)
    assert without_parquet(state(warehouse)) == without_parquet(state(deliveries["base"]))
    if switch < 3:  # before the third switch the old directory is still in place
        assert state(warehouse)["parquet"] == state(deliveries["base"])["parquet"]
    run_ingest(deliveries["second"], warehouse)
    consistent(warehouse)
    assert state(warehouse) == state(deliveries["reference"])
    assert not (warehouse / ".parquet.legacy").exists()
    assert [p.name for p in (warehouse / ".generations").glob(".adopt-*")] == []


def test_a_run_keeps_the_generation_it_replaced_and_no_older(deliveries: dict[str, Path], tmp_path: Path) -> None:
    """A reader that listed Parquet files just before a switch can still read them; disk stays bounded."""
    warehouse = tmp_path / "wh"
    shutil.copytree(deliveries["base"], warehouse, symlinks=True)
    before = (warehouse / ".published").resolve()
    run_ingest(deliveries["second"], warehouse)
    after = (warehouse / ".published").resolve()
    run_ingest(deliveries["second"], warehouse)
    assert before.exists() is False and after.exists()
    assert sorted(p.name for p in (warehouse / ".generations").iterdir()) == sorted(
        [after.name, (warehouse / ".published").resolve().name])
    # an unchanged partition is the same file in both generations (hard link), not a copy
    part = next((after / "parquet").rglob("*.parquet"))
    assert part.stat().st_nlink == 2
