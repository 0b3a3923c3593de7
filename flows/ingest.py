"""The ingest of one inbox into one warehouse, stage by stage, without Prefect.

`flows/ingest_transfers.py` wraps these functions as the Prefect flow; tests call them directly.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from flows.discover import MANIFEST, TransferRef
from flows.land import land_randomization, land_transfer, record_transfer
from flows.process import DatasetLoad, drop_scratch, process_transfer
from flows.registry import SUPPORTED_FORMATS, Source
from flows.settings import DUCKDB_CONFIG
from flows.unblinded import UnblindedKeyError, passphrase_from_env, read_store
from flows.verify import Rejected, check_identity, load_manifest, verify_transfer
from flows.warehouse import layout_fingerprint

LOCK_FILE = ".ingest.lock"
FINAL_STATUSES = ("LANDED", "REJECTED", "DUPLICATE", "LATE")


@dataclass
class TransferReceipt:
    """What happened to one transfer folder in this run."""

    source: str
    transfer_id: str
    status: str  # LANDED, REJECTED, PENDING, LATE, SKIPPED (already processed), WAITING (format not yet supported)
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    loads: list[DatasetLoad] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class RunSummary:
    run_id: str
    inbox: str
    warehouse: str
    started_at: datetime
    finished_at: datetime | None = None
    receipts: list[TransferReceipt] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Great Expectations on what landed: counts first, then the failures (see flows/expectations.py)
    expectations: list[str] = field(default_factory=list)
    expectations_failed: int = 0

    def count(self, status: str) -> int:
        return sum(1 for r in self.receipts if r.status == status)

    @property
    def landed_sources(self) -> set[str]:
        return {r.source for r in self.receipts if r.status == "LANDED"}

    @property
    def loads(self) -> list[tuple[TransferReceipt, DatasetLoad]]:
        return [(r, load) for r in self.receipts for load in r.loads]


class WarehouseBusy(RuntimeError):
    pass


@contextmanager
def writer_lock(warehouse: Path) -> Iterator[None]:
    """One writer per warehouse: a second ingest exits at once with a clear message."""
    warehouse.mkdir(parents=True, exist_ok=True)
    with open(warehouse / LOCK_FILE, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WarehouseBusy(f"another ingest is writing {warehouse}; try again when it has finished") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def new_run_id() -> str:
    return uuid.uuid4().hex


def prior_status(con: duckdb.DuckDBPyConnection, source: str, transfer_id: str) -> str | None:
    row = con.execute("select status from ops.transfers where source = ? and transfer_id = ? "
                      "order by recorded_at limit 1", [source, transfer_id]).fetchone()
    return row[0] if row else None


def may_land(con: duckdb.DuckDBPyConnection, ref: TransferRef) -> bool:
    """Whether `ingest_one` will try to land the folder: it has a manifest and no final status yet."""
    return ref.has_manifest and prior_status(con, ref.source, ref.folder) not in FINAL_STATUSES


def current_transfer(con: duckdb.DuckDBPyConnection, source: str) -> str | None:
    ((transfer_id,),) = con.execute("select max(transfer_id) from ops.transfers where source = ? and status = 'LANDED'",
                                    [source]).fetchall()
    return transfer_id


def ingest_one(con: duckdb.DuckDBPyConnection, ref: TransferRef, source: Source, warehouse: Path,
               run_id: str) -> TransferReceipt:
    """Decide the fate of one transfer folder and carry it out (DTS §2.1)."""
    receipt = TransferReceipt(ref.source, ref.folder, "SKIPPED")
    known = prior_status(con, ref.source, ref.folder)
    if known in FINAL_STATUSES:
        return redelivery(con, ref, source, run_id, receipt, known)
    if source.format not in SUPPORTED_FORMATS:
        receipt.status, receipt.reason = "WAITING", f"format {source.format} is not ingested by this version yet"
        return receipt
    if not ref.has_manifest:
        receipt.status, receipt.reason = "PENDING", "no manifest.json yet: upload in progress"
        if known is None:
            record_transfer(con, source=ref.source, transfer_id=ref.folder, format=source.format, status="PENDING",
                            reason=receipt.reason, warnings=[], run_id=run_id)
        return receipt
    current = current_transfer(con, ref.source)
    try:
        if current is not None and ref.folder < current:
            manifest, manifest_sha = load_manifest(ref)
            # a manifest of another study or source, or a bad id, is rejected whatever its age
            check_identity(manifest, ref, source)
            receipt.status = "LATE"
            receipt.reason = f"older than the current transfer {current}: recorded, not landed"
            record_transfer(con, source=ref.source, transfer_id=ref.folder, format=source.format, status="LATE",
                            reason=receipt.reason, warnings=[], run_id=run_id, manifest_sha256=manifest_sha,
                            files=listed_checksums(manifest))
            return receipt
        if source.format == "iwrs":
            return ingest_randomization(con, ref, source, warehouse, run_id, receipt)
        start = time.perf_counter()
        verified = verify_transfer(ref, source)
        verify_seconds = time.perf_counter() - start
        processed = process_transfer(con, verified)
        start = time.perf_counter()
        land_transfer(con, processed, run_id)
        receipt.status, receipt.warnings, receipt.loads = "LANDED", processed.warnings, processed.loads
        receipt.seconds = {"verify": verify_seconds, **processed.seconds, "land": time.perf_counter() - start}
    except Rejected as rejection:
        receipt.status, receipt.reason = "REJECTED", str(rejection)
        record_transfer(con, source=ref.source, transfer_id=ref.folder, format=source.format, status="REJECTED",
                        reason=receipt.reason, warnings=[], run_id=run_id, manifest_sha256=manifest_hash(ref))
    finally:
        drop_scratch(con)
    return receipt


def manifest_hash(ref: TransferRef) -> str | None:
    path = ref.path / MANIFEST
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() and not path.is_symlink() else None


def listed_checksums(manifest: dict[str, Any]) -> dict[str, str] | None:
    """File name → sha256 as a manifest lists them, or None when it lists nothing readable."""
    entries = manifest.get("files")
    if not isinstance(entries, list):
        return None
    listed = {e.get("name"): e.get("sha256") for e in entries if isinstance(e, dict)}
    return {str(k): str(v).lower() for k, v in listed.items() if k is not None and v is not None}


def redelivery(con: duckdb.DuckDBPyConnection, ref: TransferRef, source: Source, run_id: str,
               receipt: TransferReceipt, known: str) -> TransferReceipt:
    """A folder already processed keeps its first status (DTS §2.1). Its manifest as recorded
    means the same delivery, still in the inbox: nothing to do. A new manifest is a re-delivery:
    of the same files, a no-op recorded as DUPLICATE; of other files, a conflict, rejected, and
    the first delivery stands."""
    receipt.reason = f"already processed ({known})"
    current = manifest_hash(ref)
    recorded = con.execute("select manifest_sha256, files from ops.transfers where source = ? and transfer_id = ? "
                           "order by recorded_at", [ref.source, ref.folder]).fetchall()
    if current is None or current in {sha for sha, _ in recorded} or not any(sha for sha, _ in recorded):
        return receipt
    try:
        manifest, _ = load_manifest(ref)
        files = listed_checksums(manifest)
    except Rejected:
        files = None
    first_files = next((json.loads(f) for _, f in recorded if f), None)
    if files is not None and files == first_files:
        receipt.status = "DUPLICATE"
        receipt.reason = f"identical re-delivery of a transfer already {known}: nothing to do"
    else:
        receipt.status = "REJECTED"
        receipt.reason = (f"conflicting re-delivery: transfer {ref.folder} was already {known} with other "
                          "content; the first delivery stands")
    record_transfer(con, source=ref.source, transfer_id=ref.folder, format=source.format, status=receipt.status,
                    reason=receipt.reason, warnings=[], run_id=run_id, manifest_sha256=current, files=files)
    return receipt


def ingest_randomization(con: duckdb.DuckDBPyConnection, ref: TransferRef, source: Source, warehouse: Path,
                         run_id: str, receipt: TransferReceipt) -> TransferReceipt:
    """The IWRS list: validated in a private in-memory database and landed only in the
    encrypted unblinded store. Without a key that opens the store nothing is read or written,
    and the transfer waits, unrecorded, for a run that has the key."""
    try:
        passphrase = passphrase_from_env()
        read_store(warehouse, passphrase)
    except UnblindedKeyError as exc:
        receipt.status = "WAITING"
        receipt.reason = f"{exc}; the randomization list waits and nothing unblinded was written"
        return receipt
    start = time.perf_counter()
    verified = verify_transfer(ref, source)
    scratch = duckdb.connect(":memory:", config=dict(DUCKDB_CONFIG))
    try:
        processed = process_transfer(scratch, verified)
        land_randomization(con, scratch, processed, warehouse, passphrase, run_id)
    finally:
        scratch.close()
    receipt.status, receipt.warnings, receipt.loads = "LANDED", processed.warnings, processed.loads
    receipt.seconds = {**processed.seconds, "land": time.perf_counter() - start}
    return receipt


def start_run(con: duckdb.DuckDBPyConnection, summary: RunSummary) -> None:
    con.execute("insert into ops.runs (run_id, started_at, status, layout) values (?, ?, 'RUNNING', ?)",
                [summary.run_id, summary.started_at, layout_fingerprint()])


def finish_run(con: duckdb.DuckDBPyConnection, summary: RunSummary, status: str, message: str | None = None,
               derive_seconds: float = 0.0, expectations_seconds: float | None = None) -> None:
    loads = [load for _, load in summary.loads]
    seconds = {k: sum(r.seconds.get(k, 0.0) for r in summary.receipts) for k in ("read", "validate", "land")}
    con.execute("""
        update ops.runs set finished_at = ?, status = ?, transfers_seen = ?, transfers_landed = ?,
            transfers_rejected = ?, transfers_pending = ?, rows_delivered = ?, rows_landed = ?, rows_quarantined = ?,
            seconds_read = ?, seconds_validate = ?, seconds_land = ?, seconds_derive = ?, seconds_expectations = ?,
            message = ?
        where run_id = ?""",
                [summary.finished_at, status, len(summary.receipts), summary.count("LANDED"),
                 summary.count("REJECTED"), summary.count("PENDING"), sum(x.delivered for x in loads),
                 sum(x.landed for x in loads), sum(x.quarantined for x in loads), seconds["read"],
                 seconds["validate"], seconds["land"], derive_seconds, expectations_seconds, message, summary.run_id])


def utc_now() -> datetime:
    return datetime.now(UTC)
