"""The source registry (`schemas/sources.yaml`, DTS §2): who delivers what, in which dialect."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flows.settings import SCHEMAS_DIR

FORMATS = ("dts-csv", "dts-xlsx", "redcap", "iwrs")
# The formats this build can ingest; a transfer of another format waits, unprocessed.
SUPPORTED_FORMATS = ("dts-csv",)


@dataclass(frozen=True)
class Source:
    source_id: str
    name: str
    format: str
    delimiter: str | None
    decimal: str | None
    encoding: str | None
    date_format: str
    missing_values: tuple[str, ...]
    timezone: str

    @property
    def is_site(self) -> bool:
        return self.format != "iwrs"


class RegistryError(ValueError):
    pass


def parse_registry(document: Mapping[str, Any]) -> dict[str, Source]:
    """Sources from the registry's YAML document, checked for the settings DTS §2 requires."""
    entries = document.get("sources") if isinstance(document, Mapping) else None
    if not isinstance(entries, Mapping) or not entries:
        raise RegistryError("the registry needs a non-empty mapping under 'sources:'")
    sources: dict[str, Source] = {}
    for source_id, settings in entries.items():
        missing = [k for k in ("name", "format", "date_format", "missing_values", "timezone") if k not in settings]
        if missing:
            raise RegistryError(f"source {source_id}: missing setting(s) {', '.join(missing)}")
        if settings["format"] not in FORMATS:
            raise RegistryError(f"source {source_id}: unknown format {settings['format']!r}")
        sources[str(source_id)] = Source(
            source_id=str(source_id),
            name=str(settings["name"]),
            format=settings["format"],
            delimiter=settings.get("delimiter"),
            decimal=settings.get("decimal"),
            encoding=settings.get("encoding"),
            date_format=settings["date_format"],
            missing_values=tuple(str(v) for v in settings["missing_values"]),
            timezone=settings["timezone"],
        )
    return sources


def load_registry(path: Path | None = None) -> dict[str, Source]:
    path = path or SCHEMAS_DIR / "sources.yaml"
    with open(path, encoding="utf-8") as fh:
        return parse_registry(yaml.safe_load(fh))
