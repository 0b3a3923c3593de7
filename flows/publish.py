"""Stage 8 — publish: a run's draft becomes the warehouse readers see, then the documents that
describe it are written.

The draft database is sealed, its Parquet tree written beside it, and both are switched in by one
rename (flows/warehouse.py). What follows reads the published state only: a document written
after a kill can be stale by one run, never ahead of the data.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from flows.catalogue import write_dictionary
from flows.land import mirror_parquet
from flows.settings import DUCKDB_CONFIG
from flows.warehouse import DATABASE, DOCS, PARQUET, publish_next, seal_next


def publish(con: duckdb.DuckDBPyConnection, warehouse: Path) -> Path:
    """Seal the run's database, write its Parquet tree beside it, switch both in at once; the
    published generation."""
    database = seal_next(con, warehouse)
    mirror_parquet(database, warehouse / PARQUET)
    published = publish_next(warehouse)
    with duckdb.connect(str(published / DATABASE), read_only=True, config=dict(DUCKDB_CONFIG)) as reader:
        write_documents(reader, warehouse)
    return published


def write_documents(con: duckdb.DuckDBPyConnection, warehouse: Path) -> None:
    """The data dictionary of the published warehouse."""
    write_dictionary(con, warehouse / DOCS)
