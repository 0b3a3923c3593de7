"""The source registry (`schemas/sources.yaml`, DTS §2): who delivers what, in which dialect."""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from flows.settings import SCHEMAS_DIR

FORMATS = ("dts-csv", "dts-xlsx", "redcap", "iwrs")
# Formats delivered as delimited text: their dialect must be registered in full.
TEXT_FORMATS = ("dts-csv", "redcap", "iwrs")
REQUIRED_SETTINGS = ("name", "format", "delimiter", "decimal", "encoding", "date_format", "missing_values",
                     "timezone")
# The formats this build can ingest; a transfer of another format waits, unprocessed.
SUPPORTED_FORMATS = ("dts-csv", "dts-xlsx", "redcap", "iwrs")


# What each strftime directive of a registered date format looks like, written in full.
DIRECTIVE_SHAPES = {"Y": "[0-9]{4}", "y": "[0-9]{2}", "m": "[0-9]{2}", "d": "[0-9]{2}", "b": "[A-Za-z]{3}",
                    "H": "[0-9]{2}", "M": "[0-9]{2}", "S": "[0-9]{2}", "%": "%"}


def date_shape(date_format: str) -> str:
    """A regular expression that a date written exactly in `date_format` matches."""
    shape, i = [], 0
    while i < len(date_format):
        if date_format[i] == "%" and i + 1 < len(date_format):
            directive = date_format[i + 1]
            if directive not in DIRECTIVE_SHAPES:
                raise ValueError(f"date format {date_format!r}: directive %{directive} is not supported")
            shape.append(DIRECTIVE_SHAPES[directive])
            i += 2
        else:
            shape.append(re.escape(date_format[i]))
            i += 1
    return "".join(shape)



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
        if not isinstance(settings, Mapping):
            raise RegistryError(f"source {source_id}: its settings must be a mapping")
        missing = [k for k in REQUIRED_SETTINGS if k not in settings]
        if missing:
            raise RegistryError(f"source {source_id}: missing setting(s) {', '.join(missing)}")
        if settings["format"] not in FORMATS:
            raise RegistryError(f"source {source_id}: unknown format {settings['format']!r}")
        if not isinstance(settings["missing_values"], list):
            raise RegistryError(f"source {source_id}: missing_values must be a list, e.g. [\"\", \"NA\"]")
        try:
            date_shape(str(settings["date_format"]))
        except ValueError as exc:
            raise RegistryError(f"source {source_id}: {exc}") from None
        if settings["format"] in TEXT_FORMATS:
            unset = [k for k in ("delimiter", "decimal", "encoding") if not settings.get(k)]
            if unset:
                raise RegistryError(f"source {source_id}: a {settings['format']} source needs {', '.join(unset)}")
            try:
                codecs.lookup(settings["encoding"])
            except LookupError:
                raise RegistryError(f"source {source_id}: unknown encoding {settings['encoding']!r}") from None
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


def registry_path() -> Path:
    """`schemas/sources.yaml`, unless a deployment points KAP_SOURCES at its own registry."""
    return Path(os.environ.get("KAP_SOURCES") or SCHEMAS_DIR / "sources.yaml")


def load_registry(path: Path | None = None) -> dict[str, Source]:
    path = path or registry_path()
    with open(path, encoding="utf-8") as fh:
        return parse_registry(yaml.safe_load(fh))
