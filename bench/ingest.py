"""Ingest benchmark, run by hand (never by `make test`).

Generates a demo trial of N participants, then measures in separate processes, so each peak
RSS is its own:
  floor     DuckDB alone reading the delivered CSVs with each site's dialect and writing Parquet
  pipeline  the ingest (verify, read, conform, validate, quarantine, land, derive) into an empty
            warehouse, without Prefect's server start-up
Prints wall time, assessment item rows/s and peak RSS of each, and the ratio.

    .venv/bin/python bench/ingest.py --participants-per-site 1200     # ≈ 1 M assessment item rows
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "bench" / "work"

FLOOR = r"""
import sys, duckdb
from pathlib import Path

import yaml
from flows.registry import load_registry
from schemas.datasets import DATASETS
inbox, out = Path(sys.argv[1]), Path(sys.argv[2])
registry = load_registry()
con = duckdb.connect()
for folder in sorted(p for p in inbox.glob("*/*") if p.is_dir()):
    source = registry[folder.parent.name]
    if source.format != "dts-csv":
        continue
    # DuckDB decodes UTF-8 and Latin-1 natively; Latin-1 stands in for cp1252 in the floor.
    encoding = "latin-1" if source.encoding == "cp1252" else "utf-8"
    for dataset in DATASETS.values():
        target = out / folder.parent.name / f"{dataset.name}.parquet"
        target.parent.mkdir(parents=True, exist_ok=True)
        con.execute(
            f"copy (select * from read_csv('{folder / dataset.file}', delim='{source.delimiter}', header=true, "
            f"all_varchar=true, encoding='{encoding}')) to '{target}' (format parquet, compression zstd)")
"""

PIPELINE = r"""
import sys
from pathlib import Path

import yaml
from flows.ingest_transfers import run_ingest
summary = run_ingest(Path(sys.argv[1]), Path(sys.argv[2]))
assert all(r.status == "LANDED" for r in summary.receipts), summary.receipts
"""


def measure(code: str, *args: str) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of `code` run in a fresh interpreter."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"benchmark step failed with exit status {status}")
    return seconds, usage.ru_maxrss / 1024


def item_rows(inbox: Path) -> int:
    return sum(sum(1 for _ in open(p, "rb")) - 1 for p in inbox.glob("*/*/assessments.csv"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--participants-per-site", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--keep", action="store_true", help="keep bench/work afterwards")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from flows.generate import generate_trial

    shutil.rmtree(WORK, ignore_errors=True)
    inbox = WORK / "inbox"
    # the CSV sites only: the floor is DuckDB reading delimited text
    registry = yaml.safe_load((ROOT / "schemas" / "sources.yaml").read_text(encoding="utf-8"))["sources"]
    csv_sites = {s: v for s, v in registry.items() if v["format"] == "dts-csv"}
    start = time.perf_counter()
    generate_trial(inbox, seed=args.seed, participants_per_site=args.participants_per_site, sources=csv_sites)
    generate_seconds = time.perf_counter() - start
    rows = item_rows(inbox)
    csv_mb = sum(p.stat().st_size for p in inbox.glob("*/*/*.csv")) / 1e6

    floor_s, floor_rss = measure(FLOOR, str(inbox), str(WORK / "floor"))
    pipe_s, pipe_rss = measure(PIPELINE, str(inbox), str(WORK / "warehouse"))
    result = {
        "participants_per_site": args.participants_per_site,
        "assessment_item_rows": rows,
        "csv_mb": round(csv_mb, 1),
        "generate_seconds": round(generate_seconds, 2),
        "floor": {"seconds": round(floor_s, 2), "rows_per_s": round(rows / floor_s), "peak_rss_mb": round(floor_rss)},
        "pipeline": {"seconds": round(pipe_s, 2), "rows_per_s": round(rows / pipe_s), "peak_rss_mb": round(pipe_rss)},
        "pipeline_over_floor": round(pipe_s / floor_s, 2),
    }
    print(f"{rows:,} assessment item rows ({csv_mb:.0f} MB of CSV), generated in {generate_seconds:.1f} s")
    print(f"{'':10}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>14}")
    for name in ("floor", "pipeline"):
        r = result[name]
        print(f"{name:10}{r['seconds']:>10.2f}{r['rows_per_s']:>12,}{r['peak_rss_mb']:>14,}")
    print(f"pipeline / floor: {result['pipeline_over_floor']:.2f}")
    print(json.dumps(result))
    if not args.keep:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    main()
