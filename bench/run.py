"""Ingest benchmark, run by hand (never by `make test`): the pipeline against a floor and a peer.

Generates a trial of S sites x N participants, every site delivering `dts-csv` in one of the
registered CSV dialects (a temporary `sources.yaml` in the work folder, given to every child process
through KAP_SOURCES), then measures, each in a fresh child process so that its peak RSS is its own:

  generate     `generate_trial` (what `kaptrial generate` runs) writing the inbox
  floor        DuckDB alone: every delivered CSV read in its site's dialect (delimiter, encoding,
               missing codes), all columns as text, copied to zstd Parquet; no validation
  peer         what a competent analyst would write instead (bench/peer.py): pandas `read_csv`,
               vectorised parsing, pandera-pandas models with the checks of schemas/models.py,
               `to_parquet`
  pipeline     the ingest into an empty warehouse
  noop         the ingest again, with nothing new
  noop_<other> the no-op through the other entry (below), to show what Prefect's start-up costs
  incr_full    one new transfer of one site into a copy of the full warehouse
  incr_empty   the same transfer into an empty warehouse

The ingest runs through `--entry cli`, `kaptrial ingest` itself (Prefect flow, temporary local
Prefect server), or `--entry function`, `run_ingest` in a fresh interpreter (the same pipeline
without Prefect's server start-up or the flow's artifacts).

Prints wall time, assessment item rows/s and peak RSS of each, the pipeline's own seconds per stage
(`ops.runs`), and the ratios against the targets, as a table and as JSON
(`bench/results/<YYYY-MM-DD>-<rows>.json` unless `--out`). Wall time runs from the child's start to its
exit, interpreter and imports included; "in-process" is the child's own clock around the work (for
an ingest: the run's span in `ops.runs`, before publication). Peak RSS is the largest process of the
child's tree (`wait4`). rows/s are assessment item rows over wall time. The peer is compared with
the pipeline's read + validate + land stages on in-process times: both without start-up.

    .venv/bin/python bench/run.py                                          # ≈ 10 M item rows, the targets' scale
    .venv/bin/python bench/run.py --sites 3 --participants-per-site 20 --out bench/work/small.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb
import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PEER = ROOT / "bench" / "peer.py"
# Subject ids are `S\d{2}-\d{4}` (DTS §3): at most 99 sites of at most 8999 participants.
MAX_SITES = 99
# The incremental transfer is the site's export one week after the first: the same people, more visits.
INCREMENT_DAYS = 7
# What the bench creates in the work folder, and nothing else, is removed before and after a run.
WORK_ENTRIES = ("sources.yaml", "inbox", "inbox_next", "floor", "peer", "warehouse", "warehouse_noop_other",
                "warehouse_incr_full", "warehouse_incr_empty", "prefect-home")
STAGES = ("read", "validate", "land", "derive", "expectations")
MB = 1e6

# Each child gets one JSON argument and prints one JSON line last on stdout.
GENERATE = r"""
import json, sys, time
from datetime import timedelta
from pathlib import Path
import yaml
from flows.generate import DEFAULT_TRANSFER_TIME, generate_trial
a = json.loads(sys.argv[1])
sources = yaml.safe_load(Path(a["sources"]).read_text(encoding="utf-8"))["sources"]
if a["only"]:
    sources = {a["only"]: sources[a["only"]]}
start = time.perf_counter()
report = generate_trial(Path(a["out"]), seed=a["seed"], participants_per_site=a["participants"], sources=sources,
                        defect_rate=a["defect_rate"],
                        transfer_time=DEFAULT_TRANSFER_TIME + timedelta(days=a["later_days"]))
items = sum(n for (_, ds), n in report.delivered.items() if ds == "assessment_items")
print(json.dumps({"seconds": time.perf_counter() - start, "item_rows": items,
                  "transfers": [[s, t] for s, t, _ in report.transfers]}))
"""

FLOOR = r"""
import json, sys, time
from pathlib import Path
import duckdb, yaml
a = json.loads(sys.argv[1])
sources = yaml.safe_load(Path(a["sources"]).read_text(encoding="utf-8"))["sources"]
out = Path(a["out"])
con = duckdb.connect(config={"autoinstall_known_extensions": False, "autoload_known_extensions": False})
def lit(text):
    return "'" + text.replace("'", "''") + "'"
start = time.perf_counter()
files = 0
for path in sorted(Path(a["inbox"]).glob("*/*/*.csv")):
    settings = sources[path.parent.parent.name]
    # DuckDB reads UTF-8 (BOM or not) and Latin-1 without an extension; Latin-1 stands in for
    # cp1252, which differs only in 0x80-0x9F, so the bytes read are the same amount of work.
    encoding = "latin-1" if settings["encoding"] == "cp1252" else "utf-8"
    nulls = ", ".join(lit(v) for v in settings["missing_values"])
    target = out / path.parent.parent.name / path.parent.name / path.with_suffix(".parquet").name
    target.parent.mkdir(parents=True, exist_ok=True)
    con.execute(f"copy (select * from read_csv({lit(str(path))}, delim={lit(settings['delimiter'])}, quote='\"', "
                f"header=true, all_varchar=true, encoding={lit(encoding)}, nullstr=[{nulls}])) "
                f"to {lit(str(target))} (format parquet, compression zstd)")
    files += 1
print(json.dumps({"seconds": time.perf_counter() - start, "files": files}))
"""

RUN_INGEST = r"""
import json, sys, time
from pathlib import Path
a = json.loads(sys.argv[1])
from flows.ingest_transfers import run_ingest
start = time.perf_counter()
summary = run_ingest(Path(a["inbox"]), Path(a["warehouse"]))
seconds = {}
for receipt in summary.receipts:
    for stage, value in receipt.seconds.items():
        seconds[stage] = seconds.get(stage, 0.0) + value
print(json.dumps({"seconds": time.perf_counter() - start, "run_id": summary.run_id, "receipt_seconds": seconds,
                  "statuses": [r.status for r in summary.receipts]}))
"""


@dataclass
class Measurement:
    """One child process: what it did, how long it took, how much memory it held at most."""

    name: str
    wall_s: float
    peak_rss_mb: float
    item_rows: int | None = None
    inner_s: float | None = None  # the child's own timing of the work, without interpreter start-up and imports
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float | None:
        return self.item_rows / self.wall_s if self.item_rows else None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows_per_s"] = round(self.rows_per_s) if self.rows_per_s else None
        return out


class Bench:
    """The work folder, the environment of the child processes, and the measurements taken."""

    def __init__(self, work: Path, entry: str) -> None:
        self.work = work
        self.entry = entry
        self.logs = work / "logs"
        self.sources = work / "sources.yaml"
        self.env = {**os.environ, "KAP_SOURCES": str(self.sources)}
        self.measurements: dict[str, Measurement] = {}

    def run(self, name: str, command: list[str], item_rows: int | None = None) -> Measurement:
        """Run `command` in a child process: wall seconds from start to exit, and its peak RSS
        (`wait4` gives the rusage of this child alone, so measurements do not see each other)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        print(f"  {name} …", end="", flush=True, file=sys.stderr)
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            start = time.perf_counter()
            process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=stdout, stderr=stderr)
            _, status, usage = os.wait4(process.pid, 0)
            wall = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            tail = err.read_text(errors="replace")[-3000:]
            raise SystemExit(f"\n{name} failed with exit status {code}; {err}:\n{tail}")
        print(f" {wall:.1f} s", file=sys.stderr)
        # ru_maxrss is in KiB on Linux
        measurement = Measurement(name, round(wall, 3), round(usage.ru_maxrss * 1024 / MB, 1), item_rows)
        lines = out.read_text(errors="replace").strip().splitlines()
        if lines and lines[-1].startswith("{"):
            measurement.detail = json.loads(lines[-1])
            if "seconds" in measurement.detail:
                measurement.inner_s = round(measurement.detail.pop("seconds"), 3)
        self.measurements[name] = measurement
        return measurement

    def python(self, name: str, code: str, arguments: dict[str, Any], item_rows: int | None = None) -> Measurement:
        return self.run(name, [sys.executable, "-c", code, json.dumps(arguments)], item_rows)

    def ingest(self, name: str, inbox: Path, warehouse: Path, item_rows: int | None, expect_landed: int,
               entry: str | None = None) -> Measurement:
        """One ingest run, checked: it completed and landed the transfers it should have."""
        entry = entry or self.entry
        if entry == "cli":
            command = [str(Path(sys.executable).with_name("kaptrial")), "ingest", "--inbox", str(inbox),
                       "--warehouse", str(warehouse)]
            measurement = self.run(name, command, item_rows)
        else:
            measurement = self.python(name, RUN_INGEST, {"inbox": str(inbox), "warehouse": str(warehouse)}, item_rows)
        run = last_run(warehouse)
        measurement.detail["entry"] = entry
        measurement.detail["ops_runs"] = run
        if run["status"] != "COMPLETED" or run["transfers_landed"] != expect_landed:
            raise SystemExit(f"{name}: run {run['status']} landed {run['transfers_landed']} transfers, "
                             f"expected {expect_landed}; see {self.logs}")
        # The same clock for both entries (the CLI prints no timing): the run's span in ops.runs, from
        # its start to its record being finished, before publication; run_ingest's own timing, which
        # includes publication, stays in the detail.
        if measurement.inner_s is not None:
            measurement.detail["run_ingest_s"] = measurement.inner_s
        measurement.inner_s = round((run["finished_at"] - run["started_at"]).total_seconds(), 3)
        return measurement


def last_run(warehouse: Path) -> dict[str, Any]:
    """The newest `ops.runs` row of the published warehouse, every column."""
    with duckdb.connect(str(warehouse / "kap.duckdb"), read_only=True) as con:
        cursor = con.execute("select * from ops.runs order by started_at desc limit 1")
        names = [d[0] for d in cursor.description]
        row = cursor.fetchone()
    if row is None:
        raise SystemExit(f"no run recorded in {warehouse}")
    return dict(zip(names, row, strict=True))


def stage_seconds(run: dict[str, Any]) -> dict[str, float | None]:
    """Seconds per stage as `ops.runs` records them; a stage without a column yet is None."""
    return {stage: run.get(f"seconds_{stage}") for stage in STAGES}


def bench_registry(sites: int) -> dict[str, dict[str, Any]]:
    """S sites S01…Snn, all `dts-csv`: a registered CSV site keeps its own dialect, any other
    takes the registered CSV dialects in turn, so every dialect is read by floor, peer and pipeline."""
    registered = yaml.safe_load((ROOT / "schemas" / "sources.yaml").read_text(encoding="utf-8"))["sources"]
    dialects = [v for v in registered.values() if v["format"] == "dts-csv"]
    sources = {}
    for i in range(1, sites + 1):
        source = f"S{i:02d}"
        own = registered.get(source)
        settings = dict(own if own and own["format"] == "dts-csv" else dialects[(i - 1) % len(dialects)])
        settings["name"] = settings["name"] if own and own["format"] == "dts-csv" else f"Bench site {source}"
        sources[source] = settings
    return sources


def machine() -> dict[str, Any]:
    """Where the numbers were taken: they mean little without it (the machine may be shared)."""
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    memory = next((int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemTotal")), 0)
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    versions = {}
    for package in ("duckdb", "pandas", "pandera", "polars", "pyarrow", "prefect"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(memory / 1e9, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        **versions,
    }


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    # results written by earlier runs of the same session do not make the measured code dirty
    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--", ".", ":(exclude)bench/results", ":(exclude)bench/work"))}


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def human_rows(rows: int) -> str:
    if rows >= 1_000_000:
        return f"{rows / 1e6:.1f}M"
    return f"{rows / 1e3:.0f}k" if rows >= 1000 else str(rows)


def clean(work: Path) -> None:
    for entry in WORK_ENTRIES:
        path = work / entry
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def measure_all(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    work = bench.work
    inbox, inbox_next = work / "inbox", work / "inbox_next"
    registry = bench_registry(args.sites)
    bench.sources.write_text(yaml.safe_dump({"sources": registry}, sort_keys=False, allow_unicode=True),
                             encoding="utf-8")
    generation = {"sources": str(bench.sources), "seed": args.seed, "participants": args.participants_per_site,
                  "defect_rate": args.defect_rate}

    generated = bench.python("generate", GENERATE, {**generation, "out": str(inbox), "only": None, "later_days": 0})
    rows = generated.detail["item_rows"]
    generated.item_rows = rows
    csv_mb = sum(p.stat().st_size for p in inbox.glob("*/*/*.csv")) / MB
    # the next transfer is generated now, outside any measurement, and copied in after the no-op
    site = args.incremental_site
    nxt = bench.python("generate_next", GENERATE,
                       {**generation, "out": str(inbox_next), "only": site, "later_days": INCREMENT_DAYS})
    next_rows = nxt.detail["item_rows"]
    del bench.measurements["generate_next"]

    bench.python("floor", FLOOR, {"inbox": str(inbox), "sources": str(bench.sources), "out": str(work / "floor")},
                 rows)
    bench.run("peer", [sys.executable, str(PEER), "--inbox", str(inbox), "--sources", str(bench.sources),
                       "--out", str(work / "peer")], rows)
    warehouse = work / "warehouse"
    bench.ingest("pipeline", inbox, warehouse, rows, expect_landed=args.sites)
    bench.ingest("noop", inbox, warehouse, None, expect_landed=0)
    # the no-op through the other entry, on a copy, so the warehouse the increment lands in saw the same runs
    other = "function" if bench.entry == "cli" else "cli"
    shutil.copytree(warehouse, work / "warehouse_noop_other", symlinks=True)
    bench.ingest(f"noop_{other}", inbox, work / "warehouse_noop_other", None, expect_landed=0, entry=other)
    shutil.rmtree(work / "warehouse_noop_other")

    (_, transfer_id), = nxt.detail["transfers"]
    shutil.copytree(inbox_next / site / transfer_id, inbox / site / transfer_id)
    shutil.copytree(warehouse, work / "warehouse_incr_full", symlinks=True)
    bench.ingest("incr_full", inbox, work / "warehouse_incr_full", next_rows, expect_landed=1)
    bench.ingest("incr_empty", inbox_next, work / "warehouse_incr_empty", next_rows, expect_landed=1)
    return {"item_rows": rows, "csv_mb": round(csv_mb, 1), "incremental": {"site": site, "transfer_id": transfer_id,
                                                                          "item_rows": next_rows}}


def targets(m: dict[str, Measurement]) -> tuple[dict[str, float | None], list[dict[str, Any]]]:
    """The ratios, and the targets of the issue judged on them (at 10 M item rows on two cores)."""
    pipeline = stage_seconds(m["pipeline"].detail["ops_runs"])
    checked = [pipeline[s] for s in ("read", "validate", "land")]
    pipeline_rvl = sum(checked) if all(v is not None for v in checked) else None
    peer = m["peer"].detail["stages"]
    peer_rvl = peer["read"] + peer["validate"] + peer["write"]
    ratios = {
        "ingest_over_floor": ratio(m["pipeline"].wall_s, m["floor"].wall_s),
        "peer_over_pipeline_read_validate_land": ratio(peer_rvl, pipeline_rvl),
        "peer_over_pipeline_wall": ratio(m["peer"].wall_s, m["pipeline"].wall_s),
        "peer_over_floor": ratio(m["peer"].wall_s, m["floor"].wall_s),
        "incr_full_over_empty": ratio(m["incr_full"].wall_s, m["incr_empty"].wall_s),
        "incr_full_over_empty_inner": ratio(m["incr_full"].inner_s, m["incr_empty"].inner_s),
    }
    checks = [
        ("whole ingest / floor (wall)", ratios["ingest_over_floor"], "<=", 3.0),
        ("peer / pipeline read+validate+land", ratios["peer_over_pipeline_read_validate_land"], ">=", 2.0),
        ("pipeline peak RSS MB", m["pipeline"].peak_rss_mb, "<=", 1500.0),
        ("incremental full / empty (wall)", ratios["incr_full_over_empty"], "<=", 2.0),
        ("no-op wall s", m["noop"].wall_s, "<=", 3.0),
    ]
    judged = [{"target": name, "value": value, "op": op, "limit": limit,
               "pass": None if value is None else (value <= limit if op == "<=" else value >= limit)}
              for name, value, op, limit in checks]
    return ratios, judged


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def print_report(result: dict[str, Any], m: dict[str, Measurement]) -> None:
    p = result["parameters"]
    mach = result["machine"]
    print(f"\nKAP-TRD-01 ingest benchmark: {p['sites']} sites x {p['participants_per_site']} participants, "
          f"{result['item_rows']:,} assessment item rows ({result['csv_mb']:,.1f} MB of CSV), entry {p['entry']}")
    print(f"machine: {mach['cores']} cores, {mach['ram_gb']} GB RAM, Python {mach['python']}, "
          f"DuckDB {mach['duckdb']}; load average {result['load_average']['start']} at start, "
          f"{result['load_average']['end']} at end\n")
    print(f"{'measurement':<16}{'wall s':>10}{'in-proc s':>11}{'item rows':>12}{'rows/s':>12}{'peak RSS MB':>13}")
    for name, x in m.items():
        print(f"{name:<16}{x.wall_s:>10.2f}{fmt(x.inner_s):>11}{fmt(x.item_rows, ',d'):>12}"
              f"{fmt(x.rows_per_s, ',.0f'):>12}{x.peak_rss_mb:>13,.0f}")
    runs = [n for n in m if "ops_runs" in m[n].detail]
    print(f"\n{'stage s (ops.runs)':<22}" + "".join(f"{n:>14}" for n in runs))
    for stage in STAGES:
        print(f"{stage:<22}" + "".join(f"{fmt(stage_seconds(m[n].detail['ops_runs'])[stage]):>14}" for n in runs))
    verify = [m[n].detail.get("receipt_seconds", {}).get("verify") for n in runs]
    print(f"{'verify (receipts)':<22}" + "".join(f"{fmt(v):>14}" for v in verify))
    print(f"{'rest of the process':<22}" + "".join(f"{fmt(rest_seconds(m[n])):>14}" for n in runs))
    peer = m["peer"].detail
    print(f"\npeer (in-process s): read {peer['stages']['read']:.2f}, validate {peer['stages']['validate']:.2f}, "
          f"write {peer['stages']['write']:.2f}; quarantined {peer['counts']['quarantined']:,}, collapsed "
          f"{peer['counts']['collapsed']:,} (pipeline: {m['pipeline'].detail['ops_runs']['rows_quarantined']:,} "
          "quarantined)")
    print("\nratios: " + ", ".join(f"{k} {fmt(v)}" for k, v in result["ratios"].items()))
    print(f"\n{'target':<40}{'value':>10}  {'limit':<10}result")
    for t in result["targets"]:
        verdict = "—" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        print(f"{t['target']:<40}{fmt(t['value']):>10}  {t['op']} {t['limit']:<7g}{verdict}")
    print(f"\n(targets hold at 10 M item rows; this run has {result['item_rows']:,})")


def rest_seconds(x: Measurement) -> float | None:
    """Wall time outside the recorded stages: interpreter and imports, discovery, verify,
    Prefect's server, publication (checkpoint, Parquet, dictionary)."""
    stages = [v for v in stage_seconds(x.detail["ops_runs"]).values() if v is not None]
    return x.wall_s - sum(stages)


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sites", type=int, default=20, help="sites S01…Snn, all dts-csv (default 20)")
    parser.add_argument("--participants-per-site", type=int, default=2200,
                        help="people screened per site (default 2200: ≈ 10 M item rows with 20 sites)")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--defect-rate", type=float, default=0.01, help="the generator's rate of injected defects")
    parser.add_argument("--entry", choices=("cli", "function"), default="cli",
                        help="`kaptrial ingest` (default) or `run_ingest` in a fresh interpreter")
    parser.add_argument("--incremental-site", default="S01", help="the site that delivers the new transfer")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "work", help="work folder (default bench/work)")
    parser.add_argument("--out", type=Path, help="results JSON (default bench/results/<date>-<rows>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the inbox and warehouses in the work folder")
    parser.add_argument("--prefect-server", action="store_true",
                        help="run `kaptrial ingest` against a Prefect server started once for the bench (as the "
                             "nightly deployment runs), not a temporary one per run")
    args = parser.parse_args()
    if not 1 <= args.sites <= MAX_SITES:
        parser.error(f"--sites must be 1..{MAX_SITES} (subject ids carry a two-digit site number)")
    if not 1 <= args.participants_per_site <= 8999:
        parser.error("--participants-per-site must be 1..8999 (subject ids carry four digits)")
    if args.incremental_site not in bench_registry(args.sites):
        parser.error(f"--incremental-site must be one of S01…S{args.sites:02d}")

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    clean(work)
    bench = Bench(work, args.entry)
    server = None
    if args.prefect_server:
        from flows.server import Server, free_port, spawn, stop, wait_healthy

        server = Server(work / "prefect-home", free_port())
        spawn(server, "server", [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host",
                                 "127.0.0.1", "--port", str(server.port), "--analytics-off"], server.environment())
        wait_healthy(server)
        bench.env |= {"PREFECT_API_URL": server.api_url, "PREFECT_HOME": str(server.home)}
    load_start = os.getloadavg()
    started = datetime.now().astimezone()
    try:
        facts = measure_all(bench, args)
    finally:
        if server is not None:
            stop(server)
        if not args.keep:
            clean(work)
    m = bench.measurements
    ratios, judged = targets(m)
    result = {
        "date": started.date().isoformat(),
        "started_at": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "parameters": {"sites": args.sites, "participants_per_site": args.participants_per_site, "seed": args.seed,
                       "defect_rate": args.defect_rate, "entry": args.entry,
                       "prefect_server": args.prefect_server},
        "machine": machine(),
        "load_average": {"start": round(load_start[0], 2), "end": round(os.getloadavg()[0], 2)},
        "git": git_state(),
        **facts,
        "measurements": {name: x.to_json() for name, x in m.items()},
        # seconds per stage as ops.runs records them; None where the pipeline has no column for the stage yet
        "stages": {name: stage_seconds(x.detail["ops_runs"]) for name, x in m.items() if "ops_runs" in x.detail},
        # the peer is only a yardstick if it does the same work: it should quarantine what the pipeline does
        "quarantined": {"peer": m["peer"].detail["counts"]["quarantined"],
                        "pipeline": m["pipeline"].detail["ops_runs"]["rows_quarantined"]},
        "ratios": ratios,
        "targets": judged,
    }
    print_report(result, m)
    out = args.out or RESULTS / f"{result['date']}-{human_rows(result['item_rows'])}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(jsonable(result), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"\nresults: {out}")


if __name__ == "__main__":
    main()
