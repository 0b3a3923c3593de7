"""Stage 2 — verify: a transfer's manifest against its folder (DTS §2.1).

Everything that rejects a transfer before its rows are parsed: the manifest itself, the files it
lists (plain names, present, checksums, decodable) and the files the format requires. Row counts
and headers are checked by the reader, which parses the files anyway.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from flows.discover import MANIFEST, TransferRef
from flows.registry import Source
from flows.settings import STUDY

# [0-9], not \d: Python's \d (and strptime) take the digits of every script
TRANSFER_ID = re.compile(r"[0-9]{8}T[0-9]{6}Z")
CHUNK = 1 << 20

# The files each format requires, listed or not (DTS §2.1).
REQUIRED_FILES: dict[str, tuple[str, ...]] = {
    "dts-csv": ("participants.csv", "sessions.csv", "vitals.csv", "assessments.csv", "adverse_events.csv"),
    "dts-xlsx": ("export.xlsx",),
    "redcap": ("redcap_export.csv", "data_dictionary.csv"),
    "iwrs": ("randomization.csv",),
}


class Rejected(Exception):
    """The transfer cannot land; the message is what the data manager reads."""


@dataclass(frozen=True)
class ManifestFile:
    name: str
    path: Path
    sha256: str
    rows: Any  # int, or for a workbook a mapping of sheet name to rows
    lines: int | None = None  # physical lines, counted while verifying


@dataclass
class VerifiedTransfer:
    source: Source
    transfer_id: str
    path: Path
    format: str
    files: dict[str, ManifestFile]
    manifest_sha256: str
    warnings: list[str] = field(default_factory=list)


def load_manifest(ref: TransferRef) -> tuple[dict[str, Any], str]:
    if (ref.path / MANIFEST).is_symlink():
        raise Rejected(f"{MANIFEST} is a symbolic link: nothing outside the transfer folder is read")
    raw = (ref.path / MANIFEST).read_bytes()
    try:
        manifest = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Rejected(f"{MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise Rejected(f"{MANIFEST} is not a JSON object")
    return manifest, hashlib.sha256(raw).hexdigest()


def check_identity(manifest: dict[str, Any], ref: TransferRef, source: Source) -> str:
    """The manifest names this study, this source, this folder and the source's format."""
    if manifest.get("study") != STUDY:
        raise Rejected(f"manifest names study {manifest.get('study')!r}, not {STUDY}")
    if manifest.get("source") != ref.source:
        raise Rejected(f"manifest names source {manifest.get('source')!r} in the folder of {ref.source}")
    transfer_id = manifest.get("transfer_id")
    if not isinstance(transfer_id, str) or not is_transfer_id(transfer_id):
        raise Rejected(f"transfer_id {transfer_id!r} is not a UTC time of the form YYYYMMDDTHHMMSSZ")
    if transfer_id != ref.folder:
        raise Rejected(f"folder {ref.folder} does not match the manifest's transfer_id {transfer_id}")
    if manifest.get("format") != source.format:
        raise Rejected(f"manifest format {manifest.get('format')!r} is not the registered format {source.format}")
    return transfer_id


def is_transfer_id(value: str) -> bool:
    if not TRANSFER_ID.fullmatch(value):
        return False
    try:
        datetime.strptime(value, "%Y%m%dT%H%M%SZ")
    except ValueError:
        return False
    return True


def is_plain_name(name: Any) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\x00" not in name and not os.path.isabs(name))


def check_listing(manifest: dict[str, Any], ref: TransferRef, source: Source) -> dict[str, ManifestFile]:
    entries = manifest.get("files")
    if not isinstance(entries, list) or not entries:
        raise Rejected("manifest lists no files")
    files: dict[str, ManifestFile] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise Rejected(f"manifest file entry {entry!r} is not an object")
        name = entry.get("name")
        if not is_plain_name(name):
            raise Rejected(f"manifest names {name!r}, which is not a plain file name inside the transfer folder")
        if name in files:
            raise Rejected(f"manifest lists {name} twice")
        for key in ("sha256", "rows"):
            if key not in entry:
                raise Rejected(f"manifest entry {name} lacks its {key}")
        if not isinstance(entry["sha256"], str) or not re.fullmatch(r"[0-9a-fA-F]{64}", entry["sha256"]):
            raise Rejected(f"manifest entry {name}: sha256 {entry['sha256']!r} is not a SHA-256 hex digest")
        rows = entry["rows"]
        valid_rows = (isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0) or (
            isinstance(rows, dict) and rows
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in rows.values()))
        if not valid_rows:
            raise Rejected(f"manifest entry {name}: rows {rows!r} is not a row count")
        path = ref.path / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            raise Rejected(f"{name} is listed in the manifest but missing") from None
        if stat.S_ISLNK(mode) or not stat.S_ISREG(mode):
            raise Rejected(f"{name} is not a plain file (symbolic links are never followed)")
        files[name] = ManifestFile(name, path, entry["sha256"].lower(), rows)
    for required in REQUIRED_FILES[source.format]:
        if required not in files:
            where = "present but not listed in the manifest" if (ref.path / required).exists() else "missing"
            raise Rejected(f"required file {required} is {where}")
    return files


def hash_and_decode(path: Path, encoding: str | None) -> tuple[str, int]:
    """SHA-256 of the file and its physical lines, decoding it on the way when it is text, in one
    streamed pass (the reader trusts its fast path only when records and lines agree)."""
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder(encoding)("strict") if encoding else None
    offset, newlines, last = 0, 0, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            newlines += chunk.count(b"\n")
            last = chunk[-1:]
            if decoder is not None:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    raise Rejected(f"{path.name} cannot be decoded as {encoding}: byte offset "
                                   f"{offset + exc.start}, {exc.reason}") from None
            offset += len(chunk)
    if decoder is not None:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as exc:
            raise Rejected(f"{path.name} cannot be decoded as {encoding}: "
                           f"truncated at the end ({exc.reason})") from None
    return digest.hexdigest(), newlines + (0 if last == b"\n" else 1)


def text_encoding(source: Source, name: str) -> str | None:
    """The codec a listed file is decoded with: the site's, for its CSV files."""
    if not name.lower().endswith(".csv") or not source.encoding:
        return None
    # A UTF-8 byte-order mark is accepted at every UTF-8 site (DTS §2.1).
    return "utf-8-sig" if codecs.lookup(source.encoding).name in ("utf-8", "utf-8-sig") else source.encoding


def verify_transfer(ref: TransferRef, source: Source) -> VerifiedTransfer:
    """The transfer as its manifest describes it, or `Rejected` with the reason."""
    manifest, manifest_sha = load_manifest(ref)
    transfer_id = check_identity(manifest, ref, source)
    files = check_listing(manifest, ref, source)
    for name, f in files.items():
        actual, lines = hash_and_decode(f.path, text_encoding(source, f.name))
        if actual != f.sha256:
            raise Rejected(f"{f.name}: checksum differs from the manifest (file sha256 {actual}, "
                           f"manifest {f.sha256})")
        files[name] = replace(f, lines=lines)
    unlisted = sorted(p.name for p in ref.path.iterdir() if p.name != MANIFEST and p.name not in files)
    warnings = [f"unlisted file {name} ignored" for name in unlisted]
    return VerifiedTransfer(source, transfer_id, ref.path, source.format, files, manifest_sha, warnings)
