"""flows/registry.py: the source registry `schemas/sources.yaml` (DTS §2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.registry import FORMATS, RegistryError, Source, load_registry, parse_registry

S02_SETTINGS: dict[str, Any] = {
    "name": "Zürich", "format": "dts-csv", "delimiter": ";", "decimal": ",", "encoding": "cp1252",
    "date_format": "%d.%m.%Y", "missing_values": ["", "NA"], "timezone": "Europe/Zurich",
}


def test_real_registry_holds_every_source_of_the_dts() -> None:
    assert set(load_registry()) == {"S01", "S02", "S03", "S04", "S05", "S06", "IWRS"}


@pytest.mark.parametrize(
    ("source_id", "fmt", "delimiter", "decimal", "encoding", "date_format", "missing"),
    [
        ("S01", "dts-csv", ",", ".", "utf-8", "%Y-%m-%d", ("",)),
        ("S02", "dts-csv", ";", ",", "cp1252", "%d.%m.%Y", ("", "NA")),
        ("S03", "redcap", ",", ".", "utf-8", "%Y-%m-%d", ("",)),
        ("S04", "redcap", ",", ".", "utf-8", "%Y-%m-%d", ("",)),
        ("S05", "dts-csv", ",", ".", "utf-8-sig", "%d/%m/%Y", ("", ".")),
        ("S06", "dts-xlsx", None, None, None, "%m/%d/%Y", ("", "-99")),
        ("IWRS", "iwrs", ",", ".", "utf-8", "%Y-%m-%d", ("",)),
    ],
)
def test_real_registry_settings_match_the_dts_table(
    source_id: str, fmt: str, delimiter: str | None, decimal: str | None, encoding: str | None,
    date_format: str, missing: tuple[str, ...],
) -> None:
    src = load_registry()[source_id]
    assert (src.source_id, src.format, src.delimiter, src.decimal, src.encoding, src.date_format,
            src.missing_values) == (source_id, fmt, delimiter, decimal, encoding, date_format, missing)


def test_registry_entry_parses_into_a_source_with_every_setting() -> None:
    sources = parse_registry({"sources": {"S02": S02_SETTINGS}})
    assert sources == {"S02": Source("S02", "Zürich", "dts-csv", ";", ",", "cp1252", "%d.%m.%Y", ("", "NA"),
                                     "Europe/Zurich")}


def test_new_site_needs_only_a_registry_entry(tmp_path: Path) -> None:
    document = {"sources": {"S02": S02_SETTINGS, "S07": S02_SETTINGS | {"name": "Basel"}}}
    path = tmp_path / "sources.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    sources = load_registry(path)
    assert set(sources) == {"S02", "S07"}
    assert sources["S07"].name == "Basel"
    assert sources["S07"].source_id == "S07"


def test_missing_value_codes_are_kept_as_text() -> None:
    sources = parse_registry({"sources": {"S06": S02_SETTINGS | {"missing_values": ["", -99]}}})
    assert sources["S06"].missing_values == ("", "-99")


@pytest.mark.parametrize(("fmt", "is_site"), [("dts-csv", True), ("dts-xlsx", True), ("redcap", True),
                                               ("iwrs", False)])
def test_only_the_randomization_system_is_not_a_site(fmt: str, is_site: bool) -> None:
    assert parse_registry({"sources": {"X": S02_SETTINGS | {"format": fmt}}})["X"].is_site is is_site


@pytest.mark.parametrize("document",
                         [{}, {"sources": {}}, {"sources": None}, {"sources": ["S01"]}, ["sources"]])
def test_registry_without_a_mapping_of_sources_is_refused(document: Any) -> None:
    with pytest.raises(RegistryError, match=r"non-empty mapping"):
        parse_registry(document)


@pytest.mark.parametrize("setting", ["name", "format", "date_format", "missing_values", "timezone"])
def test_registry_entry_lacking_a_required_setting_is_refused(setting: str) -> None:
    settings = {k: v for k, v in S02_SETTINGS.items() if k != setting}
    with pytest.raises(RegistryError, match=rf"S02: missing setting.*{setting}"):
        parse_registry({"sources": {"S02": settings}})


@pytest.mark.parametrize("fmt", ["csv", "DTS-CSV", "xlsx", ""])
def test_registry_entry_of_an_unknown_format_is_refused(fmt: str) -> None:
    with pytest.raises(RegistryError, match=r"unknown format"):
        parse_registry({"sources": {"S02": S02_SETTINGS | {"format": fmt}}})


def test_every_format_of_the_dts_is_known() -> None:
    assert set(FORMATS) == {"dts-csv", "dts-xlsx", "redcap", "iwrs"}


def test_missing_values_given_as_a_string_is_refused() -> None:
    # "NA" as a string would make the single letters N and A missing codes, and prior_ect = N missing
    with pytest.raises(RegistryError, match=r"missing_values must be a list"):
        parse_registry({"sources": {"S02": S02_SETTINGS | {"missing_values": "NA"}}})


@pytest.mark.parametrize("settings", [None, "dts-csv", ["S02"]])
def test_registry_entry_that_is_not_a_mapping_is_refused(settings: Any) -> None:
    with pytest.raises(RegistryError, match=r"S02: its settings must be a mapping"):
        parse_registry({"sources": {"S02": settings}})


@pytest.mark.parametrize("setting", ["delimiter", "decimal", "encoding"])
def test_text_format_source_without_its_dialect_is_refused(setting: str) -> None:
    with pytest.raises(RegistryError, match=rf"S02: a dts-csv source needs {setting}"):
        parse_registry({"sources": {"S02": S02_SETTINGS | {setting: None}}})


def test_unknown_encoding_is_refused() -> None:
    with pytest.raises(RegistryError, match=r"unknown encoding"):
        parse_registry({"sources": {"S02": S02_SETTINGS | {"encoding": "klingon-8"}}})


def test_date_format_with_an_unsupported_directive_is_refused() -> None:
    with pytest.raises(RegistryError, match=r"directive %j is not supported"):
        parse_registry({"sources": {"S02": S02_SETTINGS | {"date_format": "%Y-%j"}}})
