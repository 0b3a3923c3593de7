"""The temporary tables and views a transfer works in, on the run's connection.

A transfer's records pass through temporary relations of fixed names (`raw_<dataset>`,
`checked_<dataset>`, `valid_<dataset>`, …), some tables, some views, and an Arrow table registered
with the connection is a view too. DuckDB drops each only by its own kind.
"""

from __future__ import annotations

from collections.abc import Iterable

import duckdb


def drop_temporaries(con: duckdb.DuckDBPyConnection, names: Iterable[str]) -> None:
    """The temporary tables and views of these names, whichever each is; a name that is neither is skipped."""
    for name in names:
        # quoted here, not by `conform.quote_ident`: conform imports `read`, which imports this module
        relation = 'temp.main."' + name.replace('"', '""') + '"'
        try:
            con.execute(f"drop table if exists {relation}")
        except duckdb.CatalogException:
            # a view: asking the catalog first costs ten times the failed drop, on every name
            con.execute(f"drop view {relation}")


def drop_temporary(con: duckdb.DuckDBPyConnection, name: str) -> None:
    drop_temporaries(con, [name])
