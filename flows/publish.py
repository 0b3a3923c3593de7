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
from flows.listings import write_site_listings
from flows.settings import DUCKDB_CONFIG
from flows.warehouse import DATABASE, DOCS, PARQUET, REPORTS, publish_next, seal_next


def publish(con: duckdb.DuckDBPyConnection, warehouse: Path, landed: set[str] | None = None) -> Path:
    """Seal the run's database, write its Parquet tree beside it, switch both in at once; the
    published generation. `landed`: the sources whose data changed (None: any may have)."""
    database = seal_next(con, warehouse)
    mirror_parquet(database, warehouse / PARQUET)
    published = publish_next(warehouse)
    with duckdb.connect(str(published / DATABASE), read_only=True, config=dict(DUCKDB_CONFIG)) as reader:
        write_documents(reader, warehouse, landed)
    return published


def write_documents(con: duckdb.DuckDBPyConnection, warehouse: Path, landed: set[str] | None = None) -> None:
    """The data dictionary of the published warehouse and the query listings of the sites that changed."""
    write_dictionary(con, warehouse / DOCS)
    write_site_listings(con, warehouse / REPORTS / "queries", sites=landed)
