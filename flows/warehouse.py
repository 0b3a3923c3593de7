"""The blinded warehouse `kap.duckdb`: connection, tables of the contract, study metadata.

`ops` tables are declared here; `core` tables take their shape from the SQL models in `sql/`
(one model per file), and `ref` holds the study metadata of `schemas/` for SQL to join.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import time
from collections.abc import Iterable
from dataclasses import astuple
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import yaml

from flows.catalogue import CHECK_COLUMNS, check_catalogue, comment_tables
from flows.conform import SQL_TYPES, quote_ident, quote_literal
from flows.expectations import OPS_EXPECTATIONS_DDL
from flows.scratch import drop_temporary
from flows.settings import DUCKDB_CONFIG, PROJECT_ROOT, SCHEMAS_DIR, SQL_DIR
from schemas.datasets import DATASETS, Dataset, instruments, visits

DATABASE = "kap.duckdb"
# Order matters: a later model reads the site's rows of earlier ones.
CORE_TABLES = ("participants", "sessions", "vitals", "assessment_items", "assessments", "adverse_events")
# Order matters: data_quality sums data_quality_checks.
MARTS = ("enrollment", "data_quality_checks", "data_quality", "madrs_outcomes", "visit_compliance", "safety_listing")

OPS_DDL = """
create schema if not exists core;
create schema if not exists ops;
create schema if not exists marts;
create schema if not exists ref;
create table if not exists ops.transfers (
    source varchar not null,
    transfer_id varchar not null,
    format varchar,
    status varchar not null,
    reason varchar,
    warnings varchar, -- JSON array of the receipt's warnings
    run_id varchar,
    landed_at timestamptz,
    recorded_at timestamptz not null,
    manifest_sha256 varchar,
    files varchar,
);
create table if not exists ops.loads (
    source varchar not null,
    transfer_id varchar not null,
    dataset varchar not null,
    source_file varchar,
    delivered bigint not null,
    landed bigint not null,
    quarantined bigint not null,
    duplicates_collapsed bigint not null,
    run_id varchar,
);
create table if not exists ops.quarantine (
    source varchar not null,
    transfer_id varchar not null,
    dataset varchar not null,
    source_file varchar not null,
    source_row bigint,
    subject_id varchar,
    column_name varchar,
    value varchar,
    reason_code varchar not null,
    message varchar not null,
    run_id varchar,
);
create table if not exists ops.flags (
    flag_id varchar primary key,
    flag_type varchar not null,
    site_id varchar not null,
    subject_id varchar,
    visit varchar,
    dataset varchar,
    detail varchar,
    message varchar,
    status varchar not null,
    first_seen_transfer varchar not null,
    last_seen_transfer varchar not null,
    closed_transfer varchar,
);
create table if not exists ops.changes (
    source varchar not null,
    dataset varchar not null,
    record_key varchar not null,
    column_name varchar,
    old_value varchar,
    new_value varchar,
    change_type varchar not null,
    old_transfer_id varchar,
    new_transfer_id varchar not null,
);
create table if not exists ops.runs (
    run_id varchar primary key,
    started_at timestamptz not null,
    finished_at timestamptz,
    status varchar not null,
    transfers_seen bigint,
    transfers_landed bigint,
    transfers_rejected bigint,
    transfers_pending bigint,
    rows_delivered bigint,
    rows_landed bigint,
    rows_quarantined bigint,
    seconds_read double,
    seconds_validate double,
    seconds_land double,
    seconds_derive double,
    seconds_expectations double,
    message varchar,
    layout varchar,
);
"""
# What gives the warehouse its shape and reference content: the study's schemas and models, the
# SQL models, the table definitions (here and `ops.expectations`'s) and the check catalogue. Their
# fingerprint is recorded with every run (`ops.runs.layout`).
LAYOUT_SOURCES = (SCHEMAS_DIR, SQL_DIR, Path(__file__), PROJECT_ROOT / "flows" / "catalogue.py",
                  PROJECT_ROOT / "flows" / "expectations.py")


def connect(warehouse: Path, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    path = warehouse / DATABASE
    if read_only and not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}: run `kaptrial ingest` first")
    warehouse.mkdir(parents=True, exist_ok=True)
    return duckdb.connect(str(path), read_only=read_only, config=dict(DUCKDB_CONFIG))


PARQUET = "parquet"
# generated documentation of the published warehouse: dictionary, Great Expectations Data Docs
DOCS = "docs"
# what the flow writes for people after each run: site query listings
REPORTS = "reports"
GENERATIONS = ".generations"
PUBLISHED = ".published"
DRAFT = ".next"
# files of the layout before generations: removed when found
LEGACY_DRAFTS = ("kap.duckdb.next", "kap.duckdb.next.wal")


def next_dir(warehouse: Path) -> Path:
    """The run's private generation: its copy of the database and, once sealed, its Parquet tree."""
    return warehouse / GENERATIONS / DRAFT


DRAFT_LOG_BYTES = "256MB"


def open_next(warehouse: Path) -> duckdb.DuckDBPyConnection:
    """The run's private copy of the published warehouse, the only database it writes.

    Readers keep opening `kap.duckdb` read-only while a run works: DuckDB refuses a read-only
    open of a file another process writes, and nobody writes a published file. A draft left by
    a run that was killed is discarded: that run published nothing.
    """
    warehouse.mkdir(parents=True, exist_ok=True)
    for leftover in LEGACY_DRAFTS:
        (warehouse / leftover).unlink(missing_ok=True)
    adopt_layout(warehouse)
    draft = next_dir(warehouse)
    shutil.rmtree(draft, ignore_errors=True)
    draft.mkdir(parents=True)
    published = warehouse / DATABASE
    if published.exists():
        shutil.copyfile(published, draft / DATABASE)
    # The draft is private until sealed and a killed run's draft is discarded, so its log may grow
    # past DuckDB's 16 MB before a checkpoint, at which nearly every transfer's commit checkpointed.
    # The log's changes stay in memory until checkpointed: at 10 M item rows, 256 MB cut the
    # commits from 7.7 s to 2.5 s for ~60 MB more peak RSS; no bound at all held ~200 MB more.
    return duckdb.connect(str(draft / DATABASE), config={**DUCKDB_CONFIG, "checkpoint_threshold": DRAFT_LOG_BYTES})


def seal_next(con: duckdb.DuckDBPyConnection, warehouse: Path) -> Path:
    """Checkpoint and close the run's database, on disk for good; the draft's database path."""
    con.execute("checkpoint")
    con.close()
    database = next_dir(warehouse) / DATABASE
    fsync(database)
    return database


def publish_next(warehouse: Path) -> Path:
    """Switch the sealed draft in, database and Parquet tree together, with one atomic rename.

    `kap.duckdb` and `parquet` are fixed links through `.published` (made by `adopt_layout`
    before any work), which points to the current generation; renaming a new `.published` over
    the old is the single instant at which readers go from the old warehouse to the new one.
    The generation before stays one run longer, for readers that were listing its Parquet files
    at that instant.
    """
    generations = warehouse / GENERATIONS
    draft = next_dir(warehouse)
    fsync_tree(draft)
    name = f"g{time.time_ns():020d}"
    os.replace(draft, generations / name)
    fsync(generations)
    link = warehouse / PUBLISHED
    previous = os.readlink(link) if link.is_symlink() else None
    switch_link(link, f"{GENERATIONS}/{name}")
    keep = {name, Path(previous).name if previous else ""}
    for generation in generations.iterdir():
        if generation.name not in keep and generation.name != DRAFT:
            shutil.rmtree(generation, ignore_errors=True)
    return generations / name


def adopt_layout(warehouse: Path) -> None:
    """Make `kap.duckdb` and `parquet` the fixed links through `.published`, before a run works.

    A new warehouse gets the links at once (dangling until its first publication: readers are
    told there is no warehouse yet). A warehouse of the layout before generations, with a plain
    database file and Parquet directory, first becomes a generation of its own: its files are
    hard-linked into one and `.published` switched to it. Every step leaves readers the same
    data, so a kill between two steps is harmless and the next run finishes the adoption; the
    run's own publication is then always one rename.
    """
    database, parquet = warehouse / DATABASE, warehouse / PARQUET
    if database.is_file() and not database.is_symlink():
        if database.with_name(DATABASE + ".wal").exists():
            # readers open the link, whose WAL path is beside the link: fold the log in first
            with duckdb.connect(str(database), config=dict(DUCKDB_CONFIG)) as legacy:
                legacy.execute("checkpoint")
        generations = warehouse / GENERATIONS
        generations.mkdir(exist_ok=True)
        adopted = generations / f"g{time.time_ns():020d}"
        partial = generations / f".adopt-{adopted.name}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        os.link(database, partial / DATABASE)
        if parquet.is_dir() and not parquet.is_symlink():
            shutil.copytree(parquet, partial / PARQUET, copy_function=os.link)
        fsync_tree(partial)
        os.replace(partial, adopted)
        fsync(generations)
        switch_link(warehouse / PUBLISHED, f"{GENERATIONS}/{adopted.name}")
    for entry in (DATABASE, PARQUET):
        fix_entry_link(warehouse, entry)
    for leftover in (warehouse / GENERATIONS).glob(".adopt-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def switch_link(link: Path, target: str) -> None:
    """Point `link` at `target` atomically: a new link beside, renamed over the old one."""
    beside = link.with_name(link.name + ".switch")
    beside.unlink(missing_ok=True)
    os.symlink(target, beside)
    os.replace(beside, link)
    fsync(link.parent)


def fix_entry_link(warehouse: Path, entry: str) -> None:
    """`warehouse/entry` becomes the link `.published/entry`: made where missing, renamed over a
    plain file, or, for a directory (which cannot be renamed over), put in place after the
    directory is moved aside; `adopt_layout` has already taken what the file or directory held."""
    path, target = warehouse / entry, f"{PUBLISHED}/{entry}"
    aside = warehouse / f".{entry}.legacy"
    if not path.is_symlink() and path.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(path, aside)
    if not path.is_symlink() or os.readlink(path) != target:
        switch_link(path, target)
    shutil.rmtree(aside, ignore_errors=True)


def fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(root: Path) -> None:
    """Everything under `root` on disk before it is published (power loss, not only SIGKILL)."""
    for directory, _, files in os.walk(root):
        for file in files:
            fsync(Path(directory) / file)
        fsync(Path(directory))


def connect_unblinded(warehouse: Path) -> duckdb.DuckDBPyConnection:
    """The blinded warehouse read-only, with the unblinded store decrypted into the in-memory
    catalog `unblinded` (needs KAP_UNBLINDED_KEY): `unblinded.randomization` joins `core.*`."""
    from flows.unblinded import attach_store, passphrase_from_env

    path = warehouse / DATABASE
    if not path.exists():
        raise FileNotFoundError(f"no warehouse at {path}: run `kaptrial ingest` first")
    passphrase = passphrase_from_env()
    con = duckdb.connect(":memory:", config=dict(DUCKDB_CONFIG))
    try:
        con.execute(f"attach {quote_literal(str(path))} as kap (read_only)")
        attach_store(con, warehouse, passphrase)
        con.execute("use kap")
    except BaseException:
        con.close()
        raise
    return con


def read_model(path: str) -> str:
    """The SQL of one model file, e.g. `core/sessions.sql`."""
    return (SQL_DIR / path).read_text(encoding="utf-8")


def study_parameters() -> dict[str, Any]:
    with open(SCHEMAS_DIR / "study.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def set_variables(con: duckdb.DuckDBPyConnection, values: dict[str, Any]) -> None:
    for name, value in values.items():
        con.execute(f"set variable {name} = $value", {"value": value})


def load_reference(con: duckdb.DuckDBPyConnection) -> None:
    """Study metadata and the check catalogue as `ref` tables and session variables, refreshed every run."""
    study = study_parameters()
    _replace(con, "ref.checks", CHECK_COLUMNS, [astuple(c) for c in check_catalogue()],
             ", ".join(["varchar"] * len(CHECK_COLUMNS)))
    _replace(con, "ref.visits", ["visit", "kind", "anchor", "target", "window_min", "window_max"],
             [(v, s["kind"], s["anchor"], s["target"], s["window_min"], s["window_max"])
              for v, s in visits().items()],
             "varchar, varchar, varchar, integer, integer, integer")
    _replace(con, "ref.instruments", ["instrument", "items", "item_min", "item_max", "has_total", "rater_required"],
             [(i, s["items"], s["item_min"], s["item_max"], s["has_total"], s["rater_required"])
              for i, s in instruments().items()],
             "varchar, integer, integer, integer, boolean, boolean")
    _replace(con, "ref.instrument_visits", ["instrument", "visit"],
             [(i, v) for i, s in instruments().items() for v in s["visits"]], "varchar, varchar")
    _replace(con, "ref.dose_ranges", ["route", "basis", "min", "max", "infusion_min", "infusion_max"],
             [(r, s["basis"], s["min"], s["max"], s.get("infusion_min"), s.get("infusion_max"))
              for r, s in study["dose_ranges"].items()],
             "varchar, varchar, double, double, integer, integer")
    _replace(con, "ref.safety_items", ["instrument", "item", "min_score"],
             [(s["instrument"], s["item"], s["min_score"]) for s in study["safety_items"]],
             "varchar, integer, integer")
    with open(SCHEMAS_DIR / "ae_terms.csv", encoding="utf-8", newline="") as fh:
        terms = [(r["verbatim"].strip().casefold(), r["verbatim"], r["preferred_term"], r["body_system"])
                 for r in csv.DictReader(fh)]
    _replace(con, "ref.ae_terms", ["verbatim_key", "verbatim", "preferred_term", "body_system"], terms,
             "varchar, varchar, varchar, varchar")
    set_variables(con, {
        "age_at_consent_min": study["age_at_consent"]["min"],
        "age_at_consent_max": study["age_at_consent"]["max"],
        "cssrs_ideation_items": study["cssrs_ideation_items"],
        **{k: v for k, v in study["safety_vitals"].items()},
        "response_pct_reduction": study["endpoints"]["response_pct_reduction"],
        "remission_max_total": study["endpoints"]["remission_max_total"],
        "sustained_response_visits": study["endpoints"]["sustained_response_visits"],
    })


def _replace(con: duckdb.DuckDBPyConnection, table: str, columns: list[str], rows: Iterable[tuple[Any, ...]],
             types: str) -> None:
    """`table` holds exactly `rows`; left alone when it already does, so an unchanged warehouse
    stays unchanged (and keeps its comments) run after run."""
    typed = dict(zip(columns, (t.strip() for t in types.split(",")), strict=True))
    rows = list(rows)
    incoming = pa.table({c: pa.array([row[i] for row in rows]) for i, c in enumerate(columns)})
    con.register("_incoming_rows", incoming)
    try:
        cast = ", ".join(f"cast({quote_ident(c)} as {t}) as {quote_ident(c)}" for c, t in typed.items())
        con.execute(f"create or replace temp table _incoming as select {cast} from _incoming_rows").fetchall()
    finally:
        con.unregister("_incoming_rows")
    schema, name = table.split(".")
    current = con.execute("select list((column_name, data_type) order by column_index) from duckdb_columns() "
                          "where schema_name = ? and table_name = ? and database_name = current_database()",
                          [schema, name]).fetchall()[0][0]
    wanted = con.execute("select list((column_name, data_type) order by column_index) from duckdb_columns() "
                         "where table_name = '_incoming' and database_name = 'temp'").fetchall()[0][0]
    if current == wanted:
        differing = con.execute(f"""
            select count(*) from (
                (select * from {table} except all select * from _incoming)
                union all
                (select * from _incoming except all select * from {table}))""").fetchall()[0][0]
        if differing == 0:
            return
    con.execute(f"create or replace table {table} as select * from _incoming").fetchall()


# what a landing record carries beside its dataset's columns (DTS §4)
LINEAGE = {"form_status": "varchar", "delivered_total": "varchar", "site_id": "varchar",
           "transfer_id": "varchar", "source_file": "varchar", "source_row": "bigint"}


def valid_shape(dataset: Dataset) -> dict[str, str]:
    """The columns and DuckDB types of `valid_<dataset>`: the shape validation hands to the staging models."""
    columns = {c.name: SQL_TYPES[c.kind] for c in dataset.columns}
    return columns | {name: kind for name, kind in LINEAGE.items() if name not in columns}


def create_valid_tables(con: duckdb.DuckDBPyConnection, datasets: Iterable[Dataset] = DATASETS.values()) -> None:
    """Empty `valid_<dataset>` tables, so the staging models bind before anything is validated."""
    for dataset in datasets:
        drop_temporary(con, f"valid_{dataset.name}")
        typed = ", ".join(f"{quote_ident(name)} {kind}" for name, kind in valid_shape(dataset).items())
        con.execute(f"create temp table valid_{dataset.name} ({typed})")


def create_staging_views(con: duckdb.DuckDBPyConnection) -> None:
    for dataset in DATASETS:
        con.execute(f"create or replace temp view stg_{dataset} as {read_model(f'staging/stg_{dataset}.sql')}")


@cache
def layout_fingerprint() -> str:
    """sha256 over the files of `LAYOUT_SOURCES` (names and bytes), read once per process."""
    digest = hashlib.sha256()
    for root in LAYOUT_SOURCES:
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(str(path.relative_to(PROJECT_ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def is_current(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether the warehouse's last completed run had this code's layout: then every table,
    column, reference table and comment `init_warehouse` would make is there as it would make it."""
    try:
        row = con.execute("select layout from ops.runs where status = 'COMPLETED' "
                          "order by started_at desc limit 1").fetchone()
    except (duckdb.CatalogException, duckdb.BinderException):
        return False  # a new warehouse, or one from before runs recorded a layout
    return row is not None and row[0] == layout_fingerprint()


def init_warehouse(con: duckdb.DuckDBPyConnection) -> None:
    """Every table of the contract exists, empty if nothing has landed yet."""
    con.execute(OPS_DDL)
    # warehouses built before a column or table was added get it here
    con.execute("alter table ops.runs add column if not exists seconds_expectations double")
    con.execute("alter table ops.runs add column if not exists layout varchar")
    con.execute(OPS_EXPECTATIONS_DDL)
    con.execute(f"create or replace view ops.current_transfers as {read_model('ops/current_transfers.sql')}")
    load_reference(con)
    create_valid_tables(con)
    create_staging_views(con)
    set_variables(con, {"site_id": "", "transfer_id": ""})
    for table in CORE_TABLES:
        model = read_model(f"core/{table}.sql")
        con.execute(f"create table if not exists core.{table} as select * from ({model}) limit 0")
        # a column a model gained since the warehouse was built is added, empty for the rows before
        existing = {c for (c,) in con.execute(
            "select column_name from duckdb_columns() where schema_name = 'core' and table_name = ? "
            "and database_name = current_database()", [table]).fetchall()}
        shape = con.sql(f"select * from ({model}) limit 0")
        for name, kind in zip(shape.columns, shape.types, strict=True):
            if name not in existing:
                con.execute(f"alter table core.{table} add column {quote_ident(name)} {kind}")
    # a mart added since the warehouse was built exists from now on; the others are rebuilt
    # when something lands, not on every run
    for mart in MARTS:
        con.execute(f"create table if not exists marts.{mart} as {read_model(f'marts/{mart}.sql')}")
    comment_tables(con)


def build_marts(con: duckdb.DuckDBPyConnection) -> None:
    for mart in MARTS:
        con.execute(f"create or replace table marts.{mart} as {read_model(f'marts/{mart}.sql')}")
    # marts and ref are recreated every run: their comments with them
    comment_tables(con)
