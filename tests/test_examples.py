"""The first acceptance test: the shared example deliveries, checked against their answer key
(../shared/examples/README.md) for the sources this version ingests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from flows.ingest_transfers import run_ingest
from flows.registry import SUPPORTED_FORMATS, load_registry


def ingested_sources() -> list[str]:
    return [s for s, source in load_registry().items() if source.format in SUPPORTED_FORMATS]


def copy_phase(examples: Path, phase: str, inbox: Path, sources: list[str]) -> None:
    for source in sources:
        shutil.copytree(examples / phase / "inbox" / source, inbox / source, dirs_exist_ok=True)


def check(examples: Path, warehouse: Path, stage: str, sources: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(examples / "check.py"), "--key", str(examples / "answer_key.json"),
         "--warehouse", str(warehouse), "--stage", stage, "--sources", ",".join(sources)],
        capture_output=True, text=True, timeout=300)


def test_examples_pass_every_area_after_each_phase_and_a_no_op_run(examples: Path, tmp_path: Path) -> None:
    sources = ingested_sources()
    inbox, warehouse = tmp_path / "inbox", tmp_path / "wh"
    copy_phase(examples, "phase1", inbox, sources)
    run_ingest(inbox, warehouse)
    phase1 = check(examples, warehouse, "phase1", sources)
    assert phase1.returncode == 0, phase1.stdout + phase1.stderr

    copy_phase(examples, "phase2", inbox, sources)
    run_ingest(inbox, warehouse)
    no_op = run_ingest(inbox, warehouse)
    assert {r.status for r in no_op.receipts} <= {"SKIPPED", "PENDING"}
    final = check(examples, warehouse, "final", sources)
    assert final.returncode == 0, final.stdout + final.stderr
