"""The unblinded store `unblinded.duckdb`: the IWRS randomization and everything derived by arm.

The blind must hold, so the store is one file encrypted with AES-256-GCM under a key derived
(scrypt) from the passphrase in `KAP_UNBLINDED_KEY`. Its plaintext is a set of Arrow tables that
only ever live in memory: the ingest decrypts, replaces and re-encrypts them; `kaptrial sql
--unblinded` decrypts them into an in-memory DuckDB catalog named `unblinded`. Nothing about an
arm is written to the blinded warehouse, its Parquet, Prefect or a log.

(DuckDB's own database encryption would need its httpfs extension to write, which this offline
build cannot load; AES-GCM from `cryptography` is the same cipher, authenticated.)
"""

from __future__ import annotations

import io
import json
import os
import struct
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.ipc as ipc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

KEY_ENV = "KAP_UNBLINDED_KEY"
STORE = "unblinded.duckdb"
CATALOG = "unblinded"
MAGIC = b"KAP-TRD-01 unblinded store v1\n"
SALT_BYTES, NONCE_BYTES = 16, 12
SCRYPT = {"n": 2**15, "r": 8, "p": 1}


class UnblindedKeyError(RuntimeError):
    """The key is missing, or does not open the store."""


def passphrase_from_env() -> str:
    value = os.environ.get(KEY_ENV, "")
    if not value:
        raise UnblindedKeyError(f"{KEY_ENV} is not set: the unblinded store can be neither written nor read")
    return value


def _key(passphrase: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, **SCRYPT).derive(passphrase.encode("utf-8"))


def pack_tables(tables: dict[str, pa.Table]) -> bytes:
    """Tables as one byte string: a JSON index of name → (offset, length), then Arrow IPC streams."""
    streams, index, offset = [], {}, 0
    for name, table in sorted(tables.items()):
        sink = io.BytesIO()
        with ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        data = sink.getvalue()
        index[name] = [offset, len(data)]
        streams.append(data)
        offset += len(data)
    header = json.dumps(index, sort_keys=True).encode("utf-8")
    return struct.pack(">Q", len(header)) + header + b"".join(streams)


def unpack_tables(payload: bytes) -> dict[str, pa.Table]:
    (size,) = struct.unpack(">Q", payload[:8])
    index = json.loads(payload[8:8 + size])
    body = memoryview(payload)[8 + size:]
    return {name: ipc.open_stream(pa.py_buffer(body[start:start + length])).read_all()
            for name, (start, length) in index.items()}


def encrypt(tables: dict[str, pa.Table], passphrase: str) -> bytes:
    salt, nonce = os.urandom(SALT_BYTES), os.urandom(NONCE_BYTES)
    return MAGIC + salt + nonce + AESGCM(_key(passphrase, salt)).encrypt(nonce, pack_tables(tables), MAGIC)


def decrypt(blob: bytes, passphrase: str) -> dict[str, pa.Table]:
    if not blob.startswith(MAGIC):
        raise UnblindedKeyError("the unblinded store is not a KAP-TRD-01 store (or is damaged)")
    salt = blob[len(MAGIC):len(MAGIC) + SALT_BYTES]
    nonce = blob[len(MAGIC) + SALT_BYTES:len(MAGIC) + SALT_BYTES + NONCE_BYTES]
    try:
        payload = AESGCM(_key(passphrase, salt)).decrypt(nonce, blob[len(MAGIC) + SALT_BYTES + NONCE_BYTES:], MAGIC)
    except InvalidTag:
        raise UnblindedKeyError(f"{KEY_ENV} does not open the unblinded store (wrong key, or the file was "
                                "altered)") from None
    return unpack_tables(payload)


def read_store(warehouse: Path, passphrase: str) -> dict[str, pa.Table]:
    """The store's tables; none yet if nothing unblinded has landed."""
    path = warehouse / STORE
    return decrypt(path.read_bytes(), passphrase) if path.exists() else {}


def write_store(warehouse: Path, tables: dict[str, pa.Table], passphrase: str) -> None:
    """Written beside and switched in: a crash leaves the old store or the new one, never half."""
    warehouse.mkdir(parents=True, exist_ok=True)
    target = warehouse / STORE
    partial = target.with_name(f".{STORE}.partial")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(encrypt(tables, passphrase))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, target)


def attach_store(con: duckdb.DuckDBPyConnection, warehouse: Path, passphrase: str) -> None:
    """The store's tables as the in-memory catalog `unblinded` of `con`."""
    tables = read_store(warehouse, passphrase)
    con.execute(f"attach ':memory:' as {CATALOG}")
    for name, table in tables.items():
        con.register("_unblinded_source", table)
        try:
            con.execute(f"create table {CATALOG}.main.{name} as select * from _unblinded_source")
        finally:
            con.unregister("_unblinded_source")
