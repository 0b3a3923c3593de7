"""One verified transfer through read → conform → validate, ready to land.

Plain functions over a DuckDB connection, callable without Prefect. The transfer's records end
in two temporary tables per dataset: `valid_<dataset>` (what lands) and `quarantine_<dataset>`
(what does not, one reason each). A `Rejected` raised anywhere means nothing of it may land.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from flows.conform import collapse_select, conform_select, quote_ident
from flows.read import RECORD, ROW, RawDataset, read_csv_datasets
from flows.read_redcap import SITE_GROUP, read_redcap
from flows.read_xlsx import read_dts_xlsx
from flows.validate import (
    conflicting_duplicates_sql,
    malformed_findings,
    model_findings_sql,
    quarantine_select,
    unknown_subject_sql,
    unparseable_sql,
)
from flows.verify import VerifiedTransfer
from flows.warehouse import create_valid_tables
from schemas.datasets import DATASETS, RANDOMIZATION, Dataset, datasets_of

# Passthrough columns a format may add to its records, and the validated column each fills:
# a REDCap form's status, and the total REDCap calculated for an assessment form.
PASSTHROUGH = {"_form_status": "form_status", "_delivered_total": "delivered_total"}
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
    """Conform and validate one loaded dataset; leaves `valid_<ds>` and `quarantine_<ds>` tables."""
    dataset: Dataset = rf.dataset
    ds = dataset.name
    identity = [*rf.columns, *rf.passthrough]
    con.execute(f"create or replace temp table dedup_{ds} as {collapse_select(identity, rf.table)}")
    con.execute(f"create or replace temp table conf_{ds} as "
                f"{conform_select(dataset, transfer.source, rf.columns, f'dedup_{ds}', rf.passthrough)}")
    con.register(f"malformed_{ds}", pa.Table.from_pylist(malformed_findings(rf.malformed), schema=QUARANTINE_SCHEMA))
    # who may appear in a site's data: its own participants landing from the same transfer
    unknown = unknown_subject_sql(f"conf_{ds}", transfer.source.source_id, known_subjects,
                                  site_group=SITE_GROUP in rf.passthrough)
    subjects = f"union all select * from ({unknown})" if dataset.site_scoped else ""
    con.execute(f"""
        create or replace temp table findings_{ds} as
        {unparseable_sql(dataset, f'conf_{ds}')}
        union all select * from ({model_findings_sql(dataset, f'conf_{ds}')})
        {subjects}
        union all select * from ({conflicting_duplicates_sql(dataset, f'conf_{ds}')})""")
    con.execute(f"""
        create or replace temp table quarantine_{ds} as
        select * from ({quarantine_select(dataset, f'conf_{ds}', f'findings_{ds}')})
        union all select * from malformed_{ds}""")
    con.unregister(f"malformed_{ds}")
    names = {c.name for c in dataset.columns}
    columns = ", ".join(quote_ident(c.name) for c in dataset.columns)
    extras = "".join(f", {quote_ident(p) if p in rf.passthrough else 'null'} as {target}"
                     for p, target in PASSTHROUGH.items())
    site = "" if "site_id" in names else ", $site as site_id"
    params = {"transfer": transfer.transfer_id, "file": rf.source_file}
    if site:
        params["site"] = transfer.source.source_id
    con.execute(f"""
        insert into valid_{ds} by name
        select {columns}{extras}{site}, $transfer as transfer_id, $file as source_file, {ROW} as source_row
        from conf_{ds}
        where {RECORD} not in (select {RECORD} from quarantine_{ds} where {RECORD} is not null)""",
                params)
    landed = con.execute(f"select count(*) from valid_{ds}").fetchone()[0]
    collapsed = con.execute(f"select coalesce(sum(_copies), 0) from dedup_{ds}").fetchone()[0]
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
    create_valid_tables(con, datasets.values())
    raw = READERS[transfer.format](con, transfer)
    seconds["read"] = time.perf_counter() - start
    start = time.perf_counter()
    loads = []
    for ds in datasets:
        known = "valid_participants" if ds != "participants" and "participants" in datasets else None
        loads.append(validate_dataset(con, transfer, raw[ds], known))
        # what lands and what is quarantined are made: the copies they were made from go now,
        # not after landing, so that a transfer holds one copy of its records while it lands
        for table in (raw[ds].table, f"dedup_{ds}", f"conf_{ds}", f"findings_{ds}"):
            con.execute(f"drop table if exists {table}")
    seconds["validate"] = time.perf_counter() - start
    warnings = [*transfer.warnings, *(w for r in raw.values() for w in r.warnings())]
    return ProcessedTransfer(transfer, loads, warnings, dict(seconds))


def drop_scratch(con: duckdb.DuckDBPyConnection) -> None:
    """The transfer's temporary tables, so the next transfer starts clean and memory is freed."""
    for ds in [*DATASETS, RANDOMIZATION.name]:
        for prefix in ("raw", "dedup", "conf", "findings", "quarantine"):
            con.execute(f"drop table if exists {prefix}_{ds}")
