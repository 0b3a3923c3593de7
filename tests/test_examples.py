"""The first acceptance test: the shared example deliveries, checked against their answer key
(../shared/examples/README.md) for the sources this version ingests."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flows.ingest_transfers import run_ingest
from flows.registry import SUPPORTED_FORMATS, load_registry
from flows.unblinded import KEY_ENV

# unblinded.efficacy_by_arm is derived by a later issue (clinical derivations); until then the
# checker's `efficacy` area, and only that one, may fail.
NOT_YET_BUILT = {"efficacy"}


def ingested_sources() -> list[str]:
    return [s for s, source in load_registry().items() if source.format in SUPPORTED_FORMATS]


def copy_phase(examples: Path, phase: str, inbox: Path, sources: list[str]) -> None:
    for source in sources:
        if (examples / phase / "inbox" / source).is_dir():
            shutil.copytree(examples / phase / "inbox" / source, inbox / source, dirs_exist_ok=True)


def check(examples: Path, warehouse: Path, stage: str, sources: list[str]) -> dict[str, str]:
    """Area → PASS or FAIL line of the example checker."""
    done = subprocess.run(
        [sys.executable, str(examples / "check.py"), "--key", str(examples / "answer_key.json"),
         "--warehouse", str(warehouse), "--stage", stage, "--sources", ",".join(sources),
         "--unblinded-cmd", f"{Path(sys.executable).parent / 'kaptrial'} sql --warehouse {{warehouse}} --unblinded "
                            "--format csv \"select * from unblinded.efficacy_by_arm where visit = 'W4'\""],
        capture_output=True, text=True, timeout=300, env=dict(os.environ))
    areas = {m.group(2): m.group(0) for m in re.finditer(r"^(PASS|FAIL) (\w+).*$", done.stdout, re.M)}
    assert areas, done.stdout + done.stderr
    return areas


def failing(areas: dict[str, str]) -> list[str]:
    return [line for area, line in areas.items() if line.startswith("FAIL") and area not in NOT_YET_BUILT]


def test_examples_pass_every_area_after_each_phase_and_a_no_op_run(examples: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "example-key-not-secret")
    sources = ingested_sources()
    inbox, warehouse = tmp_path / "inbox", tmp_path / "wh"
    copy_phase(examples, "phase1", inbox, sources)
    run_ingest(inbox, warehouse)
    phase1 = check(examples, warehouse, "phase1", sources)
    assert len(phase1) >= 9 and failing(phase1) == []

    copy_phase(examples, "phase2", inbox, sources)
    run_ingest(inbox, warehouse)
    no_op = run_ingest(inbox, warehouse)
    assert {r.status for r in no_op.receipts} <= {"SKIPPED", "PENDING"}
    final = check(examples, warehouse, "final", sources)
    assert len(final) >= 9 and failing(final) == []
