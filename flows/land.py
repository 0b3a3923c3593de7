"""Stage 6 — land: a processed transfer becomes its source's current state, in one transaction.

Within the transaction: the site's `core` rows are replaced through the SQL models (staging →
core), changes against the previous state go to `ops.changes`, quarantine records, per-dataset
accounting and the transfer's receipt go to `ops`, and the site's flags are merged (same id:
still open; gone: closed). Parquet for the site is written after the commit.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from flows.conform import quote_literal
from flows.process import ProcessedTransfer
from flows.settings import DUCKDB_CONFIG
from flows.unblinded import read_store, write_store
from flows.warehouse import CORE_TABLES, read_model, set_variables
from schemas.datasets import DATASETS, RANDOMIZATION, Dataset


def delivered_columns(dataset: Dataset) -> list[str]:
    """The delivered columns compared between snapshots (DTS §2.1): all but the key; lineage and
    derivations are not delivered."""
    return [c.name for c in dataset.columns if c.name not in dataset.key]


REASON_TEXT = """case reason_code
    when 'UNPARSEABLE' then case when column_name is null then detail
        else format('''{}'' cannot be read as a {}', value, detail) end
    when 'MISSING_REQUIRED' then format('{} is required and missing', column_name)
    when 'OUT_OF_RANGE' then format('''{}'' is outside the allowed values: {}', value, detail)
    when 'UNKNOWN_SUBJECT' then case detail
        when 'other site' then format('subject {} belongs to another site than {}', value, source)
        when 'other group' then format('subject {} is on a row of another site''s data access group', value)
        else format('subject {} is not among the participants landing from this transfer', value) end
    when 'CONFLICTING_DUPLICATE' then format('{} but differ ({} is one difference)', detail, column_name)
    when 'INVALID_VISIT' then format('''{}'' is not a valid {} here: {}', value, column_name, detail)
    when 'INCONSISTENT' then format('''{}'' breaks the rule: {}', value, detail)
    else detail
end"""


def replace_core(con: duckdb.DuckDBPyConnection, site_id: str) -> None:
    for table in CORE_TABLES:
        con.execute(f"delete from core.{table} where site_id = ?", [site_id])
        con.execute(f"insert into core.{table} by name select * from ({read_model(f'core/{table}.sql')})")


def snapshot_previous(con: duckdb.DuckDBPyConnection, site_id: str) -> None:
    """The site's current landed records, kept aside to diff against the new snapshot."""
    for dataset in DATASETS.values():
        keep = ", ".join([*dataset.key, *delivered_columns(dataset), "transfer_id"])
        con.execute(f"create or replace temp table previous_{dataset.name} as "
                    f"select {keep} from core.{dataset.name} where site_id = ?", [site_id])


def changes_select(previous: str, new: str, key: list[str], columns: list[str]) -> str:
    """Differences between two states of one dataset (DTS §2.1): an UPDATE per record and column
    whose value differs (missing ↔ value included), a DELETE per record that left, an INSERT per
    record that came. Rows: record_key, column_name, old_value, new_value, change_type, old_transfer_id."""
    record_key = "concat_ws('|', " + ", ".join(key) + ")"
    joined = " and ".join(f"old.{k} = new.{k}" for k in key)
    updates = "\nunion all\n".join(
        f"select {record_key} as record_key, '{c}' as column_name, old.{c}::varchar as old_value, "
        f"new.{c}::varchar as new_value, 'UPDATE' as change_type, old.transfer_id as old_transfer_id "
        f"from {previous} as old join {new} as new using ({', '.join(key)}) "
        f"where old.{c} is distinct from new.{c}"
        for c in columns)
    return f"""
        select * from ({updates})
        union all
        select {record_key}, null, null, null, 'DELETE', old.transfer_id
        from {previous} as old where not exists (select 1 from {new} as new where {joined})
        union all
        select {record_key}, null, null, null, 'INSERT', null
        from {new} as new where not exists (select 1 from {previous} as old where {joined})"""


def record_changes(con: duckdb.DuckDBPyConnection, source: str, transfer_id: str) -> None:
    """ops.changes between the previous and the new landed state of the site; nothing is logged
    for a source's first landed transfer."""
    if not con.execute("select count(*) from ops.transfers where source = ? and status = 'LANDED'",
                       [source]).fetchone()[0]:
        return
    for dataset in DATASETS.values():
        new = f"(select * from core.{dataset.name} where site_id = {quote_literal(source)})"
        con.execute(f"""
            insert into ops.changes
            select ?, ?, record_key, column_name, old_value, new_value, change_type, old_transfer_id, ?
            from ({changes_select(f'previous_{dataset.name}', new, list(dataset.key), delivered_columns(dataset))})""",
                    [source, dataset.name, transfer_id])


def quarantine_records_select(processed: ProcessedTransfer, dataset: str, source_file: str, run_id: str) -> str:
    """The quarantine records of one dataset, each naming file, line (or sheet row), column,
    value and reason in its message."""
    transfer = processed.transfer
    where = "row" if "!" in source_file else "line"
    return f"""
        select {quote_literal(transfer.source.source_id)} as source,
               {quote_literal(transfer.transfer_id)} as transfer_id, {quote_literal(dataset)} as dataset,
               {quote_literal(source_file)} as source_file, source_row, subject_id, column_name, value, reason_code,
               format('{{}} {where} {{}}{{}}: {{}}', {quote_literal(source_file)}, coalesce(source_row::varchar, '?'),
                      case when column_name is null then '' else ', column ' || column_name end,
                      {REASON_TEXT}) as message,
               {quote_literal(run_id)} as run_id
        from quarantine_{dataset}
        order by source_row"""


def record_loads(con: duckdb.DuckDBPyConnection, processed: ProcessedTransfer, run_id: str) -> None:
    transfer = processed.transfer
    for load in processed.loads:
        con.execute("insert into ops.loads values (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [transfer.source.source_id, transfer.transfer_id, load.dataset, load.source_file,
                     load.delivered, load.landed, load.quarantined, load.duplicates_collapsed, run_id])


def record_quarantine(con: duckdb.DuckDBPyConnection, processed: ProcessedTransfer, run_id: str) -> None:
    for load in processed.loads:
        con.execute("insert into ops.quarantine by name "
                    + quarantine_records_select(processed, load.dataset, load.source_file, run_id))
    record_loads(con, processed, run_id)


def merge_flags(con: duckdb.DuckDBPyConnection, site_id: str, transfer_id: str) -> None:
    """The site's flags now: still there keeps its id and first sighting; gone is closed."""
    con.execute(f"create or replace temp table current_flags as {read_model('ops/current_flags.sql')}")
    con.execute("""
        update ops.flags as flags
        set status = 'OPEN', last_seen_transfer = ?, closed_transfer = null, message = current.message
        from current_flags as current
        where flags.flag_id = current.flag_id""", [transfer_id])
    con.execute("""
        update ops.flags set status = 'CLOSED', closed_transfer = ?
        where site_id = ? and status = 'OPEN' and flag_id not in (select flag_id from current_flags)""",
                [transfer_id, site_id])
    con.execute("""
        insert into ops.flags
        select flag_id, flag_type, site_id, subject_id, visit, dataset, detail, message, 'OPEN', ?, ?, null
        from current_flags
        where flag_id not in (select flag_id from ops.flags)""", [transfer_id, transfer_id])


def record_transfer(con: duckdb.DuckDBPyConnection, *, source: str, transfer_id: str, format: str | None,
                    status: str, reason: str | None, warnings: list[str], run_id: str,
                    manifest_sha256: str | None = None, files: dict | None = None) -> None:
    """The transfer's receipt; a PENDING receipt is replaced once the transfer is processed."""
    now = datetime.now(UTC)
    con.execute("delete from ops.transfers where source = ? and transfer_id = ? and status = 'PENDING'",
                [source, transfer_id])
    con.execute("insert into ops.transfers values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [source, transfer_id, format, status, reason, json.dumps(warnings), run_id,
                 now if status == "LANDED" else None, now, manifest_sha256,
                 json.dumps(files, sort_keys=True) if files is not None else None])


def land_transfer(con: duckdb.DuckDBPyConnection, processed: ProcessedTransfer, run_id: str) -> None:
    """All of the transfer or none of it."""
    transfer = processed.transfer
    site_id = transfer.source.source_id
    set_variables(con, {"site_id": site_id, "transfer_id": transfer.transfer_id})
    con.execute("begin transaction")
    try:
        snapshot_previous(con, site_id)
        replace_core(con, site_id)
        record_changes(con, site_id, transfer.transfer_id)
        record_quarantine(con, processed, run_id)
        merge_flags(con, site_id, transfer.transfer_id)
        record_transfer(con, source=site_id, transfer_id=transfer.transfer_id, format=transfer.format,
                        status="LANDED", reason=None, warnings=processed.warnings, run_id=run_id,
                        manifest_sha256=transfer.manifest_sha256,
                        files={f.name: f.sha256 for f in transfer.files.values()})
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


def mirror_parquet(database: Path, previous: Path, tables: tuple[str, ...] = CORE_TABLES) -> None:
    """Write the Parquet tree of a sealed draft database beside it: `parquet/core/<table>/site_id=<site>/`.

    Each partition holds one file named for the transfer it was written from. A partition the
    published tree `previous` already holds for the same transfer is hard-linked, not written:
    a run costs Parquet writes for the sites that changed only, and an unchanged file keeps its
    identity (inode, mtime) across runs.
    """
    root = database.parent / "parquet"
    con = duckdb.connect(str(database), read_only=True, config=dict(DUCKDB_CONFIG))
    try:
        current = con.execute("""
            select source, max(transfer_id) from ops.transfers
            where status = 'LANDED' and source in (select distinct site_id from core.participants)
            group by source order by source""").fetchall()
        for table in tables:
            (root / "core" / table).mkdir(parents=True, exist_ok=True)
        for site_id, transfer_id in current:
            for table in tables:
                partition = Path("core") / table / f"site_id={site_id}" / f"part-{transfer_id}.parquet"
                (root / partition).parent.mkdir(parents=True, exist_ok=True)
                if (previous / partition).is_file():
                    os.link(previous / partition, root / partition)
                    continue
                con.execute(f"copy (select * exclude (site_id) from core.{table} "
                            f"where site_id = {quote_literal(site_id)}) "
                            f"to {quote_literal(str(root / partition))} (format parquet, compression zstd)")
    finally:
        con.close()


def land_randomization(con: duckdb.DuckDBPyConnection, scratch: duckdb.DuckDBPyConnection,
                       processed: ProcessedTransfer, warehouse: Path, passphrase: str, run_id: str) -> None:
    """The IWRS list becomes the randomization of the unblinded store; the blinded warehouse gets
    the receipt and the counts, never a row.

    `scratch` is the in-memory database the list was validated in. The store is switched in
    first: a crash before the blinded receipt commits leaves the transfer unrecorded, and the
    next run lands the same snapshot again, to the same result.
    """
    transfer = processed.transfer
    tables = read_store(warehouse, passphrase)
    (load,) = processed.loads
    scratch.execute("""
        create or replace temp table new_randomization as
        select subject_id, site_id, arm, randomized_on, stratum, transfer_id, source_file, source_row
        from valid_randomization order by subject_id""")
    new_quarantine = scratch.sql(quarantine_records_select(processed, load.dataset, load.source_file,
                                                           run_id)).to_arrow_table()
    changes = pa.table({"record_key": pa.array([], pa.string())})
    if "randomization" in tables:
        scratch.register("previous_randomization", tables["randomization"])
        changes = scratch.sql(f"""
            select $source as source, 'randomization' as dataset, *, $transfer as new_transfer_id
            from ({changes_select('previous_randomization', 'new_randomization', list(RANDOMIZATION.key),
                                  delivered_columns(RANDOMIZATION))})""",
                              params={"source": transfer.source.source_id, "transfer": transfer.transfer_id}
                              ).to_arrow_table()
        scratch.unregister("previous_randomization")
    tables["randomization"] = scratch.sql("select * from new_randomization").to_arrow_table()
    # a run killed after the store was switched in, before the blinded receipt was published,
    # left this transfer's records in the store: they are replaced, not appended twice (its
    # changes then compare the list with itself and add nothing)
    tables["quarantine"] = _appended(_without_transfer(tables.get("quarantine"), transfer.transfer_id),
                                     new_quarantine)
    if changes.num_rows:
        tables["changes"] = _appended(tables.get("changes"), changes)
    write_store(warehouse, tables, passphrase)
    con.execute("begin transaction")
    try:
        record_loads(con, processed, run_id)
        record_transfer(con, source=transfer.source.source_id, transfer_id=transfer.transfer_id,
                        format=transfer.format, status="LANDED", reason=None, warnings=processed.warnings,
                        run_id=run_id, manifest_sha256=transfer.manifest_sha256,
                        files={f.name: f.sha256 for f in transfer.files.values()})
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


def _without_transfer(table: pa.Table | None, transfer_id: str) -> pa.Table | None:
    if table is None:
        return None
    return table.filter(pc.invert(pc.equal(table.column("transfer_id"), transfer_id)))


def _appended(old: pa.Table | None, new: pa.Table) -> pa.Table:
    return new if old is None else pa.concat_tables([old, new.cast(old.schema)])
