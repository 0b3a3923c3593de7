"""Stage 7 — derive: marts rebuilt after every run, and the unblinded ones in their own store.

The blinded marts are SQL models over `core` (sql/marts). The unblinded marts join the blinded
outcomes with the randomization inside this process only: the randomization is registered
from the decrypted store for the query and the result goes back into the encrypted store.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

from flows.unblinded import UnblindedKeyError, passphrase_from_env, read_store, write_store
from flows.warehouse import build_marts, read_model

UNBLINDED_MARTS = ("efficacy_by_arm",)


def rebuild_marts(con: duckdb.DuckDBPyConnection) -> float:
    start = time.perf_counter()
    build_marts(con)
    return time.perf_counter() - start


def refresh_unblinded_marts(con: duckdb.DuckDBPyConnection, warehouse: Path) -> str | None:
    """Recompute the unblinded marts; a warning for the run summary when they cannot be."""
    try:
        passphrase = passphrase_from_env()
        tables = read_store(warehouse, passphrase)
    except UnblindedKeyError as exc:
        return f"unblinded marts not refreshed: {exc}"
    if "randomization" not in tables:
        return None
    con.register("randomization", tables["randomization"])
    try:
        derived = {mart: con.sql(read_model(f"unblinded/{mart}.sql")).to_arrow_table() for mart in UNBLINDED_MARTS}
    finally:
        con.unregister("randomization")
    # rewrite the store only when something changed, so a run with nothing new changes nothing
    if any(mart not in tables or not tables[mart].equals(table) for mart, table in derived.items()):
        write_store(warehouse, tables | derived, passphrase)
    return None
