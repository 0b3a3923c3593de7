"""Builders for tiny, hand-made deliveries (DTS §2.1, §3), shared by the tests.

Import as `from tests.helpers import ...`. Plain functions and constants only:

- `source(source_id="S01", **changes)`: a `flows.registry.Source` from the real registry
  (`schemas/sources.yaml`), optionally with settings replaced, e.g. `source("S01", delimiter=";")`.
- `GOOD_RECORDS`: one valid record per dataset (keyed by dataset name: "participants", "sessions",
  "vitals", "assessment_items", "adverse_events"), typed Python values (`date`, `time`, `int`,
  `float`, `str`; `None` = no value). They pass every pandera model of `schemas/models.py`.
- `record_text(dataset, src, **changes)`: the good record as `src` delivers it (its date format,
  decimal separator and subject prefix, e.g. `S02-0001`); `changes` are exact texts to deliver.
- `header_of(dataset)`: every column of the dataset, in model order.
- `csv_text(header, rows, delimiter=",", newline="\n")`, `csv_bytes(header, rows, src)`: CSV text /
  bytes in a site's dialect; rows are sequences or mappings keyed by header names.
- `dataset_file(dataset, src, rows=None)`: a dataset's file at `src` (full header; default one
  good record).
- `dts_csv_files(src)`: the five files of a valid dts-csv transfer, by file name.
- `sha256_hex(data)`, `count_records(data, src)`, `manifest_entry(name, data, rows=None, src=None)`,
  `manifest(source_id, transfer_id, entries, fmt="dts-csv", study=STUDY)`.
- `write_transfer(inbox, source_id, transfer_id=TRANSFER_ID, files=None, *, listed=None,
  folder=None, manifest_changes=None, manifest_text=None)`: writes `inbox/<source>/<folder>/` with
  the files (default `dts_csv_files`) and a matching `manifest.json`; returns the
  `flows.discover.TransferRef`. The keyword arguments build defective transfers: list only some
  files, use another folder name, replace or drop manifest keys (a value of `None` drops it), or
  write an exact manifest text.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, time
from functools import cache
from pathlib import Path
from typing import Any

from flows.discover import MANIFEST, TransferRef
from flows.registry import Source, load_registry
from schemas.datasets import DATASETS

STUDY = "KAP-TRD-01"
TRANSFER_ID = "20261127T020000Z"
DTS_CSV_FILES: tuple[str, ...] = tuple(d.file for d in DATASETS.values())

# One valid record per dataset, typed; the subject's site prefix is replaced by the source's.
GOOD_RECORDS: dict[str, dict[str, Any]] = {
    "participants": {
        "subject_id": "S01-0001", "screening_date": date(2026, 1, 10), "consent_date": date(2026, 1, 5),
        "birth_year": 1980, "sex": "F", "weight_kg": 72.5, "prior_ect": "N", "status": "ENROLLED",
        "withdrawal_date": None, "withdrawal_reason": None,
    },
    "sessions": {
        "subject_id": "S01-0001", "visit": "D1", "session_date": date(2026, 1, 12), "start_time": time(9, 30),
        "duration_min": 120, "therapist_id": "T001", "attended": "Y", "route": "IV", "dose_mg": 50.0,
        "weight_kg": 72.5, "infusion_min": 40,
    },
    "vitals": {
        "subject_id": "S01-0001", "visit": "D1", "timepoint": "PRE", "measured_time": time(9, 25), "sbp": 120,
        "dbp": 80, "hr": 72, "spo2": 98,
    },
    "assessment_items": {
        "subject_id": "S01-0001", "visit": "BL", "instrument": "MADRS", "assessment_date": date(2026, 1, 11),
        "rater_id": "R001", "item": 1, "score": 3,
    },
    "adverse_events": {
        "subject_id": "S01-0001", "ae_id": "AE001", "term": "Headache", "onset_date": date(2026, 1, 12),
        "end_date": date(2026, 1, 13), "severity": "MILD", "serious": "N", "related": "POSSIBLE",
        "outcome": "RECOVERED", "action": "NONE",
    },
}


@cache
def _registry() -> dict[str, Source]:
    return load_registry()


def source(source_id: str = "S01", **changes: Any) -> Source:
    """A registered source, with `changes` (Source field names) replaced."""
    registered = _registry()[source_id]
    return dataclasses.replace(registered, **changes) if changes else registered


def format_value(value: Any, src: Source) -> str:
    """A typed value as the site writes it (missing values as the empty string)."""
    if value is None:
        return ""
    if isinstance(value, date):
        return value.strftime(src.date_format)
    if isinstance(value, time):
        return value.strftime("%H:%M")
    if isinstance(value, float):
        return repr(value).replace(".", src.decimal or ".")
    return str(value)


def record_text(dataset: str, src: Source, **changes: str) -> dict[str, str]:
    """The dataset's good record as delivered text at `src`; `changes` give exact delivered texts."""
    record = {k: format_value(v, src) for k, v in GOOD_RECORDS[dataset].items()}
    record["subject_id"] = f"{src.source_id}-0001"
    record.update(changes)
    return record


def header_of(dataset: str) -> list[str]:
    """Every column of the dataset, in model order."""
    return [c.name for c in DATASETS[dataset].columns]


def csv_text(header: Sequence[str], rows: Iterable[Sequence[str] | Mapping[str, str]], delimiter: str = ",",
             newline: str = "\n") -> str:
    """CSV text: `rows` are sequences of fields or mappings keyed by header names."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter=delimiter, lineterminator=newline)
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(h, "") for h in header] if isinstance(row, Mapping) else row)
    return out.getvalue()


def csv_bytes(header: Sequence[str], rows: Iterable[Sequence[str] | Mapping[str, str]], src: Source) -> bytes:
    """A CSV file in the site's delimiter and encoding (`utf-8-sig` writes a byte-order mark)."""
    return csv_text(header, rows, src.delimiter or ",").encode(src.encoding or "utf-8")


def dataset_file(dataset: str, src: Source, rows: Iterable[Mapping[str, str]] | None = None) -> bytes:
    """The dataset's file at `src`: its whole header and `rows` (default: the good record)."""
    return csv_bytes(header_of(dataset), [record_text(dataset, src)] if rows is None else rows, src)


def dts_csv_files(src: Source) -> dict[str, bytes]:
    """The five files of a valid dts-csv transfer, one good record each."""
    return {DATASETS[name].file: dataset_file(name, src) for name in DATASETS}


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def count_records(data: bytes, src: Source) -> int:
    """Data records of a CSV file (blank lines and the header not counted)."""
    text = data.decode(src.encoding or "utf-8", errors="replace")
    records = csv.reader(io.StringIO(text, newline=""), delimiter=src.delimiter or ",")
    return max(sum(1 for r in records if r) - 1, 0)


def manifest_entry(name: str, data: bytes, rows: int | None = None,
                   src: Source | None = None) -> dict[str, Any]:
    """A manifest `files` entry that matches `data`."""
    count = rows if rows is not None else count_records(data, src or source())
    return {"name": name, "sha256": sha256_hex(data), "rows": count}


def manifest(source_id: str, transfer_id: str, entries: list[dict[str, Any]], fmt: str = "dts-csv",
             study: str = STUDY) -> dict[str, Any]:
    return {"study": study, "source": source_id, "transfer_id": transfer_id, "format": fmt, "files": entries}


def write_transfer(
    inbox: Path,
    source_id: str,
    transfer_id: str = TRANSFER_ID,
    files: Mapping[str, bytes] | None = None,
    *,
    listed: Iterable[str] | None = None,
    folder: str | None = None,
    manifest_changes: Mapping[str, Any] | None = None,
    manifest_text: str | bytes | None = None,
) -> TransferRef:
    """Write `inbox/<source_id>/<folder or transfer_id>/` with `files` and a manifest listing them.

    `files` defaults to `dts_csv_files` of the source. `listed` restricts the manifest to those
    names (default: every file). `manifest_changes` replaces manifest keys (`None` removes one);
    `manifest_text` writes that exact manifest instead.
    """
    src = source(source_id)
    files = dts_csv_files(src) if files is None else files
    path = inbox / source_id / (folder or transfer_id)
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    if manifest_text is not None:
        raw = manifest_text.encode("utf-8") if isinstance(manifest_text, str) else manifest_text
    else:
        names = list(files) if listed is None else list(listed)
        document = manifest(source_id, transfer_id, [manifest_entry(n, files[n], src=src) for n in names],
                            fmt=src.format)
        for key, value in (manifest_changes or {}).items():
            if value is None:
                document.pop(key, None)
            else:
                document[key] = value
        raw = json.dumps(document, indent=2).encode("utf-8")
    (path / MANIFEST).write_bytes(raw)
    return TransferRef(source_id, folder or transfer_id, path)
