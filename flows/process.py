"""One verified transfer through read → conform → validate, ready to land.

Plain functions over a DuckDB connection, callable without Prefect. The transfer's records end
in two temporary tables per dataset: `checked_<dataset>` (every record once, with the first rule
it fails), of which the view `valid_<dataset>` is what lands, and `quarantine_<dataset>` (what
does not, one reason each). A `Rejected` raised anywhere means nothing of it may land.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from flows.conform import collapse_select, delivered_as, quote_ident, quote_literal, texts_select, typed_select
from flows.read import RECORD, ROW, RawDataset, read_csv_datasets
from flows.read_redcap import SITE_GROUP, read_redcap
from flows.read_xlsx import read_dts_xlsx
from flows.scratch import drop_temporaries, drop_temporary
from flows.validate import (
    conflict_index,
    conflicting_duplicates_sql,
    first_failure_sql,
    malformed_findings,
    quarantine_select,
    shared_key_records_sql,
    unknown_subject,
    verdicts,
)
from flows.verify import VerifiedTransfer
from flows.warehouse import valid_shape
from schemas.datasets import DATASETS, RANDOMIZATION, Dataset, datasets_of

# Passthrough columns a format may add to its records, and the validated column each fills:
# a REDCap form's status, and the total REDCap calculated for an assessment form.
PASSTHROUGH = {"_form_status": "form_status", "_delivered_total": "delivered_total"}
# the conflicts of a dataset in which no two records share a key
NO_CONFLICTS = f"(select null::bigint as {RECORD}, null::varchar as column_name, null::varchar as detail limit 0)"
QUARANTINE_SCHEMA = pa.schema([(RECORD, pa.int64()), ("source_row", pa.int64()), ("reason_code", pa.string()),
                               ("column_name", pa.string()), ("value", pa.string()), ("detail", pa.string()),
                               ("conformed_column", pa.string()), ("subject_id", pa.string())])


@dataclass
class DatasetLoad:
    dataset: str
    source_file: str
    delivered: int
    landed: int
    quarantined: int
    duplicates_collapsed: int
    quarantined_by_reason: Counter[str] = field(default_factory=Counter)

    @property
    def balanced(self) -> bool:
        return self.landed + self.quarantined + self.duplicates_collapsed == self.delivered


@dataclass
class ProcessedTransfer:
    transfer: VerifiedTransfer
    loads: list[DatasetLoad]
    warnings: list[str]
    seconds: dict[str, float]


# One reader per format: each loads the transfer's datasets as text tables (stage 3).
READERS: dict[str, Callable[[duckdb.DuckDBPyConnection, VerifiedTransfer], dict[str, RawDataset]]] = {
    "dts-csv": read_csv_datasets,
    "dts-xlsx": read_dts_xlsx,
    "redcap": read_redcap,
    "iwrs": read_csv_datasets,
}


def validate_dataset(con: duckdb.DuckDBPyConnection, transfer: VerifiedTransfer, rf: RawDataset,
                     known_subjects: str | None) -> DatasetLoad:
    """Conform and validate one loaded dataset; leaves the `quarantine_<ds>` table, and the
    `valid_<ds>` view of the records of `checked_<ds>` that passed.

    One statement types every record and gives it the first verdict it fails on its own. Then
    only the few records sharing a key are looked at again: identical ones collapse to the first,
    different ones are conflicting duplicates, which outranks what comes after it in DTS §6."""
    dataset: Dataset = rf.dataset
    ds, source = dataset.name, transfer.source
    # who may appear in a site's data: its own participants landing from the same transfer
    unknown, unknown_detail = unknown_subject(source.source_id, known_subjects, site_group=SITE_GROUP in rf.passthrough)
    found = verdicts(dataset, unknown if dataset.site_scoped else None)
    typed = typed_select(dataset, source, rf.columns, rf.table, rf.passthrough, keep=(RECORD, ROW))
    kept = [RECORD, ROW, *(quote_ident(p) for p in rf.passthrough), *(quote_ident(c.name) for c in dataset.columns)]
    con.execute(f"""
        create or replace temp table checked_{ds} as
        select {', '.join(kept)}, {first_failure_sql(found)} as _rule
        from ({typed})""")
    ((shared,),) = con.execute(f"""
        create or replace temp table shared_{ds} as
        select * from {rf.table}
        where {RECORD} in ({shared_key_records_sql(dataset, f'checked_{ds}')})""").fetchall()
    conflicts, collapsed = NO_CONFLICTS, 0
    if shared:  # most deliveries: no key twice, and nothing more to do
        con.execute(f"create or replace temp table dedup_{ds} as "
                    f"{collapse_select([*rf.columns, *rf.passthrough], f'shared_{ds}')}")
        (collapsed,) = con.execute(f"select coalesce(sum(_copies), 0) from dedup_{ds}").fetchone() or (0,)
        survivors = f"({typed_select(dataset, source, rf.columns, f'dedup_{ds}')})"
        conflicts = f"conflicts_{ds}"
        con.execute(f"create or replace temp table {conflicts} as {conflicting_duplicates_sql(dataset, survivors)}")
        # a record collapsed into an identical one is neither landed nor quarantined: its first copy is
        con.execute(f"""
            delete from checked_{ds}
            where {RECORD} in (select {RECORD} from shared_{ds} anti join dedup_{ds} using ({RECORD}))""")
        conflict = conflict_index(found)
        con.execute(f"""
            update checked_{ds} set _rule = {conflict}
            where {RECORD} in (select {RECORD} from {conflicts}) and coalesce(_rule, {conflict} + 1) > {conflict}""")
    failed = (f"(select * from {rf.table} where {RECORD} in "
              f"(select {RECORD} from checked_{ds} where _rule is not null))")
    con.register(f"malformed_{ds}", pa.Table.from_pylist(malformed_findings(rf.malformed), schema=QUARANTINE_SCHEMA))
    con.execute(f"""
        create or replace temp table quarantine_{ds} as
        select * from ({quarantine_select(dataset, found, f'checked_{ds}',
                                          texts_select(dataset, source, rf.columns, failed, keep=(RECORD,)),
                                          conflicts, unknown_detail,
                                          {c.name: delivered_as(dataset, c, rf.columns)[0] for c in dataset.columns})})
        union all select * from malformed_{ds}""")
    con.unregister(f"malformed_{ds}")
    # what lands is what passed, as a view: the records are not copied again before landing
    values = {c.name: quote_ident(c.name) for c in dataset.columns}
    values |= {target: quote_ident(p) if p in rf.passthrough else "null" for p, target in PASSTHROUGH.items()}
    values |= {"transfer_id": quote_literal(transfer.transfer_id), "source_file": quote_literal(rf.source_file),
               "source_row": ROW}
    values.setdefault("site_id", quote_literal(source.source_id))
    columns = ", ".join(f"cast({values[name]} as {kind}) as {quote_ident(name)}"
                        for name, kind in valid_shape(dataset).items())
    drop_temporary(con, f"valid_{ds}")
    con.execute(f"create temp view valid_{ds} as select {columns} from checked_{ds} where _rule is null")
    landed = con.execute(f"select count(*) from valid_{ds}").fetchone()[0]
    by_reason = Counter(dict(con.execute(
        f"select reason_code, count(*) from quarantine_{ds} group by 1").fetchall()))
    load = DatasetLoad(ds, rf.source_file, rf.records, landed, sum(by_reason.values()), int(collapsed), by_reason)
    if not load.balanced:
        raise RuntimeError(f"{rf.source_file}: accounting does not balance ({load})")
    return load


def process_transfer(con: duckdb.DuckDBPyConnection, transfer: VerifiedTransfer) -> ProcessedTransfer:
    """Read, conform and validate every dataset of a transfer, participants first (the others
    need to know which subjects land)."""
    seconds: Counter[str] = Counter()
    start = time.perf_counter()
    datasets = datasets_of(transfer.format)
    raw = READERS[transfer.format](con, transfer)
    seconds["read"] = time.perf_counter() - start
    start = time.perf_counter()
    loads = []
    for ds in datasets:
        known = "valid_participants" if ds != "participants" and "participants" in datasets else None
        loads.append(validate_dataset(con, transfer, raw[ds], known))
        # what lands (a view of `checked_<ds>`) and what is quarantined are made: the text they were
        # made from goes now, not after landing, so that a transfer holds one copy of its records
        drop_temporaries(con, [raw[ds].table, f"shared_{ds}", f"dedup_{ds}", f"conflicts_{ds}"])
    seconds["validate"] = time.perf_counter() - start
    warnings = [*transfer.warnings, *(w for r in raw.values() for w in r.warnings())]
    return ProcessedTransfer(transfer, loads, warnings, dict(seconds))


def drop_scratch(con: duckdb.DuckDBPyConnection) -> None:
    """The transfer's temporary tables, so the next transfer starts clean and memory is freed."""
    drop_temporaries(con, [f"{prefix}_{ds}" for ds in [*DATASETS, RANDOMIZATION.name]
                           for prefix in ("valid", "raw", "shared", "dedup", "conflicts", "checked", "quarantine")])
